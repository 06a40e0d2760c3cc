"""RWKV-7's time mix around its operator in an inference pass (a prefill, scoring), as two Triton kernels.

    log_w, k, v, a, b = time_mix_inputs(k, v, z_w, z_a, z_v, v_first, params, lengths=...)   # before wkv7
    y = time_mix_output(y, r, k, v, g, params)                                               # after it

Between the time mix's projections and its operator, and between the operator and the output projection, the
eager block (models/rwkv7/model.py `TimeMix7.from_mixed`, the reference) runs some twenty elementwise and
reduction launches a layer, each reading and writing whole (B, T, C) tensors. Here each side is one launch, one
program per token, its C channels as an (H, N) tile so the per-head reductions (the removal key's norm, ln_x's
group statistics, the bonus) stay in registers:

    inputs   log_w = -e^{-1/2} sigmoid(w0 + z_w)      iclr = sigmoid(a0 + z_a)
             v <- lerp(v, v_first, sigmoid(v0 + z_v))  (not in the first layer, whose v is v_first)
             kappa = normalize(k * k_k) per head        k <- k (1 + (iclr - 1) k_a)
             a = -kappa                                 b = kappa iclr
             and at a right-padded batch's padding (t >= lengths[b]) log_w = k = a = 0: S passes unchanged
    output   (GroupNorm_heads(y) + (r . (k r_k)) v) g

the same formulas as the one-token step's kernel (step_kernel.py), over every token. Arithmetic in fp32; log_w
stored in fp32, the rest in the model's dtype (the eager block rounds some intermediates to it too, so the two
agree to that dtype's precision; exactly, up to float order, in fp32). Forward only. Runs on CUDA tensors, and on
CPU tensors under TRITON_INTERPRET=1 (the tests). Launched through Triton's own launcher, not CachedLauncher: the
grid is the pass's B T, new at nearly every prefill, and CachedLauncher keys a bound launch on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class TimeMixParams:
    """The time mix's per-channel parameters as stored ((1, 1, C) vectors, r_k (H, N), ln_x's (C,)) and its
    constants: what the two kernels read besides the activations."""

    w0: torch.Tensor
    a0: torch.Tensor
    v0: torch.Tensor
    k_k: torch.Tensor
    k_a: torch.Tensor
    r_k: torch.Tensor
    ln_x_weight: torch.Tensor
    ln_x_bias: torch.Tensor
    decay_scale: float
    ln_x_eps: float


@triton.jit
def _tile(ptr, row, C, offs, mask):
    """One token's C channels as an (H, N) tile, fp32 (zero outside the mask)."""
    return tl.load(ptr + row * C + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _param(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _time_mix_inputs(
    k_ptr, v_ptr, zw_ptr, za_ptr, zv_ptr, vf_ptr, w0_ptr, a0_ptr, v0_ptr, k_k_ptr, k_a_ptr, lengths_ptr,
    log_w_ptr, k_out_ptr, v_out_ptr, a_ptr, b_ptr, T, C, decay_scale,
    N: tl.constexpr, BLOCK_H: tl.constexpr, H: tl.constexpr, VALUE_RESIDUAL: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # b T + t
    heads = tl.arange(0, BLOCK_H)
    offs = heads[:, None] * N + tl.arange(0, N)[None, :]  # (BLOCK_H, N): channel h N + n
    mask = heads[:, None] < H
    k = _tile(k_ptr, row, C, offs, mask)
    v = _tile(v_ptr, row, C, offs, mask)
    log_w = -decay_scale * tl.sigmoid(_tile(zw_ptr, row, C, offs, mask) + _param(w0_ptr, offs, mask))
    iclr = tl.sigmoid(_tile(za_ptr, row, C, offs, mask) + _param(a0_ptr, offs, mask))
    if VALUE_RESIDUAL:
        mix = tl.sigmoid(_tile(zv_ptr, row, C, offs, mask) + _param(v0_ptr, offs, mask))
        v = v + (_tile(vf_ptr, row, C, offs, mask) - v) * mix
        tl.store(v_out_ptr + row * C + offs, v.to(v_out_ptr.dtype.element_ty), mask=mask)
    kappa = k * _param(k_k_ptr, offs, mask)
    kappa = kappa / tl.maximum(tl.sqrt(tl.sum(kappa * kappa, axis=1)), 1e-12)[:, None]  # F.normalize's eps
    k = k * (1.0 + (iclr - 1.0) * _param(k_a_ptr, offs, mask))
    b = kappa * iclr
    a = -kappa
    if HAS_LENGTHS:  # padding: w = 1, k = a = 0, so S passes it unchanged (b and v are then never read)
        pad = row % T >= tl.load(lengths_ptr + row // T)
        log_w, k, a = tl.where(pad, 0.0, log_w), tl.where(pad, 0.0, k), tl.where(pad, 0.0, a)
    tl.store(log_w_ptr + row * C + offs, log_w, mask=mask)
    tl.store(k_out_ptr + row * C + offs, k.to(k_out_ptr.dtype.element_ty), mask=mask)
    tl.store(a_ptr + row * C + offs, a.to(a_ptr.dtype.element_ty), mask=mask)
    tl.store(b_ptr + row * C + offs, b.to(b_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _time_mix_output(
    y_ptr, r_ptr, k_ptr, v_ptr, g_ptr, r_k_ptr, ln_w_ptr, ln_b_ptr, out_ptr, C, ln_eps,
    N: tl.constexpr, BLOCK_H: tl.constexpr, H: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    offs = heads[:, None] * N + tl.arange(0, N)[None, :]
    mask = heads[:, None] < H
    y = _tile(y_ptr, row, C, offs, mask)
    mean = tl.sum(y, axis=1) / N  # ln_x: a group norm whose groups are the heads
    centred = y - mean[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / N + ln_eps)
    y = centred * rstd[:, None] * _param(ln_w_ptr, offs, mask) + _param(ln_b_ptr, offs, mask)
    r, k = _tile(r_ptr, row, C, offs, mask), _tile(k_ptr, row, C, offs, mask)
    bonus = tl.sum(r * k * _param(r_k_ptr, offs, mask), axis=1)  # (BLOCK_H,): the token's own value, per head
    y = (y + bonus[:, None] * _tile(v_ptr, row, C, offs, mask)) * _tile(g_ptr, row, C, offs, mask)
    tl.store(out_ptr + row * C + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_shape(C: int, N: int) -> tuple[int, int, int]:
    """(H, BLOCK_H, warps) for rows of C channels in heads of N."""
    if N & (N - 1) or C % N:
        raise ValueError(f"the time-mix kernels need a power-of-two head size dividing C; got N = {N}, C = {C}")
    H = C // N
    block_h = triton.next_power_of_2(H)
    return H, block_h, max(1, min(8, block_h * N // 256))  # a warp to 256 elements of the tile (a power of two)


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def time_mix_inputs(k, v, z_w, z_a, z_v, v_first, p: TimeMixParams, lengths: torch.Tensor | None = None):
    """k, v, z_w, z_a (B, T, C), z_v and v_first (B, T, C) or both None (the first layer: v is v_first), `lengths`
    (B,) or None: a right-padded batch. Returns log_w (B, T, C) fp32 and k, v, a, b (B, T, C) in k's dtype (v itself
    in the first layer): the operator's inputs."""
    B, T, C = k.shape
    N = p.r_k.shape[-1]
    H, block_h, warps = _launch_shape(C, N)
    residual = v_first is not None
    k, v, z_w, z_a, z_v, v_first = _contiguous(k, v, z_w, z_a, z_v, v_first)
    log_w = torch.empty(B, T, C, device=k.device, dtype=torch.float32)
    k_out, a, b = (torch.empty_like(k) for _ in range(3))
    v_out = torch.empty_like(v) if residual else v
    _time_mix_inputs[(B * T,)](
        k, v, z_w, z_a, z_v, v_first, p.w0, p.a0, p.v0, p.k_k, p.k_a, lengths, log_w, k_out, v_out, a, b, T, C,
        p.decay_scale, N=N, BLOCK_H=block_h, H=H, VALUE_RESIDUAL=residual, HAS_LENGTHS=lengths is not None,
        num_warps=warps,
    )  # fmt: skip
    return log_w, k_out, v_out, a, b


def time_mix_output(y, r, k, v, g, p: TimeMixParams):
    """y (B, T, H, N) from the operator; r, k, v (the operator's k and v), g (B, T, C). Returns (B, T, C) in r's
    dtype: the output projection's input."""
    B, T, C = r.shape
    N = p.r_k.shape[-1]
    H, block_h, warps = _launch_shape(C, N)
    y, r, k, v, g = _contiguous(y, r, k, v, g)
    out = torch.empty_like(r)
    _time_mix_output[(B * T,)](
        y, r, k, v, g, p.r_k, p.ln_x_weight, p.ln_x_bias, out, C, p.ln_x_eps, N=N, BLOCK_H=block_h, H=H,
        num_warps=warps,
    )  # fmt: skip
    return out
