"""The chunked form of the RWKV-7 state update: chunks of C tokens in parallel, joined by passing S. O(T C N).

Within a chunk that starts from S_0, write g_t for the sum of log_w over the chunk's tokens up to t, and
u_t = S_{t-1} a_t (what the transition removes at token t). Unrolling
S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T gives

    u_t = S_0 (a_t e^{g_{t-1}}) + sum_{i<t} [ (a_t . b_i e^{g_{t-1}-g_i}) u_i + (a_t . k_i e^{g_{t-1}-g_i}) v_i ]
    y_t = S_0 (r_t e^{g_t})     + sum_{i<=t} [ (r_t . b_i e^{g_t-g_i}) u_i   + (r_t . k_i e^{g_t-g_i}) v_i ]
    S_C = S_0 diag(e^{g_C}) + sum_i [ u_i (b_i e^{g_C-g_i})^T + v_i (k_i e^{g_C-g_i})^T ]

The first line is a unit lower-triangular system for the u_t (the generalised delta rule's WY/UT form, as fla's
`chunk_dplr_delta_rule`): its solution is U = W S_0^T + U_0, with W and U_0 independent of S_0. So every chunk's
map S_0 -> S_C is S_0 P + Q, computed for all chunks at once; a scan over chunks (T/C steps of one N x N matmul)
gives each chunk's S_0, and then all outputs at once.

Every decay factor is e^{(a sum of log_w)} over a stretch of tokens, computed as exp of that sum (never as a ratio
of two cumulative products), so each factor is in (0, 1] at any log_w <= 0: nothing overflows and the differences
are not cancellations of large cumulative sums. The C x C scores between tokens t > i use a midpoint m between
them, e^{g_t-g_i} = e^{g_t-g_m} e^{g_m-g_i} (both factors <= 1), recursively over halves: matmuls, log2(C) levels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .common import prepare

DEFAULT_CHUNK = 32  # the fastest on the CPU at (1, 4096, 768), N = 64 (benchmarks/bench_wkv7_cpu.py)


@functools.lru_cache(maxsize=32)
def _score_positions(C: int, device: torch.device) -> list[torch.Tensor]:
    """Where each level's scores go in the flat (2, C, 2, C) [query kind, query, key kind, key] score array: the
    diagonal (C, 2) first, then per level h = 1, 2, .., C/2 the blocks (C/2h, 2, h, 2, h) of `_decays_and_scores`."""
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    at = lambda qk, t, kk, i: ((qk * C + t) * 2 + kk) * C + i  # noqa: E731
    positions = [at(0, ar(C)[:, None], ar(2)[None, :], ar(C)[:, None]).flatten()]
    h = 1
    while h < C:
        block = ar(C // (2 * h))[:, None, None, None, None] * 2 * h
        qk, t, kk, i = ar(2)[:, None, None, None], ar(h)[:, None, None], ar(2)[:, None], ar(h)
        positions.append(at(qk, block + h + t, kk, block + i).flatten())
        h *= 2
    return positions


def _decays_and_scores(r, a, k, b, w):
    """Per chunk (..., C, N) inputs, w = exp(log_w) -> the chunk's decays and its tokens' decayed dot products.

    Decays (..., C, N), in (0, 1]: `to` e^{g_t} (the chunk's tokens up to t), `before` e^{g_{t-1}}, `after`
    e^{g_C - g_t}; `total` e^{g_C} (..., N). Scores (..., 2, C, 2, C) [query kind (r, a), t, key kind (k, b), i]:

    rk[t, i] = sum_j r_t[j] k_i[j] e^{g_t[j] - g_i[j]}, t >= i;   rb likewise with b_i;
    ak[t, i] = sum_j a_t[j] k_i[j] e^{g_{t-1}[j] - g_i[j]}, t > i;  ab likewise with b_i;  zero elsewhere.

    Built over halves, C a power of two: level by level, every block of 2h tokens gets the scores of its second
    half's queries against its first half's keys through the block's midpoint m (the first half's last token),
    e^{g_t - g_i} = e^{g_t - g_m} e^{g_m - g_i}; the prefix and suffix products within blocks double alongside.
    """
    *lead, C, N = r.shape
    positions = _score_positions(C, r.device)
    diag = torch.stack([(r * k).sum(-1), (r * b).sum(-1)], -1)  # (..., C, 2): a token's own rk and rb
    scores = r.new_zeros(*lead, 4 * C * C).index_copy_(-1, positions[0], diag.flatten(-2))
    # within blocks of h tokens: the product of w up to t (to), before t (before), after t (after), all (total)
    to, before, after, total = w, torch.ones_like(w), torch.ones_like(w), w
    h = 1
    while h < C:
        nb = C // (2 * h)
        pairs = lambda x: x.reshape(*lead, nb, 2, h, N)  # noqa: E731 - blocks of h -> (first, second) of 2h
        to, before, after = pairs(to), pairs(before), pairs(after)
        r2, a2, k1, b1 = pairs(r)[..., 1, :, :], pairs(a)[..., 1, :, :], pairs(k)[..., 0, :, :], pairs(b)[..., 0, :, :]
        queries = torch.stack([r2 * to[..., 1, :, :], a2 * before[..., 1, :, :]], -3)  # (..., nb, 2, h, N)
        keys = torch.stack([k1, b1], -3) * after[..., 0, None, :, :]
        cross = queries.flatten(-3, -2) @ keys.flatten(-3, -2).transpose(-1, -2)  # (..., nb, 2h, 2h)
        scores.index_copy_(-1, positions[h.bit_length()], cross.flatten(-3))
        # the products within blocks of 2h from those within blocks of h
        total = total.reshape(*lead, nb, 2, N)
        first, second = total[..., 0:1, :], total[..., 1:2, :]  # (..., nb, 1, N)
        to = (to * torch.cat([torch.ones_like(first), first], -2)[..., None, :]).flatten(-3, -2)
        before = (before * torch.cat([torch.ones_like(first), first], -2)[..., None, :]).flatten(-3, -2)
        after = (after * torch.cat([second, torch.ones_like(second)], -2)[..., None, :]).flatten(-3, -2)
        total = first[..., 0, :] * second[..., 0, :]
        h *= 2
    to, before, after = (x.reshape(*lead, C, N) for x in (to, before, after))
    return (to, before, after, total[..., 0, :]), scores.view(*lead, 2, C, 2, C)


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

    def chunks(x):  # (B, T, H, N) -> (B, H, n, C, N); padded tokens (log_w = 0, all else 0) leave S as it is
        x = F.pad(x, (0, 0, 0, 0, 0, n * C - T))
        return x.view(B, n, C, H, N).permute(0, 3, 1, 2, 4).contiguous()

    r, log_w, k, v, a, b = map(chunks, (r, log_w, k, v, a, b))
    w = torch.exp(log_w)  # the one exp: every decay below is a product of these
    (decay_to, decay_before, decay_after, decay_all), scores = _decays_and_scores(r, a, k, b, w)
    ak, ab = scores[..., 1, :, 0, :], scores[..., 1, :, 1, :]  # (B, H, n, C, C)

    # U = W S_0^T + U_0: solve (I - ab) [W U_0] = [a e^{g_{t-1}}, ak v] (the diagonal 1 is implied, not read)
    rhs = torch.cat([a * decay_before, ak @ v], -1)  # (B, H, n, C, 2N)
    W, U0 = torch.linalg.solve_triangular(-ab, rhs, upper=False, unitriangular=True).split(N, -1)

    # every chunk's map S_0 -> S_C = S_0 P + Q
    b_out, k_out = b * decay_after, k * decay_after  # (B, H, n, C, N)
    P = torch.diag_embed(decay_all) + W.transpose(-1, -2) @ b_out  # (B, H, n, N, N) [key, key]
    Q = torch.cat([U0, v], -2).transpose(-1, -2) @ torch.cat([b_out, k_out], -2)  # (B, H, n, N, N) [value, key]

    entering = []
    for c in range(n):  # the scan: the state entering each chunk
        entering.append(S)
        S = S @ P[:, :, c] + Q[:, :, c]
    S0t = torch.stack(entering, 2).transpose(-1, -2)  # (B, H, n, N, N): S_0^T [key, value]

    U = W @ S0t + U0  # (B, H, n, C, N): u_t = S_{t-1} a_t
    y = (r * decay_to) @ S0t + scores[..., 0, :, :, :].flatten(-2) @ torch.cat([v, U], -2)  # (B, H, n, C, N)
    y = y.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, N)[:, :T]
    return y, S
