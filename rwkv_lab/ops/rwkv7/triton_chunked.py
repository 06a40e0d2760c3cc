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

    Y   = R_eff S_0^T + Y_0      R_eff = R_up + L_rb W              Y_0 = L_rb U_0 + L_rk V     (C x N)
    S_C = S_0 M + E              M = diag(e^{g_C}) + W^T B_end      E = U_0^T B_end + V^T K_end (N x N)

Two kernels:

_chunk_factors  one program per (chunk, head, batch), all in parallel: loads the chunk's (C, N) inputs, takes g by a
                cumulative sum, forms the four C x C score matrices with tl.dot, inverts I - L_ab by forward
                substitution over its C rows (C x C in registers: 16 steps of a C x C update), and stores
                R_eff and Y_0 (C, N) and M and E (N, N), fp32 (fp64 for fp64 inputs).
_chunk_scan     one program per (block of BV value rows, head, batch): S[rows, :] (BV, N) in registers, walking
                the chunks in order: y = Y_0[:, rows] + R_eff S^T (a (C, N) x (N, BV) dot), then S <- S M + E[rows]
                (a (BV, N) x (N, N) dot). Value rows never interact (the transition acts on the key side), so the
                N/BV row blocks of a head run in parallel. T/C dependent steps instead of T.

Memory: the factors are (2 C N + 2 N^2) numbers per chunk and head in the compute dtype: at C = 16, N = 64 that is
2.7x the chunk's six (C, N) inputs in fp32, written once and read once (plus M once per row block).

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

import torch
import triton
import triton.language as tl

from ...triton_launch import CachedLauncher
from .common import compute_dtype
from .triton_kernels import LOG_W_MIN

CHUNK = 16  # tokens per chunk: see the module docstring (range of the decay factors at LOG_W_MIN; tl.dot's minimum)
ROWS = 32  # value rows per _chunk_scan program (at most N)
MAX_HEAD = 128  # the largest head size: _chunk_factors holds two N x N matrices in registers


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
    m_ptr,
    e_ptr,
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
    diag = tl.where(cols[:, None] == cols[None, :], tl.exp(g_end)[None, :], 0.0)  # (N, N) diag(e^{g_C})
    m = diag + _dot(tl.trans(w_mat), b_end, PREC)  # (N, N): S_C = S_0 M + E
    e = _dot(tl.trans(u0), b_end, PREC) + _dot(tl.trans(v), k_end, PREC)  # (N, N)

    # the factors chunk-major, (B, H, NC, C, N) and (B, H, NC, N, N): each program's reads in _chunk_scan contiguous
    chunk = (bb * H + h).to(tl.int64) * NC + c
    tile = tok[:, None] * N + cols[None, :]
    square = cols[:, None] * N + cols[None, :]
    tl.store(reff_ptr + chunk * C * N + tile, r_eff)
    tl.store(y0_ptr + chunk * C * N + tile, y0)
    tl.store(m_ptr + chunk * N * N + square, m)
    tl.store(e_ptr + chunk * N * N + square, e)


@CachedLauncher
@triton.jit
def _chunk_scan(
    reff_ptr,
    y0_ptr,
    m_ptr,
    e_ptr,
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
        r_eff = tl.load(reff_ptr + chunk * C * N + tok[:, None] * N + cols[None, :])  # (C, N)
        y0 = tl.load(y0_ptr + chunk * C * N + tok[:, None] * N + rows[None, :])  # (C, BV)
        m = tl.load(m_ptr + chunk * N * N + cols[:, None] * N + cols[None, :])  # (N, N)
        e = tl.load(e_ptr + chunk * N * N + rows[:, None] * N + cols[None, :])  # (BV, N)
        y = y0 + _dot(r_eff, tl.trans(S), PREC)  # (C, BV): y_t[rows] = Y_0 + R_eff S_0[rows]^T
        t = c * C + tok
        offs = ((bb * T + t).to(tl.int64) * H + h)[:, None] * N + rows[None, :]  # (C, BV) in (B, T, H, N)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=(t < T)[:, None] & (rows < N)[None, :])
        S = _dot(S, m, PREC) + e  # the state at the next chunk's start
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
    # take "ieee"
    prec = "ieee" if cd == torch.float64 or not k.is_cuda else "tf32x3"
    r_eff = torch.empty(B, H, n_chunks, CHUNK, N, device=dev, dtype=cd)
    y0 = torch.empty_like(r_eff)
    m = torch.empty(B, H, n_chunks, N, N, device=dev, dtype=cd)
    e = torch.empty_like(m)
    _chunk_factors[(n_chunks, H, B)](
        r, log_w, k, v, a, b, r_eff, y0, m, e, T, H, n_chunks, N=N, C=CHUNK, DT=dt, PREC=prec, num_warps=4
    )
    y = torch.empty_like(v)
    final = torch.empty(B, H, N, N, device=dev, dtype=cd)
    bv = min(ROWS, N)
    _chunk_scan[(N // bv, H, B)](
        r_eff,
        y0,
        m,
        e,
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
