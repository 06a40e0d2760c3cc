"""The RWKV-7 state update as chunked Triton kernels, forward and backward: backend "triton_chunked".

The per-token kernel (triton_kernels.py) runs B H N/rows programs for T dependent steps; at a prefill's batch of 1
that leaves most of a GPU idle. Here the tokens go in chunks of C = 16, and everything within a chunk that does
not depend on the state at its start is computed for all chunks at once with tl.dot (tensor cores); only an N x N
state passes from chunk to chunk. The math is chunked.py's (the WY / UT form of the generalised delta rule, as
fla's chunk_dplr_delta_rule forward), with the decays relative to the chunk's start. Per chunk, S_0 the state at
its start, g_t the sum of log_w over the chunk's tokens up to t (g_0 = 0), u_t = S_{t-1} a_t:

    u_t = S_0 (a_t e^{g_{t-1}}) + sum_{i<t}  [ (a_t . b_i e^{g_{t-1} - g_i}) u_i + (a_t . k_i e^{g_{t-1} - g_i}) v_i ]
    y_t = S_0 (r_t e^{g_t})     + sum_{i<=t} [ (r_t . b_i e^{g_t - g_i}) u_i     + (r_t . k_i e^{g_t - g_i}) v_i ]
    S_C = S_0 diag(e^{g_C})     + sum_i      [ u_i (b_i e^{g_C - g_i})^T        + v_i (k_i e^{g_C - g_i})^T ]

(each dot product over the key index j, with e^{g_t - g_i} taken per j)

With tokens as rows (C x N matrices A_up = a e^{g_{t-1}}, R_up = r e^{g_t}, K_dn = k e^{-g}, B_dn = b e^{-g},
B_end = b e^{g_C - g}, K_end = k e^{g_C - g}) and L_ab = strict_lower(A_up B_dn^T), L_ak likewise with K_dn,
L_rb = lower(R_up B_dn^T), L_rk likewise (diagonal included): the first line is (I - L_ab) U = A_up S_0^T + L_ak V,
so with T_inv = (I - L_ab)^{-1} (unit lower triangular, C x C), U = W S_0^T + U_0, W = T_inv A_up,
U_0 = T_inv L_ak V; then

    Y   = R_eff S_0^T + Y_0                       R_eff = R_up + L_rb W,  Y_0 = L_rb U_0 + L_rk V    (C x N)
    S_C = S_0 diag(e^{g_C}) + U^T B_end + V^T K_end,   U^T = S_0 W^T + U_0^T                      (N x N)

Two kernels forward:

_chunk_factors  one program per (chunk, head, batch), all in parallel: loads the chunk's (C, N) inputs, takes g by a
                cumulative sum, forms the four C x C score matrices with tl.dot, inverts I - L_ab by forward
                substitution over its C rows (C x C in registers: 16 steps of a C x C update), and stores
                R_eff, Y_0, W, U_0, B_end, K_end (C, N) and e^{g_C} (N,), fp32 (fp64 for fp64 inputs).
_chunk_scan     one program per (block of BV value rows, head, batch): S[rows, :] (BV, N) in registers, walking
                the chunks in order: y = Y_0[:, rows] + R_eff S^T ((C, N) x (N, BV)), U^T[rows] = S W^T +
                U_0[:, rows]^T ((BV, N) x (N, C)), S <- S diag(e^{g_C}) + U^T[rows] B_end + V[:, rows]^T K_end
                ((BV, C) x (C, N), the last off the dependent chain). Value rows never interact (the transition
                acts on the key side), so the N/BV row blocks of a head run in parallel. T/C dependent steps
                instead of T, each two small dots long.

Memory: the factors are 6 C N + N numbers per chunk and head in the compute dtype (1.5 KB per token and head at
N = 64 in fp32, against 0.77 KB of fp16 inputs), written once and read once per row block. (The first version
stored M = diag(e^{g_C}) + W^T B_end and E = U_0^T B_end + V^T K_end, N x N each: 40 KB per chunk instead of 24,
for one (BV, N) x (N, N) dot per step instead of two smaller ones; not yet compared on a GPU.)

Chunk size and numerics: C = 16 (the size fla uses for its intra-chunk part; tl.dot's smallest). The decay factors
are relative to the chunk's start, so e^{-g_i} grows to e^{C |log_w|}: the backend takes log_w >= LOG_W_MIN = -0.62
(RWKV-7's decays, log_w >= -e^{-0.5}, with room for a bf16 rounding; the same bound as backend "triton"), which keeps
every factor within e^{16 * 0.62} = e^{9.92} ~ 2e4, far from fp32's range, and every product e^{g_t - g_i} (t >= i)
in (0, 1] formed from two factors each rounded to eps (no cancellation beyond the dot products' own). A larger
chunk would square that range per doubling (C = 64: e^{39.7} ~ 2e17, where fp32's products of a tiny and a huge
factor lose the small decays' precision). The triangular inverse is of I - L_ab with |L_ab| entries <= |a||b| <= 1
for RWKV-7's a = -kappa, b = kappa iclr (unit kappa, iclr in (0, 1)): 16 rows of forward substitution, no pivoting.
A padded last chunk's missing tokens load as log_w = 0 and all else 0: an identity transition writing nothing.

Backward (ChunkedWKV7, when an input requires grad): the forward's scan also keeps S_0 of every chunk (N x N per
16 tokens and head, the compute dtype: 16 KB at N = 64 in fp32, as the per-token kernel keeps one state per stretch
of 16 tokens), then

_chunk_factors      again (recomputed, not kept: parallel and cheap against keeping six C x N tiles per chunk)
_chunk_scan_bwd     one program per (head, batch), the chunks last to first with dL/dS (N, N) in registers: the
                    gradients of R_eff, W, U_0, B_end, K_end, e^{g_C} and of V through S_C, each written over its
                    factor; the initial state's gradient at the end. All N value rows in one program, because the
                    factors' gradients sum over them (no atomics, no partial copies).
_chunk_factors_bwd  one program per (chunk, head, batch), in parallel: the factors' gradients back through the
                    chunk's algebra (the triangular solve: Z = T_inv M gives dM = T_inv^T dZ, dL = dM Z^T; the four
                    score matrices; the decay factors) to dr, dlog_w (a reverse cumulative sum over the chunk), dk,
                    dv, da, db in their inputs' dtypes.

Arithmetic is fp32 for fp32 / bf16 / fp16 inputs with the state fp32, fp64 for fp64 inputs ("ieee"). tl.dot on fp32
uses input_precision "tf32x3" on the GPU (three tf32 products: about fp32's accuracy on tensor cores), except in a
training pass on bf16 inputs (the forward keeping its states, and the backward), which takes "tf32": one product,
its operands rounded to 2^-11, finer than bf16's own 2^-8, for half the instructions in the factor kernels and the
backward scan and fewer spills (compile_wkv7). A prefill keeps tf32x3: its state goes on into thousands of decode
steps. The tf32 pass is not yet timed by bench_wkv7 nor checked against float64 on a GPU (a scratch run, not a
result, showed it about 1.9x faster at (B, T, C) = (8, 1024, 2048) on an H100, gradients within 4e-3 of tf32x3's).
Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher
from .common import compute_dtype
from .triton_kernels import LOG_W_MIN, tl_dtype

CHUNK = 16  # tokens per chunk: see the module docstring (range of the decay factors at LOG_W_MIN; tl.dot's minimum)
ROWS = 32  # value rows per _chunk_scan program (at most N)
# _chunk_factors_bwd's warps: at 4, compiled for sm_90a, it spills 1.3 KB per thread with tf32x3 dots (the
# results/wkv7/wkv7_compiled.csv of commit dc054c2) and 88 B with a bf16 training pass's tf32 (today's); 8 spill less
# for 1.4x the instructions issued and were slower on an H100 (a scratch run, not a results file: so was 8 warps'
# _chunk_scan_bwd)
FACTORS_BWD_WARPS = 4
MAX_HEAD = 128  # the largest head size: each program holds a dozen (C, N) tiles (the scan: S, (BV, N)) in registers


@triton.jit
def _dot(x, y, PREC: tl.constexpr):
    return tl.dot(x, y, input_precision=PREC)


@triton.jit
def _chunk_algebra(r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c, h, bb, T, H, N: tl.constexpr, C: tl.constexpr,
                   DT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """One chunk's inputs (C, N) and everything within it that does not depend on the state at its start: what
    _chunk_factors turns into the factors, and _chunk_factors_bwd recomputes to take their gradients back."""
    tok = tl.arange(0, C)  # the chunk's tokens
    cols = tl.arange(0, N)  # key (or value) indices
    t = c * C + tok  # their positions in the sequence
    inside = (t < T)[:, None] & (cols < N)[None, :]  # (C, N): the padded last chunk's missing tokens masked
    # (b, t, h, :) in (B, T, H, N)
    offs = ((bb * T + t).to(tl.int64) * H + h)[:, None] * N + cols[None, :]  # (C, N)
    # missing tokens: log_w = 0 and all else 0, an identity transition that writes nothing
    r = tl.load(r_ptr + offs, mask=inside, other=0.0).to(DT)
    log_w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(DT)
    k = tl.load(k_ptr + offs, mask=inside, other=0.0).to(DT)
    v = tl.load(v_ptr + offs, mask=inside, other=0.0).to(DT)
    a = tl.load(a_ptr + offs, mask=inside, other=0.0).to(DT)
    b = tl.load(b_ptr + offs, mask=inside, other=0.0).to(DT)

    g = tl.cumsum(log_w, axis=0)  # (C, N): g_t, the chunk's log decay up to and including t; |g| <= C |log_w|
    g_prev = g - log_w  # g_{t-1} (g_0 = 0 for the first token)
    g_end = tl.sum(tl.where(tok[:, None] == C - 1, g, 0.0), axis=0)  # (N,): g_C (padded tokens add 0)
    r_up = r * tl.exp(g)  # (C, N) factors <= 1
    a_up = a * tl.exp(g_prev)
    inv = tl.exp(-g)  # (C, N) e^{-g_i} <= e^{C |LOG_W_MIN|} ~ 2e4
    k_dn = k * inv
    b_dn = b * inv
    to_end = tl.exp(g_end[None, :] - g)  # (C, N) e^{g_C - g_i} <= 1, formed directly (not e^{g_C} e^{-g_i})

    # the C x C scores: rows the query token t, columns the key token i; e^{g_t - g_i} <= 1 where kept
    after = tok[:, None] > tok[None, :]  # a_t sees tokens before t
    upto = tok[:, None] >= tok[None, :]  # r_t sees tokens up to t
    l_ab = tl.where(after, _dot(a_up, tl.trans(b_dn), PREC), 0.0)
    l_ak = tl.where(after, _dot(a_up, tl.trans(k_dn), PREC), 0.0)
    l_rb = tl.where(upto, _dot(r_up, tl.trans(b_dn), PREC), 0.0)
    l_rk = tl.where(upto, _dot(r_up, tl.trans(k_dn), PREC), 0.0)

    # T_inv = (I - l_ab)^{-1} by forward substitution: row t = e_t + sum_{i<t} l_ab[t, i] T_inv[i, :]. Rows past t
    # are still zero when row t is formed, and l_ab[t, i] = 0 for i >= t, so each row is one masked C x C update.
    t_inv = tl.zeros((C, C), DT)
    for row in tl.static_range(C):
        l_row = tl.sum(tl.where(tok[:, None] == row, l_ab, 0.0), axis=0)  # (C,): l_ab[row, :]
        new = tl.sum(l_row[:, None] * t_inv, axis=0) + tl.where(tok == row, 1.0, 0.0).to(DT)  # (C,)
        t_inv = tl.where(tok[:, None] == row, new[None, :], t_inv)

    return r, log_w, k, v, a, b, g, g_prev, g_end, r_up, a_up, k_dn, b_dn, to_end, l_ab, l_ak, l_rb, l_rk, t_inv


@CachedLauncher
@triton.jit
def _chunk_factors(
    r_ptr,
    w_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    reff_ptr,
    y0_ptr,
    wm_ptr,
    u0_ptr,
    bend_ptr,
    kend_ptr,
    decay_ptr,
    T,
    H,
    NC,
    N: tl.constexpr,
    C: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    c, h, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tok = tl.arange(0, C)
    cols = tl.arange(0, N)
    _, _, k, v, _, b, _, _, g_end, r_up, a_up, _, _, to_end, _, l_ak, l_rb, l_rk, t_inv = _chunk_algebra(
        r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c, h, bb, T, H, N, C, DT, PREC
    )
    k_end = k * to_end
    b_end = b * to_end
    w_mat = _dot(t_inv, a_up, PREC)  # (C, N): W, u_t's part that is S_0 applied to it
    u0 = _dot(t_inv, _dot(l_ak, v, PREC), PREC)  # (C, N): U_0, u_t's part from the chunk's own writes
    r_eff = r_up + _dot(l_rb, w_mat, PREC)  # (C, N)
    y0 = _dot(l_rb, u0, PREC) + _dot(l_rk, v, PREC)  # (C, N)

    # the factors chunk-major, (B, H, NC, C, N) and (B, H, NC, N): each program's reads in _chunk_scan contiguous.
    # S_C = S_0 M + E is left to _chunk_scan as S_0 diag(e^{g_C}) + (S_0 W^T + U_0^T) B_end + V^T K_end: six C x N
    # tiles per chunk instead of R_eff, Y_0 and two N x N matrices (24 KB instead of 40 KB at C = 16, N = 64, fp32)
    chunk = (bb * H + h).to(tl.int64) * NC + c
    tile = chunk * C * N + tok[:, None] * N + cols[None, :]
    tl.store(reff_ptr + tile, r_eff)
    tl.store(y0_ptr + tile, y0)
    tl.store(wm_ptr + tile, w_mat)
    tl.store(u0_ptr + tile, u0)
    tl.store(bend_ptr + tile, b_end)
    tl.store(kend_ptr + tile, k_end)
    tl.store(decay_ptr + chunk * N + cols, tl.exp(g_end))


@CachedLauncher
@triton.jit
def _chunk_scan(
    reff_ptr,
    y0_ptr,
    wm_ptr,
    u0_ptr,
    bend_ptr,
    kend_ptr,
    decay_ptr,
    v_ptr,
    s0_ptr,
    y_ptr,
    final_ptr,
    states_ptr,
    T,
    H,
    NC,
    N: tl.constexpr,
    C: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
    KEEP: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    iv, h, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = iv * BV + tl.arange(0, BV)  # value indices of this program's slice
    cols = tl.arange(0, N)  # key indices
    tok = tl.arange(0, C)
    head = (bb * H + h).to(tl.int64)
    if HAS_STATE:
        S = tl.load(s0_ptr + head * N * N + rows[:, None] * N + cols[None, :]).to(DT)  # (BV, N)
    else:
        S = tl.zeros((BV, N), DT)
    for c in range(0, NC):
        chunk = head * NC + c
        if KEEP:  # for the backward: S at the chunk's start, (B, H, NC, N, N)
            tl.store(states_ptr + chunk * N * N + rows[:, None] * N + cols[None, :], S)
        tile = chunk * C * N + tok[:, None] * N + cols[None, :]  # (C, N) of the chunk's factors
        by_rows = chunk * C * N + tok[:, None] * N + rows[None, :]  # (C, BV): this program's value rows
        t = c * C + tok
        inside = (t < T)[:, None] & (rows < N)[None, :]
        at = (bb * T + t).to(tl.int64) * H + h  # (C,): (b, t, h) in (B, T, H, N)
        offs = at[:, None] * N + rows[None, :]  # (C, BV)
        # everything but S first: none of it waits on the previous chunk
        r_eff = tl.load(reff_ptr + tile)
        w_mat = tl.load(wm_ptr + tile)
        b_end = tl.load(bend_ptr + tile)
        k_end = tl.load(kend_ptr + tile)
        y0 = tl.load(y0_ptr + by_rows)  # (C, BV)
        u0_t = tl.load(u0_ptr + chunk * C * N + rows[:, None] + tok[None, :] * N)  # (BV, C): U_0[:, rows]^T
        inside_t = (rows < N)[:, None] & (t < T)[None, :]
        v_t = tl.load(v_ptr + rows[:, None] + at[None, :] * N, mask=inside_t, other=0.0).to(DT)  # (BV, C): V[:, rows]^T
        decay = tl.load(decay_ptr + chunk * N + cols)  # (N,) e^{g_C}
        writes = _dot(v_t, k_end, PREC)  # (BV, N): V^T K_end, the chunk's own writes of v
        y = y0 + _dot(r_eff, tl.trans(S), PREC)  # (C, BV): y_t[rows] = Y_0 + R_eff S_0[rows]^T
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
        u_t = _dot(S, tl.trans(w_mat), PREC) + u0_t  # (BV, C): u_t[rows] = S_0[rows] W^T + U_0[:, rows]^T
        S = S * decay[None, :] + _dot(u_t, b_end, PREC) + writes  # the state at the next chunk's start
    tl.store(final_ptr + head * N * N + rows[:, None] * N + cols[None, :], S)


@CachedLauncher
@triton.jit
def _chunk_scan_bwd(
    reff_ptr,
    y0_ptr,
    wm_ptr,
    u0_ptr,
    bend_ptr,
    kend_ptr,
    decay_ptr,
    v_ptr,
    gy_ptr,
    states_ptr,
    gfinal_ptr,
    gstate_ptr,
    T,
    H,
    NC,
    N: tl.constexpr,
    C: tl.constexpr,
    HAS_GFINAL: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """_chunk_scan stepped back, one program per (head, batch) with the whole head's dS = dL/dS (N, N) in registers
    (every value row: the factors' gradients sum over them, so no program shares an output). Per chunk, last first,
    with S_0 the kept state at its start and dS the gradient at its end; each factor's gradient overwrites the
    factor (Y_0's tile takes V's), read before within the same program:

        U = W S_0^T + U_0                  dU = B_end dS^T     (U_0's gradient)
        dR_eff = dY S_0    dW = dU S_0     dB_end = U dS       dK_end = V dS       dV = K_end dS^T
        d e^{g_C} = sum_i S_0[i, :] dS[i, :]
        dS <- dS diag(e^{g_C}) + dY^T R_eff + dU^T W           (the gradient at the chunk's start)
    """
    h, bb = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, N)  # value indices: all of them
    cols = tl.arange(0, N)  # key indices
    tok = tl.arange(0, C)
    head = (bb * H + h).to(tl.int64)
    square = rows[:, None] * N + cols[None, :]  # (N, N)
    if HAS_GFINAL:
        dS = tl.load(gfinal_ptr + head * N * N + square).to(DT)
    else:
        dS = tl.zeros((N, N), DT)
    for step in range(0, NC):
        c = NC - 1 - step
        chunk = head * NC + c
        tile = chunk * C * N + tok[:, None] * N + cols[None, :]  # (C, N)
        t = c * C + tok
        inside = (t < T)[:, None] & (cols < N)[None, :]
        offs = ((bb * T + t).to(tl.int64) * H + h)[:, None] * N + cols[None, :]  # (C, N) in (B, T, H, N)
        S = tl.load(states_ptr + chunk * N * N + square)  # (N, N): S_0
        r_eff = tl.load(reff_ptr + tile)
        w_mat = tl.load(wm_ptr + tile)
        u0 = tl.load(u0_ptr + tile)
        b_end = tl.load(bend_ptr + tile)
        k_end = tl.load(kend_ptr + tile)
        decay = tl.load(decay_ptr + chunk * N + cols)  # (N,) e^{g_C}
        v = tl.load(v_ptr + offs, mask=inside, other=0.0).to(DT)
        gy = tl.load(gy_ptr + offs, mask=inside, other=0.0).to(DT)
        u = _dot(w_mat, tl.trans(S), PREC) + u0  # (C, N): u_t over the value rows
        du = _dot(b_end, tl.trans(dS), PREC)  # (C, N)
        # the gradients go over the factors just read: every warp's reads of this chunk's tiles done before any
        # warp writes (a thread may write elements another thread read, the layouts differ)
        tl.debug_barrier()
        tl.store(reff_ptr + tile, _dot(gy, S, PREC))
        tl.store(wm_ptr + tile, _dot(du, S, PREC))
        tl.store(u0_ptr + tile, du)
        tl.store(bend_ptr + tile, _dot(u, dS, PREC))
        tl.store(kend_ptr + tile, _dot(v, dS, PREC))
        tl.store(y0_ptr + tile, _dot(k_end, tl.trans(dS), PREC))
        tl.store(decay_ptr + chunk * N + cols, tl.sum(S * dS, axis=0))
        dS = dS * decay[None, :] + _dot(tl.trans(gy), r_eff, PREC) + _dot(tl.trans(du), w_mat, PREC)
    tl.store(gstate_ptr + head * N * N + square, dS)


@CachedLauncher
@triton.jit
def _chunk_factors_bwd(
    r_ptr,
    w_ptr,
    k_ptr,
    v_ptr,
    a_ptr,
    b_ptr,
    gy_ptr,
    greff_ptr,
    gv_scan_ptr,
    gwm_ptr,
    gu0_ptr,
    gbend_ptr,
    gkend_ptr,
    gdecay_ptr,
    dr_ptr,
    dw_ptr,
    dk_ptr,
    dv_ptr,
    da_ptr,
    db_ptr,
    T,
    H,
    NC,
    N: tl.constexpr,
    C: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """_chunk_factors stepped back, one program per (chunk, head, batch), all in parallel: recomputes the chunk's
    factors from its inputs, takes the gradients _chunk_scan_bwd left for R_eff, W, U_0, B_end, K_end and e^{g_C}
    (and for V through S_C) and dY for Y_0, and returns the inputs' gradients. The module docstring's equations
    backwards; Z = T_inv M (that is, Z = M + L_ab Z) gives dM = T_inv^T dZ and dL_ab = dM Z^T."""
    c, h, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    tok = tl.arange(0, C)
    cols = tl.arange(0, N)
    t = c * C + tok
    inside = (t < T)[:, None] & (cols < N)[None, :]
    offs = ((bb * T + t).to(tl.int64) * H + h)[:, None] * N + cols[None, :]  # (C, N) in (B, T, H, N)
    _, _, k, v, _, b, g, g_prev, g_end, r_up, a_up, k_dn, b_dn, to_end, _, l_ak, l_rb, l_rk, t_inv = _chunk_algebra(
        r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, c, h, bb, T, H, N, C, DT, PREC
    )
    gy = tl.load(gy_ptr + offs, mask=inside, other=0.0).to(DT)
    after = tok[:, None] > tok[None, :]
    upto = tok[:, None] >= tok[None, :]
    w_mat = _dot(t_inv, a_up, PREC)
    u0 = _dot(t_inv, _dot(l_ak, v, PREC), PREC)

    chunk = (bb * H + h).to(tl.int64) * NC + c
    tile = chunk * C * N + tok[:, None] * N + cols[None, :]
    d_reff = tl.load(greff_ptr + tile)
    d_w = tl.load(gwm_ptr + tile)
    d_u0 = tl.load(gu0_ptr + tile)
    d_bend = tl.load(gbend_ptr + tile)
    d_kend = tl.load(gkend_ptr + tile)
    dv = tl.load(gv_scan_ptr + tile)
    d_decay = tl.load(gdecay_ptr + chunk * N + cols)

    # R_eff = R_up + L_rb W and Y_0 = L_rb U_0 + L_rk V
    d_lrb = tl.where(upto, _dot(d_reff, tl.trans(w_mat), PREC) + _dot(gy, tl.trans(u0), PREC), 0.0)
    d_lrk = tl.where(upto, _dot(gy, tl.trans(v), PREC), 0.0)
    d_w += _dot(tl.trans(l_rb), d_reff, PREC)
    d_u0 += _dot(tl.trans(l_rb), gy, PREC)
    dv += _dot(tl.trans(l_rk), gy, PREC)
    # W = T_inv A_up and U_0 = T_inv (L_ak V)
    g_w = _dot(tl.trans(t_inv), d_w, PREC)
    g_u = _dot(tl.trans(t_inv), d_u0, PREC)
    d_lak = tl.where(after, _dot(g_u, tl.trans(v), PREC), 0.0)
    dv += _dot(tl.trans(l_ak), g_u, PREC)
    d_lab = tl.where(after, _dot(g_w, tl.trans(w_mat), PREC) + _dot(g_u, tl.trans(u0), PREC), 0.0)
    # the four score matrices
    d_aup = g_w + _dot(d_lab, b_dn, PREC) + _dot(d_lak, k_dn, PREC)
    d_rup = d_reff + _dot(d_lrb, b_dn, PREC) + _dot(d_lrk, k_dn, PREC)
    d_bdn = _dot(tl.trans(d_lab), a_up, PREC) + _dot(tl.trans(d_lrb), r_up, PREC)
    d_kdn = _dot(tl.trans(d_lak), a_up, PREC) + _dot(tl.trans(d_lrk), r_up, PREC)
    # the decay factors: each x * e^{+-g} gives x's gradient and a term of g's
    k_end = k * to_end
    b_end = b * to_end
    end_terms = d_kend * k_end + d_bend * b_end  # (C, N): through e^{g_C - g_i}
    dg = d_rup * r_up - d_kdn * k_dn - d_bdn * b_dn - end_terms  # dL/dg_t
    dg_prev = d_aup * a_up  # dL/dg_{t-1}
    dg_end = tl.sum(end_terms, axis=0) + d_decay * tl.exp(g_end)  # (N,)
    # g_t = sum_{s<=t} log_w_s, g_{t-1} = sum_{s<t}, g_C sums them all
    dlog_w = (
        tl.sum(dg, axis=0)[None, :] - tl.cumsum(dg, axis=0) + dg
        + tl.sum(dg_prev, axis=0)[None, :] - tl.cumsum(dg_prev, axis=0)
        + dg_end[None, :]
    )  # fmt: skip
    inv = tl.exp(-g)  # the decay factors formed again where used: fewer tiles live through the dots above
    tl.store(dr_ptr + offs, (d_rup * tl.exp(g)).to(dr_ptr.dtype.element_ty), mask=inside)
    tl.store(dw_ptr + offs, dlog_w.to(dw_ptr.dtype.element_ty), mask=inside)
    tl.store(dk_ptr + offs, (d_kdn * inv + d_kend * to_end).to(dk_ptr.dtype.element_ty), mask=inside)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=inside)
    tl.store(da_ptr + offs, (d_aup * tl.exp(g_prev)).to(da_ptr.dtype.element_ty), mask=inside)
    tl.store(db_ptr + offs, (d_bdn * inv + d_bend * to_end).to(db_ptr.dtype.element_ty), mask=inside)


def check_head_size(N: int) -> None:
    if N < CHUNK or N > MAX_HEAD or N & (N - 1):
        raise ValueError(
            f"wkv7 backend 'triton_chunked' needs a head size N that is a power of two in {CHUNK}..{MAX_HEAD}; "
            f"got N = {N}"
        )


def log_w_bound_error(log_w: torch.Tensor) -> str | None:
    """The one-line refusal for decays below LOG_W_MIN (None when they are all within it): a host sync."""
    lowest = log_w.min().item()
    if lowest >= LOG_W_MIN:
        return None
    return (
        f"wkv7 backend 'triton_chunked' takes log_w >= {LOG_W_MIN} (RWKV-7's decays, log_w >= -e^-0.5: its decay "
        f"factors span e^(16 |log_w|) within a chunk); the smallest is {lowest:.3g}: use backend='chunked' for "
        "stronger decays"
    )


def scan_bwd_warps(N: int) -> int:
    """_chunk_scan_bwd's warps: 4 up to N = 64, where a program's S and dS (N x N fp32 each) and its tiles take all 255
    registers a thread may hold (spilling 1.4 KB per thread with tf32x3 dots, 0.5 KB with a bf16 training pass's tf32:
    wkv7_compiled.csv of commit dc054c2 and today's) and two programs fit an SM, so that (8, 1024, 2048)'s B H = 256
    programs run in one wave on an H100's 132 SMs; 8 warps spill less but fit one program per SM, two waves (compiled
    for sm_90a: results/wkv7/wkv7_compiled.csv has the 4 warps'). 8 at N = 128, the state 4x larger."""
    return 4 if N <= 64 else 8


def _precision(cd: torch.dtype, dtype: torch.dtype, training: bool) -> str:
    """tl.dot's input precision for compute dtype `cd`, inputs of `dtype` and a training pass or not (the module
    docstring): fp64 and the interpreter (which has no tf32) take "ieee"."""
    if cd == torch.float64 or os.environ.get("TRITON_INTERPRET") == "1":
        return "ieee"
    return "tf32" if training and dtype == torch.bfloat16 else "tf32x3"


def _factors(r, log_w, k, v, a, b, cd, prec: str):
    """_chunk_factors' launch: -> [R_eff, Y_0, W, U_0, B_end, K_end] (B, H, n_chunks, C, N) each and e^{g_C}
    (B, H, n_chunks, N), in the compute dtype."""
    B, T, H, N = k.shape
    n_chunks = triton.cdiv(T, CHUNK)
    factors = list(torch.empty(6, B, H, n_chunks, CHUNK, N, device=k.device, dtype=cd).unbind(0))
    decay = torch.empty(B, H, n_chunks, N, device=k.device, dtype=cd)
    dt = tl_dtype(cd)
    _chunk_factors[(n_chunks, H, B)](
        r, log_w, k, v, a, b, *factors, decay, T, H, n_chunks, N=N, C=CHUNK, DT=dt, PREC=prec, num_warps=4
    )
    return factors, decay


def _forward(r, log_w, k, v, a, b, state, keep: bool):
    """-> y (B, T, H, N) in v's dtype, the final state (B, H, N, N) and, with `keep`, the state at each chunk's start
    (B, H, n_chunks, N, N) for the backward (else None); inputs contiguous, the state in the compute dtype."""
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    B, T, H, N = k.shape
    prec = _precision(cd, k.dtype, training=keep)  # kept states: a training pass
    factors, decay = _factors(r, log_w, k, v, a, b, cd, prec)
    n_chunks = decay.shape[2]
    y = torch.empty_like(v)
    final = torch.empty(B, H, N, N, device=k.device, dtype=cd)
    states = torch.empty(B, H, n_chunks, N, N, device=k.device, dtype=cd) if keep else None
    bv = min(ROWS, N)
    _chunk_scan[(N // bv, H, B)](
        *factors,
        decay,
        v,
        state,
        y,
        final,
        states,
        T,
        H,
        n_chunks,
        N=N,
        C=CHUNK,
        BV=bv,
        HAS_STATE=state is not None,
        KEEP=keep,
        DT=tl_dtype(cd),
        PREC=prec,
        num_warps=4,
    )
    return y, final, states


def _backward(gy, gfinal, r, log_w, k, v, a, b, states):
    """-> dr, dlog_w, dk, dv, da, db (B, T, H, N) in their inputs' dtypes and the initial state's gradient
    (B, H, N, N) in the compute dtype. The factors are recomputed (cheap, parallel) rather than kept: _chunk_scan_bwd
    overwrites them with their gradients, which _chunk_factors_bwd turns into the inputs'."""
    cd = states.dtype
    B, T, H, N = k.shape
    prec = _precision(cd, k.dtype, training=True)
    factors, decay = _factors(r, log_w, k, v, a, b, cd, prec)
    n_chunks = decay.shape[2]
    gstate = torch.empty(B, H, N, N, device=k.device, dtype=cd)
    dt = tl_dtype(cd)
    _chunk_scan_bwd[(H, B)](
        *factors, decay, v, gy, states, gfinal, gstate, T, H, n_chunks, N=N, C=CHUNK,
        HAS_GFINAL=gfinal is not None, DT=dt, PREC=prec, num_warps=scan_bwd_warps(N),
    )  # fmt: skip
    g_reff, g_v, g_w, g_u0, g_bend, g_kend = factors
    grads = [torch.empty_like(x) for x in (r, log_w, k, v, a, b)]
    _chunk_factors_bwd[(n_chunks, H, B)](
        r, log_w, k, v, a, b, gy, g_reff, g_v, g_w, g_u0, g_bend, g_kend, decay, *grads, T, H, n_chunks,
        N=N, C=CHUNK, DT=dt, PREC=prec, num_warps=FACTORS_BWD_WARPS,
    )  # fmt: skip
    return (*grads, gstate)


# ---- as PyTorch operators -------------------------------------------------------------------------------------
# As the per-token kernel's (triton_kernels.py): reached under torch.compile as the custom operators
# rwkv_lab::wkv7_chunked_forward / wkv7_chunked_backward (fake shapes, a registered backward: an opaque op inside a
# compiled training block), and eagerly through ChunkedWKV7 without their dispatch.


def _forward_op(
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_forward with fixed output shapes: the kept states empty (0,) without `keep`."""
    y, final, states = _forward(r, log_w, k, v, a, b, state, keep)
    return y, final, states if keep else final.new_empty(0)


chunked_forward = torch.library.custom_op("rwkv_lab::wkv7_chunked_forward", _forward_op, mutates_args=())


@chunked_forward.register_fake
def _(r, log_w, k, v, a, b, state, keep):
    B, T, H, N = k.shape
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    states = (B, H, triton.cdiv(T, CHUNK), N, N) if keep else (0,)
    return torch.empty_like(v), k.new_empty(B, H, N, N, dtype=cd), k.new_empty(states, dtype=cd)


def _backward_op(
    gy: torch.Tensor,
    gfinal: torch.Tensor | None,
    r: torch.Tensor,
    log_w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    states: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gy, gfinal, r, log_w, k, v, a, b, states)


chunked_backward = torch.library.custom_op("rwkv_lab::wkv7_chunked_backward", _backward_op, mutates_args=())


@chunked_backward.register_fake
def _(gy, gfinal, r, log_w, k, v, a, b, states):
    B, _, H, N = k.shape
    return (*(torch.empty_like(x) for x in (r, log_w, k, v, a, b)), states.new_empty(B, H, N, N))


def _setup_context(ctx, inputs, output):
    r, log_w, k, v, a, b, state, _keep = inputs
    ctx.has_state = state is not None
    ctx.save_for_backward(r, log_w, k, v, a, b, output[2])
    ctx.set_materialize_grads(False)  # an output without a gradient stays None


def _gradients(backward, ctx, gy, gfinal):
    r, log_w, k, v, a, b, states = ctx.saved_tensors
    gy = torch.zeros_like(v) if gy is None else gy.contiguous()
    gfinal = None if gfinal is None else gfinal.to(states.dtype).contiguous()
    *grads, gstate = backward(gy, gfinal, r, log_w, k, v, a, b, states)
    return (*grads, gstate if ctx.has_state else None)


def _op_backward(ctx, gy, gfinal, _gstates):
    return (*_gradients(chunked_backward, ctx, gy, gfinal), None)  # None: keep


chunked_forward.register_autograd(_op_backward, setup_context=_setup_context)


class ChunkedWKV7(torch.autograd.Function):
    """The chunked kernels with their backward outside torch.compile: the forward keeps the state at each chunk's
    start (N x N per 16 tokens and head, in the compute dtype) and the inputs; the backward recomputes the factors
    from them."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, a, b, state):
        y, final, states = _forward(r, log_w, k, v, a, b, state, keep=True)
        _setup_context(ctx, (r, log_w, k, v, a, b, state, True), (y, final, states))
        return y, final

    @staticmethod
    def backward(ctx, gy, gfinal):
        return _gradients(_backward, ctx, gy, gfinal)


def wkv7_triton_chunked(r, log_w, k, v, a, b, state=None):
    """Inputs (B, T, H, N), state (B, H, N, N) or None; returns y (B, T, H, N) in v's dtype and the final state in
    fp32 (fp64 for fp64 inputs), as wkv7_recurrent. With a gradient to take, the states at the chunks' starts are
    kept for the backward; without one nothing is."""
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    r, log_w, k, v, a, b = (x.contiguous() for x in (r, log_w, k, v, a, b))
    state = None if state is None else state.to(cd).contiguous()
    check_head_size(k.shape[-1])
    inputs = (r, log_w, k, v, a, b, state)
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    if torch.compiler.is_compiling():
        return chunked_forward(*inputs, grad)[:2]
    return ChunkedWKV7.apply(*inputs) if grad else _forward(*inputs, keep=False)[:2]
