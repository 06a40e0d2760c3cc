"""The chunked form of the RWKV-7 state update: chunks of C tokens in parallel, joined by passing S. O(T C N).

Within a chunk that starts from S_0, write g_t for the sum of log_w over the chunk's tokens up to t, and
u_t = S_{t-1} a_t (what the transition removes at token t). Unrolling
S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T gives

    u_t = S_0 (a_t e^{g_{t-1}}) + sum_{i<t} [ (a_t . b_i e^{g_{t-1}-g_i}) u_i + (a_t . k_i e^{g_{t-1}-g_i}) v_i ]
    y_t = S_0 (r_t e^{g_t})     + sum_{i<=t} [ (r_t . b_i e^{g_t-g_i}) u_i   + (r_t . k_i e^{g_t-g_i}) v_i ]
    S_C = S_0 diag(e^{g_C}) + sum_i [ u_i (b_i e^{g_C-g_i})^T + v_i (k_i e^{g_C-g_i})^T ]

The first line is a unit lower-triangular system for the u_t (the generalised delta rule's WY/UT form, as fla's
`chunk_dplr_delta_rule`): its solution is U = W S_0^T + U_0, with W and U_0 independent of S_0, and so is
y = R S_0^T + Y_0. Everything but S_0 is computed for all chunks at once; then a loop over chunks (T/C steps of
three small matmuls) passes S from chunk to chunk and adds its part to y.

Every decay factor is e^{(a sum of log_w)} over a stretch of tokens, computed as a product of the w = e^{log_w}
in that stretch (never as a ratio of two cumulative products or as a difference of two cumulative sums), so each
factor is in (0, 1] at any log_w <= 0: nothing overflows and nothing cancels. The C x C scores between tokens
t > i use a midpoint m between them, e^{g_t-g_i} = e^{g_t-g_m} e^{g_m-g_i} (both factors <= 1), recursively over
halves: matmuls, log2(C) levels.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .common import prepare

DEFAULT_CHUNK = 32  # benchmarks/bench_wkv7_cpu.py times 16, 32 and 64 (on 2 CPU cores none is far from the best)


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
    """The fast path's (r e^{g_t}, a e^{g_{t-1}}, k e^{g_C-g_t}, b e^{g_C-g_t}, e^{g_C}, scores) for decays bounded
    below by `fast_path_bound`; inputs (..., C, N) (any strides), outputs contiguous.

    Per chunk, every decay is taken relative to one reference token m (the first half's last):
    e^{g_t - g_i} = e^{g_t - g_m} e^{g_m - g_i}, so the scores are matmuls of decay-scaled (r, a) against
    decay-scaled (k, b): ([rk rb], [ak ab]) (..., C, 2C), causal (rk, rb: t >= i; ak: t > i; ab's upper triangle and
    diagonal are left as they are: the triangular solve never reads them).
    """
    *lead, C, N = r.shape
    half = C // 2
    g = log_w.contiguous().cumsum(-2)  # (..., C, N): g_t, the chunk's tokens up to t; |g| <= C |log_w|
    g_ref = g[..., half - 1 : half, :] if half else torch.zeros_like(g[..., :1, :])  # (..., 1, N)
    up = torch.exp(g - g_ref)  # e^{g_t - g_m}
    down = 1 / up  # e^{g_m - g_t}
    to_ref = torch.exp(g_ref)  # e^{g_m}
    ref_to_end = torch.exp(g[..., -1:, :] - g_ref)  # e^{g_C - g_m}
    up_before = torch.cat([1 / to_ref, up[..., :-1, :]], -2)  # e^{g_{t-1} - g_m}
    r_up, a_up = up * r, up_before * a  # (..., C, N), contiguous like `up`
    keys = torch.cat([down * k, down * b], -2)  # (..., 2C, N): k e^{g_m - g_i}, b e^{g_m - g_i}
    mask_r, mask_a = _causal_masks(C, r.dtype, r.device)
    r_scores = (r_up @ keys.transpose(-1, -2)) * mask_r  # (..., C, 2C): [rk rb]
    a_scores = a_up @ keys.transpose(-1, -2)  # [ak ab]
    a_scores = torch.cat([a_scores[..., :C] * mask_a, a_scores[..., C:]], -1)
    kb_out = keys * ref_to_end  # (k, b) e^{g_C - g_i}
    return (
        r_up * to_ref,
        a_up * to_ref,
        kb_out[..., :C, :],
        kb_out[..., C:, :],
        (to_ref * ref_to_end)[..., 0, :],
        (
            r_scores,
            a_scores,
        ),
    )


@functools.lru_cache(maxsize=32)
def _causal_masks(C: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """1 where r_t sees token i (t >= i), (C, 2C) for [rk rb]; 1 where a_t does (t > i), (C, C)."""
    t, i = torch.arange(C, device=device)[:, None], torch.arange(C, device=device)
    return (t >= i).repeat(1, 2).to(dtype), (t > i).to(dtype)


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
    """The chunked form: inputs (B, T, H, N), state (B, H, N, N) or None; returns y (B, T, H, N) and the final state."""
    cd, (r, log_w, k, v, a, b), S = prepare(r, log_w, k, v, a, b, state)
    B, T, H, N = k.shape
    C = chunk_size_for(T, chunk_size)
    n = -(-T // C)

    def chunks(x):  # (B, T, H, N) -> (n, B, H, C, N) view (chunk first: the loop's slices are contiguous); padded
        x = F.pad(x, (0, 0, 0, 0, 0, n * C - T)) if n * C > T else x  # tokens (log_w = 0, all else 0) keep S as it is
        return x.view(B, n, C, H, N).permute(1, 0, 3, 2, 4)

    v = chunks(v).contiguous()
    if bool(log_w.min() >= fast_path_bound(C, cd)):
        r_dec, a_dec, k_out, b_out, decay_all, (r_scores, a_scores) = _fast_decays_and_scores(
            *(chunks(x) for x in (r, a, k, b, log_w))
        )
        rk, rb = r_scores.split(C, -1)
        ak, ab = a_scores.split(C, -1)
    else:
        ra = torch.stack([chunks(r), chunks(a)], -2)  # (n, B, H, C, 2, N)
        kb = torch.stack([chunks(k), chunks(b)], -2)
        w = torch.exp(chunks(log_w)).contiguous()  # the one exp: every decay below is a product of these
        upto, after, decay_all, scores = _decays_and_scores(ra, kb, w)
        r_dec, a_dec = (ra * upto).unbind(-2)  # (n, B, H, C, N): r e^{g_t}, a e^{g_{t-1}}
        k_out, b_out = (kb * after[..., None, :]).unbind(-2)  # (k, b) e^{g_C - g_t}
        rk, rb, ak, ab = (scores[..., q, :, kk, :] for q in (0, 1) for kk in (0, 1))  # (n, B, H, C, C) each

    # u_t = S_{t-1} a_t as U = W S_0^T + U_0: solve (I - ab) [W, U_0] = [a e^{g_{t-1}}, ak v] (the diagonal 1 is
    # implied, not read)
    WU0 = torch.linalg.solve_triangular(-ab, torch.cat([a_dec, ak @ v], -1), upper=False, unitriangular=True)
    W, U0 = WU0.split(N, -1)  # (n, B, H, C, N) each

    # y = r e^{g_t} S_0^T + rk v + rb U = R S_0^T + Y0 with U = W S_0^T + U_0: everything but S_0 in parallel
    rb_WU0 = rb @ WU0  # (n, B, H, C, 2N)
    R = r_dec + rb_WU0[..., :N]  # (n, B, H, C, N)
    Y0 = rb_WU0[..., N:] + rk @ v
    KV = v.transpose(-1, -2) @ k_out  # (n, B, H, N, N): the chunk's own writes, as seen at its end

    starts = []  # S at the start of each chunk: only the (N x N) state passes from chunk to chunk
    for c in range(n):  # S_C = S_0 e^{g_C} + U^T (b e^{g_C - g_t}) + v^T (k e^{g_C - g_t})
        starts.append(S)
        U = W[c] @ S.transpose(-1, -2) + U0[c]  # (B, H, C, N): u_t = S_{t-1} a_t
        S = S * decay_all[c, :, :, None, :] + U.transpose(-1, -2) @ b_out[c] + KV[c]
    y = R @ torch.stack(starts).transpose(-1, -2) + Y0  # (n, B, H, C, N)
    y = y.permute(1, 0, 3, 2, 4).reshape(B, n * C, H, N)[:, :T]
    return y, S
