"""WKV as Triton kernels: forward and backward, state in and out, parallel over chunks of time.

The algorithm is `chunked.wkv_chunked`'s, so one long sequence (B = 1) fills the GPU:

forward   A. per chunk (in parallel): the chunk's own contribution to the state, (a, b, p), from its keys alone;
          B. per channel block: a scan over the chunks (tl.associative_scan within blocks of chunks) giving the
             state entering every chunk, and the final state;
          C. per chunk (in parallel): the stable recurrence from the entering state, writing y.
backward  A'. per chunk: the chunk's own contribution to the adjoint of the entering state;
          B'. a reverse scan over chunks: the adjoint leaving every chunk, and the initial state's gradient;
          C'. per chunk: the recurrence again (its states kept in registers), then backwards through the chunk
              writing dk and dv and partial sums of du and dw;
          D'. du and dw summed, the initial and final states' own terms.
With few chunks (N <= SCAN_HERE_MAX_CHUNKS: T <= 1024) there is no scan kernel: each chunk's program of C (C')
scans the parts of the chunks before (after) it itself, one launch fewer each way; at the small shapes the host's
launches take longer than the kernels (results/wkv/wkv_host_profile.csv).
Memory: besides inputs and outputs, only per-chunk states (3 C per chunk), no per-step trajectory.

The adjoints are kept in the same stable form as the state: alpha = dL/dA (A = a e^p the true numerator) is
stored as (alpha~, r) with alpha = alpha~ e^r, and every exponent in the backward pass is <= 0 (the derivation
is in the docstring of `wkv_backward`). Arithmetic is fp32 whatever the input dtype.
Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher
from .common import P_EMPTY

CHUNK = 64  # tokens per chunk (tuned on an H100: results/wkv/wkv_kernel_profile.csv)
SCAN_BLOCK = 64  # chunks per associative scan
BLOCK_C = 64  # channels per program of the per-chunk kernels
SUB = 8  # the backward recomputes states in sub-blocks of SUB tokens (a multiple of 4, dividing CHUNK)
SCAN_BLOCK_C = 16  # channels per program of the scans (few programs: keep them many)
# up to this many chunks the per-chunk kernels join the chunks' parts themselves (chunk n's program reads n parts:
# cheap at 16 chunks, N^2 / 2 reads in all, so longer sequences keep the scan kernel)
SCAN_HERE_MAX_CHUNKS = 16
FINISH_BLOCK_C = 32  # channels per program of the backward's last kernel
FINISH_ROWS = 32  # (batch, chunk) partial sums it adds per step
# one warp per 32 channels: the per-chunk kernels work on rows of BLOCK_C, so more warps would only replicate
NUM_WARPS = None
EMPTY = tl.constexpr(P_EMPTY)  # kernels see globals only as constexpr


@triton.jit
def _combine(a1, b1, p1, d1, i1, a2, b2, p2, d2, i2):
    """Segment 1 then segment 2: segment 1's sums decay by d2 (= length2 * w), then add. Associative."""
    q1 = p1 - d2
    p = tl.maximum(q1, p2)
    e1 = tl.exp(q1 - p)
    e2 = tl.exp(p2 - p)
    idx = tl.where(p2 >= q1, i2, i1)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p, d1 + d2, idx


@triton.jit
def _seq_len(len_ptr, b, T, HAS_LENGTHS: tl.constexpr):
    """Sequence b's length: lengths[b] (the state stops updating after it), or T."""
    if HAS_LENGTHS:
        return tl.load(len_ptr + b).to(tl.int32)
    else:
        return T


@triton.jit
def _row(tile, rows, i):
    """Row i of a (R, BLOCK_C) register tile."""
    return tl.sum(tl.where(rows[:, None] == i, tile, 0.0), axis=0)


@triton.jit
def _load_parts(part_ptr, idx_ptr, w, b, n, valid, T, C, N, cols, cmask, CHUNK: tl.constexpr, TRACK_IDX: tl.constexpr):
    """The parts (a, b, p) of chunks n (a vector of chunk indices; rows not `valid` are the identity: empty sums,
    no decay), the decay across each chunk (its length * w) and, with TRACK_IDX, which token attained each p."""
    mask = valid[:, None] & cmask[None, :]
    offs = ((b * N + n).to(tl.int64) * 3 * C)[:, None] + cols[None, :]
    sa = tl.load(part_ptr + offs, mask=mask, other=0.0)
    sb = tl.load(part_ptr + offs + C, mask=mask, other=0.0)
    sp = tl.load(part_ptr + offs + 2 * C, mask=mask, other=EMPTY)
    if TRACK_IDX:
        si = tl.load(idx_ptr + ((b * N + n).to(tl.int64) * C)[:, None] + cols[None, :], mask=mask, other=-1)
    else:
        si = tl.zeros(sa.shape, tl.int32)
    length = tl.maximum(tl.minimum(CHUNK, T - n * CHUNK), 0).to(tl.float32)
    sd = tl.where(mask, length[:, None] * w[None, :], 0.0)
    return sa, sb, sp, sd, si


@triton.jit
def _scan_start(init_ptr, b, C, cols, cmask, HAS_INIT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Where a scan starts: the part at init_ptr (B, 3, C) (a state, or the final state's adjoint) or, without
    HAS_INIT, the empty part (0, 0, EMPTY); no token attained its p (-1)."""
    s0 = b.to(tl.int64) * 3 * C
    if HAS_INIT:
        ca = tl.load(init_ptr + s0 + cols, mask=cmask, other=0.0)
        cb = tl.load(init_ptr + s0 + C + cols, mask=cmask, other=0.0)
        cp = tl.load(init_ptr + s0 + 2 * C + cols, mask=cmask, other=0.0)
    else:
        ca = tl.zeros((BLOCK_C,), tl.float32)
        cb = tl.zeros((BLOCK_C,), tl.float32)
        cp = tl.full((BLOCK_C,), EMPTY, tl.float32)
    return ca, cb, cp, tl.full((BLOCK_C,), -1, tl.int32)


@triton.jit
def _load_part(part_ptr, idx_ptr, w, b, m, T, C, N, cols, cmask, CHUNK: tl.constexpr, TRACK_IDX: tl.constexpr):
    """Chunk m's part (a, b, p), its decay (length * w) and, with TRACK_IDX, which token attained its p."""
    off = (b * N + m).to(tl.int64) * 3 * C + cols
    sa = tl.load(part_ptr + off, mask=cmask, other=0.0)
    sb = tl.load(part_ptr + off + C, mask=cmask, other=0.0)
    sp = tl.load(part_ptr + off + 2 * C, mask=cmask, other=EMPTY)
    if TRACK_IDX:
        si = tl.load(idx_ptr + (b * N + m).to(tl.int64) * C + cols, mask=cmask, other=-1)
    else:
        si = tl.zeros(cols.shape, tl.int32)
    return sa, sb, sp, tl.maximum(tl.minimum(CHUNK, T - m * CHUNK), 0).to(tl.float32) * w, si


@triton.jit
def _prefix(
    part_ptr,
    idx_ptr,
    w,
    init_ptr,
    b,
    n,
    T,
    C,
    N,
    cols,
    cmask,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    TRACK_IDX: tl.constexpr,
):
    """What _scan_chunks gives chunk n, computed in chunk n's own program: the scan's start joined with the parts
    of the chunks before n, in order (REVERSE: of the chunks after n, from the last back), and the same with n's
    own part joined too. Returns both as (a, b, p, argmax): the state entering and leaving chunk n (the adjoint
    leaving and entering it). A loop over vectors, not a scan over a tile: it leaves the registers to the kernels it
    runs in (a tile's scan here made the forward + backward's device time at (8, 1024, 2048) longer than with
    the scan kernels, in the GPU run at commit 23cf782)."""
    ca, cb, cp, ci = _scan_start(init_ptr, b, C, cols, cmask, HAS_INIT, BLOCK_C)
    if REVERSE:
        steps = N - 1 - n
    else:
        steps = n
    for i in range(0, steps):
        if REVERSE:
            m = N - 1 - i
        else:
            m = i
        sa, sb, sp, sd, si = _load_part(part_ptr, idx_ptr, w, b, m, T, C, N, cols, cmask, CHUNK, TRACK_IDX)
        ca, cb, cp, _, ci = _combine(ca, cb, cp, 0.0, ci, sa, sb, sp, sd, si)
    sa, sb, sp, sd, si = _load_part(part_ptr, idx_ptr, w, b, n, T, C, N, cols, cmask, CHUNK, TRACK_IDX)
    fa, fb, fp, _, fi = _combine(ca, cb, cp, 0.0, ci, sa, sb, sp, sd, si)
    return ca, cb, cp, ci, fa, fb, fp, fi


@CachedLauncher
@triton.jit
def _fwd_chunk_summary(
    k_ptr,
    v_ptr,
    w_ptr,
    len_ptr,
    sum_ptr,
    idx_ptr,
    T,
    C,
    N,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
):
    pid_c, n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = tl.arange(0, CHUNK)
    # the chunk's real tokens: a chunk past the sequence's length (HAS_LENGTHS) has none, an empty part
    length = tl.maximum(tl.minimum(CHUNK, _seq_len(len_ptr, b, T, HAS_LENGTHS) - n * CHUNK), 0)
    mask = (rows < length)[:, None] & cmask[None, :]
    offs = ((b * T + n * CHUNK + rows).to(tl.int64) * C)[:, None] + cols[None, :]
    k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    # token j has decayed length-1-j times at the chunk's end
    e = tl.where(mask, k - (length - 1 - rows).to(tl.float32)[:, None] * w[None, :], EMPTY)
    p = tl.max(e, axis=0)
    idx = tl.argmax(e, axis=0)
    x = tl.where(mask, tl.exp(e - p[None, :]), 0.0)
    base = (b * N + n).to(tl.int64) * 3 * C
    tl.store(sum_ptr + base + cols, tl.sum(x * v, axis=0), mask=cmask)
    tl.store(sum_ptr + base + C + cols, tl.sum(x, axis=0), mask=cmask)
    tl.store(sum_ptr + base + 2 * C + cols, p, mask=cmask)
    tl.store(idx_ptr + (b * N + n).to(tl.int64) * C + cols, (n * CHUNK + idx).to(tl.int32), mask=cmask)


@CachedLauncher
@triton.jit
def _scan_chunks(
    part_ptr,
    idx_ptr,
    w_ptr,
    init_ptr,
    len_ptr,
    out_ptr,
    last_ptr,
    argmax_ptr,
    T,
    C,
    N,
    CHUNK: tl.constexpr,
    SCAN_BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
):
    """Join the chunks' own parts (a, b, p) in order, starting from `init`; a part decays by L w across a chunk.

    Forward (REVERSE=False): parts are the chunks' states, out[n] the state entering chunk n, last the final
    state, and the argmax of the final p is tracked. Backward (REVERSE=True): parts are the chunks' adjoints,
    the scan runs from the last chunk back, out[n] is the adjoint leaving chunk n, last the initial state's.
    Without HAS_INIT the scan starts empty (0, 0, EMPTY): no tensor is built for an absent state or gradient.
    With HAS_LENGTHS (forward only) sequence b's chunks end at lengths[b]: those past it are empty, without decay.
    """
    pid_c, b = tl.program_id(0), tl.program_id(1)
    Tb = _seq_len(len_ptr, b, T, HAS_LENGTHS)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = tl.arange(0, SCAN_BLOCK)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    s0 = b.to(tl.int64) * 3 * C
    ca, cb, cp, ci = _scan_start(init_ptr, b, C, cols, cmask, HAS_INIT, BLOCK_C)
    first = (b * N + (N - 1 if REVERSE else 0)).to(tl.int64) * 3 * C
    tl.store(out_ptr + first + cols, ca, mask=cmask)
    tl.store(out_ptr + first + C + cols, cb, mask=cmask)
    tl.store(out_ptr + first + 2 * C + cols, cp, mask=cmask)
    for m0 in range(0, N, SCAN_BLOCK):
        if REVERSE:
            n = N - 1 - (m0 + rows)  # row i is the i-th chunk from the end
            nxt = n - 1
        else:
            n = m0 + rows
            nxt = n + 1
        sa, sb, sp, sd, si = _load_parts(
            part_ptr, idx_ptr, w, b, n, (n >= 0) & (n < N), Tb, C, N, cols, cmask, CHUNK, not REVERSE
        )
        sa, sb, sp, sd, si = tl.associative_scan((sa, sb, sp, sd, si), 0, _combine)
        # through chunk n: the carried part, decayed across the block's chunks up to n, joined to the block's prefix
        qa, qb, qp, _, qi = _combine(ca[None, :], cb[None, :], cp[None, :], 0.0, ci[None, :], sa, sb, sp, sd, si)
        omask = ((nxt >= 0) & (nxt < N))[:, None] & cmask[None, :]
        ooffs = ((b * N + nxt).to(tl.int64) * 3 * C)[:, None] + cols[None, :]
        tl.store(out_ptr + ooffs, qa, mask=omask)
        tl.store(out_ptr + ooffs + C, qb, mask=omask)
        tl.store(out_ptr + ooffs + 2 * C, qp, mask=omask)
        last = SCAN_BLOCK - 1
        ca, cb, cp = _row(qa, rows, last), _row(qb, rows, last), _row(qp, rows, last)
        ci = tl.sum(tl.where(rows[:, None] == last, qi, 0), axis=0)
    tl.store(last_ptr + s0 + cols, ca, mask=cmask)
    tl.store(last_ptr + s0 + C + cols, cb, mask=cmask)
    tl.store(last_ptr + s0 + 2 * C + cols, cp, mask=cmask)
    if not REVERSE:
        tl.store(argmax_ptr + b.to(tl.int64) * C + cols, ci, mask=cmask)


@triton.jit
def _out_step(a, bb, p, kt, vt, w, u, valid):
    """One token of the recurrence: y, and the state after it (unchanged where not valid)."""
    ukt = u + kt
    q = tl.maximum(p, ukt)
    e1 = tl.exp(p - q)
    e2 = tl.exp(ukt - q)
    y = (e1 * a + e2 * vt) / (e1 * bb + e2)
    q = tl.maximum(p - w, kt)
    e1 = tl.exp(p - w - q)
    e2 = tl.exp(kt - q)
    a = tl.where(valid, e1 * a + e2 * vt, a)
    bb = tl.where(valid, e1 * bb + e2, bb)
    p = tl.where(valid, q, p)
    return y, a, bb, p


@CachedLauncher
@triton.jit
def _fwd_output(
    k_ptr,
    v_ptr,
    w_ptr,
    u_ptr,
    sum_ptr,
    idx_ptr,
    state_ptr,
    enter_ptr,
    final_ptr,
    argmax_ptr,
    y_ptr,
    len_ptr,
    T,
    C,
    N,
    CHUNK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SCAN_HERE: tl.constexpr,
    HAS_INIT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
):
    """y through one chunk from the state entering it: read from `enter` (written by _scan_chunks) or, with
    SCAN_HERE, scanned here from the chunks' summaries and written to `enter` for the backward (the last chunk's
    program writes the final state and its argmax too). With HAS_LENGTHS the state stops updating at sequence b's
    length; y is still written at every position (past the length, read from the state there)."""
    pid_c, n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    Tb = _seq_len(len_ptr, b, T, HAS_LENGTHS)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    u = tl.load(u_ptr + cols, mask=cmask, other=0.0)
    e0 = (b * N + n).to(tl.int64) * 3 * C
    if SCAN_HERE:
        a, bb, p, _, fa, fb, fp, fi = _prefix(
            sum_ptr, idx_ptr, w, state_ptr, b, n, Tb, C, N, cols, cmask, CHUNK, BLOCK_C, False, HAS_INIT, True
        )
        tl.store(enter_ptr + e0 + cols, a, mask=cmask)
        tl.store(enter_ptr + e0 + C + cols, bb, mask=cmask)
        tl.store(enter_ptr + e0 + 2 * C + cols, p, mask=cmask)
        if n == N - 1:
            s0 = b.to(tl.int64) * 3 * C
            tl.store(final_ptr + s0 + cols, fa, mask=cmask)
            tl.store(final_ptr + s0 + C + cols, fb, mask=cmask)
            tl.store(final_ptr + s0 + 2 * C + cols, fp, mask=cmask)
            tl.store(argmax_ptr + b.to(tl.int64) * C + cols, fi, mask=cmask)
        bb = tl.where(cmask, bb, 1.0)  # channels past C: no 0/0
    else:
        a = tl.load(enter_ptr + e0 + cols, mask=cmask, other=0.0)
        bb = tl.load(enter_ptr + e0 + C + cols, mask=cmask, other=1.0)
        p = tl.load(enter_ptr + e0 + 2 * C + cols, mask=cmask, other=0.0)
    length = tl.minimum(CHUNK, T - n * CHUNK)
    real = Tb - n * CHUNK  # tokens of this chunk that update the state (all of them without lengths)
    base = (b * T + n * CHUNK).to(tl.int64) * C + cols
    # four tokens per iteration, their eight loads issued together: the recurrence waits on memory once, not 4x
    for j in range(0, length, 4):
        jv = tl.zeros_like(cols) + j
        m0, m1, m2, m3 = (
            cmask & (jv < length),
            cmask & (jv + 1 < length),
            cmask & (jv + 2 < length),
            cmask & (jv + 3 < length),
        )
        o0, o1, o2, o3 = base + j * C, base + (j + 1) * C, base + (j + 2) * C, base + (j + 3) * C
        k0 = tl.load(k_ptr + o0, mask=m0, other=0.0).to(tl.float32)
        k1 = tl.load(k_ptr + o1, mask=m1, other=0.0).to(tl.float32)
        k2 = tl.load(k_ptr + o2, mask=m2, other=0.0).to(tl.float32)
        k3 = tl.load(k_ptr + o3, mask=m3, other=0.0).to(tl.float32)
        v0 = tl.load(v_ptr + o0, mask=m0, other=0.0).to(tl.float32)
        v1 = tl.load(v_ptr + o1, mask=m1, other=0.0).to(tl.float32)
        v2 = tl.load(v_ptr + o2, mask=m2, other=0.0).to(tl.float32)
        v3 = tl.load(v_ptr + o3, mask=m3, other=0.0).to(tl.float32)
        y, a, bb, p = _out_step(a, bb, p, k0, v0, w, u, m0 & (jv < real))
        tl.store(y_ptr + o0, y, mask=m0)
        y, a, bb, p = _out_step(a, bb, p, k1, v1, w, u, m1 & (jv + 1 < real))
        tl.store(y_ptr + o1, y, mask=m1)
        y, a, bb, p = _out_step(a, bb, p, k2, v2, w, u, m2 & (jv + 2 < real))
        tl.store(y_ptr + o2, y, mask=m2)
        y, a, bb, p = _out_step(a, bb, p, k3, v3, w, u, m3 & (jv + 3 < real))
        tl.store(y_ptr + o3, y, mask=m3)


@triton.jit
def _load4(ptr, base, j, C, cmask, length, cols):
    """Rows j..j+3 of a (T, C) block (zeros past `length`), and their masks: four loads in flight at once."""
    jv = tl.zeros_like(cols) + j
    m0, m1, m2, m3 = (
        cmask & (jv < length),
        cmask & (jv + 1 < length),
        cmask & (jv + 2 < length),
        cmask & (jv + 3 < length),
    )
    x0 = tl.load(ptr + base + j * C, mask=m0, other=0.0).to(tl.float32)
    x1 = tl.load(ptr + base + (j + 1) * C, mask=m1, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + base + (j + 2) * C, mask=m2, other=0.0).to(tl.float32)
    x3 = tl.load(ptr + base + (j + 3) * C, mask=m3, other=0.0).to(tl.float32)
    return x0, x1, x2, x3, m0, m1, m2, m3


@triton.jit
def _state_step(a, bb, p, kt, vt, w, valid):
    """The state after one token (unchanged where not valid)."""
    q = tl.maximum(p - w, kt)
    e1 = tl.exp(p - w - q)
    e2 = tl.exp(kt - q)
    return tl.where(valid, e1 * a + e2 * vt, a), tl.where(valid, e1 * bb + e2, bb), tl.where(valid, q, p)


@triton.jit
def _adjoint_term(al, be, r, a, bb, p, kt, vt, gt, u, j, w, valid):
    """Add token j's dy to the adjoint of the chunk's entering (A, B): (g/D_j) e^{-j w}, D_j = d e^q."""
    ukt = u + kt
    q = tl.maximum(p, ukt)
    e1 = tl.exp(p - q)
    e2 = tl.exp(ukt - q)
    d = e1 * bb + e2
    y = (e1 * a + e2 * vt) / d
    x = -q - j * w
    rn = tl.maximum(r, x)
    f1 = tl.exp(r - rn)
    f2 = tl.exp(x - rn)
    al = tl.where(valid, f1 * al + f2 * (gt / d), al)
    be = tl.where(valid, f1 * be - f2 * (gt * y / d), be)
    r = tl.where(valid, rn, r)
    return al, be, r


@CachedLauncher
@triton.jit
def _bwd_chunk_summary(
    k_ptr, v_ptr, gy_ptr, w_ptr, u_ptr, enter_ptr, adj_ptr, T, C, N, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr
):
    """The adjoint of the chunk's entering (A, B) from this chunk's dy alone: sum_j (g_j/D_j) e^{-j w}."""
    pid_c, n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    u = tl.load(u_ptr + cols, mask=cmask, other=0.0)
    e0 = (b * N + n).to(tl.int64) * 3 * C
    a = tl.load(enter_ptr + e0 + cols, mask=cmask, other=0.0)
    bb = tl.load(enter_ptr + e0 + C + cols, mask=cmask, other=1.0)
    p = tl.load(enter_ptr + e0 + 2 * C + cols, mask=cmask, other=0.0)
    al = tl.zeros((BLOCK_C,), tl.float32)
    be = tl.zeros((BLOCK_C,), tl.float32)
    r = tl.full((BLOCK_C,), EMPTY, tl.float32)
    length = tl.minimum(CHUNK, T - n * CHUNK)
    base = (b * T + n * CHUNK).to(tl.int64) * C + cols
    for j in range(0, length, 4):
        k0, k1, k2, k3, m0, m1, m2, m3 = _load4(k_ptr, base, j, C, cmask, length, cols)
        v0, v1, v2, v3, m0, m1, m2, m3 = _load4(v_ptr, base, j, C, cmask, length, cols)
        g0, g1, g2, g3, m0, m1, m2, m3 = _load4(gy_ptr, base, j, C, cmask, length, cols)
        al, be, r = _adjoint_term(al, be, r, a, bb, p, k0, v0, g0, u, j, w, m0)
        a, bb, p = _state_step(a, bb, p, k0, v0, w, m0)
        al, be, r = _adjoint_term(al, be, r, a, bb, p, k1, v1, g1, u, j + 1, w, m1)
        a, bb, p = _state_step(a, bb, p, k1, v1, w, m1)
        al, be, r = _adjoint_term(al, be, r, a, bb, p, k2, v2, g2, u, j + 2, w, m2)
        a, bb, p = _state_step(a, bb, p, k2, v2, w, m2)
        al, be, r = _adjoint_term(al, be, r, a, bb, p, k3, v3, g3, u, j + 3, w, m3)
        a, bb, p = _state_step(a, bb, p, k3, v3, w, m3)
    tl.store(adj_ptr + e0 + cols, al, mask=cmask)
    tl.store(adj_ptr + e0 + C + cols, be, mask=cmask)
    tl.store(adj_ptr + e0 + 2 * C + cols, r, mask=cmask)


@triton.jit
def _grad_step(al, be, r, a, bb, p, kt, vt, gt, w, u, valid, dk_ptr, dv_ptr, off, du, dw):
    """Token j backwards: write dk_j, dv_j from alpha_{j+1} = (al, be) e^r; return alpha_j and du, dw summed."""
    ukt = u + kt
    q = tl.maximum(p, ukt)
    e1 = tl.exp(p - q)
    e2 = tl.exp(ukt - q)
    d = e1 * bb + e2
    y = (e1 * a + e2 * vt) / d
    g_cur = gt * e2 / d  # dL/dy * e^{u+k} / D
    ek = tl.exp(r + kt)  # e^{k_j} alpha_{j+1} / alpha~, <= 1
    tl.store(dv_ptr + off, g_cur + al * ek, mask=valid)
    tl.store(dk_ptr + off, g_cur * (vt - y) + ek * (al * vt + be), mask=valid)
    du += tl.where(valid, g_cur * (vt - y), 0.0)
    dw -= tl.where(valid, tl.exp(r - w + p) * (al * a + be * bb), 0.0)
    # alpha_j = g_j / D_j + e^{-w} alpha_{j+1}
    rn = tl.maximum(-q, r - w)
    f1 = tl.exp(-q - rn)
    f2 = tl.exp(r - w - rn)
    al = tl.where(valid, f1 * (gt / d) + f2 * al, al)
    be = tl.where(valid, f2 * be - f1 * (gt * y / d), be)
    r = tl.where(valid, rn, r)
    return al, be, r, du, dw


@CachedLauncher
@triton.jit
def _bwd_chunk(
    k_ptr,
    v_ptr,
    gy_ptr,
    w_ptr,
    u_ptr,
    enter_ptr,
    adj_ptr,
    gend_ptr,
    adj_end_ptr,
    adj0_ptr,
    dk_ptr,
    dv_ptr,
    duw_ptr,
    T,
    C,
    N,
    CHUNK: tl.constexpr,
    SUB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SCAN_HERE: tl.constexpr,
    HAS_INIT: tl.constexpr,
):
    """Backwards through one chunk. The states before every token are needed in reverse order: keep the state at
    the start of every SUB tokens, then per sub-block (last first) recompute SUB states, then walk them back.
    The adjoint leaving the chunk is read from adj_end (written by _scan_chunks) or, with SCAN_HERE, scanned here from
    the chunks' own adjoints (adj) starting at gend; then the first chunk's program writes the initial state's
    adjoint (adj0). du and dw: partial sums per (b, chunk), (B, N, 2, C)."""
    pid_c, n, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    NS: tl.constexpr = CHUNK // SUB
    srows = tl.arange(0, NS)
    rows = tl.arange(0, SUB)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    u = tl.load(u_ptr + cols, mask=cmask, other=0.0)
    e0 = (b * N + n).to(tl.int64) * 3 * C
    a = tl.load(enter_ptr + e0 + cols, mask=cmask, other=0.0)
    bb = tl.load(enter_ptr + e0 + C + cols, mask=cmask, other=1.0)
    p = tl.load(enter_ptr + e0 + 2 * C + cols, mask=cmask, other=0.0)
    length = tl.minimum(CHUNK, T - n * CHUNK)
    base = (b * T + n * CHUNK).to(tl.int64) * C + cols
    ca = tl.zeros((NS, BLOCK_C), tl.float32)
    cb = tl.zeros((NS, BLOCK_C), tl.float32)
    cp = tl.zeros((NS, BLOCK_C), tl.float32)
    for j in range(0, length, 4):
        sel = (srows[:, None] == j // SUB) & (j % SUB == 0)
        ca = tl.where(sel, a[None, :], ca)
        cb = tl.where(sel, bb[None, :], cb)
        cp = tl.where(sel, p[None, :], cp)
        k0, k1, k2, k3, m0, m1, m2, m3 = _load4(k_ptr, base, j, C, cmask, length, cols)
        v0, v1, v2, v3, m0, m1, m2, m3 = _load4(v_ptr, base, j, C, cmask, length, cols)
        a, bb, p = _state_step(a, bb, p, k0, v0, w, m0)
        a, bb, p = _state_step(a, bb, p, k1, v1, w, m1)
        a, bb, p = _state_step(a, bb, p, k2, v2, w, m2)
        a, bb, p = _state_step(a, bb, p, k3, v3, w, m3)
    if SCAN_HERE:
        al, be, r, _, a0, b0, r0, _ = _prefix(
            adj_ptr, adj_ptr, w, gend_ptr, b, n, T, C, N, cols, cmask, CHUNK, BLOCK_C, True, HAS_INIT, False
        )
        if n == 0:
            s0 = b.to(tl.int64) * 3 * C
            tl.store(adj0_ptr + s0 + cols, a0, mask=cmask)
            tl.store(adj0_ptr + s0 + C + cols, b0, mask=cmask)
            tl.store(adj0_ptr + s0 + 2 * C + cols, r0, mask=cmask)
    else:
        al = tl.load(adj_end_ptr + e0 + cols, mask=cmask, other=0.0)
        be = tl.load(adj_end_ptr + e0 + C + cols, mask=cmask, other=0.0)
        r = tl.load(adj_end_ptr + e0 + 2 * C + cols, mask=cmask, other=EMPTY)
    du = tl.zeros((BLOCK_C,), tl.float32)
    dw = tl.zeros((BLOCK_C,), tl.float32)
    for si in range(0, NS):
        s0 = (NS - 1 - si) * SUB
        if s0 < length:
            a, bb, p = _row(ca, srows, NS - 1 - si), _row(cb, srows, NS - 1 - si), _row(cp, srows, NS - 1 - si)
            ta = tl.zeros((SUB, BLOCK_C), tl.float32)
            tb = tl.zeros((SUB, BLOCK_C), tl.float32)
            tp = tl.zeros((SUB, BLOCK_C), tl.float32)
            for i in tl.static_range(0, SUB, 4):
                k0, k1, k2, k3, m0, m1, m2, m3 = _load4(k_ptr, base, s0 + i, C, cmask, length, cols)
                v0, v1, v2, v3, m0, m1, m2, m3 = _load4(v_ptr, base, s0 + i, C, cmask, length, cols)
                ta = tl.where(rows[:, None] == i, a[None, :], ta)
                tb = tl.where(rows[:, None] == i, bb[None, :], tb)
                tp = tl.where(rows[:, None] == i, p[None, :], tp)
                a, bb, p = _state_step(a, bb, p, k0, v0, w, m0)
                ta = tl.where(rows[:, None] == i + 1, a[None, :], ta)
                tb = tl.where(rows[:, None] == i + 1, bb[None, :], tb)
                tp = tl.where(rows[:, None] == i + 1, p[None, :], tp)
                a, bb, p = _state_step(a, bb, p, k1, v1, w, m1)
                ta = tl.where(rows[:, None] == i + 2, a[None, :], ta)
                tb = tl.where(rows[:, None] == i + 2, bb[None, :], tb)
                tp = tl.where(rows[:, None] == i + 2, p[None, :], tp)
                a, bb, p = _state_step(a, bb, p, k2, v2, w, m2)
                ta = tl.where(rows[:, None] == i + 3, a[None, :], ta)
                tb = tl.where(rows[:, None] == i + 3, bb[None, :], tb)
                tp = tl.where(rows[:, None] == i + 3, p[None, :], tp)
                a, bb, p = _state_step(a, bb, p, k3, v3, w, m3)
            for ii in tl.static_range(0, SUB, 4):
                i = SUB - 4 - ii
                j = s0 + i
                k0, k1, k2, k3, m0, m1, m2, m3 = _load4(k_ptr, base, j, C, cmask, length, cols)
                v0, v1, v2, v3, m0, m1, m2, m3 = _load4(v_ptr, base, j, C, cmask, length, cols)
                g0, g1, g2, g3, m0, m1, m2, m3 = _load4(gy_ptr, base, j, C, cmask, length, cols)
                al, be, r, du, dw = _grad_step(
                    al,
                    be,
                    r,
                    _row(ta, rows, i + 3),
                    _row(tb, rows, i + 3),
                    _row(tp, rows, i + 3),
                    k3,
                    v3,
                    g3,
                    w,
                    u,
                    m3,
                    dk_ptr,
                    dv_ptr,
                    base + (j + 3) * C,
                    du,
                    dw,
                )
                al, be, r, du, dw = _grad_step(
                    al,
                    be,
                    r,
                    _row(ta, rows, i + 2),
                    _row(tb, rows, i + 2),
                    _row(tp, rows, i + 2),
                    k2,
                    v2,
                    g2,
                    w,
                    u,
                    m2,
                    dk_ptr,
                    dv_ptr,
                    base + (j + 2) * C,
                    du,
                    dw,
                )
                al, be, r, du, dw = _grad_step(
                    al,
                    be,
                    r,
                    _row(ta, rows, i + 1),
                    _row(tb, rows, i + 1),
                    _row(tp, rows, i + 1),
                    k1,
                    v1,
                    g1,
                    w,
                    u,
                    m1,
                    dk_ptr,
                    dv_ptr,
                    base + (j + 1) * C,
                    du,
                    dw,
                )
                al, be, r, du, dw = _grad_step(
                    al,
                    be,
                    r,
                    _row(ta, rows, i),
                    _row(tb, rows, i),
                    _row(tp, rows, i),
                    k0,
                    v0,
                    g0,
                    w,
                    u,
                    m0,
                    dk_ptr,
                    dv_ptr,
                    base + j * C,
                    du,
                    dw,
                )
    part = (b * N + n).to(tl.int64) * 2 * C + cols
    tl.store(duw_ptr + part, du, mask=cmask)
    tl.store(duw_ptr + part + C, dw, mask=cmask)


@CachedLauncher
@triton.jit
def _bwd_finish(
    duw_part_ptr,
    adj0_ptr,
    s0_ptr,
    gstate_ptr,
    final_ptr,
    argmax_ptr,
    dk_ptr,
    du_ptr,
    dw_ptr,
    dstate_ptr,
    B,
    T,
    C,
    N,
    HAS_STATE: tl.constexpr,
    HAS_GSTATE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Everything after the chunks, in one launch (per block of channels): du and dw summed over (B, N); the
    initial state's gradient, A0 = a0 e^{p0} so dL/da0 = alpha_0 e^{p0}, dL/dp0 = alpha_0 A0 + beta_0 B0; and
    the final exponent's own gradient, gp - ga a - gb b: p is the max of its terms, so it goes to the one that
    attained it (argmax; -1 for the initial state), into dk at that token (or dp0) and into dw by its age."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = tl.arange(0, ROWS)
    du = tl.zeros((BLOCK_C,), tl.float32)
    dw = tl.zeros((BLOCK_C,), tl.float32)
    for m in range(0, B * N, ROWS):
        mask = ((m + rows) < B * N)[:, None] & cmask[None, :]
        offs = ((m + rows).to(tl.int64) * 2 * C)[:, None] + cols[None, :]
        du += tl.sum(tl.load(duw_part_ptr + offs, mask=mask, other=0.0), axis=0)
        dw += tl.sum(tl.load(duw_part_ptr + offs + C, mask=mask, other=0.0), axis=0)
    for b in range(0, B):
        s = b * 3 * C + cols  # (B, 3, C) offsets: small
        if HAS_STATE:
            al0 = tl.load(adj0_ptr + s, mask=cmask, other=0.0)
            be0 = tl.load(adj0_ptr + s + C, mask=cmask, other=0.0)
            r0 = tl.load(adj0_ptr + s + 2 * C, mask=cmask, other=0.0)
            a0 = tl.load(s0_ptr + s, mask=cmask, other=0.0)
            b0 = tl.load(s0_ptr + s + C, mask=cmask, other=0.0)
            p0 = tl.load(s0_ptr + s + 2 * C, mask=cmask, other=0.0)
            scale = tl.exp(r0 + p0)
            dp0 = scale * (al0 * a0 + be0 * b0)
        if HAS_GSTATE:
            ga = tl.load(gstate_ptr + s, mask=cmask, other=0.0)
            gb = tl.load(gstate_ptr + s + C, mask=cmask, other=0.0)
            gp = tl.load(gstate_ptr + s + 2 * C, mask=cmask, other=0.0)
            aT = tl.load(final_ptr + s, mask=cmask, other=0.0)
            bT = tl.load(final_ptr + s + C, mask=cmask, other=0.0)
            rest = gp - ga * aT - gb * bT
            at = tl.load(argmax_ptr + b * C + cols, mask=cmask, other=0)
            from_state = at < 0
            dw -= tl.where(from_state, T, T - 1 - at).to(tl.float32) * rest
            # one token per (b, c) attained the max: distinct addresses, no atomics
            tok = (b * T + tl.maximum(at, 0)).to(tl.int64) * C + cols
            to_k = cmask & (at >= 0)
            dk = tl.load(dk_ptr + tok, mask=to_k, other=0.0).to(tl.float32)
            tl.store(dk_ptr + tok, (dk + rest).to(dk_ptr.dtype.element_ty), mask=to_k)
            if HAS_STATE:
                dp0 += tl.where(from_state, rest, 0.0)
        if HAS_STATE:
            tl.store(dstate_ptr + s, al0 * scale, mask=cmask)
            tl.store(dstate_ptr + s + C, be0 * scale, mask=cmask)
            tl.store(dstate_ptr + s + 2 * C, dp0, mask=cmask)
    tl.store(du_ptr + cols, du, mask=cmask)
    tl.store(dw_ptr + cols, dw, mask=cmask)


def _grid_chunks(B, N, C):
    return (triton.cdiv(C, BLOCK_C), N, B)


def _scan_here(N) -> bool:
    """Whether the per-chunk kernels join the chunks' parts themselves (no scan kernel): up to SCAN_HERE_MAX_CHUNKS."""
    return N <= SCAN_HERE_MAX_CHUNKS


def _warps():
    return NUM_WARPS or max(1, BLOCK_C // 32)


# ---- as PyTorch operators -------------------------------------------------------------------------------------
# The launches are plain functions (`_forward`, `_backward`), reached two ways with the same autograd:
# - under torch.compile, as the custom operators rwkv_lab::wkv_forward / wkv_backward with fake shapes and a
#   registered backward: the compiler sees an opaque op, compiles the block around it (fusing its elementwise
#   work), keeps its outputs for the backward (fast_path.KEPT_OPS), and does not trace into Triton's launcher;
# - eagerly, through `EagerWKV`, an autograd.Function that calls them directly: the custom operators' Python
#   dispatch and autograd wrapper add more host time per forward + backward than the kernels take at the small
#   shapes (results/wkv/wkv_host_profile.csv).
# w, u and the state arrive as fp32 (the casts stay in autograd, outside).


def _forward(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> y (B, T, C) in v's dtype, the final state (B, 3, C) fp32, and for the backward the state entering every
    chunk (B, N, 3, C) and which token attained the final p (B, C) int32, -1 for the initial state."""
    return _launch_forward(w, u, k, v, state, None)


def _launch_forward(w, u, k, v, state, lengths):
    """`_forward`, and with `lengths` (B,) each sequence's state stopping after its own length (inference: the
    backward takes no lengths)."""
    # the kernels index rows of C: a caller or a compiled graph may hand over other strides (no copy otherwise)
    w, u, k, v = w.contiguous(), u.contiguous(), k.contiguous(), v.contiguous()
    state = None if state is None else state.contiguous()
    lengths = None if lengths is None else lengths.to(torch.int32).contiguous()
    B, T, C = k.shape
    N = triton.cdiv(T, CHUNK)
    dev = k.device
    summary = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    summary_idx = torch.empty(B, N, C, device=dev, dtype=torch.int32)
    enter = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    final = torch.empty(B, 3, C, device=dev, dtype=torch.float32)
    argmax = torch.empty(B, C, device=dev, dtype=torch.int32)
    y = torch.empty_like(v)
    grid = _grid_chunks(B, N, C)
    scan_here = _scan_here(N)
    _fwd_chunk_summary[grid](
        k,
        v,
        w,
        lengths,
        summary,
        summary_idx,
        T,
        C,
        N,
        CHUNK=CHUNK,
        BLOCK_C=BLOCK_C,
        HAS_LENGTHS=lengths is not None,
        num_warps=_warps(),
    )
    if not scan_here:
        _scan_chunks[(triton.cdiv(C, SCAN_BLOCK_C), B)](
            summary,
            summary_idx,
            w,
            state,
            lengths,
            enter,
            final,
            argmax,
            T,
            C,
            N,
            CHUNK=CHUNK,
            SCAN_BLOCK=SCAN_BLOCK,
            BLOCK_C=SCAN_BLOCK_C,
            REVERSE=False,
            HAS_INIT=state is not None,
            HAS_LENGTHS=lengths is not None,
        )
    _fwd_output[grid](
        k,
        v,
        w,
        u,
        summary,
        summary_idx,
        state,
        enter,
        final,
        argmax,
        y,
        lengths,
        T,
        C,
        N,
        CHUNK=CHUNK,
        BLOCK_C=BLOCK_C,
        SCAN_HERE=scan_here,
        HAS_INIT=state is not None,
        HAS_LENGTHS=lengths is not None,
        num_warps=_warps(),
    )
    return y, final, enter, argmax


wkv_forward = torch.library.custom_op("rwkv_lab::wkv_forward", _forward, mutates_args=())


@wkv_forward.register_fake
def _(w, u, k, v, state):
    B, T, C = k.shape
    N = triton.cdiv(T, CHUNK)
    return (
        torch.empty_like(v),
        k.new_empty(B, 3, C, dtype=torch.float32),
        k.new_empty(B, N, 3, C, dtype=torch.float32),
        k.new_empty(B, C, dtype=torch.int32),
    )


def _backward(
    gy: torch.Tensor,
    gstate: torch.Tensor | None,
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None,
    enter: torch.Tensor,
    final: torch.Tensor,
    argmax: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dw, du (C,), dk, dv (B, T, C) and the initial state's gradient (B, 3, C) ((0,) without a state).

    With A, B the true sums (A = a e^p), alpha = dL/dA and beta = dL/dB obey, backwards in t,
        alpha_t = g_t / D_t + e^{-w} alpha_{t+1},  beta_t = -g_t y_t / D_t + e^{-w} beta_{t+1},
    with D_t the denominator of y_t; then dv_t, dk_t, du, dw follow term by term. The final state's own gradient
    enters as alpha_T = ga e^{-p}, beta_T = gb e^{-p}, the rest of gp in _bwd_finish.
    """
    gy, w, u, k, v = gy.contiguous(), w.contiguous(), u.contiguous(), k.contiguous(), v.contiguous()
    state = None if state is None else state.contiguous()
    B, T, C = k.shape
    N = enter.shape[1]
    dev = k.device
    g_end = None if gstate is None else torch.stack([gstate[:, 0], gstate[:, 1], -final[:, 2]], dim=1)
    adj_local = torch.empty(B, N, 3, C, device=dev, dtype=torch.float32)
    adj0 = torch.empty(B, 3, C, device=dev, dtype=torch.float32)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    duw_part = torch.empty(B, N, 2, C, device=dev, dtype=torch.float32)
    grid = _grid_chunks(B, N, C)
    scan_here = _scan_here(N)
    _bwd_chunk_summary[grid](
        k, v, gy, w, u, enter, adj_local, T, C, N, CHUNK=CHUNK, BLOCK_C=BLOCK_C, num_warps=_warps()
    )
    adj_end = None
    if not scan_here:
        adj_end = torch.empty_like(adj_local)
        _scan_chunks[(triton.cdiv(C, SCAN_BLOCK_C), B)](
            adj_local,
            adj_local,
            w,
            g_end,
            None,
            adj_end,
            adj0,
            adj0,
            T,
            C,
            N,
            CHUNK=CHUNK,
            SCAN_BLOCK=SCAN_BLOCK,
            BLOCK_C=SCAN_BLOCK_C,
            REVERSE=True,
            HAS_INIT=g_end is not None,
            HAS_LENGTHS=False,
        )
    _bwd_chunk[grid](
        k,
        v,
        gy,
        w,
        u,
        enter,
        adj_local,
        g_end,
        adj_end,
        adj0,
        dk,
        dv,
        duw_part,
        T,
        C,
        N,
        CHUNK=CHUNK,
        SUB=SUB,
        BLOCK_C=BLOCK_C,
        SCAN_HERE=scan_here,
        HAS_INIT=g_end is not None,
        num_warps=_warps(),
    )
    du = torch.empty(C, device=dev, dtype=torch.float32)
    dw = torch.empty_like(du)
    dstate = torch.empty((B, 3, C) if state is not None else (0,), device=dev, dtype=torch.float32)
    _bwd_finish[(triton.cdiv(C, FINISH_BLOCK_C),)](
        duw_part,
        adj0,
        state,
        gstate,
        final,
        argmax,
        dk,
        du,
        dw,
        dstate,
        B,
        T,
        C,
        N,
        HAS_STATE=state is not None,
        HAS_GSTATE=gstate is not None,
        ROWS=FINISH_ROWS,
        BLOCK_C=FINISH_BLOCK_C,
    )
    return dw, du, dk, dv, dstate


wkv_backward = torch.library.custom_op("rwkv_lab::wkv_backward", _backward, mutates_args=())


@wkv_backward.register_fake
def _(gy, gstate, w, u, k, v, state, enter, final, argmax):
    B, T, C = k.shape
    return (
        w.new_empty(C),
        w.new_empty(C),
        torch.empty_like(k),
        torch.empty_like(v),
        w.new_empty((B, 3, C) if state is not None else (0,)),
    )


def _setup_context(ctx, inputs, output):
    w, u, k, v, state = inputs
    _, final, enter, argmax = output
    ctx.has_state = state is not None
    ctx.save_for_backward(w, u, k, v, state, enter, final, argmax)
    # an output without a gradient stays None: the backward then skips its adjoint (no zeros made and scanned)
    ctx.set_materialize_grads(False)


def _gradients(backward, ctx, gy, gstate):
    """(dw, du, dk, dv, dstate) from the outputs' gradients (None: not used), through `backward`."""
    w, u, k, v, state, enter, final, argmax = ctx.saved_tensors
    gy = torch.zeros_like(v) if gy is None else gy
    gstate = None if gstate is None else gstate.contiguous()
    dw, du, dk, dv, dstate = backward(gy, gstate, w, u, k, v, state, enter, final, argmax)
    # w here is exp(time_decay) as given: the chain rule to time_decay is the caller's autograd
    return dw, du, dk, dv, dstate if ctx.has_state else None


def _op_backward(ctx, gy, gstate, _genter, _gargmax):
    return _gradients(wkv_backward, ctx, gy, gstate)


wkv_forward.register_autograd(_op_backward, setup_context=_setup_context)


class EagerWKV(torch.autograd.Function):
    """The operator outside torch.compile: the same launches and gradients as wkv_forward's registered backward,
    without the custom operator's dispatch."""

    @staticmethod
    def forward(ctx, w, u, k, v, state):
        y, final, enter, argmax = _forward(w, u, k, v, state)
        _setup_context(ctx, (w, u, k, v, state), (y, final, enter, argmax))
        return y, final

    @staticmethod
    def backward(ctx, gy, gstate):
        return _gradients(_backward, ctx, gy, gstate)


def wkv_triton(w, u, k, v, state=None, lengths=None):
    """The kernel backend: same signature and results as wkv.wkv_recurrent. y in v's dtype, the state fp32.

    `lengths` (B,): each sequence's state stops after its own length (a batch of right-padded prompts in one
    prefill). Inference only: the backward has no lengths, so a call that autograd would record is refused."""
    w, u, state = w.float(), u.float(), None if state is None else state.float()
    if lengths is not None:
        recorded = [x for x in (w, u, k, v, state) if x is not None and x.requires_grad]
        if torch.is_grad_enabled() and recorded:
            raise NotImplementedError(
                "the Triton WKV takes lengths in inference only (no backward): call it under torch.no_grad(), "
                "or use backend='chunked' for gradients"
            )
        return _launch_forward(w, u, k, v, state, lengths)[:2]
    if torch.compiler.is_compiling():
        return wkv_forward(w, u, k, v, state)[:2]
    return EagerWKV.apply(w, u, k, v, state)
