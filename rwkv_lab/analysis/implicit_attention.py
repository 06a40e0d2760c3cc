"""The implicit T x T attention matrix of a layer's WKV on real text (the transformer form, made visible)."""

from __future__ import annotations

import torch

from ..ops.rwkv4 import attention_matrix


@torch.no_grad()
def implicit_attention(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The T x T weights of layer `layer`'s WKV for one sequence, per channel: (T, T, C), rows summing to 1.

    Row t, column i: how much of wkv_t is v_i. It is a causal attention whose scores depend on the key of the
    attended token and the distance only, one "head" per channel.
    """
    if tokens.shape[0] != 1:
        raise ValueError(f"implicit_attention takes one sequence, tokens (1, T); got {tuple(tokens.shape)}")
    inputs = model.wkv_inputs(tokens, layer)
    return attention_matrix(inputs["w"], inputs["u"], inputs["k"])[0]
