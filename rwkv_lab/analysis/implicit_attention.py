"""The implicit T x T attention of a layer on real text (the transformer form, made visible), of either generation."""

from __future__ import annotations

import torch


@torch.no_grad()
def implicit_attention(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The T x T weights of layer `layer` for one sequence from the empty state, (T, T, K): K = C channels for
    RWKV-4 (each row a softmax, summing to 1), K = H heads for RWKV-7 (unnormalised and signed). Row t, column i:
    how much of the layer's output at t is v_i. Each generation computes its own (`model.implicit_attention`)."""
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"implicit_attention takes one sequence, tokens (1, T); got {tuple(tokens.shape)}")
    return model.implicit_attention(tokens, layer)
