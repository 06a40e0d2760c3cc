"""RWKV-7's time mix for one token between its projections, as one Triton kernel: the decode step's core.

    y, S_new = time_mix_step(proj, lora, S, params, v_first=...)

What the one-token step (models/rwkv7/model.py `_block_one`, the reference) computes between the time mix's input
projections and its output projection is all per head: the decay, the in-context learning rate and the value
residual from the LoRAs' outputs, the removal and replacement keys, the state update, the readout, ln_x (a group
norm whose groups are the heads), the bonus and the gate. Eager or through inductor that is a dozen kernels a
layer (reductions for the key's norm, S a, S r and the group norm each end one); here it is one program per
(head, sequence), the head's N x N state in registers:

    w = exp(-e^{-1/2} sigmoid(w0 + z_w))    iclr = sigmoid(a0 + z_a)    v <- lerp(v, v_first, sigmoid(v0 + z_v))
    kappa = normalize(k * k_k)              k <- k (1 + (iclr - 1) k_a)
    S' = S diag(w) + (S a) b^T + v k^T      with a = -kappa, b = kappa iclr
    y = ((GroupNorm(S' r) + (r . (k r_k)) v) * g

`proj` (B, >= 3C) holds r, k, v at columns 0, C, 2C (the step's first grouped projection, ops/gemv.py), `lora`
(B, 3C or 4C) z_w, z_a, [z_v,] and g (the second one's outputs). Arithmetic in fp32 (the state fp32); y in the
model's dtype. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton_launch import gdc_launch_dependents, gdc_wait, overlap_options


@triton.jit
def _time_mix_step(
    proj_ptr, proj_stride, lora_ptr, lora_stride, vf_ptr, vf_stride, S_ptr, S_stride, S_out_ptr, y_ptr,
    w0_ptr, a0_ptr, v0_ptr, k_k_ptr, k_a_ptr, r_k_ptr, ln_w_ptr, ln_b_ptr, decay_scale, ln_eps,
    C: tl.constexpr, N: tl.constexpr, VALUE_RESIDUAL: tl.constexpr, OVERLAP: tl.constexpr,
):  # fmt: skip
    h, b = tl.program_id(0), tl.program_id(1)
    i = tl.arange(0, N)  # value rows of S
    j = tl.arange(0, N)  # key columns of S
    ci, cj = h * N + i, h * N + j  # the head's channels
    proj, lora = proj_ptr + b * proj_stride, lora_ptr + b * lora_stride
    f32 = tl.float32
    # S (N, N): S[i, j], i the value index, j the key index
    offs = h * N * N + i[:, None] * N + j[None, :]
    S = tl.load(S_ptr + b * S_stride + offs)
    if OVERLAP:  # the state read; lora is the launch before's, proj the one before it (triton_launch.overlap_options)
        gdc_wait()
        gdc_launch_dependents()
    r = tl.load(proj + cj).to(f32)
    k = tl.load(proj + C + cj).to(f32)
    v = tl.load(proj + 2 * C + ci).to(f32)
    w = tl.exp(-decay_scale * tl.sigmoid(tl.load(lora + cj).to(f32) + tl.load(w0_ptr + cj).to(f32)))
    iclr = tl.sigmoid(tl.load(lora + C + cj).to(f32) + tl.load(a0_ptr + cj).to(f32))
    if VALUE_RESIDUAL:
        mix = tl.sigmoid(tl.load(lora + 2 * C + ci).to(f32) + tl.load(v0_ptr + ci).to(f32))
        v = v + (tl.load(vf_ptr + b * vf_stride + ci).to(f32) - v) * mix
        g = tl.load(lora + 3 * C + ci).to(f32)
    else:
        g = tl.load(lora + 2 * C + ci).to(f32)
    kappa = k * tl.load(k_k_ptr + cj).to(f32)
    kappa = kappa / tl.maximum(tl.sqrt(tl.sum(kappa * kappa, axis=0)), 1e-12)  # F.normalize's eps
    k = k * (1.0 + (iclr - 1.0) * tl.load(k_a_ptr + cj).to(f32))
    a, bb = -kappa, kappa * iclr
    sa = tl.sum(S * a[None, :], axis=1)  # (N,) over keys
    S = S * w[None, :] + sa[:, None] * bb[None, :] + v[:, None] * k[None, :]
    tl.store(S_out_ptr + b * C * N + offs, S)
    y = tl.sum(S * r[None, :], axis=1)  # (N,) per value row
    # ln_x: the group norm of the head's N outputs (the reference rounds y to the model's dtype first)
    y = y.to(y_ptr.dtype.element_ty).to(f32)
    mean = tl.sum(y, axis=0) / N
    centred = y - mean
    var = tl.sum(centred * centred, axis=0) / N
    y = centred / tl.sqrt(var + ln_eps) * tl.load(ln_w_ptr + ci).to(f32) + tl.load(ln_b_ptr + ci).to(f32)
    bonus = tl.sum(r * k * tl.load(r_k_ptr + cj).to(f32), axis=0)
    tl.store(y_ptr + b * C + ci, ((y + bonus * v) * g).to(y_ptr.dtype.element_ty))


def _time_mix_step_op(
    proj: torch.Tensor,
    lora: torch.Tensor,
    S: torch.Tensor,
    w0: torch.Tensor,
    a0: torch.Tensor,
    v0: torch.Tensor,
    k_k: torch.Tensor,
    k_a: torch.Tensor,
    r_k: torch.Tensor,
    ln_x_weight: torch.Tensor,
    ln_x_bias: torch.Tensor,
    v_first: torch.Tensor | None,
    decay_scale: float,
    ln_x_eps: float,
    overlap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`time_mix_step`: proj (B, >= 3C): r, k, v; lora (B, 4C) z_w, z_a, z_v, g, or (B, 3C) without z_v in the
    first layer (v_first None); S (B, H, N, N) fp32, its sequences possibly apart (a layer's slice of the model's
    state); the time mix's parameters as stored (w0, a0, v0, k_k, k_a (1, 1, C), r_k (H, N), ln_x's (C,)); v_first
    (B, C), the first layer's v, a view with unit column stride. Returns y (B, C) in proj's dtype, to be projected
    by the output matrix, and S' (B, H, N, N). `overlap`: a programmatic dependent launch where the GPU takes one
    (triton_launch.overlap_options)."""
    B, H, N, _ = S.shape
    C = H * N
    if N & (N - 1):
        raise ValueError(f"time_mix_step needs a head size that is a power of two; got {N}")
    if S.dtype != torch.float32 or not S[0].is_contiguous():
        raise ValueError(f"S must be float32 (B, H, N, N), each sequence's contiguous; got {S.dtype}, {S.stride()}")
    residual = v_first is not None
    if lora.shape[1] != (4 if residual else 3) * C or proj.shape[1] < 3 * C:
        raise ValueError(
            f"lora must be (B, {4 if residual else 3}C) and proj (B, >= 3C); got {lora.shape}, {proj.shape}"
        )
    for t in (proj, lora) + ((v_first,) if residual else ()):
        if t.stride(1) != 1:
            raise ValueError("proj, lora and v_first need a unit column stride")
    y = torch.empty(B, C, dtype=proj.dtype, device=proj.device)
    S_new = torch.empty(S.shape, dtype=S.dtype, device=S.device)
    overlap, pdl = overlap_options(proj.device, overlap)  # a programmatic dependent launch (triton_launch.py)
    _time_mix_step[(H, B)](
        proj, proj.stride(0), lora, lora.stride(0), v_first, v_first.stride(0) if residual else 0, S, S.stride(0),
        S_new, y,
        w0, a0, v0, k_k, k_a, r_k, ln_x_weight, ln_x_bias, decay_scale, ln_x_eps, C, N, residual, overlap,
        num_warps=4 if N >= 64 else 1, **pdl,
    )  # fmt: skip
    return y, S_new


# an opaque operator to torch.compile (the decoder compiles the step around it): one launch, no graph break
time_mix_step = torch.library.custom_op("rwkv_lab::rwkv7_time_mix_step", _time_mix_step_op, mutates_args=())


@time_mix_step.register_fake
def _(proj, lora, S, w0, a0, v0, k_k, k_a, r_k, ln_x_weight, ln_x_bias, v_first, decay_scale, ln_x_eps, overlap=False):
    B, H, N, _ = S.shape
    return proj.new_empty(B, H * N), S.new_empty(S.shape)
