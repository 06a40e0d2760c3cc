"""RWKV-4's time mix for one token between its projections, as one Triton kernel: the decode step's WKV and gate.

    gated, abp = wkv_gate_step(kvr, layer_state, time_first, time_decay)

What the one-token step (models/rwkv4/layers.py `Block.step_kernels`) computes between the time mix's key /
value / receptance projection and its output projection is elementwise per channel: the WKV's output from the
state before the token and its new state (reference.py's `output_step` and `state_step`), and the receptance gate.
Eager that is some twenty kernels a layer; here it is one, over (channel blocks, sequences):

    q  = max(p, u + k)        y  = (e^{p - q} a + e^{u + k - q} v) / (e^{p - q} b + e^{u + k - q})
    q' = max(p - w, k)        a' = e^{p - w - q'} a + e^{k - q'} v      b' = e^{p - w - q'} b + e^{k - q'}      p' = q'
    gated = sigmoid(r) y      with w = e^{time_decay}, u = time_first

`kvr` (B, 3C) holds k, v, r at columns 0, C, 2C (the step's first grouped projection, ops/gemv.py); `layer_state`
(B, 5, C) is the layer's [att x, a, b, p, ffn x] (any row strides, unit column stride). Arithmetic in the state's
dtype (fp32, as RWKV-4's state always is for half-precision models); `gated` in kvr's dtype, rounded once; the new
(a, b, p) as (B, 3, C) in the state's dtype. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton_launch import gdc_launch_dependents, gdc_wait, overlap_options

BLOCK = 256  # channels per program: 768 / 2048 channels are 3 / 8 programs a sequence


@triton.jit
def _wkv_gate_step(
    kvr_ptr, kvr_stride, s_ptr, s_stride0, s_stride1, u_ptr, td_ptr, gated_ptr, abp_ptr, C,
    BLOCK: tl.constexpr, DT: tl.constexpr, OVERLAP: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.program_id(1)
    inside = c < C
    state = s_ptr + b * s_stride0 + c
    a = tl.load(state + 1 * s_stride1, mask=inside, other=0.0).to(DT)  # rows 1, 2, 3: ATT_A, ATT_B, ATT_P
    bb = tl.load(state + 2 * s_stride1, mask=inside, other=1.0).to(DT)
    p = tl.load(state + 3 * s_stride1, mask=inside, other=0.0).to(DT)
    u = tl.load(u_ptr + c, mask=inside, other=0.0).to(DT)
    w = tl.exp(tl.load(td_ptr + c, mask=inside, other=0.0).to(DT))
    if OVERLAP:  # the state and parameters above read; kvr is the launch before's (triton_launch.overlap_options)
        gdc_wait()
        gdc_launch_dependents()
    row = kvr_ptr + b * kvr_stride
    k = tl.load(row + c, mask=inside, other=0.0).to(DT)
    v = tl.load(row + C + c, mask=inside, other=0.0).to(DT)
    r = tl.load(row + 2 * C + c, mask=inside, other=0.0).to(tl.float32)
    # the output, the current token with its bonus u
    q = tl.maximum(p, u + k)
    e1, e2 = tl.exp(p - q), tl.exp(u + k - q)
    y = (e1 * a + e2 * v) / (e1 * bb + e2)
    gate = 1.0 / (1.0 + tl.exp(-r))
    tl.store(gated_ptr + b * C + c, (gate * y.to(tl.float32)).to(gated_ptr.dtype.element_ty), mask=inside)
    # the new state: the past decayed by w, the current token without bonus
    q2 = tl.maximum(p - w, k)
    e1, e2 = tl.exp(p - w - q2), tl.exp(k - q2)
    out = abp_ptr + b * 3 * C + c
    tl.store(out, e1 * a + e2 * v, mask=inside)
    tl.store(out + C, e1 * bb + e2, mask=inside)
    tl.store(out + 2 * C, q2, mask=inside)


def _wkv_gate_step_op(
    kvr: torch.Tensor,
    layer_state: torch.Tensor,
    time_first: torch.Tensor,
    time_decay: torch.Tensor,
    overlap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, C3 = kvr.shape
    C = C3 // 3
    if C3 != 3 * C or kvr.stride(1) != 1:
        raise ValueError(f"kvr must be (B, 3C) with unit column stride; got {tuple(kvr.shape)}, {kvr.stride()}")
    if tuple(layer_state.shape) != (B, 5, C) or layer_state.stride(2) != 1:
        raise ValueError(f"layer_state must be (B, 5, C) = ({B}, 5, {C}), unit column stride; got {layer_state.shape}")
    for name, t in (("time_first", time_first), ("time_decay", time_decay)):
        if t.numel() != C or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous vector of C = {C}; got shape {tuple(t.shape)}")
    cd = layer_state.dtype
    gated = torch.empty(B, C, dtype=kvr.dtype, device=kvr.device)
    abp = torch.empty(B, 3, C, dtype=cd, device=kvr.device)
    overlap, pdl = overlap_options(kvr.device, overlap)  # a programmatic dependent launch (triton_launch.py)
    _wkv_gate_step[(triton.cdiv(C, BLOCK), B)](
        kvr, kvr.stride(0), layer_state, layer_state.stride(0), layer_state.stride(1), time_first, time_decay,
        gated, abp, C, BLOCK, tl.float64 if cd == torch.float64 else tl.float32, overlap, num_warps=4, **pdl,
    )  # fmt: skip
    return gated, abp


# an opaque operator to torch.compile (the decoder may compile the step around it): one launch, no graph break
wkv_gate_step = torch.library.custom_op("rwkv_lab::rwkv4_wkv_gate_step", _wkv_gate_step_op, mutates_args=())


@wkv_gate_step.register_fake
def _(kvr, layer_state, time_first, time_decay, overlap=False):
    B, C = kvr.shape[0], kvr.shape[1] // 3
    return kvr.new_empty(B, C), layer_state.new_empty(B, 3, C)
