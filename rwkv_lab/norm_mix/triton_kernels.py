"""LayerNorm, token shift and mixes as two Triton kernels: one forward launch, one backward launch.

Compiled by inductor, the same work took several kernels in the backward of a training step (the LayerNorm's
backward as a looped reduction that reads its rows more than once, the mixes' parameter gradients as separate
column reductions; results/cost/training_kernels.csv). Here a program walks ROWS consecutive tokens of one
sequence, each row of x (and, backwards, of the mixes' gradients) read from memory once:

forward   per token t: h_t = LayerNorm(x_t), carried to t + 1 as its shifted input; mixed_m = h_t mu_m +
          h_{t-1} (1 - mu_m). The block's first row recomputes h_{t0-1} (or takes last_x at t = 0).
backward  walking t downwards, with g_m the gradient of mixed_m:
              dh_t   = sum_m g_m,t mu_m + g_m,t+1 (1 - mu_m)          (+ the gradient of h_last at t = T - 1)
              dmu_m += h_t (g_m,t - g_m,t+1)                          (- g_m,0 last_x at t = 0)
          (sum_t g_m,t (h_t - h_{t-1}) regrouped by h_t, so no row needs its neighbour's LayerNorm), then the
          LayerNorm's backward from the row's recomputed statistics, and per program partial sums of dmu, the
          LayerNorm weight's and bias's gradients, added up by one torch.sum.
Arithmetic is fp32 whatever the dtypes. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FWD_ROWS = 8  # tokens per forward program: one extra LayerNorm (of the row before) per ROWS rows
BWD_ROWS = 32  # tokens per backward program: (B T / ROWS, M + 2, C) fp32 partial sums


@triton.jit
def _normalise(x_ptr, row, C, eps, cols, cmask):
    """x_hat and 1 / std of one row of C."""
    x = tl.load(x_ptr + row * C + cols, mask=cmask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / C
    d = tl.where(cmask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    return d * rstd, rstd


@triton.jit
def _norm_mix_fwd(
    x_ptr,
    w_ptr,
    b_ptr,
    last_ptr,
    mu_ptr,
    out_ptr,
    h_last_ptr,
    T,
    C,
    out_stride,
    eps,
    M: tl.constexpr,
    M_POW2: tl.constexpr,
    HAS_LAST: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    blk, b = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    ms = tl.arange(0, M_POW2)
    mmask = (ms < M)[:, None] & cmask[None, :]
    gamma = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    mu = tl.load(mu_ptr + ms[:, None] * C + cols[None, :], mask=mmask, other=0.0).to(tl.float32)  # (M_POW2, C)
    t0 = blk * ROWS
    if HAS_LAST:
        prev = tl.load(last_ptr + b * C + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        prev = tl.zeros((BLOCK_C,), tl.float32)
    if t0 > 0:  # the row before the block, normalised again
        xh, _ = _normalise(x_ptr, (b * T + t0 - 1).to(tl.int64), C, eps, cols, cmask)
        prev = xh * gamma + beta
    for i in range(0, ROWS):
        t = t0 + i
        if t < T:
            row = (b * T + t).to(tl.int64)
            xh, _ = _normalise(x_ptr, row, C, eps, cols, cmask)
            h = xh * gamma + beta
            mixed = h[None, :] * mu + prev[None, :] * (1 - mu)
            offs = ms[:, None].to(tl.int64) * out_stride + row * C + cols[None, :]
            tl.store(out_ptr + offs, mixed.to(out_ptr.dtype.element_ty), mask=mmask)
            if t == T - 1:
                tl.store(h_last_ptr + b * C + cols, h, mask=cmask)
            prev = h


@triton.jit
def _norm_mix_bwd(
    x_ptr,
    w_ptr,
    b_ptr,
    last_ptr,
    mu_ptr,
    g_ptr,
    g_last_ptr,
    dx_ptr,
    dlast_ptr,
    part_ptr,
    T,
    C,
    g_stride,
    eps,
    M: tl.constexpr,
    M_POW2: tl.constexpr,
    HAS_LAST: tl.constexpr,
    HAS_G_LAST: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    blk, b = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    ms = tl.arange(0, M_POW2)
    mmask = (ms < M)[:, None] & cmask[None, :]
    gamma = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    mu = tl.load(mu_ptr + ms[:, None] * C + cols[None, :], mask=mmask, other=0.0).to(tl.float32)
    g_offs = ms[:, None].to(tl.int64) * g_stride + cols[None, :]
    t0 = blk * ROWS
    t_end = tl.minimum(t0 + ROWS, T)
    # g at the token after the block (zero past the end)
    next_mask = mmask & ((ms * 0 + t_end) < T)[:, None]
    g_next = tl.load(g_ptr + g_offs + (b * T + t_end).to(tl.int64) * C, mask=next_mask, other=0.0)
    g_next = g_next.to(tl.float32)
    dmu = tl.zeros((M_POW2, BLOCK_C), tl.float32)
    dgamma = tl.zeros((BLOCK_C,), tl.float32)
    dbeta = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(0, ROWS):
        t = t0 + ROWS - 1 - i
        if t < T:
            row = (b * T + t).to(tl.int64)
            g = tl.load(g_ptr + g_offs + row * C, mask=mmask, other=0.0).to(tl.float32)  # (M_POW2, C)
            xh, rstd = _normalise(x_ptr, row, C, eps, cols, cmask)
            h = xh * gamma + beta
            dh = tl.sum(g * mu + g_next * (1 - mu), axis=0)
            if HAS_G_LAST:
                if t == T - 1:
                    dh += tl.load(g_last_ptr + b * C + cols, mask=cmask, other=0.0).to(tl.float32)
            dmu += h[None, :] * (g - g_next)
            dgamma += dh * xh
            dbeta += dh
            dxh = dh * gamma
            c1 = tl.sum(dxh * xh, axis=0) / C
            c2 = tl.sum(dxh, axis=0) / C
            dx = (dxh - xh * c1 - c2) * rstd
            tl.store(dx_ptr + row * C + cols, dx.to(dx_ptr.dtype.element_ty), mask=cmask)
            g_next = g
    if t0 == 0:
        # token 0's shifted input is last_x: its share of dmu, and last_x's gradient (g_next is g_0 here)
        if HAS_LAST:
            last = tl.load(last_ptr + b * C + cols, mask=cmask, other=0.0).to(tl.float32)
            dmu -= g_next * last[None, :]
            tl.store(dlast_ptr + b * C + cols, tl.sum(g_next * (1 - mu), axis=0), mask=cmask)
    part = (b * tl.num_programs(0) + blk).to(tl.int64) * (M + 2) * C
    tl.store(part_ptr + part + ms[:, None] * C + cols[None, :], dmu, mask=mmask)
    tl.store(part_ptr + part + M * C + cols, dgamma, mask=cmask)
    tl.store(part_ptr + part + (M + 1) * C + cols, dbeta, mask=cmask)


def _launch_config(C: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(C)
    return block_c, min(16, max(4, block_c // 256))  # rows of up to 8192 channels in registers


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    last: torch.Tensor | None,
    mu: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mixed (M, B, T, C) in out_dtype, h_last (B, C) fp32."""
    # the kernels index rows of C: last_x comes as a slice of the state, a compiled graph may hand other strides
    x, mu, last = x.contiguous(), mu.contiguous(), None if last is None else last.contiguous()
    B, T, C = x.shape
    M = mu.shape[0]
    mixed = torch.empty(M, B, T, C, device=x.device, dtype=out_dtype)
    h_last = torch.empty(B, C, device=x.device, dtype=torch.float32)
    block_c, warps = _launch_config(C)
    _norm_mix_fwd[(triton.cdiv(T, FWD_ROWS), B)](
        x,
        weight,
        bias,
        last,
        mu,
        mixed,
        h_last,
        T,
        C,
        B * T * C,
        eps,
        M=M,
        M_POW2=triton.next_power_of_2(M),
        HAS_LAST=last is not None,
        ROWS=FWD_ROWS,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return mixed, h_last


def _backward(
    g: torch.Tensor,
    g_last: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    last: torch.Tensor | None,
    mu: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dx (x's dtype), dlast (B, C) fp32 ((0,) without last), and (M + 2, C) fp32: dmu, dweight, dbias."""
    g, x, mu = g.contiguous(), x.contiguous(), mu.contiguous()
    g_last, last = (None if t is None else t.contiguous() for t in (g_last, last))
    M, B, T, C = g.shape
    blocks = triton.cdiv(T, BWD_ROWS)
    dx = torch.empty_like(x)
    dlast = torch.empty((B, C) if last is not None else (0,), device=x.device, dtype=torch.float32)
    part = torch.empty(B * blocks, M + 2, C, device=x.device, dtype=torch.float32)
    block_c, warps = _launch_config(C)
    _norm_mix_bwd[(blocks, B)](
        x,
        weight,
        bias,
        last,
        mu,
        g,
        g_last,
        dx,
        dlast,
        part,
        T,
        C,
        B * T * C,
        eps,
        M=M,
        M_POW2=triton.next_power_of_2(M),
        HAS_LAST=last is not None,
        HAS_G_LAST=g_last is not None,
        ROWS=BWD_ROWS,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return dx, dlast, part.sum(0)


# ---- as PyTorch operators (as the WKV's: opaque to torch.compile, with a registered backward) ------------------
_norm_mix_forward = torch.library.custom_op("rwkv_lab::norm_mix_forward", _forward, mutates_args=())
_norm_mix_backward = torch.library.custom_op("rwkv_lab::norm_mix_backward", _backward, mutates_args=())


@_norm_mix_forward.register_fake
def _(x, weight, bias, last, mu, eps, out_dtype):
    B, T, C = x.shape
    return x.new_empty(mu.shape[0], B, T, C, dtype=out_dtype), x.new_empty(B, C, dtype=torch.float32)


@_norm_mix_backward.register_fake
def _(g, g_last, x, weight, bias, last, mu, eps):
    M, B, T, C = g.shape
    dlast = x.new_empty((B, C) if last is not None else (0,), dtype=torch.float32)
    return torch.empty_like(x), dlast, x.new_empty(M + 2, C, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, last, mu, eps, _ = inputs
    ctx.save_for_backward(x, weight, bias, last, mu)
    ctx.eps, ctx.has_last = eps, last is not None
    ctx.set_materialize_grads(False)


def _op_backward(ctx, g, g_last):
    x, weight, bias, last, mu = ctx.saved_tensors
    g = torch.zeros(mu.shape[0], *x.shape, device=x.device, dtype=x.dtype) if g is None else g
    M = mu.shape[0]
    dx, dlast, sums = _norm_mix_backward(g, g_last, x, weight, bias, last, mu, ctx.eps)
    dlast = dlast.to(last.dtype) if ctx.has_last else None
    # in the parameters' dtypes (a bf16 model's are bf16)
    return dx, sums[M].to(weight.dtype), sums[M + 1].to(bias.dtype), dlast, sums[:M].to(mu.dtype), None, None


_norm_mix_forward.register_autograd(_op_backward, setup_context=_setup_context)


def norm_shift_mix_triton(x, weight, bias, last, mu, eps: float, out_dtype: torch.dtype):
    """x (B, T, C), LayerNorm weight and bias (C,), last (B, C) or None, mu (M, C) -> mixed (M, B, T, C) in
    out_dtype, h_last (B, C) fp32: norm_shift_mix's kernels (see the package)."""
    return _norm_mix_forward(x, weight, bias, last, mu, eps, out_dtype)
