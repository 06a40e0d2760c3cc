"""RWKV's state, made visible: decay spectra, state trajectories over a text, implicit attention shares, the
influence of one token on later ones, and channels that track features of the text (after Karpathy, Johnson and
Fei-Fei, "Visualizing and Understanding Recurrent Networks", 2015).

    traj = record_trajectory(model, tokens)          # per token, layer, channel: wkv state, shifts, norms

Features of the text and the channels that track them are in text_features.py; drawing in render.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

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


def attention_older_than(weights: torch.Tensor, k: int) -> torch.Tensor:
    """From implicit attention weights (T, T, C): per output t and channel, the share of wkv_t that comes from
    tokens more than k steps back (i < t - k). (T, C)."""
    T = weights.shape[0]
    t = torch.arange(T)
    old = (t[None, :] < t[:, None] - k).to(weights.dtype)  # (T, T)
    return torch.einsum("tic,ti->tc", weights, old)


def attention_by_distance(model, tokens: torch.Tensor, layer: int, distances=(0, 1, 4, 16, 64, 256)) -> pd.DataFrame:
    """For each k: the mean share (over channels, and over the positions t > k, the only ones that have tokens more
    than k steps back) of each output drawn from tokens older than k. A k of T - 1 or more has no such position
    and is left out."""
    weights = implicit_attention(model, tokens.reshape(1, -1), layer).double().cpu()
    T = weights.shape[0]
    ks = [k for k in distances if k < T - 1]
    shares = [float(attention_older_than(weights, k)[k + 1 :].mean()) for k in ks]
    return pd.DataFrame({"layer": layer, "k": ks, "positions": [T - 1 - k for k in ks], "share_older": shares})


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
