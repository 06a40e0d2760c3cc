"""Looking inside the parallel form: a layer's keys, values and its implicit attention matrix on real text."""

from __future__ import annotations

import torch

from .model import ATT_X
from .wkv import attention_matrix, compute_dtype


@torch.no_grad()
def layer_wkv_inputs(model, tokens: torch.Tensor, layer: int):
    """(w, u, k, v) that layer `layer`'s WKV sees for `tokens` (B, T), from an empty state."""
    if not 0 <= layer < model.config.n_layer:
        raise ValueError(f"layer must be in [0, {model.config.n_layer}); got {layer}")
    model.check_tokens(tokens, ndim=2)
    state = model.init_state(tokens.shape[0])
    x, _ = model.run_blocks(model.emb(tokens), state, model.wkv_backend, n_blocks=layer)
    block = model.blocks[layer]
    if hasattr(block, "ln0"):
        x = block.ln0(x)
    h = block.ln1(x)
    att = block.att
    k, v, _ = att.keys_values(h, state[:, layer, ATT_X])
    w = torch.exp(att.time_decay.to(compute_dtype(att.time_decay)))
    return w, att.time_first, k, v


@torch.no_grad()
def implicit_attention(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The T x T weights of layer `layer`'s WKV for one sequence, per channel: (T, T, C), rows summing to 1.

    Row t, column i: how much of wkv_t is v_i. It is a causal attention whose scores depend on the key of the
    attended token and the distance only, one "head" per channel.
    """
    if tokens.shape[0] != 1:
        raise ValueError(f"implicit_attention takes one sequence, tokens (1, T); got {tuple(tokens.shape)}")
    w, u, k, _ = layer_wkv_inputs(model, tokens, layer)
    return attention_matrix(w, u, k)[0]
