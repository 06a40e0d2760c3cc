"""Several small matrix products of a few rows in one Triton launch: a decode step's projections.

    out = grouped_gemv(x, [Projection(weight, x_col=..., mix=..., act=..., out_act=...), ...], last=..., residual=...)
    # (B, sum of the weights' N)

At decode, each of a layer's projections multiplies a handful of rows (the batch) by a weight matrix: a GEMV,
whose cost is streaming the weights. At small widths one cuBLAS launch per matrix costs more than its bytes (on an
H100, about 4 us a launch against 0.4 us to stream a 768 x 768 bf16 matrix: RWKV-7's 168M decode step was 466
kernels, 60% of its time in 166 such launches). Here one launch computes a group of them: each program owns
BLOCK_N output columns of one matrix and BLOCK_B rows of the batch, and streams its slice of that matrix once.

With `norm` (a `Norm`), x is first LayerNorm-ed over its width, and the call returns the normalised x too (fp32).
At small widths and 16-row blocks, in the launch's prologue: each program takes its rows' mean and variance (one
pass over a row of up to a thousand numbers, from L2: `_row_stats`), and the first column block stores the
normalised rows, so the LayerNorm costs no launch of its own; wider rows and larger batches normalise in one
launch before (`_layer_norm_rows`), whose fp32 output the projections then read (`norm_in_prologue` says where,
from the timings).

Per projection j (a `Projection`), with x_j = x[:, x_col : x_col + K]:
    prologue   the token shift's mix, with a mix: x_j <- x_j + (last - x_j) * mix_j (RWKV-7's, as torch.lerp:
               `mix_weighs="last"`) or x_j * mix_j + last * (1 - mix_j) (RWKV-4's: `mix_weighs="x"`)
               then an activation: none, tanh or sigmoid (`act`), and a division by `scale` (RWKV-4's fp16
               rescaling, a power of two: exact)
    product    acc = x_j @ W_j   with W_j (K, N) read through strides, so F.linear's (N, K) weight and a LoRA's
               (K, N) one are both read as stored, never copied
    epilogue   an activation of acc: none, relu(acc)^2 or sigmoid (`out_act`); then, for the whole call, times
               `gate` and + `residual` (each where given: RWKV-4's channel mix ends x + r * (k @ W_v)); stored at
               out[:, out_col : out_col + N], the projections side by side
in fp32 (fp32 products exact, not tf32), stored in out's dtype. `grouped_gemv_reference` is the same in torch ops:
the tests compare the two (CPU tensors under TRITON_INTERPRET=1).

Split K (`Tiling.split_k` > 1): a launch of few output columns and a long reduction (RWKV-7 1.47B's channel-mix
value: 2,048 columns of K = 8,192, 128 programs of 16 columns for 132 multiprocessors) leaves the memory system
idle between too few streams. Then split_k programs share each output tile, each reducing its own run of K blocks;
each stores its fp32 partial sum, and the tile's last program to arrive (an atomic counter per tile) adds the
partials in split order, so the result does not depend on the order of arrival, and applies the epilogue: still
one launch, any epilogue.

Overlapped launches (`overlap`, triton_launch.py's `overlap_options`; Hopper and later): at B = 1 a launch streams a few
MB in 5-10 us, far from the card's bandwidth: most of its time is a chain of dependent loads (x, then its
LayerNorm's statistics, then each K block of the weights) after the launch itself. The weights depend on nothing
the step computes, so before it waits for the launch before, each program prefetches its slice of them into L2.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..triton_launch import gdc_launch_dependents, gdc_wait, overlap_options

ACTS = {None: 0, "tanh": 1, "sigmoid": 2}  # the prologue's
OUT_ACTS = {None: 0, "relu2": 1, "sigmoid": 2}  # the epilogue's
MIX_WEIGHS = {"last": 1, "x": 2}  # the token-shift mix's two forms
MAX_GROUPS = 8


@dataclass(frozen=True)
class Projection:
    """One product of a group: out_act(act(prologue(x[:, x_col:x_col+K])) / scale @ weight), with `weight` a (K, N)
    view (F.linear's weight `W` is `W.t()`); `mix` a vector of K (any shape), the token shift's mix, or None; `act`
    None, "tanh" or "sigmoid"; `out_act` None, "relu2" or "sigmoid"; `scale` a power of two; `mix_weighs` which of
    x and last the mix weighs ("last": RWKV-7's form, "x": RWKV-4's)."""

    weight: torch.Tensor
    x_col: int = 0
    mix: torch.Tensor | None = None
    act: str | None = None
    out_act: str | None = None
    scale: float = 1.0
    mix_weighs: str = "last"


@dataclass(frozen=True)
class Norm:
    """A LayerNorm of the call's x over its width: (x - mean) / sqrt(var + eps) * weight + bias, in fp32."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


@dataclass(frozen=True)
class Tiling:
    """A launch's blocks and schedule, where the default's (`_default_tiling`) is not wanted:
    BLOCK_B batch rows, BLOCK_N output columns and BLOCK_K of the reduction per step (each >= 16, powers of two),
    warps and software-pipelining stages, and `split_k` programs sharing each output tile's reduction (see
    "Split K" in the module docstring). benchmarks/bench_gemv.py compares them at the models' shapes."""

    block_b: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1


@triton.jit
def _tanh(x):
    # tanh from exp, as the interpreter has no libdevice: sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|})
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _tile(
    block, rows, B, x_ptr, x_stride, last_ptr, last_stride, mix_ptr, out_ptr, out_stride, res_ptr, res_stride,
    gate_ptr, gate_stride, mean, rstd, ln_w_ptr, ln_b_ptr, LN: tl.constexpr, w_ptr, X_COL: tl.constexpr,
    N: tl.constexpr, K: tl.constexpr, S_K: tl.constexpr, S_N: tl.constexpr, ACT: tl.constexpr,
    INV_SCALE: tl.constexpr, OUT_ACT: tl.constexpr, OUT_COL: tl.constexpr,
    MIX: tl.constexpr, RESIDUAL: tl.constexpr, GATE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, F32_DOT: tl.constexpr,
    tile, split, ws_ptr, counters_ptr, N_TOTAL: tl.constexpr, SPLIT_K: tl.constexpr, K_SPLIT: tl.constexpr,
):  # fmt: skip
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output columns of this projection
    in_b, in_n = rows < B, cols < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    # this program's share of the reduction, K_SPLIT (`_k_share`); without splits, a loop of constant bounds
    k_lo = split * K_SPLIT if SPLIT_K > 1 else 0
    for k0 in range(k_lo, k_lo + K_SPLIT, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        in_k = ks < K
        x_mask = in_b[:, None] & in_k[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + X_COL + ks[None, :], mask=x_mask, other=0.0).to(tl.float32)
        if LN:
            x = _normalised(x, mean, rstd, ln_w_ptr, ln_b_ptr, ks, in_k)
        if MIX:
            last = tl.load(last_ptr + rows[:, None] * last_stride + ks[None, :], mask=x_mask, other=0.0)
            mix = tl.load(mix_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
            last = last.to(tl.float32)
            if MIX == 1:  # the mix weighs last
                x = x + (last - x) * mix[None, :]
            else:  # the mix weighs x
                x = x * mix[None, :] + last * (1.0 - mix[None, :])
        if ACT == 1:
            x = _tanh(x)
        elif ACT == 2:
            x = tl.sigmoid(x)
        if INV_SCALE != 1.0:
            x = x * INV_SCALE
        w = tl.load(w_ptr + ks[:, None] * S_K + cols[None, :] * S_N, mask=in_k[:, None] & in_n[None, :], other=0.0)
        if F32_DOT:
            acc = tl.dot(x, w.to(tl.float32), acc, input_precision="ieee")
        else:  # half-precision weights: the product in their dtype on the tensor cores, accumulated in fp32
            acc = tl.dot(x.to(w.dtype), w, acc)
    out_mask = in_b[:, None] & in_n[None, :]
    if SPLIT_K == 1:
        _epilogue(acc, rows, cols, out_mask, out_ptr, out_stride, res_ptr, res_stride, gate_ptr, gate_stride,
                  OUT_ACT, OUT_COL, RESIDUAL, GATE)  # fmt: skip
    else:  # leave the partial sum; the tile's last program to arrive adds them up and finishes the tile
        partials = ws_ptr + rows[:, None] * N_TOTAL + OUT_COL + cols[None, :]  # split s's at + s * B * N_TOTAL
        tl.store(partials + split * B * N_TOTAL, acc, mask=out_mask)
        tl.debug_barrier()  # every thread's partial stored before the release below publishes them
        if tl.atomic_add(counters_ptr + tile, 1, sem="acq_rel") == SPLIT_K - 1:
            total = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):  # in split order, whatever the arrival order: deterministic
                total += tl.load(partials + s * B * N_TOTAL, mask=out_mask, other=0.0, cache_modifier=".cg")
            _epilogue(total, rows, cols, out_mask, out_ptr, out_stride, res_ptr, res_stride, gate_ptr, gate_stride,
                      OUT_ACT, OUT_COL, RESIDUAL, GATE)  # fmt: skip
            tl.atomic_xchg(counters_ptr + tile, 0)  # zero again for the next launch (a CUDA graph's replay)


@triton.jit
def _epilogue(
    acc, rows, cols, out_mask, out_ptr, out_stride, res_ptr, res_stride, gate_ptr, gate_stride, OUT_ACT: tl.constexpr,
    OUT_COL: tl.constexpr, RESIDUAL: tl.constexpr, GATE: tl.constexpr,
):  # fmt: skip
    if OUT_ACT == 1:
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
    elif OUT_ACT == 2:
        acc = tl.sigmoid(acc)
    if GATE:
        gate = tl.load(gate_ptr + rows[:, None] * gate_stride + OUT_COL + cols[None, :], mask=out_mask, other=0.0)
        acc *= gate.to(tl.float32)
    if RESIDUAL:
        res = tl.load(res_ptr + rows[:, None] * res_stride + OUT_COL + cols[None, :], mask=out_mask, other=0.0)
        acc += res.to(tl.float32)
    out = out_ptr + rows[:, None] * out_stride + OUT_COL + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _normalised(x, mean, rstd, ln_w_ptr, ln_b_ptr, ks, in_k):
    w = tl.load(ln_w_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
    b = tl.load(ln_b_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
    return (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _row_stats(x_ptr, x_stride, rows, in_b, K: tl.constexpr, eps, BLOCK_B: tl.constexpr, CHUNK: tl.constexpr):
    """Mean and 1 / std of x[rows, :K] (BLOCK_B,) each, in fp32, in one pass over chunks of CHUNK columns: each
    chunk's mean and sum of squared deviations from it (the chunk held in registers), merged into the running ones
    as they come (Chan, Golub and LeVeque's pairwise update), as accurate as two passes over the row. A pass is a
    chain of dependent loads before the first weight is read: one pass of wide chunks (two of 512 at a width of
    768) in place of two passes of BLOCK_K (six loads of 256)."""
    mean = tl.zeros((BLOCK_B,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for k0 in range(0, K, CHUNK):
        ks = k0 + tl.arange(0, CHUNK)
        mask = in_b[:, None] & (ks < K)[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        n_c = tl.minimum(K - k0, CHUNK).to(tl.float32)  # this chunk's columns
        n = k0 + n_c  # the columns so far, this chunk's included
        chunk_mean = tl.sum(x, 1) / n_c
        d = tl.where(mask, x - chunk_mean[:, None], 0.0)
        delta = chunk_mean - mean
        mean += delta * (n_c / n)
        m2 += tl.sum(d * d, 1) + delta * delta * (k0 * n_c / n)
    return mean, 1.0 / tl.sqrt(m2 / K + eps)


@triton.jit
def _prefetch_weights(
    block, split, w_ptr, N: tl.constexpr, K: tl.constexpr, S_K: tl.constexpr, S_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, K_SPLIT: tl.constexpr, LINE: tl.constexpr,
):  # fmt: skip
    """Ask L2 for this program's slice of W (its split's K_SPLIT rows, BLOCK_N columns): one prefetch per 128-byte
    line (LINE elements) along the contiguous dimension, K block by K block; none for weights strided both ways."""
    if (S_K == 1) or (S_N == 1):
        K_STEP: tl.constexpr = LINE if S_K == 1 else 1
        N_STEP: tl.constexpr = 1 if S_K == 1 else LINE
        cols = block * BLOCK_N + tl.arange(0, max(1, BLOCK_N // N_STEP)) * N_STEP
        k_lo = split * K_SPLIT
        k_end = tl.minimum(k_lo + K_SPLIT, K)
        for k0 in range(k_lo, k_lo + K_SPLIT, BLOCK_K):
            ks = k0 + tl.arange(0, max(1, BLOCK_K // K_STEP)) * K_STEP
            inside = (ks < k_end)[:, None] & (cols < N)[None, :]
            lines = tl.where(inside, w_ptr + ks[:, None] * S_K + cols[None, :] * S_N, w_ptr)
            tl.inline_asm_elementwise(
                "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [lines], dtype=tl.int32, is_pure=False, pack=1
            )


@triton.jit
def _grouped_gemv(
    x_ptr, x_stride, last_ptr, last_stride, out_ptr, out_stride, res_ptr, res_stride, gate_ptr, gate_stride, B,
    ln_w_ptr, ln_b_ptr, ln_eps, h_ptr, weights, mixes, LN: tl.constexpr, LN_K: tl.constexpr, LN_CHUNK: tl.constexpr,
    STARTS: tl.constexpr, X_COLS: tl.constexpr, NS: tl.constexpr, KS: tl.constexpr, S_KS: tl.constexpr,
    S_NS: tl.constexpr, ACT_CODES: tl.constexpr, INV_SCALES: tl.constexpr, OUT_ACT_CODES: tl.constexpr,
    OUT_COLS: tl.constexpr, MIX_CODES: tl.constexpr, G: tl.constexpr, RESIDUAL: tl.constexpr, GATE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, F32_DOT: tl.constexpr,
    ws_ptr, counters_ptr, N_TOTAL: tl.constexpr, SPLIT_K: tl.constexpr, K_SPLITS: tl.constexpr,
    OVERLAP: tl.constexpr, LINE: tl.constexpr,
):  # fmt: skip
    # grid (column blocks of every projection, batch blocks, splits of K); STARTS[j] the first column block of
    # projection j
    pid = tl.program_id(0)
    tile = pid * tl.num_programs(1) + tl.program_id(1)  # the output tile, whose splits share a counter
    split = tl.program_id(2)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    if OVERLAP:  # launched before the launch before this one ended: its weights first, then wait (module docstring)
        for j in tl.static_range(G):
            if (pid >= STARTS[j]) & (pid < STARTS[j + 1]):
                _prefetch_weights(
                    pid - STARTS[j],
                    split,
                    weights[j],
                    NS[j],
                    KS[j],
                    S_KS[j],
                    S_NS[j],
                    BLOCK_N,
                    BLOCK_K,
                    K_SPLITS[j],
                    LINE,
                )
        gdc_wait()  # the launch before has finished and its writes are visible: x may be read, out written
        gdc_launch_dependents()  # the next launch may start, and prefetch its own weights while this one works
    mean = tl.zeros((BLOCK_B,), dtype=tl.float32)
    rstd = tl.zeros((BLOCK_B,), dtype=tl.float32)
    if LN:
        in_b = rows < B
        mean, rstd = _row_stats(x_ptr, x_stride, rows, in_b, LN_K, ln_eps, BLOCK_B, LN_CHUNK)
        if (pid == 0) & (split == 0):  # the first column block stores the normalised rows: h (B, LN_K) fp32
            for k0 in range(0, LN_K, LN_CHUNK):
                ks = k0 + tl.arange(0, LN_CHUNK)
                in_k = ks < LN_K
                mask = in_b[:, None] & in_k[None, :]
                x = tl.load(x_ptr + rows[:, None] * x_stride + ks[None, :], mask=mask, other=0.0).to(tl.float32)
                h = _normalised(x, mean, rstd, ln_w_ptr, ln_b_ptr, ks, in_k)
                tl.store(h_ptr + rows[:, None] * LN_K + ks[None, :], h, mask=mask)
    for j in tl.static_range(G):
        if (pid >= STARTS[j]) & (pid < STARTS[j + 1]):
            _tile(
                pid - STARTS[j], rows, B, x_ptr, x_stride, last_ptr, last_stride, mixes[j], out_ptr, out_stride,
                res_ptr, res_stride, gate_ptr, gate_stride, mean, rstd, ln_w_ptr, ln_b_ptr, LN, weights[j],
                X_COLS[j], NS[j], KS[j], S_KS[j], S_NS[j],
                ACT_CODES[j], INV_SCALES[j], OUT_ACT_CODES[j], OUT_COLS[j], MIX_CODES[j], RESIDUAL, GATE, BLOCK_B,
                BLOCK_N, BLOCK_K, F32_DOT, tile, split, ws_ptr, counters_ptr, N_TOTAL, SPLIT_K, K_SPLITS[j],
            )  # fmt: skip


def _check(x, weights, mixes, mix_codes, x_cols, acts, scales, out_acts, last, residual, gate, ln_weight, ln_bias):
    n = len(weights)
    if not 1 <= n <= MAX_GROUPS or not n == len(mixes) == len(x_cols) == len(acts) == len(scales) == len(out_acts):
        raise ValueError(f"grouped_gemv takes 1 to {MAX_GROUPS} projections; got {n}")
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be (B, width) with unit column stride; got shape {tuple(x.shape)}")
    for w, mix, x_col, act, scale, out_act in zip(weights, mixes, x_cols, acts, scales, out_acts):
        K = w.shape[0]
        if act not in ACTS.values() or out_act not in OUT_ACTS.values():
            raise ValueError(f"act codes must be in {list(ACTS.values())}, out_act codes in {list(OUT_ACTS.values())}")
        if not (scale > 0 and math.frexp(scale)[0] == 0.5):
            raise ValueError(f"Projection.scale must be a power of two (an exact division); got {scale}")
        if w.dim() != 2 or x_col < 0 or x_col + K > x.shape[1]:
            raise ValueError(f"a projection reads x[:, {x_col}:{x_col + K}] of x's {x.shape[1]} columns")
        if w.dtype != weights[0].dtype or w.device != x.device:
            raise ValueError("every projection's weight must share one dtype and x's device")
        if mix is not None:
            if mix.numel() != K or not mix.is_contiguous() or x_col != 0:
                raise ValueError(f"a mix is a contiguous vector of the K = {K} columns it mixes, from x's first")
            if last is None or last.shape[0] != x.shape[0] or last.shape[1] < K or last.stride(1) != 1:
                raise ValueError("a projection with a mix needs `last` (B, >= K) with unit column stride")
    if ln_weight is not None:
        C = x.shape[1]
        if any(w.shape[0] != C for w in weights) or any(x_cols) or ln_bias is None:
            raise ValueError(f"with a norm, every projection reads all of x's {C} columns, and the norm has a bias")
        vectors = (ln_weight, ln_bias)
        if any(v.numel() != C or not v.is_contiguous() for v in vectors):
            raise ValueError(f"the norm's weight and bias are contiguous vectors of x's width {C}")
    total = sum(w.shape[1] for w in weights)
    for name, t in (("residual", residual), ("gate", gate)):
        if t is not None and (t.dim() != 2 or tuple(t.shape) != (x.shape[0], total) or t.device != x.device):
            raise ValueError(f"{name} must be (B, {total}) on x's device, the output's shape; got {tuple(t.shape)}")


def _f32_dot(dtype: torch.dtype) -> bool:
    """The product in fp32 (exact, not tf32): for fp32 weights, and under Triton's interpreter, whose tl.dot of bf16
    operands returns garbage (triton 3.9); there a half-precision weight is upcast, its products exact in fp32 as
    the tensor cores' are."""
    return dtype in (torch.float32, torch.float64) or os.environ.get("TRITON_INTERPRET") == "1"


def norm_in_prologue(block_b: int, width: int) -> bool:
    """Whether a launch with a `norm` takes the LayerNorm in its prologue (each program its rows' statistics) or
    in a launch of its own before (`_layer_norm_rows`, one program a row). Measured per launch (H100, B = 1,
    benchmarks/bench_gemv.py -> results/inference/gemv_tiling_norm.csv and gemv_tiling_169M_sweep.csv): at a width of
    2,048 the prologue cost ~13 us a launch (RWKV-7 1.47B's r/k/v + LoRAs 33.1 us with it, 19.8 without; its channel
    mix's key 33.1 and 19.5), against ~3 us for a LayerNorm launch; at 768 it cost ~2.4 (RWKV-4 169M's k/v/r 9.6
    and 7.2), less than a launch. So: in the prologue up to a width of 1,024 at 16-row blocks; 64-row blocks never
    (their statistics and the LayerNorm's vectors cost pipeline stages: 3 no longer fit in shared memory, and
    RWKV-7 168M's decode at B = 32 fell from 24.0k to 18.4k tokens/s)."""
    return block_b <= 16 and width <= 1024


def _default_tiling(B: int, n_total: int, K: int, norm: bool = False) -> Tiling:
    """The launch's tiling where the caller gives none; tl.dot needs blocks of 16 at least. Batch rows in one block:
    16 up to a batch of 16, else 64 (the weights streamed once up to 64 rows, twice up to 128). Two sizes only: each
    is its own compiled kernel, and a block size per batch bucket made a decoder's new bucket (33 sequences after 32)
    wait ~10 s for Triton to compile the step's kernels again (H100, results/inference/generation_rwkv7.csv).

    From the timings of each launch of the step at RWKV-7 168M and 1.47B and RWKV-4 169M and 1.5B (H100, B = 1,
    benchmarks/bench_gemv.py -> results/inference/gemv_tiling*.csv), at a batch block of 16:
    - from 3,072 columns on: 64 columns and K blocks of 64 in 4 stages where K is 2,048 or more (1.47B: r/k/v +
      LoRAs 23.4 -> 17.9 us, the channel mix's key 23.5 -> 21.2; RWKV-4 1.5B: k/v/r 23.4 -> 21.4, key and
      receptance 30.3 -> 27.3, all with their LayerNorm launch), else 32 columns and K blocks of 128 (1.47B: the
      LoRAs' second 7.1 -> 4.6 us; 64 x 64 there 5.0);
    - else 16 columns and K blocks of 256, so that few columns still make programs for every multiprocessor, in 4
      stages where K is 2,048 or more (both 1.5B's attention output 7.0 -> 6.5 us); and so too with the LayerNorm
      in the prologue (`norm`), whose every K block is normalised (RWKV-4 169M's channel mix key and receptance,
      3,840 columns of K = 768: 12.3 us at 32 x 128, 9.7 at 16 x 256);
    - K split four ways (`split_k`) where K is 2,048 or more and at least four times the columns: the 1.47B channel
      mix's value (2,048 columns of K = 8,192) 20.2 -> 16.0 us at 32 x 128 (cuBLAS 16.3), RWKV-4 169M's (768 of
      K = 3,072) 8.0 -> 6.8 at 16 x 256; splitting lost at every other launch.
    64-row blocks (batches of 17 and more), the LayerNorm outside the launch (`norm_in_prologue`), from the
    timings of each launch at RWKV-4 1.5B and RWKV-7 1.47B, B = 32 and 128 (H100,
    results/inference/gemv_tiling_big_batch_rwkv4.csv, _rwkv7.csv):
    - from 3,072 columns on: 64 columns and K blocks of 64 in 4 stages, where 16 columns (the tiling before) read
      each row block's x once per 16 columns (RWKV-4 1.5B at B = 32: k/v/r 39.7 -> 20.1 us, the channel mix's key
      and receptance 45.2 -> 28.6; at 128: 73.4 -> 28.4 and 71.9 -> 47.0; RWKV-7 1.47B at 128: r/k/v + LoRAs
      96.6 -> 30.4, the LoRAs' second 14.9 -> 6.9, the channel mix's key 89.4 -> 29.7);
    - fewer columns, up to a batch of 64: 16 columns and K blocks of 256 (both outputs 7.6 us at B = 32, the
      channel mix's value 21);
    - fewer columns beyond 64 rows (two row blocks, each streaming the weights): K split two ways where it is at
      least four times the columns (the channel mix's value 40.2 -> 27.1 us at 64 x 64, K blocks of 64), else 32
      columns and K blocks of 128 (the outputs 12.7 -> 9.7)."""
    if B > 16:
        if n_total >= 3072:
            return Tiling(64, 64, 64, num_stages=4)
        if B <= 64:
            return Tiling(64, 16, min(256, max(16, triton.next_power_of_2(K))))
        if K >= 4 * n_total:
            return Tiling(64, 64, 64, num_stages=4, split_k=2)
        return Tiling(64, 32, min(128, max(16, triton.next_power_of_2(K))))
    split_k = 4 if K >= 2048 and K >= 4 * n_total else 1
    if split_k > 1:
        return Tiling(16, *((32, 128) if K >= 4096 else (16, 256)), split_k=split_k)
    if n_total >= 3072 and not (norm and norm_in_prologue(16, K)):
        if K >= 2048:
            return Tiling(16, 64, 64, num_stages=4)
        return Tiling(16, 32, min(128, max(16, triton.next_power_of_2(K))))
    return Tiling(16, 16, min(256, max(16, triton.next_power_of_2(K))), num_stages=4 if K >= 2048 else 3)


def _k_share(K: int, split_k: int, block_k: int) -> int:
    """Each program's share of a reduction of K split split_k ways: whole K blocks, the same count for every split."""
    return triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k


@triton.jit
def _layer_norm_rows(x_ptr, x_stride, w_ptr, b_ptr, h_ptr, half_ptr, C, eps, BLOCK: tl.constexpr, HALF: tl.constexpr):
    """h[row] = LayerNorm(x[row]) in fp32 (and, with HALF, in half_ptr's dtype too), one program a row held in
    registers: the deviations from the row's mean taken as (x - x_0) - mean(x - x_0), x_0 its first number (exact
    differences near x_0), so that a row far off centre loses no digits to a rounded mean; their mean square the
    variance."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < C
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    shifted = tl.where(mask, x - tl.load(x_ptr + row * x_stride).to(tl.float32), 0.0)
    d = tl.where(mask, shifted - tl.sum(shifted, 0) / C, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / C + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    h = d * rstd * w + b
    tl.store(h_ptr + row * C + cols, h, mask=mask)
    if HALF:
        tl.store(half_ptr + row * C + cols, h.to(half_ptr.dtype.element_ty), mask=mask)


def _grouped_gemv_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    mixes: list[torch.Tensor | None],
    mix_codes: list[int],
    x_cols: list[int],
    acts: list[int],
    scales: list[float],
    out_acts: list[int],
    last: torch.Tensor | None,
    residual: torch.Tensor | None,
    gate: torch.Tensor | None,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    ln_eps: float,
    tiling: list[int] | None,
    overlap: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, weights, mixes, mix_codes, x_cols, acts, scales, out_acts, last, residual, gate, ln_weight, ln_bias)
    B = x.shape[0]
    ns = [w.shape[1] for w in weights]
    out = torch.empty(B, sum(ns), dtype=x.dtype, device=x.device)
    ln = ln_weight is not None
    h = torch.empty(B, x.shape[1] if ln else 0, dtype=torch.float32, device=x.device)
    if tiling is None:
        tiling = dataclasses.astuple(_default_tiling(B, sum(ns), max(w.shape[0] for w in weights), norm=ln))
    block_b, block_n, block_k, num_warps, num_stages, split_k = tiling  # Tiling's fields in order
    if ln and not norm_in_prologue(block_b, x.shape[1]):
        # the LayerNorm in a launch of its own; the projections then read its output as their x: in fp32 at 16-row
        # blocks, in x's dtype at 64 (whose three pipeline stages of fp32 x tiles would need 288 KB of shared memory)
        width, block = x.shape[1], triton.next_power_of_2(x.shape[1])
        warps = min(16, max(4, block // 512))  # 16 numbers a thread at most up to 8,192 (a 14B model's 5,120)
        half = block_b > 16 and x.dtype != torch.float32
        normed = torch.empty_like(x) if half else h
        _layer_norm_rows[(B,)](
            x, x.stride(0), ln_weight, ln_bias, h, normed, width, float(ln_eps), block, half, num_warps=warps
        )
        x, ln, ln_weight, ln_bias = normed, False, None, None
    overlap, pdl = overlap_options(x.device, overlap)
    schedule = {"num_warps": num_warps, "num_stages": num_stages} | pdl
    starts, out_cols = [0], [0]
    for n in ns:
        starts.append(starts[-1] + triton.cdiv(n, block_n))
        out_cols.append(out_cols[-1] + n)
    residual, gate = (t if t is None or t.stride(1) == 1 else t.contiguous() for t in (residual, gate))
    grid = (starts[-1], triton.cdiv(B, block_b), split_k)
    # the LayerNorm's chunks: 8,192 numbers (64 registers a thread at 4 warps), at most the width's power of two
    ln_chunk = min(8192 // block_b, triton.next_power_of_2(x.shape[1])) if ln else 16
    mix_codes = tuple(code if m is not None else 0 for m, code in zip(mixes, mix_codes))
    ws = counters = None
    if split_k > 1:
        ws = torch.empty(split_k, B, sum(ns), dtype=torch.float32, device=x.device)  # the partial sums
        counters = _tile_counters(x.device, grid[0] * grid[1])
    _grouped_gemv[grid](
        x, x.stride(0), last, 0 if last is None else last.stride(0), out, out.stride(0), residual,
        0 if residual is None else residual.stride(0), gate, 0 if gate is None else gate.stride(0), B,
        ln_weight, ln_bias, float(ln_eps), h, tuple(weights), tuple(mixes), ln, x.shape[1], ln_chunk, tuple(starts),
        tuple(x_cols), tuple(ns), tuple(w.shape[0] for w in weights),
        tuple(w.stride(0) for w in weights), tuple(w.stride(1) for w in weights), tuple(acts),
        tuple(1.0 / s for s in scales), tuple(out_acts), tuple(out_cols[:-1]), mix_codes, len(weights),
        residual is not None, gate is not None, block_b, block_n, block_k,
        _f32_dot(weights[0].dtype), ws, counters, sum(ns), split_k,
        tuple(_k_share(w.shape[0], split_k, block_k) for w in weights), overlap, 128 // weights[0].element_size(),
        **schedule,
    )  # fmt: skip
    return out, h


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_OUTGROWN: list[torch.Tensor] = []  # counters a larger launch replaced, kept: a captured graph may still use them


def _tile_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """A split-K launch's arrival counters, one per output tile, zero between launches (each tile's last program
    zeroes its own): kept per device, allocated on the first split-K call, so that a CUDA graph captures no memset.
    Launches on one device share them, so split-K launches must not run on two streams at once."""
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < tiles:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"a split-K grouped_gemv of {tiles} output tiles ran first inside a CUDA graph capture; run it once "
                "before capturing (the decoder's warm-up does), so its counters are not allocated in the graph's pool"
            )
        if counters is not None:
            _OUTGROWN.append(counters)
        counters = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = counters
    return counters


# an opaque operator to torch.compile (the decoder compiles the step around it): one launch, no graph break
_grouped_gemv_custom = torch.library.custom_op("rwkv_lab::grouped_gemv", _grouped_gemv_op, mutates_args=())


@_grouped_gemv_custom.register_fake
def _(x, weights, mixes, mix_codes, x_cols, acts, scales, out_acts, last, residual, gate, ln_weight, ln_bias, ln_eps,
      tiling, overlap):  # fmt: skip
    h = x.new_empty(x.shape[0], x.shape[1] if ln_weight is not None else 0, dtype=torch.float32)
    return x.new_empty(x.shape[0], sum(w.shape[1] for w in weights)), h


def grouped_gemv(
    x: torch.Tensor,
    projections: list[Projection],
    *,
    last: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    norm: Norm | None = None,
    tiling: Tiling | None = None,
    overlap: bool = False,
):
    """x (B, width), projections j of weights (K_j, N_j) -> (B, sum_j N_j) in x's dtype, each product at its column
    offset (see the module docstring). `last` (B, K): the token shift's previous x, for the projections with a mix;
    `gate` (B, sum N), multiplying the output; `residual` (B, sum N), added to it. `norm`: x LayerNorm-ed first,
    every projection reading all of it; then returns (the output, the normalised x (B, width) fp32). `tiling`: the
    launch's blocks (None: the default's). `overlap`: a programmatic dependent launch where the GPU takes one
    (the module docstring's "Overlapped launches")."""
    for p in projections:
        if p.act not in ACTS or p.out_act not in OUT_ACTS or p.mix_weighs not in MIX_WEIGHS:
            raise ValueError(
                f"Projection.act must be one of {list(ACTS)}, out_act one of {list(OUT_ACTS)} and mix_weighs one of "
                f"{list(MIX_WEIGHS)}; got {p.act!r}, {p.out_act!r}, {p.mix_weighs!r}"
            )
    flat = (
        [p.weight for p in projections],
        [p.mix for p in projections],
        [MIX_WEIGHS[p.mix_weighs] for p in projections],
        [p.x_col for p in projections],
        [ACTS[p.act] for p in projections],
        [float(p.scale) for p in projections],
        [OUT_ACTS[p.out_act] for p in projections],
    )
    if tiling is not None:
        sizes = (tiling.block_b, tiling.block_n, tiling.block_k)
        counts = (tiling.num_warps, tiling.num_stages, tiling.split_k)
        if min(sizes) < 16 or any(v & (v - 1) for v in sizes) or min(counts) < 1:
            raise ValueError(
                f"a Tiling's blocks are powers of two >= 16, its warps, stages and split_k >= 1; got {tiling}"
            )
        tiling = list(dataclasses.astuple(tiling))  # the custom op's schema takes a list of ints
    ln = (None, None, 0.0) if norm is None else (norm.weight, norm.bias, float(norm.eps))
    out, h = _grouped_gemv_custom(x, *flat, last, residual, gate, *ln, tiling, overlap)
    return out if norm is None else (out, h)


def grouped_gemv_reference(x, projections, *, last=None, residual=None, gate=None, norm=None):
    """`grouped_gemv` in torch ops, in fp32 (float64 for float64 x): the reference the tests compare with."""
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    dtype, h = x.dtype, None
    if norm is not None:
        h = torch.nn.functional.layer_norm(x.to(cd), x.shape[1:], norm.weight.to(cd), norm.bias.to(cd), norm.eps)
        x = h
    outs = []
    for p in projections:
        K = p.weight.shape[0]
        xj = x[:, p.x_col : p.x_col + K].to(cd)
        if p.mix is not None:
            prev, mix = last[:, :K].to(cd), p.mix.reshape(K).to(cd)
            xj = xj + (prev - xj) * mix if p.mix_weighs == "last" else xj * mix + prev * (1 - mix)
        xj = {None: xj, "tanh": torch.tanh(xj), "sigmoid": torch.sigmoid(xj)}[p.act] / p.scale
        out = xj.to(p.weight.dtype).to(cd) @ p.weight.to(cd)
        outs.append({None: out, "relu2": torch.relu(out).square(), "sigmoid": torch.sigmoid(out)}[p.out_act])
    out = torch.cat(outs, dim=1)
    out = out if gate is None else out * gate.to(cd)
    out = (out if residual is None else out + residual.to(cd)).to(dtype)
    return out if norm is None else (out, h)
