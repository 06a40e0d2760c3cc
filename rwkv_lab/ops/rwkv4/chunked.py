"""The chunked form of WKV: chunks in parallel, joined by a scan over their states; exact, O(T C).

The algorithm of the GPU kernel (triton_kernels.py), in PyTorch: the default on the CPU.
"""

from __future__ import annotations

import math

import torch

from .common import P_EMPTY, prepare
from .reference import output_step, state_step


def _exp_normal(x):
    """exp, with arguments below the dtype's normal range clamped to its edge: the result then differs from
    exp(x) by less than 1e-37 (fp32) of the largest term (which is 1), but CPUs compute denormal results
    20x slower, and the chunked form makes many of them."""
    return torch.exp(x.clamp(min=-87.0 if x.dtype == torch.float32 else -708.0))


def _merge(s1, s2):
    """Two partial sums in (a, b, p) form added: e^p1 (a1, b1) + e^p2 (a2, b2), shifted by the larger exponent."""
    (a1, b1, p1), (a2, b2, p2) = s1, s2
    p = torch.maximum(p1, p2)
    e1, e2 = torch.exp(p1 - p), torch.exp(p2 - p)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p


def chunk_size_for(T: int) -> int:
    """sqrt(T) balances the two loops of the chunked form (T/c chunk steps, c token steps)."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def wkv_chunked(w, u, k, v, state=None, chunk_size: int | None = None, lengths=None):
    """Chunks of c tokens, parallel over chunks; the same three phases as the GPU kernel.

    A. every chunk's own contribution to the state, in closed form (all chunks at once);
    B. a scan over chunks: the state entering each chunk (T/c sequential steps on (B, C));
    C. the recurrence inside every chunk from its entering state (c sequential steps on (B * T/c, C)).
    O(T C) work and memory, exact at any T, differentiable; c defaults to sqrt(T). `lengths` (B,): as in
    `wkv_recurrent`, sequence b's tokens from lengths[b] on leave its state as it is (a chunk past them is empty).
    """
    cd, w, u, k, v, state = prepare(w, u, k, v, state)
    B, T, C = k.shape
    c = chunk_size or chunk_size_for(T)
    N = -(-T // c)
    pad = N * c - T
    if pad:  # the padded tokens lie past every length below: no weight, dropped from the output
        k = torch.cat([k, k.new_zeros(B, pad, C)], dim=1)
        v = torch.cat([v, v.new_zeros(B, pad, C)], dim=1)
    kc, vc = k.view(B, N, c, C), v.view(B, N, c, C)
    ends = torch.full((B,), T, device=k.device) if lengths is None else lengths.to(k.device)
    starts = torch.arange(N, device=k.device) * c
    chunk_len = (ends[:, None] - starts[None, :]).clamp(0, c).to(cd)  # (B, N): the real tokens of each chunk
    j = torch.arange(c, dtype=cd, device=k.device)
    real = j[None, None, :] < chunk_len[:, :, None]  # (B, N, c)

    # A: token j of a chunk of L real tokens has decayed L-1-j times by the chunk's end
    exps = kc - (chunk_len[:, :, None] - 1 - j)[..., None] * w  # (B, N, c, C)
    exps = torch.where(real[..., None], exps, P_EMPTY)
    p_chunk = exps.amax(dim=2)  # (B, N, C)
    weights = torch.where(real[..., None], _exp_normal(exps - p_chunk[:, :, None]), 0.0)
    a_chunk, b_chunk = (weights * vc).sum(dim=2), weights.sum(dim=2)

    # B: entering state of each chunk; the carried state decays L times across a chunk
    a, b, p = state.unbind(1)
    entering = []
    for n in range(N):
        entering.append(torch.stack([a, b, p], dim=1))
        decayed = p - chunk_len[:, n, None] * w
        a, b, p = _merge((a, b, decayed), (a_chunk[:, n], b_chunk[:, n], p_chunk[:, n]))
    final_state = torch.stack([a, b, p], dim=1)

    # C: the stable recurrence inside all chunks at once
    a, b, p = torch.stack(entering, dim=1).flatten(0, 1).unbind(1)  # (B * N, C) each
    kf, vf = kc.flatten(0, 1), vc.flatten(0, 1)  # (B * N, c, C)
    realf = real.flatten(0, 1)[..., None]  # (B * N, c, 1)
    ys = []
    for t in range(c):
        ys.append(output_step(a, b, p, u, kf[:, t], vf[:, t], exp=_exp_normal))
        if t + 1 < c:
            stepped = state_step(a, b, p, w, kf[:, t], vf[:, t], exp=_exp_normal)
            a, b, p = (
                stepped if lengths is None else (torch.where(realf[:, t], x, y) for x, y in zip(stepped, (a, b, p)))
            )
    y = torch.stack(ys, dim=1).view(B, N * c, C)[:, :T]
    return y, final_state
