"""Nucleus sampling as four Triton launches, without sorting the vocabulary: `sampling.sample`'s choice, on the GPU.

    tokens = sample_kernel(logits, temperature, top_p, seeds, steps)      # (B, V) -> (B,) int64

The torch sampler sorts every row of probabilities to find the nucleus, then draws with a second pass over the
vocabulary: on an H100, compiled, ~96 us of RWKV-4 169M's 689 us decode step (a radix sort of 50k numbers 39 us,
the draw's single-program reduction 34 us: results/inference/kernel_profile_169M_gpu_169M_profile.csv), and
compiling it was seconds of a decoder's first call. These four launches take 26 us of the same step
(kernel_profile_169M_gpu_169M_kernels.csv, random weights: a flat distribution, many candidates). The nucleus is
{i : p_i >= t*}, t* the least probability whose strictly larger ones weigh less than top_p (ties kept together:
`sampling.nucleus_keeps`). Here, over slices of SLICE numbers of each row (programs (slice, row)):

_slice_max      each slice's largest z = logits / temperature.
_slice_hist     with the row's max m: e = exp(z - m) in (0, 1], each slice's sum of e, and e's mass and count per
                binade (bucket 0 holds e = 1, bucket b e in [2^-b, 2^-b+1), the last everything smaller): 32.
_compact        the row's sum s from the slices'; the first bucket k whose cumulative mass reaches top_p s: the
                nucleus is within {e >= 2^-k}, its candidates, which each slice writes, in vocabulary order, at its
                offset (the counts of the slices before) into a (B, V) buffer of (e, token id).
_choose         one program a row, over its candidates only (a few dozen at a peaked distribution, at most V):
                t* by a search over e's float bits, 16 probes a round (each probe's mass strictly above it, over
                the candidates), until the interval holds one bit pattern; then the exponential race over the
                candidates with e >= t* (the same hashed noise as `sampling.uniform_noise`), the first largest
                p / E winning, as torch's argmax.
Every sum runs in a fixed order: the same tokens on every call. Greedy decoding stays torch's argmax.

It agrees with `sampling.sample` up to the rounding of sums taken in another order: a token whose mass above it
is within a few ulps of top_p, or two draws within an ulp, may go the other way (tests/test_sampling_kernel.py
finds none in its draws; tests/test_gpu.py counts them on the GPU, results/gpu_checks/sampler_kernel.json). CUDA
tensors, or CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

# numbers of a row per program in the first three launches: at 2,048 a 50k vocabulary's row was 25 programs, and
# its histogram launch took 28 us of a 169M step (H100); at 512 every multiprocessor has one
SLICE = 512
BUCKETS = 32  # binades of e = exp(z - max) below 1: the candidates' coarse threshold
PROBES = 16  # thresholds tried per round of the search for t* (4 bits a round)
CHUNK = 1024  # candidates per step of _choose's passes


@triton.jit
def _exp(x, ACCURATE: tl.constexpr):
    """exp as torch's CUDA kernels take it (libdevice's expf) on the GPU, where tl.exp is ex2.approx; Triton's
    interpreter has no libdevice, and its tl.exp is numpy's."""
    if ACCURATE:
        return libdevice.exp(x)
    return tl.exp(x)


@triton.jit
def _log(x, ACCURATE: tl.constexpr):
    """log likewise (tl.log is lg2.approx on the GPU), for the race's -log(U) as torch's logf takes it."""
    if ACCURATE:
        return libdevice.log(x)
    return tl.log(x)


@triton.jit
def _scaled(logits_ptr, stride, row, cols, V, temperature):
    z = tl.load(logits_ptr + row * stride + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    return z / temperature  # a division, as sampling.sample's logits / temperature (the same rounding)


@triton.jit
def _slice_max(logits_ptr, stride, V, temperature, max_ptr, P, SLICE: tl.constexpr):
    piece, row = tl.program_id(0), tl.program_id(1)
    cols = piece * SLICE + tl.arange(0, SLICE)
    tl.store(max_ptr + row * P + piece, tl.max(_scaled(logits_ptr, stride, row, cols, V, temperature), 0))


@triton.jit
def _row_max(max_ptr, row, P, P_BLOCK: tl.constexpr):
    ps = tl.arange(0, P_BLOCK)
    return tl.max(tl.load(max_ptr + row * P + ps, mask=ps < P, other=float("-inf")), 0)


@triton.jit
def _bucket(e):
    """The binade of e in (0, 1] below 1 (0 for e = 1, b for e in [2^-b, 2^-b+1)), at most BUCKETS - 1."""
    exponent = (e.to(tl.int32, bitcast=True) >> 23) & 0xFF
    return tl.minimum(127 - exponent, 31)


@triton.jit
def _slice_hist(
    logits_ptr, stride, V, temperature, max_ptr, sum_ptr, mass_ptr, count_ptr, P,
    SLICE: tl.constexpr, P_BLOCK: tl.constexpr, BUCKETS: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    piece, row = tl.program_id(0), tl.program_id(1)
    cols = piece * SLICE + tl.arange(0, SLICE)
    m = _row_max(max_ptr, row, P, P_BLOCK)
    e = _exp(_scaled(logits_ptr, stride, row, cols, V, temperature) - m, ACCURATE)  # 0 past V
    in_b = _bucket(e)[:, None] == tl.arange(0, BUCKETS)[None, :]  # (SLICE, BUCKETS)
    in_b = in_b & (cols < V)[:, None]
    out = (row * P + piece) * BUCKETS + tl.arange(0, BUCKETS)
    tl.store(sum_ptr + row * P + piece, tl.sum(e, 0))
    tl.store(mass_ptr + out, tl.sum(tl.where(in_b, e[:, None], 0.0), 0))
    tl.store(count_ptr + out, tl.sum(in_b.to(tl.int32), 0))


@triton.jit
def _nucleus_bucket(sum_ptr, mass_ptr, count_ptr, row, P, top_p, P_BLOCK: tl.constexpr, BUCKETS: tl.constexpr):
    """The row's sum s of e, the first bucket k whose cumulative mass reaches top_p s (the last if none does), and
    every slice's count of candidates (buckets <= k), (P_BLOCK,)."""
    ps = tl.arange(0, P_BLOCK)
    bs = tl.arange(0, BUCKETS)
    s = tl.sum(tl.load(sum_ptr + row * P + ps, mask=ps < P, other=0.0), 0)
    at = (row * P + ps[:, None]) * BUCKETS + bs[None, :]  # (P_BLOCK, BUCKETS)
    mask = (ps < P)[:, None]
    mass = tl.sum(tl.load(mass_ptr + at, mask=mask, other=0.0), 0)  # (BUCKETS,)
    short = tl.cumsum(mass, 0) < top_p * s  # buckets whose cumulative mass falls short of top_p
    k = tl.minimum(tl.sum(short.to(tl.int32), 0), BUCKETS - 1)
    counts = tl.load(count_ptr + at, mask=mask, other=0)
    return s, k, tl.sum(tl.where(bs[None, :] <= k, counts, 0), 1)


@triton.jit
def _compact(
    logits_ptr, stride, V, temperature, max_ptr, sum_ptr, mass_ptr, count_ptr, P, top_p, cand_e_ptr, cand_i_ptr,
    SLICE: tl.constexpr, P_BLOCK: tl.constexpr, BUCKETS: tl.constexpr, ACCURATE: tl.constexpr,
):  # fmt: skip
    piece, row = tl.program_id(0), tl.program_id(1)
    cols = piece * SLICE + tl.arange(0, SLICE)
    m = _row_max(max_ptr, row, P, P_BLOCK)
    _, k, per_slice = _nucleus_bucket(sum_ptr, mass_ptr, count_ptr, row, P, top_p, P_BLOCK, BUCKETS)
    offset = tl.sum(tl.where(tl.arange(0, P_BLOCK) < piece, per_slice, 0), 0)  # the slices' before this one
    e = _exp(_scaled(logits_ptr, stride, row, cols, V, temperature) - m, ACCURATE)
    keep = (_bucket(e) <= k) & (cols < V)
    at = offset + tl.cumsum(keep.to(tl.int32), 0) - 1  # in vocabulary order
    tl.store(cand_e_ptr + row * V + at, e, mask=keep)
    tl.store(cand_i_ptr + row * V + at, cols, mask=keep)


@triton.jit
def _mix32(x):
    """sampling._mix32 on int64 holding values < 2**32 (products stay below 2**63)."""
    mask32 = tl.full((), 0xFFFFFFFF, tl.int64)
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask32
    return x ^ (x >> 16)


@triton.jit
def _choose(
    sum_ptr, mass_ptr, count_ptr, P, top_p, cand_e_ptr, cand_i_ptr, V, seeds_ptr, steps_ptr, out_ptr,
    TOP_P: tl.constexpr, P_BLOCK: tl.constexpr, BUCKETS: tl.constexpr, PROBES: tl.constexpr, CHUNK: tl.constexpr,
    ACCURATE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    s, k, per_slice = _nucleus_bucket(sum_ptr, mass_ptr, count_ptr, row, P, top_p, P_BLOCK, BUCKETS)
    n = tl.sum(per_slice, 0)
    offs = tl.arange(0, CHUNK)
    # t*: the least e (as its float's bits, which order as the numbers do for e >= 0) whose strictly larger
    # candidates weigh less than top_p. Interval (lo, hi]: at hi = 1.0, the row's largest e, nothing weighs more;
    # below the candidates' floor 2^-k (the bucket's) the mass reached top_p.
    hi = tl.full((), 0x3F800000, tl.int64)
    lo = tl.where(k == BUCKETS - 1, -1, ((127 - k) << 23).to(tl.int64) - 1)
    if TOP_P:
        probe_k = tl.arange(0, PROBES)
        while hi - lo > 1:
            probes = lo + ((hi - lo) * probe_k) // PROBES  # (PROBES,), the first lo itself (skipped)
            above = tl.zeros((PROBES,), dtype=tl.float32)
            for c0 in range(0, n, CHUNK):
                at = c0 + offs
                e = tl.load(cand_e_ptr + row * V + at, mask=at < n, other=0.0)
                bits = e.to(tl.int32, bitcast=True).to(tl.int64)
                p = e / s
                above += tl.sum(tl.where(bits[:, None] > probes[None, :], p[:, None], 0.0), 0)
            inside = (probes > lo) & (probes < hi)
            reached = inside & (above >= top_p)
            short = inside & (above < top_p)
            # f falls with the threshold: the interval narrows to the probes around top_p (probe 8 is always
            # strictly inside while hi - lo >= 2, so every round narrows it)
            lo = tl.maximum(lo, tl.max(tl.where(reached, probes, lo), 0))
            hi = tl.minimum(hi, tl.min(tl.where(short, probes, hi), 0))
        threshold = hi
    else:
        threshold = tl.full((), 0, tl.int64)
    # the row's noise key (sampling.uniform_noise), then the race over the nucleus
    mask32 = tl.full((), 0xFFFFFFFF, tl.int64)
    seed = tl.load(seeds_ptr + row)
    key = _mix32(_mix32(seed & mask32) ^ ((seed >> 32) & mask32))
    key = _mix32(key ^ _mix32(tl.load(steps_ptr + row) & mask32))
    best = tl.full((), -1.0, tl.float32)
    best_i = tl.full((), 0, tl.int64)
    for c0 in range(0, n, CHUNK):
        at = c0 + offs
        valid = at < n
        e = tl.load(cand_e_ptr + row * V + at, mask=valid, other=0.0)
        ids = tl.load(cand_i_ptr + row * V + at, mask=valid, other=0).to(tl.int64)
        bits = _mix32(key ^ _mix32(_mix32(ids) ^ 0x5BD1E995))
        u = ((bits >> 9).to(tl.float32) + 0.5) / 8388608.0  # sampling.uniform_from_bits: in (0, 1), ends excluded
        score = (e / s) / -_log(u, ACCURATE)
        score = tl.where(valid & (e.to(tl.int32, bitcast=True).to(tl.int64) >= threshold), score, 0.0)
        value, index = tl.max(score, 0, return_indices=True, return_indices_tie_break_left=True)
        chosen = tl.sum(tl.where(offs == index, ids, 0), 0)
        better = value > best  # strictly: an earlier chunk (smaller ids) keeps a tie
        best_i = tl.where(better, chosen, best_i)
        best = tl.where(better, value, best)
    tl.store(out_ptr + row, best_i)


def _sample_kernel_op(
    logits: torch.Tensor, temperature: float, top_p: float, seeds: torch.Tensor, steps: torch.Tensor
) -> torch.Tensor:
    B, V = logits.shape
    if temperature == 0:
        return logits.argmax(dim=-1)
    out = torch.empty(B, dtype=torch.int64, device=logits.device)
    P = triton.cdiv(V, SLICE)
    p_block = max(2, triton.next_power_of_2(P))
    f32 = {"dtype": torch.float32, "device": logits.device}
    maxes, sums = torch.empty(B, P, **f32), torch.empty(B, P, **f32)
    mass = torch.empty(B, P, BUCKETS, **f32)
    count = torch.empty(B, P, BUCKETS, dtype=torch.int32, device=logits.device)
    cand_e, cand_i = torch.empty(B, V, **f32), torch.empty(B, V, dtype=torch.int32, device=logits.device)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    t, stride = float(temperature), logits.stride(0)
    _slice_max[(P, B)](logits, stride, V, t, maxes, P, SLICE)
    accurate = os.environ.get("TRITON_INTERPRET") != "1"  # libdevice's exp and log, where there is libdevice
    _slice_hist[(P, B)](logits, stride, V, t, maxes, sums, mass, count, P, SLICE, p_block, BUCKETS, accurate)
    # without a nucleus (top_p = 1) every token is a candidate: a mass no bucket reaches, where the fp32 sums
    # could reach s before the last bucket and leave the smallest tokens out of the race
    args = (sums, mass, count, P, float(top_p) if top_p < 1 else float("inf"))
    _compact[(P, B)](logits, stride, V, t, maxes, *args, cand_e, cand_i, SLICE, p_block, BUCKETS, accurate)
    _choose[(B,)](*args, cand_e, cand_i, V, seeds, steps, out, top_p < 1, p_block, BUCKETS, PROBES, CHUNK, accurate,
                  num_warps=8)  # fmt: skip
    return out


# an opaque operator to torch.compile and a CUDA graph's capture: four launches, no graph break
_sample_kernel_custom = torch.library.custom_op("rwkv_lab::sample", _sample_kernel_op, mutates_args=())


@_sample_kernel_custom.register_fake
def _(logits, temperature, top_p, seeds, steps):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)


def sample_kernel(logits, temperature, top_p, seeds, steps, keys=None):
    """`sampling.sample` in Triton launches (see the module docstring); `keys` is accepted for the same signature
    and unused (the kernel hashes the token ids itself)."""
    if logits.dim() != 2 or seeds.shape != (logits.shape[0],) or steps.shape != seeds.shape:
        raise ValueError(
            f"need logits (B, V) and seeds, steps (B,); got {tuple(logits.shape)}, {tuple(seeds.shape)}, "
            f"{tuple(steps.shape)}"
        )
    if seeds.dtype != torch.int64 or steps.dtype != torch.int64:
        raise TypeError(f"seeds and steps must be int64; got {seeds.dtype} and {steps.dtype}")
    return _sample_kernel_custom(logits, float(temperature), float(top_p), seeds, steps)
