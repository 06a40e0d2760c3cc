"""RWKV-4's layers: the time mix (token shift, mixes, k/v/r projections, the WKV, the sigmoid(r) gate) and the
channel mix (squared ReLU, sigmoid(r) gate), each half after its LayerNorm, in a residual block."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops import triton_available
from ...ops.lengths import last_positions
from ...ops.norm_mix import mix, token_shift
from ...ops.rwkv4 import compute_dtype, wkv
from .config import RWKVConfig

if triton_available():  # the one-token step's kernels (Triton is optional on a CPU machine)
    from ...ops.gemv import Norm, Projection, grouped_gemv
    from ...ops.rwkv4.step_kernel import wkv_gate_step

ATT_X, ATT_A, ATT_B, ATT_P, FFN_X = range(5)
STATE_SLOTS = ("att_x", "att_a", "att_b", "att_p", "ffn_x")


class TimeMix(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        C = config.n_embd
        self.time_decay = nn.Parameter(torch.empty(C))
        self.time_first = nn.Parameter(torch.empty(C))
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.time_mix_k, self.time_mix_v, self.time_mix_r

    def decay(self) -> torch.Tensor:
        """w = exp(time_decay) (C,), in fp32 at least: a bf16 time_decay would lose the long half-lives."""
        return torch.exp(self.time_decay.to(compute_dtype(self.time_decay)))

    def forward(self, x, last_x, wkv_state, backend, scale: int = 1, trace: dict | None = None, lengths=None):
        # x (B, T, C): LN1 output; last_x (B, C); wkv_state (B, 3, C); the output comes divided by `scale`;
        # lengths (B,) or None: right-padded sequences, whose states are taken at their own last tokens
        prev = token_shift(x, last_x)
        xk, xv, xr = (mix(x, prev, mu) for mu in self.mixes())
        out, wkv_state = self.from_mixed(xk, xv, xr, wkv_state, backend, scale, trace, lengths)
        return out, last_positions(x, lengths), wkv_state

    def from_mixed(
        self, xk, xv, xr, wkv_state, backend, scale: int = 1, trace: dict | None = None, lengths=None, kernels=False
    ):
        """The half after its mixes: projections, the WKV, the sigmoid(r) gate, the output projection. `kernels`
        (inference): the gate in one launch (ops/pointwise.py; the code here its reference)."""
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        w = self.decay()
        if trace is not None:
            trace.update(w=w, u=self.time_first, k=k, v=v, wkv_state=wkv_state)
        y, wkv_state = wkv(w, self.time_first, k, v, wkv_state, backend=backend, check=False, lengths=lengths)
        if kernels:
            from ...ops.pointwise import gated  # noqa: PLC0415 - Triton is optional on a CPU machine

            return self.output(gated(r, y, scale)), wkv_state
        mixed = torch.sigmoid(r) * y
        return self.output(mixed / scale if scale != 1 else mixed), wkv_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKVConfig):
        super().__init__()
        C = config.n_embd
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def mixes(self) -> tuple[nn.Parameter, ...]:
        return self.time_mix_k, self.time_mix_r

    def forward(self, x, last_x, scale: int = 1, lengths=None):
        prev = token_shift(x, last_x)
        xk, xr = (mix(x, prev, mu) for mu in self.mixes())
        return self.from_mixed(xk, xr, scale), last_positions(x, lengths)

    def from_mixed(self, xk, xr, scale: int = 1, kernels=False):
        """`kernels` (inference): the key's relu, square and rescaling in one pass over it, and the gate in one
        launch (ops/pointwise.py; the code here their reference)."""
        if kernels:
            from ...ops.pointwise import gated, relu_square_  # noqa: PLC0415 - as in TimeMix

            return gated(self.receptance(xr), self.value(relu_square_(self.key(xk), scale)))
        k = torch.square(torch.relu(self.key(xk)))  # (B, T, 4C)
        r = torch.sigmoid(self.receptance(xr))
        return r * self.value(k / scale if scale != 1 else k)


class Block(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        # the first block normalises the embeddings
        self.ln0 = nn.LayerNorm(C, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config)
        self.ffn = ChannelMix(config)

    def forward(self, x, state, backend, scale: int = 1, trace: dict | None = None, lengths=None):
        # state (B, 5, C) for this layer; returns the new one. x carries the residual divided by `scale`.
        # `trace`, a dict, receives what the layer computed (see RWKV.forward's `trace`). `lengths` (B,): a
        # right-padded batch, each state taken after its own last token (padding only ever follows real tokens)
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        att, att_x, wkv_state = self.att(
            h, state[:, ATT_X], state[:, ATT_A : ATT_P + 1], backend, scale, trace, lengths
        )
        x = x + att
        h2 = self.ln2(x)
        ffn, ffn_x = self.ffn(h2, state[:, FFN_X], scale, lengths)
        x = x + ffn
        if trace is not None:
            trace.update(att_in=h, ffn_in=h2, out=x)
        return x, new_layer_state(att_x, wkv_state, ffn_x, state.dtype)

    def step_kernels(self, x: torch.Tensor, state: torch.Tensor, scale: int = 1, overlap: bool = False):
        """The block for one token in four grouped projections (ops/gemv.py) and the WKV's step with its gate in
        one kernel (ops/rwkv4/step_kernel.py): the decode step's fast path (RecurrentLMBase.uses_step_kernels),
        `forward` at T = 1 with the recurrent WKV its reference. x (B, C), state (B, 5, C) of this layer; returns x
        and the new layer state in three fp32 pieces (B, 1 | 3 | 1, C), [att x], [a, b, p], [ffn x], which
        RWKV.step joins for every layer in one cat. `overlap`: each launch a programmatic dependent one where the GPU
        takes it (RunConfig.overlapped_launches).

        1. the LayerNorm, then k, v, r in one launch, their token-shift mixes in the prologue;
        2. the WKV step and the sigmoid(r) gate;
        3. the output projection adding the residual;
        4. the LayerNorm, then the channel mix's key and receptance in one launch, relu^2 and sigmoid in the
           epilogue;
        5. its value projection, gated by r and added to the residual in the epilogue: x + r * (k @ W_v)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        att, ffn = self.att, self.ffn

        def mixed(linear, mu, **kw):
            return Projection(linear.weight.t(), mix=mu, mix_weighs="x", **kw)

        projections = [mixed(att.key, att.time_mix_k), mixed(att.value, att.time_mix_v)]
        projections.append(mixed(att.receptance, att.time_mix_r))
        norm = _norm(self.ln1)
        kvr, h = grouped_gemv(x, projections, last=state[:, ATT_X], norm=norm, overlap=overlap)  # (B, 3C), (B, C)
        gated, abp = wkv_gate_step(kvr, state, att.time_first, att.time_decay, overlap)  # (B, C), (B, 3, C)
        x = grouped_gemv(gated, [Projection(att.output.weight.t(), scale=scale)], residual=x, overlap=overlap)
        projections = [mixed(ffn.key, ffn.time_mix_k, out_act="relu2")]
        projections.append(mixed(ffn.receptance, ffn.time_mix_r, out_act="sigmoid"))
        kr, h2 = grouped_gemv(x, projections, last=state[:, FFN_X], norm=_norm(self.ln2), overlap=overlap)
        F = ffn.key.weight.shape[0]
        value = [Projection(ffn.value.weight.t(), scale=scale)]
        x = grouped_gemv(kr, value, gate=kr[:, F:], residual=x, overlap=overlap)  # x + r * (k @ W_v)
        return x, [h[:, None], abp, h2[:, None]]


def _norm(ln: nn.LayerNorm) -> Norm:
    """A LayerNorm module as the grouped projections' prologue takes it (ops/gemv.py's Norm)."""
    return Norm(ln.weight, ln.bias, ln.eps)


def new_layer_state(att_x, wkv_state, ffn_x, dtype) -> torch.Tensor:
    """The layer's state (B, 5, C) after the block: [att x, a, b, p, ffn x]."""
    return torch.cat([att_x[:, None].to(dtype), wkv_state.to(dtype), ffn_x[:, None].to(dtype)], dim=1)
