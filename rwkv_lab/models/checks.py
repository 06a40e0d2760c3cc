"""Checks at the boundary of every model's public methods, shared by the generations."""

from __future__ import annotations

import torch


def check_tokens(tokens: torch.Tensor, ndim: int, vocab_size: int, device: torch.device) -> None:
    """Token ids (B, T) (ndim 2) or (B,) (ndim 1): int64/int32, non-empty, on `device`, within the vocabulary."""
    shape = "(B, T)" if ndim == 2 else "(B,)"
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of shape {shape}; got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64 or int32 (token ids: .long() converts); got {tokens.dtype}")
    if tokens.dim() != ndim:
        raise ValueError(f"tokens must have shape {shape}; got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}); need at least one token per sequence")
    if tokens.device != device:
        raise ValueError(f"tokens are on {tokens.device} but the model is on {device}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is out of range: this model's vocabulary is [0, {vocab_size})")


class CheckpointError(ValueError):
    """A file or folder that is not a usable checkpoint of any generation; the message says what was expected."""
