"""LayerNorm, token shift and mixes as two Triton kernels: one forward launch, one backward launch.

Compiled by inductor, the same work took several kernels in the backward of a training step (the LayerNorm's
backward as a looped reduction that reads its rows more than once, the mixes' parameter gradients as separate
column reductions; results/history/training_speed/training_kernels_norm_mix_off.csv). Here each row of x is read
from memory once
per kernel (the forward reads its neighbour's row again from the cache; the backward carries it to the next step):

forward   one token t per program: h_t = LayerNorm(x_t), h_{t-1} from x_{t-1} (or last_x at t = 0), and
          mixed_m = h_t mu_m + h_{t-1} (1 - mu_m) for the M mixes (M = 3 for the time-mix, 2 for the channel-mix);
          for inference, any M into one stacked output (`norm_shift_mix_stacked_triton`, forward only).
backward  BWD_ROWS tokens of a sequence per program, with g_m the gradient of mixed_m:
              dh_t   = sum_m g_m,t mu_m + g_m,t+1 (1 - mu_m)          (+ the gradient of h_last at t = T - 1)
              dmu_m += h_t (g_m,t - g_m,t+1)                          (- g_m,0 last_x at t = 0)
          (sum_t g_m,t (h_t - h_{t-1}) regrouped by h_t, so no row needs its neighbour's LayerNorm), then the
          LayerNorm's backward from the row's recomputed statistics; per program partial sums of dmu and of the
          LayerNorm weight's and bias's gradients, added up by one torch.sum.
Arithmetic is fp32 whatever the dtypes. Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher

BWD_ROWS = 64  # tokens per backward program (the fastest of 8-64 on an H200: results/training/norm_mix_check.csv)


@triton.jit
def _normalise(x_ptr, row, C, eps, cols, cmask):
    """x_hat and 1 / std of one row of C."""
    return _normalised(tl.load(x_ptr + row * C + cols, mask=cmask, other=0.0).to(tl.float32), C, eps, cmask)


@triton.jit
def _normalised(x, C, eps, cmask):
    """x_hat and 1 / std of a loaded row x (fp32, zero outside cmask)."""
    mean = tl.sum(x, axis=0) / C
    d = tl.where(cmask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / C + eps)
    return d * rstd, rstd


@triton.jit
def _normed_and_previous(x_ptr, w_ptr, b_ptr, last_ptr, row, t, T, C, eps, cols, cmask, HAS_LAST: tl.constexpr,
                         BLOCK_C: tl.constexpr):  # fmt: skip
    """h_t = LayerNorm(x_t) of row `row` (token t) and h_{t-1}: its neighbour's row normalised again (from the
    cache: its program read it), or last_x at t = 0 (zeros without it); both fp32."""
    gamma = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    xh, _ = _normalise(x_ptr, row, C, eps, cols, cmask)
    h = xh * gamma + beta
    if t > 0:
        xp, _ = _normalise(x_ptr, row - 1, C, eps, cols, cmask)
        prev = xp * gamma + beta
    else:
        if HAS_LAST:
            prev = tl.load(last_ptr + (row // T) * C + cols, mask=cmask, other=0.0).to(tl.float32)
        else:
            prev = tl.zeros((BLOCK_C,), tl.float32)
    return h, prev


@triton.jit
def _mu(mu_ptr, m, C, cols, cmask):
    return tl.load(mu_ptr + m * C + cols, mask=cmask, other=0.0).to(tl.float32)


@triton.jit
def _store_mix(out_ptr, mu_ptr, m, h, prev, row, C, cols, cmask):
    mu = _mu(mu_ptr, m, C, cols, cmask)
    tl.store(out_ptr + row * C + cols, (h * mu + prev * (1 - mu)).to(out_ptr.dtype.element_ty), mask=cmask)


@CachedLauncher
@triton.jit
def _norm_mix_fwd(
    x_ptr,
    w_ptr,
    b_ptr,
    last_ptr,
    mu_ptr,
    out0_ptr,
    out1_ptr,
    out2_ptr,
    h_last_ptr,
    T,
    C,
    eps,
    M: tl.constexpr,
    HAS_LAST: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One token per program: its row and the row before it (normalised again, from the cache: its neighbour
    program read it) or last_x."""
    row = tl.program_id(0).to(tl.int64)  # b T + t
    t = row % T
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    h, prev = _normed_and_previous(x_ptr, w_ptr, b_ptr, last_ptr, row, t, T, C, eps, cols, cmask, HAS_LAST, BLOCK_C)
    _store_mix(out0_ptr, mu_ptr, 0, h, prev, row, C, cols, cmask)
    _store_mix(out1_ptr, mu_ptr, 1, h, prev, row, C, cols, cmask)
    if M == 3:
        _store_mix(out2_ptr, mu_ptr, 2, h, prev, row, C, cols, cmask)
    if t == T - 1:
        tl.store(h_last_ptr + (row // T) * C + cols, h, mask=cmask)


@CachedLauncher
@triton.jit
def _norm_mix_fwd_stacked(
    x_ptr, w_ptr, b_ptr, last_ptr, mu_ptr, out_ptr, h_last_ptr, T, C, eps,
    M: tl.constexpr, HAS_LAST: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """_norm_mix_fwd for any number of mixes, into one stacked output (M, B T, C): inference's form (RWKV-7 mixes
    six inputs of its time mix and one of its channel mix; no backward)."""
    row = tl.program_id(0).to(tl.int64)  # b T + t
    t = row % T
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    h, prev = _normed_and_previous(x_ptr, w_ptr, b_ptr, last_ptr, row, t, T, C, eps, cols, cmask, HAS_LAST, BLOCK_C)
    rows = tl.num_programs(0).to(tl.int64)  # B T
    for m in tl.static_range(M):
        _store_mix(out_ptr + m * rows * C, mu_ptr, m, h, prev, row, C, cols, cmask)
    if t == T - 1:
        tl.store(h_last_ptr + (row // T) * C + cols, h, mask=cmask)


@triton.jit
def _load_row(ptr, row, mask, C, cols):
    return tl.load(ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)


@CachedLauncher
@triton.jit
def _norm_mix_bwd(
    x_ptr,
    w_ptr,
    b_ptr,
    last_ptr,
    mu_ptr,
    g0_ptr,
    g1_ptr,
    g2_ptr,
    g_last_ptr,
    dx_ptr,
    dlast_ptr,
    part_ptr,
    T,
    C,
    eps,
    M: tl.constexpr,
    HAS_LAST: tl.constexpr,
    HAS_G_LAST: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """ROWS tokens of one sequence per program, the partial sums of the parameters' gradients in registers: one
    vector per mix (M is 2 or 3), so that several programs fit an SM. Each step loads the next token's x and g
    before working on its own token: the loads of one token overlap the arithmetic of the one before, and the
    next token's g, which this token needs too, is loaded once. Tokens past T load as zeros and add nothing."""
    blk, b = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    gamma = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    # the mixes read once, not once per token
    mu0 = _mu(mu_ptr, 0, C, cols, cmask)
    mu1 = _mu(mu_ptr, 1, C, cols, cmask)
    mu2 = mu1
    if M == 3:
        mu2 = _mu(mu_ptr, 2, C, cols, cmask)
    dmu0 = tl.zeros((BLOCK_C,), tl.float32)
    dmu1 = tl.zeros((BLOCK_C,), tl.float32)
    dmu2 = tl.zeros((BLOCK_C,), tl.float32)
    dgamma = tl.zeros((BLOCK_C,), tl.float32)
    dbeta = tl.zeros((BLOCK_C,), tl.float32)
    t = blk * ROWS
    row = (b * T + t).to(tl.int64)
    x = _load_row(x_ptr, row, cmask, C, cols)
    g0 = _load_row(g0_ptr, row, cmask, C, cols)
    g1 = _load_row(g1_ptr, row, cmask, C, cols)
    g2 = g1
    if M == 3:
        g2 = _load_row(g2_ptr, row, cmask, C, cols)
    for _ in range(0, ROWS):
        # the next token of this sequence (zeros past its end)
        next_mask = cmask & ((cols * 0 + t) < T - 1)
        x_next = _load_row(x_ptr, row + 1, next_mask, C, cols)
        g0_next = _load_row(g0_ptr, row + 1, next_mask, C, cols)
        g1_next = _load_row(g1_ptr, row + 1, next_mask, C, cols)
        g2_next = g1_next
        if M == 3:
            g2_next = _load_row(g2_ptr, row + 1, next_mask, C, cols)
        xh, rstd = _normalised(x, C, eps, cmask)
        h = xh * gamma + beta
        dmu0 += h * (g0 - g0_next)
        dmu1 += h * (g1 - g1_next)
        dh = g0 * mu0 + g0_next * (1 - mu0) + g1 * mu1 + g1_next * (1 - mu1)
        if M == 3:
            dmu2 += h * (g2 - g2_next)
            dh += g2 * mu2 + g2_next * (1 - mu2)
        if HAS_G_LAST:
            if t == T - 1:
                dh += tl.load(g_last_ptr + b * C + cols, mask=cmask, other=0.0).to(tl.float32)
        dgamma += dh * xh
        dbeta += dh
        dxh = dh * gamma
        c1 = tl.sum(dxh * xh, axis=0) / C
        c2 = tl.sum(dxh, axis=0) / C
        valid = cmask & ((cols * 0 + t) < T)
        tl.store(dx_ptr + row * C + cols, ((dxh - xh * c1 - c2) * rstd).to(dx_ptr.dtype.element_ty), mask=valid)
        x, g0, g1, g2 = x_next, g0_next, g1_next, g2_next
        t += 1
        row += 1
    if HAS_LAST:
        if blk == 0:
            # token 0's shifted input is last_x: its share of dmu, and last_x's gradient
            last = tl.load(last_ptr + b * C + cols, mask=cmask, other=0.0).to(tl.float32)
            row0 = (b * T).to(tl.int64) * C + cols
            g = tl.load(g0_ptr + row0, mask=cmask, other=0.0).to(tl.float32)
            dlast = g * (1 - mu0)
            dmu0 -= g * last
            g = tl.load(g1_ptr + row0, mask=cmask, other=0.0).to(tl.float32)
            dlast += g * (1 - mu1)
            dmu1 -= g * last
            if M == 3:
                g = tl.load(g2_ptr + row0, mask=cmask, other=0.0).to(tl.float32)
                dlast += g * (1 - mu2)
                dmu2 -= g * last
            tl.store(dlast_ptr + b * C + cols, dlast, mask=cmask)
    part = (b * tl.num_programs(0) + blk).to(tl.int64) * (M + 2) * C + cols
    tl.store(part_ptr + part, dmu0, mask=cmask)
    tl.store(part_ptr + part + C, dmu1, mask=cmask)
    if M == 3:
        tl.store(part_ptr + part + 2 * C, dmu2, mask=cmask)
    tl.store(part_ptr + part + M * C, dgamma, mask=cmask)
    tl.store(part_ptr + part + (M + 1) * C, dbeta, mask=cmask)


def _launch_config(C: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(C)
    return block_c, min(16, max(4, block_c // 256))  # up to 16 channels per thread


def _forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    last: torch.Tensor | None,
    mu: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
) -> list[torch.Tensor]:
    """-> the M mixed (B, T, C) in out_dtype, then h_last (B, C) fp32: separate tensors, so that their gradients
    reach the backward as the matmuls give them (a stacked output's would be copied into one)."""
    # the kernels index rows of C: last_x comes as a slice of the state, a compiled graph may hand other strides
    x, mu, last = x.contiguous(), mu.contiguous(), None if last is None else last.contiguous()
    B, T, C = x.shape
    M = mu.shape[0]
    if M not in (2, 3):
        raise ValueError(f"norm_shift_mix takes 2 mixes (the channel-mix) or 3 (the time-mix); got {M}")
    mixed = [torch.empty(B, T, C, device=x.device, dtype=out_dtype) for _ in range(M)]
    h_last = torch.empty(B, C, device=x.device, dtype=torch.float32)
    block_c, warps = _launch_config(C)
    _norm_mix_fwd[(B * T,)](
        x,
        weight,
        bias,
        last,
        mu,
        *mixed,
        *mixed[M - 1 :] * (3 - M),  # M = 2: out2 unused
        h_last,
        T,
        C,
        eps,
        M=M,
        HAS_LAST=last is not None,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return [*mixed, h_last]


def _backward(
    g: list[torch.Tensor],
    g_last: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    last: torch.Tensor | None,
    mu: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g: the M mixed outputs' gradients -> dx (x's dtype), dlast (B, C) fp32 ((0,) without last), and
    (M + 2, C) fp32: dmu, dweight, dbias."""
    g, x, mu = [t.contiguous() for t in g], x.contiguous(), mu.contiguous()
    g_last, last = (None if t is None else t.contiguous() for t in (g_last, last))
    M, (B, T, C) = len(g), x.shape
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
        *g,
        *g[M - 1 :] * (3 - M),  # M = 2: g2 unused
        g_last,
        dx,
        dlast,
        part,
        T,
        C,
        eps,
        M=M,
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
    return [x.new_empty(B, T, C, dtype=out_dtype) for _ in range(mu.shape[0])] + [
        x.new_empty(B, C, dtype=torch.float32)
    ]


@_norm_mix_backward.register_fake
def _(g, g_last, x, weight, bias, last, mu, eps):
    M, (B, _, C) = len(g), x.shape
    dlast = x.new_empty((B, C) if last is not None else (0,), dtype=torch.float32)
    return torch.empty_like(x), dlast, x.new_empty(M + 2, C, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, last, mu, eps, _ = inputs
    ctx.save_for_backward(x, weight, bias, last, mu)
    ctx.eps, ctx.has_last = eps, last is not None
    ctx.set_materialize_grads(False)


def _op_backward(ctx, grads):
    x, weight, bias, last, mu = ctx.saved_tensors
    M = mu.shape[0]
    *g, g_last = grads
    g = [torch.zeros_like(x) if gm is None else gm for gm in g]  # a mix not used downstream
    dx, dlast, sums = _norm_mix_backward(g, g_last, x, weight, bias, last, mu, ctx.eps)
    dlast = dlast.to(last.dtype) if ctx.has_last else None
    # in the parameters' dtypes (a bf16 model's are bf16)
    return dx, sums[M].to(weight.dtype), sums[M + 1].to(bias.dtype), dlast, sums[:M].to(mu.dtype), None, None


_norm_mix_forward.register_autograd(_op_backward, setup_context=_setup_context)


def norm_shift_mix_triton(x, weight, bias, last, mu, eps: float, out_dtype: torch.dtype):
    """x (B, T, C), LayerNorm weight and bias (C,), last (B, C) or None, mu (M, C) -> the M mixed (B, T, C) in
    out_dtype, h_last (B, C) fp32: norm_shift_mix's kernels (see the package)."""
    *mixed, h_last = _norm_mix_forward(x, weight, bias, last, mu, eps, out_dtype)
    return mixed, h_last


def norm_shift_mix_stacked_triton(x, weight, bias, last, mu, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference (no autograd): x (B, T, C), LayerNorm weight and bias (C,), last (B, C) or None, mu (M, C), any M
    -> the M mixed stacked (M, B, T, C) in x's dtype, h_last (B, C) fp32."""
    x, mu, last = x.contiguous(), mu.contiguous(), None if last is None else last.contiguous()
    B, T, C = x.shape
    M = mu.shape[0]
    mixed = torch.empty(M, B, T, C, device=x.device, dtype=x.dtype)
    h_last = torch.empty(B, C, device=x.device, dtype=torch.float32)
    block_c, warps = _launch_config(C)
    _norm_mix_fwd_stacked[(B * T,)](
        x, weight, bias, last, mu, mixed, h_last, T, C, eps, M=M, HAS_LAST=last is not None, BLOCK_C=block_c,
        num_warps=warps,
    )  # fmt: skip
    return mixed, h_last
