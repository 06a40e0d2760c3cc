"""RWKV's state, made visible: decay spectra, state trajectories over a text, implicit attention shares, the
influence of one token on later ones, and channels that track features of the text (after Karpathy, Johnson and
Fei-Fei, "Visualizing and Understanding Recurrent Networks", 2015); of a matrix state (RWKV-7), its effective rank
and how much each token overwrites; of either generation, the per-token decays.

    traj = record_trajectory(model, tokens)          # RWKV-4, per token, layer, channel: wkv state, shifts, norms
    dyn = matrix_state_dynamics(model, tokens)       # RWKV-7, per layer, head, token: effective rank, overwriting
    lives = half_lives(model, tokens)                # either: (T, L, C) each channel's half-life at each token

What a generation computes comes from the model (its `trace`, `wkv_inputs`, `wkv_states`, `log_decays`,
`implicit_attention`); nothing here re-derives its network.

Features of the text and the channels that track them are in text_features.py; drawing in render.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..models import architecture_of
from ..models.rwkv4.model import official_time_decay, official_time_first
from ..ops.rwkv4 import wkv_states
from .implicit_attention import implicit_attention

# ---- decay spectra ---------------------------------------------------------------------------------------------


def decay_spectra(model) -> pd.DataFrame:
    """Per layer and channel: w = exp(time_decay), its memory half-life ln 2 / w in tokens, the bonus u, and the
    same at the official initialisation."""
    cfg, rows = model.config, []
    for i, block in enumerate(model.blocks):
        w = torch.exp(block.att.time_decay.detach().double().cpu())
        w0 = torch.exp(official_time_decay(i, cfg.n_layer, cfg.n_embd))
        rows.append(
            pd.DataFrame(
                {
                    "layer": i,
                    "channel": np.arange(cfg.n_embd),
                    "w": w.numpy(),
                    "half_life": (math.log(2) / w).numpy(),
                    "u": block.att.time_first.detach().double().cpu().numpy(),
                    "w_init": w0.numpy(),
                    "half_life_init": (math.log(2) / w0).numpy(),
                    "u_init": official_time_first(cfg.n_embd).numpy(),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def decay_shift(spectra: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """How far training moved the decays (of decay_spectra): per layer the median half-life trained and at the
    initialisation, their ratio and the median bonus u; over all channels the share whose half-life moved by more
    than 10%, the median and extreme trained / initial factors, and the longest half-life of each."""
    by_layer = spectra.groupby("layer")[["half_life", "half_life_init", "u"]].median()
    by_layer.insert(2, "trained / init", by_layer["half_life"] / by_layer["half_life_init"])
    factor = spectra["half_life"] / spectra["half_life_init"]
    overall = {
        "channels": len(spectra),
        "moved_over_10pct": float((factor.sub(1).abs() > 0.1).mean()),
        "median_factor": float(factor.median()),
        "min_factor": float(factor.min()),
        "max_factor": float(factor.max()),
        "longest": float(spectra["half_life"].max()),
        "longest_init": float(spectra["half_life_init"].max()),
    }
    return by_layer, overall


# ---- trajectories ----------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Per position t (after reading token t), per layer and channel, as numpy arrays (T, L, C):

    wkv: a / b, the state's decayed average of past values (what a token with no key weight would read);
    log_den: ln(b) + p, the log of the (unnormalised) total weight the state holds;
    att_x, ffn_x: the token-shift vectors (the time-mix and channel-mix inputs of token t);
    logits: (T, V), identical to the model's own (recorded by hooks that only read)."""

    tokens: np.ndarray
    wkv: np.ndarray
    log_den: np.ndarray
    att_x: np.ndarray
    ffn_x: np.ndarray
    logits: np.ndarray

    def quantity(self, name: str) -> np.ndarray:
        return getattr(self, name)

    @property
    def state_norms(self) -> np.ndarray:
        """(T, L): the norm of each layer's wkv vector."""
        return np.linalg.norm(self.wkv, axis=-1)


@torch.no_grad()
def record_trajectory(model, tokens: torch.Tensor, state=None) -> Trajectory:
    """The state after every token of `tokens` (T,) or (1, T), for every layer and channel.

    One parallel pass that traces each layer's inputs (the token-shift states are exactly the time-mix and
    channel-mix inputs), then the reference WKV recurrence (`wkv.wkv_states`) over the traced keys and values
    gives (a, b, p) after every token. The returned logits are the model's own.
    """
    tokens = tokens.reshape(1, -1).to(model.device)
    trace: list[dict] = []
    logits, _ = model(tokens, state, trace=trace)
    wkv, log_den, att_x, ffn_x = [], [], [], []
    for layer in trace:
        to64 = lambda x: x[0].double().cpu()  # noqa: E731 - (1, ...) -> (...)
        states = wkv_states(
            layer["w"].double().cpu(),
            layer["k"].double().cpu(),
            layer["v"].double().cpu(),
            layer["wkv_state"].double().cpu(),
        )[0]  # (T, 3, C)
        a, b, p = states.unbind(1)
        wkv.append(a / b)
        log_den.append(torch.log(b) + p)
        att_x.append(to64(layer["att_in"]))
        ffn_x.append(to64(layer["ffn_in"]))
    stack = lambda xs: torch.stack(xs, dim=1).numpy()  # noqa: E731 - [(T, C)] * L -> (T, L, C)
    return Trajectory(
        tokens=tokens[0].cpu().numpy(),
        wkv=stack(wkv),
        log_den=stack(log_den),
        att_x=stack(att_x),
        ffn_x=stack(ffn_x),
        logits=logits[0].double().cpu().numpy(),
    )


# ---- implicit attention ----------------------------------------------------------------------------------------


def shares_by_distance(weights: torch.Tensor) -> torch.Tensor:
    """From implicit attention weights (T, T, K) (K channels or heads): D (T, T), D[t, d] the share of output t's
    weight magnitude that sits at distance d (on token t - d; 0 for d > t), averaged over the K. Magnitudes, so
    that RWKV-7's signed weights count by size (RWKV-4's are a softmax, non-negative rows summing to one, so this is
    their weight itself); a row with no weight at all (a zero output) counts as zero."""
    T = weights.shape[0]
    magnitude = weights.abs()
    share = magnitude / magnitude.sum(1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    per_token = share.mean(-1)  # (T, T): [t, i]
    t = torch.arange(T)
    i = t[:, None] - t[None, :]  # [t, d] -> the token i = t - d
    return torch.where(i >= 0, per_token.gather(1, i.clamp_min(0)), 0.0)


def attention_by_distance(model, tokens: torch.Tensor, layer: int, distances=(0, 1, 4, 16, 64, 256)) -> pd.DataFrame:
    """How long a token stays readable, from the layer's implicit attention (`model.implicit_attention`; RWKV-7's
    signed weights by magnitude): for each k, over the positions t > k (the only ones with tokens more than k steps
    back), the mean share of each output's weight magnitude on the token exactly k back (`share_at`) and on tokens
    older than k (`share_older`), averaged over channels (RWKV-4) or heads (RWKV-7). A k of T - 1 or more has no
    such position and is left out; distances=None takes every k below T - 1."""
    weights = implicit_attention(model, tokens.reshape(1, -1), layer).double().cpu()
    D = shares_by_distance(weights)  # (T, T)
    T = D.shape[0]
    ks = list(range(T - 1)) if distances is None else [k for k in distances if k < T - 1]
    older = D.flip(1).cumsum(1).flip(1)  # [t, d]: the share at distance d or more
    return pd.DataFrame(
        {
            "layer": layer,
            "k": ks,
            "positions": [T - 1 - k for k in ks],
            "share_at": [float(D[k + 1 :, k].mean()) for k in ks],
            "share_older": [float(older[k + 1 :, k + 1].mean()) for k in ks],
        }
    )


def readable_distance(shares: pd.DataFrame, level: float = 0.5) -> pd.Series:
    """Per layer of attention_by_distance's table (taken at every k): the smallest k at which no more than `level`
    of the weight magnitude lies on tokens older than k; NaN where that is never reached within the text."""
    reached = shares[shares["share_older"] <= level]
    return reached.groupby("layer")["k"].min().reindex(sorted(shares["layer"].unique()))


# ---- influence -------------------------------------------------------------------------------------------------


@torch.no_grad()
def layer_outputs(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output (the residual stream) for one sequence, [(T, C)] * L, plus the logits (T, V) last."""
    trace: list[dict] = []
    logits, _ = model(tokens.reshape(1, -1).to(model.device), trace=trace)
    return [layer["out"][0].double().cpu() for layer in trace] + [logits[0].double().cpu()]


def influence(model, tokens: torch.Tensor, position: int, replacement: int | None = None) -> pd.DataFrame:
    """How much later positions change when token `position` is replaced by `replacement` (or removed, None):
    per layer (and 'logits'), the relative change ||dx_t|| / ||x_t|| at each t >= position, by distance t - i."""
    tokens = tokens.reshape(-1).cpu()
    T = len(tokens)
    if not 0 <= position < T:
        raise ValueError(f"position must be in [0, {T}); got {position}")
    base = layer_outputs(model, tokens)
    if replacement is None:
        if T < 2:
            raise ValueError("removing a token needs at least two tokens")
        changed = layer_outputs(model, torch.cat([tokens[:position], tokens[position + 1 :]]))
        # position t of the original is position t - 1 without token i, for t > i
        pairs = [(b[position + 1 :], c[position:]) for b, c in zip(base, changed)]
        start = position + 1
    else:
        edited = tokens.clone()
        edited[position] = replacement
        changed = layer_outputs(model, edited)
        pairs = [(b[position:], c[position:]) for b, c in zip(base, changed)]
        start = position
    rows = []
    names = [f"layer {i}" for i in range(model.config.n_layer)] + ["logits"]
    for name, (b, c) in zip(names, pairs):
        rel = ((c - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).numpy()
        rows.append(
            pd.DataFrame({"where": name, "distance": np.arange(len(rel)) + start - position, "relative_change": rel})
        )
    return pd.concat(rows, ignore_index=True)


# ---- per-token decays (either generation) ------------------------------------------------------------------------


def half_lives(model, tokens: torch.Tensor) -> np.ndarray:
    """(T, L, C): each channel's memory half-life at each token of `tokens` (T,) or (1, T), ln 2 / -ln(decay), in
    tokens, from the model's own `log_decays` (RWKV-4's are the same at every token, RWKV-7's depend on it)."""
    log_decay = model.log_decays(tokens.reshape(1, -1).to(model.device))[0].double().cpu()  # (T, L, C)
    return (math.log(2) / -log_decay).numpy()


def decay_distribution(model, tokens: torch.Tensor) -> pd.DataFrame:
    """Per layer and channel, the distribution over the tokens of the half-life (half_lives): its 10%, 50% and 90%
    quantiles and their ratio `spread` = q90 / q10 (1 for a decay that does not depend on the token)."""
    lives = half_lives(model, tokens)  # (T, L, C)
    q10, q50, q90 = np.quantile(lives, [0.1, 0.5, 0.9], axis=0)  # (L, C) each
    L, C = q50.shape
    return pd.DataFrame(
        {
            "layer": np.repeat(np.arange(L), C),
            "channel": np.tile(np.arange(C), L),
            "half_life_q10": q10.ravel(),
            "half_life_median": q50.ravel(),
            "half_life_q90": q90.ravel(),
            "spread": (q90 / q10).ravel(),
        }
    )


# ---- matrix states (RWKV-7) --------------------------------------------------------------------------------------


def effective_rank(matrices: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli's effective rank (2007) of each matrix of (..., M, N) -> (...): exp of the Shannon entropy of
    its singular values normalised to sum to one, p_i = s_i / sum_j s_j. It lies in [1, min(M, N)]: exactly r for
    r equal non-zero singular values, near 1 when one dominates; it does not change with the matrix's scale. The
    zero matrix, which has no direction at all, gets 0."""
    return rank_of_singular_values(torch.linalg.svdvals(matrices))


def rank_of_singular_values(s: torch.Tensor) -> torch.Tensor:
    """effective_rank from the singular values (..., K) of each matrix."""
    total = s.sum(-1)
    p = s / total[..., None].clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total > 0, torch.exp(entropy), 0.0)


def matrix_state_dynamics(model, tokens: torch.Tensor, layers=None) -> pd.DataFrame:
    """For a model with a matrix state per head (RWKV-7: S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, a =
    -kappa, b = kappa * iclr), per layer, head and token t of `tokens` (T,) or (1, T), from the empty state:

    effective_rank, norm: of S_t (effective_rank above; the Frobenius norm);
    iclr: the in-context learning rate a of the head's channels, averaged (how strongly the token replaces);
    key_alignment: ||S_{t-1} kappa_t|| / s_max(S_{t-1}), in [0, 1]: how squarely the removal key kappa points at
        what the state holds (1: at its strongest direction);
    erased: ||S_{t-1} a_t b_t^T||_F / ||S_{t-1}||_F, the size of what the delta rule takes out against the state's;
    written: ||v_t k_t^T||_F / ||S_t||_F, the size of the new write against the state after it;
    decay: the head's decays w_t = exp(log_w_t), averaged over its channels.

    key_alignment and erased are NaN where S_{t-1} is zero (at the first token), written where S_t is. The states
    come from the model, one layer at a time with what the layer was given (`model.wkv_inputs(..., states=True)`,
    T H N^2 numbers)."""
    if not callable(getattr(model, "wkv_states", None)):
        raise TypeError(
            f"{architecture_of(model).name} keeps no matrix state per head: matrix_state_dynamics takes a model whose "
            "wkv_inputs gives the states (RWKV-7)"
        )
    tokens = tokens.reshape(1, -1).to(model.device)
    T = tokens.shape[1]
    frames = []
    for layer in range(model.config.n_layer) if layers is None else layers:
        inputs = {name: x[0].double().cpu() for name, x in model.wkv_inputs(tokens, layer, states=True).items()}
        S = inputs["states"]  # (T, H, N, N)
        H = S.shape[1]
        S_prev = torch.cat([inputs["wkv_state"][None], S[:-1]])  # (T, H, N, N): the state each token finds
        singular = torch.linalg.svdvals(S)  # (T, H, N)
        s_prev = torch.cat([torch.linalg.svdvals(S_prev[:1]), singular[:-1]])[..., 0]  # (T, H): S_{t-1}'s largest
        norm = singular.square().sum(-1).sqrt()  # (T, H): Frobenius norms
        norm_prev = torch.linalg.matrix_norm(S_prev)
        removed = (S_prev @ inputs["a"][..., None])[..., 0].norm(dim=-1)  # (T, H): ||S_{t-1} a_t||, a = -kappa
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "head": np.tile(np.arange(H), T),
                    "token": np.repeat(np.arange(T), H),
                    "effective_rank": rank_of_singular_values(singular).ravel().numpy(),
                    "norm": norm.ravel().numpy(),
                    "iclr": inputs["iclr"].mean(-1).ravel().numpy(),
                    "key_alignment": torch.where(s_prev > 0, removed / s_prev, nan).ravel().numpy(),
                    "erased": torch.where(norm_prev > 0, removed * inputs["b"].norm(dim=-1) / norm_prev, nan)
                    .ravel()
                    .numpy(),
                    "written": torch.where(norm > 0, inputs["v"].norm(dim=-1) * inputs["k"].norm(dim=-1) / norm, nan)
                    .ravel()
                    .numpy(),
                    "decay": torch.exp(inputs["log_w"]).mean(-1).ravel().numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
