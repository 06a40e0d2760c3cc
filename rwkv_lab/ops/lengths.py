"""Per-sequence lengths of a right-padded batch (as cu_seqlens in fla and flash-attention): the check every
operator and model that takes them shares."""

from __future__ import annotations

import bisect

import torch


def check_lengths(lengths, batch: int, T: int, device) -> None:
    """Per-sequence lengths of a right-padded batch: an integer tensor (B,) on the inputs' device, each in [1, T]
    (shared by every operator and model that takes them)."""
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be an integer tensor (B,) = ({batch},); got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"lengths must be int64 or int32 (tokens per sequence); got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"lengths must have shape (B,) = ({batch},); got {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"lengths are on {lengths.device} but the inputs are on {device}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must each be in [1, T] = [1, {T}] (T the padded length); got {lo if lo < 1 else hi}")


def last_positions(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sequence's row at its own last real position: x (B, T, ...) -> (B, ...); without lengths, x[:, -1]."""
    if lengths is None:
        return x[:, -1]
    index = (lengths - 1).view(-1, 1, *([1] * (x.dim() - 2))).expand(-1, 1, *x.shape[2:])
    return x.gather(1, index)[:, 0]


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) bool: True at the positions past each sequence's length (right padding)."""
    return torch.arange(T, device=lengths.device)[None, :] >= lengths[:, None]


# A prefill piece's cost beyond its tokens, in tokens: one pass launches every layer's kernels whatever its size
# (hundreds of launches), so `prefill_pieces` trades padding against passes at this rate. Chosen from 256, 1,024
# and 4,096 on an H100 (RWKV-7 168M and RWKV-4 1.5B, 32 and 128 prompts of 16 to 1,024 tokens): 256 made passes
# that cost more than the padding they saved; benchmarks/bench_prefill_pieces.py measures them beside the fixed
# pieces (results/inference/prefill_pieces.csv).
PASS_TOKENS = 1024


def prefill_pieces(
    lengths: list[int], chunk: int | None = None, batch_tokens: int | None = None, pass_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Where a right-padded batch of prompts of `lengths` is cut in time for a prefill: pieces (start, end), each
    run over the sequences that reach into it (those longer than `start`), every sequence shorter than `end`
    padded to it. Each piece is at most `chunk` tokens long and, where `batch_tokens` is given, at most
    max(64, batch_tokens // rows) (a memory bound over the batch).

    The cuts lie at the prompts' own lengths, chosen to minimise the tokens run (padding included) plus
    `pass_tokens` (default PASS_TOKENS) for each pass: a dynamic programme over the distinct lengths, at most 256
    of them (lengths are rounded up to a multiple of max T / 256 beyond that). tests/test_prefill_lengths.py
    prints the tokens run and the passes for the benchmark's batches of prompts of 16 to 1,024 tokens, beside
    pieces of a fixed length."""
    T = max(lengths)
    chunk = chunk or T
    pass_tokens = PASS_TOKENS if pass_tokens is None else pass_tokens
    by_length = sorted(lengths)
    step = max(1, -(-T // 256))  # candidate cuts at most 256
    cuts = [0] + sorted({min(T, -(-n // step) * step) for n in lengths})

    def rows_after(start: int) -> int:  # the sequences longer than `start`
        return len(by_length) - bisect.bisect_right(by_length, start)

    def piece_length(start: int) -> int:
        rows = rows_after(start)
        return min(chunk, max(64, batch_tokens // rows)) if batch_tokens else chunk

    def cost(start: int, end: int) -> int:
        return rows_after(start) * (end - start) + pass_tokens * -(-(end - start) // piece_length(start))

    best, previous = [0] + [None] * (len(cuts) - 1), [0] * len(cuts)
    for j in range(1, len(cuts)):
        best[j], previous[j] = min((best[i] + cost(cuts[i], cuts[j]), i) for i in range(j))
    spans, j = [], len(cuts) - 1
    while j:
        spans.append((cuts[previous[j]], cuts[j]))
        j = previous[j]
    pieces = []
    for start, end in reversed(spans):
        size = piece_length(start)
        pieces += [(s, min(end, s + size)) for s in range(start, end, size)]
    return pieces


def tokens_run(lengths: list[int], pieces: list[tuple[int, int]]) -> int:
    """The tokens a prefill cut into `pieces` runs, padding included: each piece over the sequences longer than its
    start (what `prefill_pieces` minimises, beside the passes)."""
    return sum(sum(n > start for n in lengths) * (end - start) for start, end in pieces)
