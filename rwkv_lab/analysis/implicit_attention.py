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


def attention_profile(weights: torch.Tensor) -> dict:
    """What any generation's (T, T, K) implicit attention shows, read from the matrix alone: `span` (K,), per
    channel or head the distance t - i attended on average (each row's |weight|-weighted mean, averaged over rows);
    the smallest and largest row sum (1 and 1 for a softmax); the share of the total |weight| that is negative."""
    if weights.dim() != 3 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"attention_profile takes (T, T, K) weights; got {tuple(weights.shape)}")
    w = weights.detach().double().cpu()
    T = w.shape[0]
    magnitude = w.abs()
    distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp_min(0).double()  # (T, T): t - i
    per_row = (magnitude * distance[..., None]).sum(dim=1) / magnitude.sum(dim=1).clamp_min(1e-300)  # (T, K)
    row_sums = w.sum(dim=1)  # (T, K)
    return {
        "span": per_row.mean(dim=0),
        "row_sum_min": float(row_sums.min()),
        "row_sum_max": float(row_sums.max()),
        "negative_share": float(magnitude[w < 0].sum() / magnitude.sum().clamp_min(1e-300)),
    }
