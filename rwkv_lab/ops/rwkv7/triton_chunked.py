"""The RWKV-7 state update as chunked Triton kernels, forward only (inference, prefill): backend "triton_chunked".

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

Two kernels:

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

Arithmetic is fp32 for fp32 / bf16 / fp16 inputs with the state fp32; tl.dot on fp32 uses input_precision "tf32x3"
on the GPU (three tf32 products: about fp32's accuracy on tensor cores; plain "tf32" would cost ~1e-3 relative)
and fp64 inputs are computed in fp64 ("ieee"). Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1
(the tests). Forward only: a call whose inputs require a gradient is refused (backend "triton" trains).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher
from .common import compute_dtype
from .triton_kernels import LOG_W_MIN

CHUNK = 16  # tokens per chunk: see the module docstring (range of the decay factors at LOG_W_MIN; tl.dot's minimum)
ROWS = 32  # value rows per _chunk_scan program (at most N)
MAX_HEAD = 128  # the largest head size: each program holds a dozen (C, N) tiles (the scan: S, (BV, N)) in registers


@triton.jit
def _dot(x, y, PREC: tl.constexpr):
    return tl.dot(x, y, input_precision=PREC)


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
    k_end = k * to_end
    b_end = b * to_end

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
    T,
    H,
    NC,
    N: tl.constexpr,
    C: tl.constexpr,
    BV: tl.constexpr,
    HAS_STATE: tl.constexpr,
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


def wkv7_triton_chunked(r, log_w, k, v, a, b, state=None):
    """Forward only: inputs (B, T, H, N), state (B, H, N, N) or None; returns y (B, T, H, N) in v's dtype and the
    final state in fp32 (fp64 for fp64 inputs), as wkv7_recurrent."""
    inputs = (r, log_w, k, v, a, b, state)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        raise RuntimeError(
            "wkv7 backend 'triton_chunked' is forward-only (inference / prefill) and its inputs require grad: use "
            "backend 'triton' for training, or call it under torch.no_grad()"
        )
    cd = compute_dtype(*inputs)
    r, log_w, k, v, a, b = (x.contiguous() for x in (r, log_w, k, v, a, b))
    state = None if state is None else state.to(cd).contiguous()
    B, T, H, N = k.shape
    check_head_size(N)
    dev = k.device
    n_chunks = triton.cdiv(T, CHUNK)
    dt = tl.float64 if cd == torch.float64 else tl.float32
    # tf32x3: fp32 accuracy on tensor cores (plain tf32 rounds the operands to 10 bits); fp64 and the interpreter
    # (which has no tf32) take "ieee"
    prec = "ieee" if cd == torch.float64 or os.environ.get("TRITON_INTERPRET") == "1" else "tf32x3"
    # R_eff, Y_0, W, U_0, B_end, K_end: (B, H, n_chunks, C, N) each; e^{g_C} (B, H, n_chunks, N)
    factors = torch.empty(6, B, H, n_chunks, CHUNK, N, device=dev, dtype=cd).unbind(0)
    decay = torch.empty(B, H, n_chunks, N, device=dev, dtype=cd)
    _chunk_factors[(n_chunks, H, B)](
        r, log_w, k, v, a, b, *factors, decay, T, H, n_chunks, N=N, C=CHUNK, DT=dt, PREC=prec, num_warps=4
    )
    y = torch.empty_like(v)
    final = torch.empty(B, H, N, N, device=dev, dtype=cd)
    bv = min(ROWS, N)
    _chunk_scan[(N // bv, H, B)](
        *factors,
        decay,
        v,
        state,
        y,
        final,
        T,
        H,
        n_chunks,
        N=N,
        C=CHUNK,
        BV=bv,
        HAS_STATE=state is not None,
        DT=dt,
        PREC=prec,
        num_warps=4,
    )
    return y, final
