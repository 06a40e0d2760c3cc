"""The transformer form of WKV: per channel, a causal softmax over distance-decayed keys, O(T^2 C) memory."""

from __future__ import annotations

import torch

from .common import prepare


def _attention_terms(w, u, k, state):
    """Scores of the T x T form and the state's score, all in one max-shifted frame."""
    B, T, C = k.shape
    t = torch.arange(T, device=k.device, dtype=k.dtype)
    dist = t[:, None] - 1 - t[None, :]  # (T, T): steps of decay between token i and output t
    scores = k[:, None, :, :] - dist[None, :, :, None] * w  # (B, T, T, C)
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    future = torch.ones(T, T, dtype=torch.bool, device=k.device).triu(1)[None, :, :, None]
    scores = torch.where(diag, (u + k)[:, None, :, :], scores)
    scores = scores.masked_fill(future, float("-inf"))
    state_score = state[:, 2][:, None, :] - t[None, :, None] * w  # (B, T, C): p - t w
    shift = torch.maximum(scores.amax(dim=2), state_score)  # (B, T, C)
    return scores, state_score, shift


def attention_matrix(w, u, k, state=None):
    """The implicit attention weights of the transformer form, (B, T, T, C), rows summing to 1 with the state.

    Column i of row t is how much v_i contributes to wkv_t; the remainder, 1 - row sum, is the state's share.
    """
    cd, w, u, k, _, state = prepare(w, u, k, k, state)
    scores, state_score, shift = _attention_terms(w, u, k, state)
    weights = torch.exp(scores - shift[:, :, None, :])
    state_weight = state[:, 1][:, None, :] * torch.exp(state_score - shift)
    return weights / (weights.sum(dim=2) + state_weight)[:, :, None, :]


def wkv_attention(w, u, k, v, state=None):
    """The transformer form: per channel, a causal softmax over distance-decayed keys. O(T^2 C) memory."""
    cd, w, u, k, v, state = prepare(w, u, k, v, state)
    a0, b0, p0 = state.unbind(1)  # (B, C) each
    T = k.shape[1]
    scores, state_score, shift = _attention_terms(w, u, k, state)
    weights = torch.exp(scores - shift[:, :, None, :])  # (B, T, T, C), zero above the diagonal
    carried = torch.exp(state_score - shift)  # (B, T, C)
    num = torch.einsum("btic,bic->btc", weights, v) + a0[:, None] * carried
    den = weights.sum(dim=2) + b0[:, None] * carried
    y = num / den

    # The state after the last token: token i has decayed T-1-i times, the incoming state T times.
    t = torch.arange(T, device=k.device, dtype=cd)
    token_exp = k - (T - 1 - t)[None, :, None] * w  # (B, T, C)
    state_exp = p0 - T * w  # (B, C)
    p = torch.maximum(token_exp.amax(dim=1), state_exp)
    e_tok, e_state = torch.exp(token_exp - p[:, None]), torch.exp(state_exp - p)
    a = (e_tok * v).sum(dim=1) + a0 * e_state
    b = e_tok.sum(dim=1) + b0 * e_state
    return y, torch.stack([a, b, p], dim=1)
