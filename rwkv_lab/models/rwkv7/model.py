"""RWKV-7 ("Goose", x070): one network, parallel and recurrent.

    logits, state = model(tokens, state)      # tokens (B, T): parallel over T (training, prefill)
    logits, state = model.step(token, state)  # token (B,): the RNN form, one token at a time

The state is an `RWKV7State`: per layer the two token shifts (the att and ffn LayerNorm outputs of the last
token) and the WKV matrix S (H, N, N) per head, S[value index, key index]. Parameter names and shapes are the keys
of BlinkDL's x070 checkpoints, so `model.state_dict()` is a BlinkDL state dict. The equations are the `rwkv`
package's RWKV_x070 and RWKV-LM's RWKV-v7 (see ../shared/spec/rwkv7.md); tests/test_rwkv7_model.py compares
with the package on the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.rwkv7 import attention_matrix, wkv7, wkv7_states
from ..base import RecurrentLMBase
from ..state import RecurrentState
from .config import RWKV7Config

# log w = -e^{-1/2} sigmoid(z): every decay lies in (exp(-e^{-1/2}), 1) ~ (0.545, 1). (The package writes the
# constant 0.606531 in its one-token path; RWKV-LM's kernels take -softplus(-z) - 1/2 and exponentiate twice,
# which is this value exactly.)
DECAY_SCALE = math.exp(-0.5)
# ln_x's eps: RWKV-LM fixes 64e-5 for x070 ("notice eps value"), the package too; fla writes head_dim * 1e-5,
# the same at N = 64
LN_X_EPS = 64e-5
ATT, FFN = 0, 1  # the token shifts in RWKV7State.shift


def token_shift(x: torch.Tensor, last_x: torch.Tensor) -> torch.Tensor:
    """The previous token's x for each position: x (B, T, C), last_x (B, C) the one before the first -> (B, T, C)."""
    last = last_x[:, None].to(x.dtype)
    return last if x.shape[1] == 1 else torch.cat([last, x[:, :-1]], dim=1)


@dataclass
class RWKV7State(RecurrentState):
    """shift (B, L, 2, C): [att x, ffn x] of the last token per layer; wkv (B, L, H, N, N): S per layer and head.
    Both in the model's state dtype (float32, float64 for a float64 model)."""

    shift: torch.Tensor
    wkv: torch.Tensor


class TimeMix7(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size = H, N
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.empty(1, 1, C)))
        for name, width in (
            ("w", config.decay_lora),
            ("a", config.iclr_lora),
            ("v", config.value_lora),
            ("g", config.gate_lora),
        ):
            setattr(self, f"{name}1", nn.Parameter(torch.empty(C, width)))
            setattr(self, f"{name}2", nn.Parameter(torch.empty(width, C)))
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g

    def forward(self, x, last_x, v_first, wkv_state, backend: str, trace: dict | None = None):
        """x (B, T, C): ln1's output; last_x (B, C); v_first (B, T, C) from layer 0 (None in layer 0); wkv_state
        (B, H, N, N). Returns the output (B, T, C), v_first and the new S."""
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        delta = token_shift(x, last_x) - x
        # the six mixes as one op: (6, B, T, C)
        xr, xw, xk, xv, xa, xg = torch.addcmul(x, delta, torch.stack(self.mixes())).unbind(0)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        z = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        log_w = -DECAY_SCALE * torch.sigmoid(z.to(wkv_state.dtype))  # (B, T, C), fp32 at least
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate, in (0, 1)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        if self.layer_id == 0:
            v_first = v
        else:  # value residual: mix towards layer 0's value
            v = torch.lerp(v, v_first, torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2))
        kappa = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1)  # removal key, unit norm per head
        k = k * (1 + (iclr - 1) * self.k_a)  # replacement key
        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        r, log_w, k, v, iclr = heads(r), heads(log_w), heads(k), heads(v), heads(iclr)
        a, b = -kappa, kappa * iclr
        if trace is not None:
            trace.update(r=r, log_w=log_w, k=k, v=v, kappa=kappa, iclr=iclr, a=a, b=b, wkv_state=wkv_state)
        y, wkv_state = wkv7(r, log_w, k, v, a, b, wkv_state, backend=backend, check=False)  # (B, T, H, N)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, H, N)
        # the current token's own value, weighted per head by r . (k * r_k): RWKV-7's "bonus"
        y = y + (r * k * self.r_k).sum(dim=-1, keepdim=True) * v
        return self.output(y.view(B, T, C) * g), v_first, wkv_state


class ChannelMix7(nn.Module):
    def __init__(self, config: RWKV7Config):
        super().__init__()
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def forward(self, x, last_x):
        k = torch.square(torch.relu(self.key(torch.addcmul(x, token_shift(x, last_x) - x, self.x_k))))  # (B, T, F)
        return self.value(k)


class Block7(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        # the first block normalises the embeddings
        self.ln0 = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix7(config, layer_id)
        self.ffn = ChannelMix7(config)

    def forward(self, x, v_first, shift, wkv_state, backend: str, trace: dict | None = None):
        # shift (B, 2, C), wkv_state (B, H, N, N) of this layer; returns x, v_first and the new ones
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        att, v_first, wkv_state = self.att(h, shift[:, ATT], v_first, wkv_state, backend, trace)
        x = x + att
        h2 = self.ln2(x)
        x = x + self.ffn(h2, shift[:, FFN])
        if trace is not None:
            trace.update(att_in=h, ffn_in=h2, out=x)
        return x, v_first, torch.stack([h[:, -1], h2[:, -1]], dim=1).to(shift.dtype), wkv_state


class RWKV7(RecurrentLMBase):
    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block7(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # how the parallel form runs is `self.run` (RecurrentLMBase): its `backend` is rwkv_lab.ops.rwkv7's ('auto'
        # picks the fastest exact one); the fused-block settings are RWKV-4's, so they change nothing here yet

    @property
    def state_dtype(self) -> torch.dtype:
        """S accumulates over the whole sequence: float32, or float64 for a float64 model."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def init_state(self, batch: int = 1) -> RWKV7State:
        """The empty state: zero token shifts and zero S."""
        cfg = self.config
        kwargs = {"dtype": self.state_dtype, "device": self.device}
        return RWKV7State(
            shift=torch.zeros(batch, cfg.n_layer, 2, cfg.n_embd, **kwargs),
            wkv=torch.zeros(batch, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size, **kwargs),
        )

    def check_state(self, state: RWKV7State, batch: int) -> None:
        cfg = self.config
        if not isinstance(state, RWKV7State):
            raise TypeError(f"state must be an RWKV7State (from model.init_state); got {type(state).__name__}")
        expected = {
            "shift": (batch, cfg.n_layer, 2, cfg.n_embd),
            "wkv": (batch, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size),
        }
        for name, shape in expected.items():
            tensor = getattr(state, name)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"state.{name} must have shape {shape} for a batch of {batch}; got {got}")
            if tensor.dtype != self.state_dtype:
                raise TypeError(f"state.{name} must be {self.state_dtype} for a {self.dtype} model; got {tensor.dtype}")
            if tensor.device != self.device:
                raise ValueError(f"state.{name} is on {tensor.device} but the model is on {self.device}")
            if not bool(torch.isfinite(tensor).all()):
                bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
                raise ValueError(
                    f"state.{name} holds NaN or infinite values (first at {bad}); a state from init_state or from "
                    "this model's outputs is always finite"
                )

    def blocks_with_state(self, x, state: RWKV7State, backend: str, trace: list | None = None):
        """x (B, T, C) embeddings through every block: the last block's output and the new state."""
        v_first = None
        shifts, wkvs = [], []
        for i, block in enumerate(self.blocks):
            layer_trace = None
            if trace is not None:
                layer_trace = {}
                trace.append(layer_trace)
            x, v_first, shift, wkv_state = block(x, v_first, state.shift[:, i], state.wkv[:, i], backend, layer_trace)
            shifts.append(shift)
            wkvs.append(wkv_state)
        return x, RWKV7State(shift=torch.stack(shifts, dim=1), wkv=torch.stack(wkvs, dim=1))

    def forward(
        self,
        tokens: torch.Tensor,
        state: RWKV7State | None = None,
        *,
        backend: str | None = None,
        check: bool = True,
        trace: list | None = None,
        padded_vocab: bool = False,
    ):
        """Parallel form: tokens (B, T) -> logits (B, T, V) and the state after the last token. (`padded_vocab`,
        the protocol's request for a padded head's logits, changes nothing: RWKV-7 has no padded head, its released
        vocabularies, 50304 and 65536, being aligned already.)

        `trace`, a list, receives one dict per layer of what it computed, for analysis: `att_in` / `ffn_in` the
        time-mix and channel-mix inputs (B, T, C) (LayerNorm outputs, whose last row is the next token-shift
        state), `out` the block's output (B, T, C), and what its WKV was given, each (B, T, H, N): `r`, `log_w`,
        `k` (the replacement key), `v` (after the value residual), `kappa` (the removal key), `iclr` (the
        in-context learning rate), `a` = -kappa, `b` = kappa * iclr, and `wkv_state` (B, H, N, N) it started from.
        """
        hidden, state = self.hidden(tokens, state, backend=backend, check=check, trace=trace)
        return self.head(hidden), state  # (B, T, V)

    @torch.no_grad()
    def wkv_inputs(
        self, tokens: torch.Tensor, layer: int, state: RWKV7State | None = None, *, states: bool = False
    ) -> dict:
        """What layer `layer`'s state update sees for tokens (B, T): {r, log_w, k, v, kappa, iclr, a, b, wkv_state}
        (see `forward`'s trace), running the blocks up to that layer only; with `states`, also `states` (B, T, H, N,
        N): its matrix S (value index, key index) after every token, in the state dtype, the reference recurrence
        over these inputs (T H N^2 numbers per sequence: one layer at a time, for analysis)."""
        if not 0 <= layer < self.config.n_layer:
            raise ValueError(f"layer must be in [0, {self.config.n_layer}); got {layer}")
        state = self.checked_state(tokens, state, check=True)
        x, v_first = self.emb(tokens), None
        for i, block in enumerate(self.blocks[: layer + 1]):
            trace: dict = {}
            x, v_first, _, _ = block(x, v_first, state.shift[:, i], state.wkv[:, i], self.run.backend, trace)
        keys = ("r", "log_w", "k", "v", "kappa", "iclr", "a", "b", "wkv_state")
        inputs = {key: trace[key] for key in keys}
        if states:
            t = inputs
            S = wkv7_states(t["r"], t["log_w"], t["k"], t["v"], t["a"], t["b"], t["wkv_state"])
            inputs["states"] = S.to(self.state_dtype)
        return inputs

    def wkv_states(self, tokens: torch.Tensor, layer: int, state: RWKV7State | None = None) -> torch.Tensor:
        """Layer `layer`'s matrix state after every token of tokens (B, T): (B, T, H, N, N) (see wkv_inputs)."""
        return self.wkv_inputs(tokens, layer, state, states=True)["states"]

    @torch.no_grad()
    def log_decays(self, tokens: torch.Tensor, state: RWKV7State | None = None) -> torch.Tensor:
        """ln of the factor each channel's state is multiplied by at each token, tokens (B, T) -> (B, T, L, C):
        RWKV-7's decays depend on the token (log_w = -e^{-1/2} sigmoid(z_t), in (-0.607, 0))."""
        trace: list = []
        self.hidden(tokens, state, trace=trace)
        return torch.stack([t["log_w"].flatten(2) for t in trace], dim=2)

    @torch.no_grad()
    def implicit_attention(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer `layer`'s state update as attention, tokens (1, T) from the empty state: (T, T, H), row t, column
        i: alpha with head h's y_t = sum_i alpha[t, i, h] v_i (RWKV-7's implicit attention: the key of token i
        carried through the transitions of i+1..t and read by r_t; unnormalised and signed)."""
        t = self.wkv_inputs(tokens, layer)
        return attention_matrix(t["r"], t["log_w"], t["k"], t["a"], t["b"])[0].permute(1, 2, 0)  # (T, T, H)

    def step(self, token: torch.Tensor, state: RWKV7State | None = None, *, check: bool = True):
        """RNN form: one token per sequence, token (B,) -> logits (B, V) and the state.

        The fast path of decoding: the blocks' equations for one token on (B, C) vectors, functional, without the
        parallel form's token shifts and reshapes (`forward` is its reference: tests/test_rwkv7_model.py compares
        them in float64, gradients included)."""
        if check:
            self.check_tokens(token, ndim=1)
        if state is None:
            state = self.init_state(token.shape[0])
        elif check:
            self.check_state(state, token.shape[0])
        x = self.emb(token)  # (B, C)
        v_first = None
        shifts, wkvs = [], []
        last = state.shift.to(x.dtype)  # the token shifts in the model's dtype (a no-op but for bf16 / fp16)
        for i, block in enumerate(self.blocks):
            x, v_first, shift, wkv_state = _block_one(block, x, v_first, last[:, i], state.wkv[:, i])
            shifts.append(shift)
            wkvs.append(wkv_state)
        x = F.layer_norm(x, x.shape[-1:], self.ln_out.weight, self.ln_out.bias, self.ln_out.eps)
        new_state = RWKV7State(shift=torch.stack(shifts, dim=1).to(self.state_dtype), wkv=torch.stack(wkvs, dim=1))
        return self.head(x), new_state


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def _block_one(block: Block7, x, v_first, shift, wkv_state):
    """`Block7.forward` for one token: x (B, C), shift (B, 2, C), wkv_state (B, H, N, N)."""
    if block.ln0 is not None:
        x = _layer_norm(block.ln0, x)
    h = _layer_norm(block.ln1, x)
    att, v_first, wkv_state = _time_mix_one(block.att, h, shift[:, ATT], v_first, wkv_state)
    x = x + att
    h2 = _layer_norm(block.ln2, x)
    ffn = block.ffn
    hidden = torch.square(torch.relu(F.linear(torch.addcmul(h2, shift[:, FFN] - h2, ffn.x_k[0]), ffn.key.weight)))
    x = x + F.linear(hidden, ffn.value.weight)
    return x, v_first, torch.stack([h, h2], dim=1), wkv_state


def _time_mix_one(att: TimeMix7, x, last_x, v_first, wkv_state):
    """`TimeMix7.forward` for one token: x, last_x (B, C); the LoRAs' biases folded into addmm."""
    B, C = x.shape
    H, N = att.n_head, att.head_size
    xr, xw, xk, xv, xa, xg = torch.addcmul(x, last_x - x, torch.stack(att.mixes())[:, 0]).unbind(0)  # (B, C) each
    r = F.linear(xr, att.receptance.weight)
    k = F.linear(xk, att.key.weight)
    v = F.linear(xv, att.value.weight)
    z = torch.addmm(att.w0[0], torch.tanh(xw @ att.w1), att.w2)
    log_w = torch.sigmoid(z.to(wkv_state.dtype)) * -DECAY_SCALE
    iclr = torch.sigmoid(torch.addmm(att.a0[0], xa @ att.a1, att.a2))
    g = torch.sigmoid(xg @ att.g1) @ att.g2
    if att.layer_id == 0:
        v_first = v
    else:
        v = torch.lerp(v, v_first, torch.sigmoid(torch.addmm(att.v0[0], xv @ att.v1, att.v2)))
    kappa = F.normalize((k * att.k_k[0]).view(B, H, N), dim=-1)
    k = k * (1 + (iclr - 1) * att.k_a[0])
    r, log_w, k, v, iclr = (t.view(B, 1, H, N) for t in (r, log_w, k, v, iclr))
    kappa = kappa.view(B, 1, H, N)
    # check=False: log_w < 0 and the shapes hold by construction
    y, wkv_state = wkv7(r, log_w, k, v, -kappa, kappa * iclr, wkv_state, backend="recurrent", check=False)
    y = F.group_norm(y.view(B, C), H, att.ln_x.weight, att.ln_x.bias, att.ln_x.eps).view(B, H, N)
    y = y + (r[:, 0] * k[:, 0] * att.r_k).sum(dim=-1, keepdim=True) * v[:, 0]
    return F.linear(y.view(B, C) * g, att.output.weight), v_first, wkv_state
