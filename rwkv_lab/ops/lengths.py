"""Per-sequence lengths of a right-padded batch (as cu_seqlens in fla and flash-attention): the check every
operator and model that takes them shares."""

from __future__ import annotations

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
