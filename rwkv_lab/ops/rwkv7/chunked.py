"""The chunked form of the RWKV-7 state update: chunks of C tokens in parallel, joined by passing S. O(T C N).

Within a chunk that starts from S_0, write g_t for the sum of log_w over the chunk's tokens up to t, and
u_t = S_{t-1} a_t (what the transition removes at token t). Unrolling
S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T gives

    u_t = S_0 (a_t e^{g_{t-1}}) + sum_{i<t} [ (a_t . b_i e^{g_{t-1}-g_i}) u_i + (a_t . k_i e^{g_{t-1}-g_i}) v_i ]
    y_t = S_0 (r_t e^{g_t})     + sum_{i<=t} [ (r_t . b_i e^{g_t-g_i}) u_i   + (r_t . k_i e^{g_t-g_i}) v_i ]
    S_C = S_0 diag(e^{g_C}) + sum_i [ u_i (b_i e^{g_C-g_i})^T + v_i (k_i e^{g_C-g_i})^T ]

The first line is a unit lower-triangular system for the u_t (the generalised delta rule's WY/UT form, as fla's
`chunk_dplr_delta_rule`): its solution is U = W S_0^T + U_0, with W and U_0 independent of S_0, and so are
y = R S_0^T + Y_0 and S_C = S_0 M + E (M = diag(e^{g_C}) + W^T (b e^{g_C-g})). Everything but S_0 is computed for
all chunks at once, chunks and heads as one batch; then a loop over chunks (T/C steps of one N x N matmul-add)
passes S from chunk to chunk, and y comes from the chunks' starting states in one batched matmul.

Two ways to the decays. The fast path, taken when every log_w is above `fast_path_bound` (RWKV-7's decays always
are, in fp32 up to C = 64): every decay factor is taken relative to one token m per chunk (its first half's last),
e^{g_t-g_i} = e^{g_t-g_m} e^{g_m-g_i}, so the C x C scores are plain matmuls of decay-scaled queries against
decay-scaled keys. The stable path, for the rest: every decay factor is e^{(a sum of log_w)} over a stretch of
tokens, computed as a product of the w = e^{log_w} in that stretch (never as a ratio of two cumulative products
or as a difference of two cumulative sums), so each factor is in (0, 1] at any log_w <= 0: nothing overflows and
nothing cancels; the scores between tokens t > i use a midpoint m between them (both factors <= 1), recursively
over halves: matmuls, log2(C) levels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .common import prepare

SPAN_ELEMENTS = 1 << 18  # elements per (span of tokens, H, N) tensor: 1 MB in fp32 (`wkv7_chunked`)
DEFAULT_CHUNK = 64  # the fastest of 16, 32, 64 in benchmarks/bench_wkv7_cpu.py (2 CPU cores); fp32 fast path limit


@functools.lru_cache(maxsize=32)
def _score_positions(C: int, device: torch.device) -> list[torch.Tensor]:
    """Where each level's scores go in the flat (2, C, 2, C) [query kind, query, key kind, key] score array: the
    diagonal (C, 2) first, then per level h = 1, 2, .., C/2 the blocks (C/2h, h, 2, h, 2) of `_decays_and_scores`."""
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    at = lambda qk, t, kk, i: ((qk * C + t) * 2 + kk) * C + i  # noqa: E731
    positions = [at(0, ar(C)[:, None], ar(2)[None, :], ar(C)[:, None]).flatten()]
    h = 1
    while h < C:
        block = ar(C // (2 * h))[:, None, None, None, None] * 2 * h
        t, qk, i, kk = ar(h)[:, None, None, None], ar(2)[:, None, None], ar(h)[:, None], ar(2)
        positions.append(at(qk, block + h + t, kk, block + i).flatten())
        h *= 2
    return positions


def _decays_and_scores(ra, kb, w):
    """Per chunk: ra = (r, a) and kb = (k, b) stacked (..., C, 2, N), w = exp(log_w) (..., C, N) -> the chunk's
    decays and its tokens' decayed dot products.

    Decays in (0, 1]: (e^{g_t}, e^{g_{t-1}}) stacked (..., C, 2, N) (the chunk's tokens up to t, before t);
    e^{g_C - g_t} (..., C, N) (the tokens after t); e^{g_C} (..., N).
    Scores (..., 2, C, 2, C) [query kind (r, a), t, key kind (k, b), i]:

    rk[t, i] = sum_j r_t[j] k_i[j] e^{g_t[j] - g_i[j]}, t >= i;   rb likewise with b_i;
    ak[t, i] = sum_j a_t[j] k_i[j] e^{g_{t-1}[j] - g_i[j]}, t > i;  ab likewise with b_i;  zero elsewhere.

    Built over halves, C a power of two: level by level, every block of 2h tokens gets the scores of its second
    half's queries against its first half's keys through the block's midpoint m (the first half's last token),
    e^{g_t - g_i} = e^{g_t - g_m} e^{g_m - g_i}; the prefix and suffix products within blocks double alongside.
    """
    *lead, C, _, N = ra.shape
    positions = _score_positions(C, ra.device)
    diag = (ra[..., 0:1, :] * kb).sum(-1)  # (..., C, 2): a token's own rk and rb
    scores = ra.new_zeros(*lead, 4 * C * C).index_copy_(-1, positions[0], diag.flatten(-2))
    # within blocks of h tokens: the products of w up to and before t (upto), after t (after), over all (total)
    upto, after, total = torch.stack([w, torch.ones_like(w)], -2), torch.ones_like(w), w
    h = 1
    while h < C:
        nb = C // (2 * h)
        pairs = lambda x: x.view(*lead, nb, 2, h, *x.shape[len(lead) + 1 :])  # noqa: E731 - (first, second) half
        upto, after = pairs(upto), pairs(after)
        queries = pairs(ra)[..., 1, :, :, :] * upto[..., 1, :, :, :]  # (..., nb, h, 2, N): rows (t, r or a)
        keys = pairs(kb)[..., 0, :, :, :] * after[..., 0, :, None, :]  # rows (i, k or b)
        cross = queries.flatten(-3, -2) @ keys.flatten(-3, -2).transpose(-1, -2)  # (..., nb, 2h, 2h)
        scores.index_copy_(-1, positions[h.bit_length()], cross.flatten(-3))
        # the products within blocks of 2h from those within blocks of h
        total = total.view(*lead, nb, 2, 1, N)
        first, second = total[..., 0:1, :, :], total[..., 1:2, :, :]  # (..., nb, 1, 1, N)
        upto = (upto * torch.cat([torch.ones_like(first), first], -3)[..., None, :]).view(*lead, C, 2, N)
        after = (after * torch.cat([second, torch.ones_like(second)], -3)).view(*lead, C, N)
        total = (first * second).view(*lead, nb, N)
        h *= 2
    return upto, after, total.view(*lead, N), scores.view(*lead, 2, C, 2, C)


def _fast_decays_and_scores(r, a, k, b, log_w):
    """`_chunk_factors` for decays bounded below by `fast_path_bound`, the reference token m the first half's last:
    e^{g_t - g_i} = e^{g_t - g_m} e^{g_m - g_i}, so every score is a matmul of a decay-scaled query against a
    decay-scaled key, and e^{g_m}, e^{g_C - g_m} stay per channel. (The contiguous operand comes first in each
    product: an elementwise result takes the first operand's layout, so the permuted inputs are read once.)"""
    *lead, C, N = r.shape
    half = C // 2
    g = log_w.cumsum(-2).view(-1, C, N)  # (G, C, N) contiguous: g_t, the chunk's tokens up to t; |g| <= C |log_w|
    g_ref = g[:, half - 1 : half, :].clone() if half else torch.zeros_like(g[:, :1, :])  # (G, 1, N)
    g = g.sub_(g_ref)  # g_t - g_m
    up = torch.exp(g)  # e^{g_t - g_m}
    r_up = (up.view(*lead, C, N) * r).view(g.shape)
    up_before = torch.cat([torch.exp(-g_ref), up[:, :-1]], 1).view(*lead, C, N)  # e^{g_{t-1} - g_m}
    a_up = (up_before * a).view(g.shape)
    down = torch.neg(g).exp_().view(*lead, C, N)  # e^{g_m - g_t}
    k_dn, b_dn = (down * k).view(g.shape), (down * b).view(g.shape)
    sees, sees_before = _causal_masks(C, r.dtype, r.device)
    rk = (r_up @ k_dn.mT).mul_(sees)  # (G, C, C)
    rb = (r_up @ b_dn.mT).mul_(sees)
    ak = (a_up @ k_dn.mT).mul_(sees_before)
    neg_ab = torch.baddbmm(rk.new_zeros(1, 1, 1), a_up, b_dn.mT, beta=0, alpha=-1)
    ones = torch.ones_like(g_ref[:, 0, :])
    return r_up, a_up, k_dn, b_dn, torch.exp(g_ref), torch.exp(g[:, -1:, :]), ones, (rk, rb, ak, neg_ab)


def _stable_decays_and_scores(r, a, k, b, log_w):
    """`_chunk_factors` at any log_w <= 0, the reference token the chunk's start (e^{g_m} = 1; k and b decayed to the
    chunk's end): every decay a product of w over a stretch of tokens (`_decays_and_scores`)."""
    *lead, C, N = r.shape
    ra, kb = torch.stack([r, a], -2), torch.stack([k, b], -2)  # (..., C, 2, N)
    w = torch.exp(log_w).contiguous()  # the one exp: every decay below is a product of these
    upto, after, decay_all, scores = _decays_and_scores(ra, kb, w)
    r_up, a_up = (x.reshape(-1, C, N) for x in (ra * upto).unbind(-2))  # r e^{g_t}, a e^{g_{t-1}}
    k_dn, b_dn = (x.reshape(-1, C, N) for x in (kb * after[..., None, :]).unbind(-2))  # (k, b) e^{g_C - g_t}
    scores = scores.reshape(-1, 2, C, 2, C)
    rk, rb, ak, ab = (scores[:, q, :, kk, :] for q in (0, 1) for kk in (0, 1))  # (G, C, C) each
    ones = torch.ones_like(r_up[:, :1, :])
    return r_up, a_up, k_dn, b_dn, ones, ones, decay_all.reshape(-1, N), (rk, rb, ak, -ab)


def _chunk_factors(r, a, k, b, log_w, fast: bool):
    """Per chunk, inputs (..., C, N) -> what its state update needs, with the chunks and heads as one batch G,
    relative to a reference token m of the chunk:

    r_up, a_up (G, C, N): r_t e^{g_t - g_m}, a_t e^{g_{t-1} - g_m};  k_dn, b_dn (G, C, N): (k_i, b_i) e^{g_m - g_i};
    to_ref e^{g_m} and to_end e^{g_C - g_m} (G, 1, N);  diag (G, N): e^{g_C} / (to_ref to_end);
    the scores (G, C, C): rk[t, i] = r_t . k_i e^{g_t - g_i} and rb likewise (t >= i), ak[t, i] = a_t . k_i
    e^{g_{t-1} - g_i} (t > i) and -ab likewise (its diagonal and upper triangle left as they are: the triangular
    solve never reads them).
    The fast path's m is the chunk's midpoint (diag = 1); the stable path's is its start for r and a (to_ref = 1) and
    its end for k and b (to_end = 1, diag = e^{g_C}).
    """
    return (_fast_decays_and_scores if fast else _stable_decays_and_scores)(r, a, k, b, log_w)


@functools.lru_cache(maxsize=32)
def _causal_masks(C: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C): 1 where r_t sees token i (t >= i); 1 where a_t does (t > i)."""
    t, i = torch.arange(C, device=device)[:, None], torch.arange(C, device=device)
    return (t >= i).to(dtype), (t > i).to(dtype)


def fast_path_bound(C: int, dtype: torch.dtype) -> float:
    """The smallest log_w the fast path takes at chunk size C in `dtype`: the larger of two bounds.

    Range: its factors e^{+-(g_t - g_m)} span at most ceil(C/2) tokens, so they are at most e^{ceil(C/2) |log_w|};
    keeping that <= finfo.max^(1/4) (fp32: 4e9, fp64: 1e77) leaves every product of two of them, times the inputs
    and gradients, far from overflow, and every inverse far from the subnormals: fp32 -2.8 at C = 16, -0.69 at
    C = 64 (RWKV-7's decays reach -e^-0.5 = -0.61); fp64 -5.5 at C = 64.
    Precision: a token's own score r_t . k_t is (r_t e^{g_t - g_m}) . (k_t e^{g_m - g_t}); its gradient with respect
    to log_w, exactly 0, comes out as a difference of terms rounded to eps |r_t k_t| while the true gradient shrinks
    like e^{log_w}: a relative error ~ eps e^{|log_w|} (measured: 4.5e-8 at log_w = -20 in fp64). e^{|log_w|} <=
    eps^(-1/5) keeps it <= eps^(4/5) (fp32 2e-6, fp64 2e-13): log_w >= -3.3 (fp32), -7.3 (fp64).
    """
    eps = torch.finfo(dtype).eps
    return max(-math.log(torch.finfo(dtype).max) / (4 * -(-C // 2)), math.log(eps) / 5)


def chunk_size_for(T: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """The chunk: `chunk_size` (a power of two), or the smallest power of two >= T for a shorter sequence."""
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"the RWKV-7 chunk size must be a power of two; got {chunk_size}")
    return min(chunk_size, 1 << (T - 1).bit_length())


def wkv7_chunked(r, log_w, k, v, a, b, state=None, chunk_size: int = DEFAULT_CHUNK):
    """The chunked form: inputs (B, T, H, N), state (B, H, N, N) or None; returns y (B, T, H, N) and the final state.

    The tokens go in spans of whole chunks, about SPAN_ELEMENTS per (span, H, N) tensor, one after the other with S
    passed between them, so that each span's dozen intermediates stay in the CPU's caches (at (1, 4096, 768), spans of
    320 tokens took 0.8x the time of one span of 4096 on 2 cores, 0.7x on 1; 2^17 to 2^19 elements within 6%)."""
    cd, (r, log_w, k, v, a, b), S = prepare(r, log_w, k, v, a, b, state)
    B, T, H, N = k.shape
    C = chunk_size_for(T, chunk_size)
    fast = bool(log_w.min() >= fast_path_bound(C, cd))
    span = C * max(1, SPAN_ELEMENTS // (B * C * H * N))
    ys = []
    for lo in range(0, T, span):
        y, S = _wkv7_span(*(x[:, lo : lo + span] for x in (r, log_w, k, v, a, b)), S, C, fast)
        ys.append(y)
    return (torch.cat(ys, 1) if len(ys) > 1 else ys[0]), S


def _wkv7_span(r, log_w, k, v, a, b, S, C: int, fast: bool):
    """`wkv7_chunked` over one span of tokens, in chunks of C: inputs (B, T, H, N), S (B, H, N, N) in the compute
    dtype; the fast path or not decided by the caller for the whole sequence."""
    B, T, H, N = k.shape
    n = -(-T // C)

    def chunks(x):  # (B, T, H, N) -> (n, B, H, C, N) view (chunk first: the loop's slices are contiguous); padded
        x = F.pad(x, (0, 0, 0, 0, 0, n * C - T)) if n * C > T else x  # tokens (log_w = 0, all else 0) keep S as it is
        return x.view(B, n, C, H, N).permute(1, 0, 3, 2, 4)

    factors = _chunk_factors(*(chunks(x) for x in (r, a, k, b, log_w)), fast)
    r_up, a_up, k_dn, b_dn, to_ref, to_end, diag, (rk, rb, ak, neg_ab) = factors  # (G, ...): G = n B H
    v = chunks(v).reshape(-1, C, N)

    # u_t = S_{t-1} a_t as U = W S_0^T + U_0: solve (I - ab) [W', U_0] = [a e^{g_{t-1} - g_m}, ak v] (the diagonal 1
    # implied, not read); W = W' diag(e^{g_m}), as a column scaling commutes with the solve. Solved as the transposed
    # system (X^T (I - ab)^T = ...), which takes both operands as they are laid out (half the time).
    rhs = torch.cat([a_up, ak @ v], -1)  # (G, C, 2N)
    WU0 = torch.linalg.solve_triangular(neg_ab.mT, rhs.mT, upper=True, left=False, unitriangular=True).mT
    W_ref, U0 = WU0[..., :N], WU0[..., N:]  # (G, C, N) each

    # y = R S_0^T + Y0, R = (r e^{g_t - g_m} + rb W') diag(e^{g_m}), Y0 = rk v + rb U_0: all but S_0 in parallel
    R_ref = torch.baddbmm(r_up, rb, W_ref)  # (G, C, N)
    Y0 = (rk @ v).baddbmm_(rb, U0)  # in place: baddbmm's backward does not need the tensor it adds to
    # The loop carries P = S_0 diag(e^{g_m}), S_0 the state at the chunk's start: P' = P M + E with
    # M = (diag + W'^T b_dn) diag(e^{g_C - g_m} e^{g_m'}) (the next chunk's m'; 1 after the last) and
    # E = (U_0^T b_dn + v^T k_dn) diag(e^{g_C - g_m} e^{g_m'}): the chunk's own writes, as seen at its end
    to_ref = to_ref.view(n, B * H, 1, N)
    scale = to_end * torch.cat([to_ref[1:], torch.ones_like(to_ref[:1])]).view(-1, 1, N)  # (G, 1, N)
    WU0_b = WU0.mT @ b_dn  # (G, 2N, N): W'^T b_dn over U_0^T b_dn
    WU0_b[:, :N].diagonal(0, -2, -1).add_(diag)
    M = WU0_b[:, :N].mul_(scale).view(n, B * H, N, N)
    E = torch.baddbmm(WU0_b[:, N:], v.mT, k_dn).mul_(scale).view(n, B * H, N, N)

    P = S.reshape(B * H, N, N) * to_ref[0]
    starts = []  # P at each chunk's start: only the (N x N) state passes from chunk to chunk
    for c in range(n):
        starts.append(P)
        P = torch.baddbmm(E[c], P, M[c])
    y = Y0.baddbmm_(R_ref, torch.stack(starts).view(-1, N, N).mT)  # (G, C, N)
    y = y.view(n, B, H, C, N).permute(1, 0, 3, 2, 4).reshape(B, n * C, H, N)[:, :T]
    return y, P.view(B, H, N, N)
