"""RWKV-LM's x070 initialisation of every parameter (RWKV-v7/train_temp/src/model.py: RWKV_Tmix_x070 and
RWKV_CMix_x070's constructors, then RWKV.generate_init_weight, which redraws every 2-D `.weight`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .model import RWKV7


def channel_profiles(n_embd: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RWKV-LM's per-channel shapes (C,) float64: ddd = n / C, linear from -1/2 to 1/2, and zigzag, within each head
    a signed square from -1 to 1."""
    n = torch.arange(n_embd, dtype=torch.float64)
    ddd = n / n_embd
    linear = n / (n_embd - 1) - 0.5 if n_embd > 1 else torch.zeros(1, dtype=torch.float64)
    half = (head_size - 1) / 2
    zigzag = ((n % head_size) - half) / half if head_size > 1 else torch.zeros_like(n)
    return ddd, linear, zigzag * zigzag.abs()


def official_w0(layer: int, n_layer: int, n_embd: int, head_size: int) -> torch.Tensor:
    """The initial decay bias w0 (C,) float64: -6 + 6 (n / (C-1))^(1 + r0^0.3) + 1/2 + 2.5 zigzag, r0 the layer's
    depth from 0 to 1 (the 1/2 offsets the soft clamp: log w = -e^{-1/2} sigmoid(w0 + ...))."""
    _, _, zigzag = channel_profiles(n_embd, head_size)
    n = torch.arange(n_embd, dtype=torch.float64)
    r0 = layer / (n_layer - 1) if n_layer > 1 else 0.0
    www = -6 + 6 * (n / max(n_embd - 1, 1)) ** (1 + r0**0.3)
    return www + 0.5 + zigzag * 2.5


def init_weights(model: RWKV7, seed: int = 0, zero_projections: bool = True, orthogonal_matrices: bool = True) -> RWKV7:
    """RWKV-LM's RWKV-7 initialisation, deterministic from `seed`, drawn on the CPU in float32.

    RWKV-LM zeroes att.output and ffn.value and the first matrices of the four LoRAs (w1, a1, v1, g1), so an
    untrained model's LoRAs are constant and its blocks add nothing. `zero_projections=False` draws those
    orthogonal instead (output and ffn.value with gain 0.5, the LoRAs' first matrices with gain 1), so a random
    model's logits depend on every token through the state, as a trained one's do. `orthogonal_matrices=False`
    draws N(0, gain^2 / fan_in) instead of orthogonal matrices: the same scale in seconds at billions of parameters
    (for benchmarks, where only the scale matters).
    """
    cfg = model.config
    L, C, N = cfg.n_layer, cfg.n_embd, cfg.head_size
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def orthogonal(weight: torch.Tensor, gain: float):
        if not orthogonal_matrices:
            w = torch.randn(weight.shape, generator=gen) * (gain / math.sqrt(weight.shape[1]))
        else:
            w = torch.empty(weight.shape, dtype=torch.float32)
            nn.init.orthogonal_(w, gain=gain, generator=gen)
        weight.copy_(w)

    def zero_or_orthogonal(weight: torch.Tensor, gain: float):
        if zero_projections:
            weight.zero_()
        else:
            orthogonal(weight, gain)

    def put(param: torch.Tensor, values: torch.Tensor):
        param.copy_(values.reshape(param.shape))

    ddd, linear, zigzag = channel_profiles(C, N)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        put(model.emb.weight, torch.rand(model.emb.weight.shape, generator=gen) * 2e-4 - 1e-4)
        orthogonal(model.head.weight, 0.5 * math.sqrt(cfg.vocab_size / C) if cfg.vocab_size > C else 0.5)
        for i, block in enumerate(model.blocks):
            r1 = 1.0 - i / L  # 1 to almost 0
            att, ffn = block.att, block.ffn
            for mix, power in zip(att.mixes(), (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)):  # x_r x_w x_k x_v x_a x_g
                put(mix, 1.0 - ddd ** (power * r1))
            put(att.w0, official_w0(i, L, C, N))
            put(att.a0, -0.19 + zigzag * 0.3 + linear * 0.4)
            put(att.v0, 0.73 - linear * 0.4)
            put(att.k_k, 0.71 - linear * 0.1)
            att.k_a.fill_(1.02)
            att.r_k.fill_(-0.04)
            # the LoRAs: the first matrix zero, the second orthogonal with gain 0.1 ((D, C), D < C: no extra gain)
            for first, second in ((att.w1, att.w2), (att.a1, att.a2), (att.v1, att.v2), (att.g1, att.g2)):
                zero_or_orthogonal(first, 1.0)
                orthogonal(second, 0.1)
            # generate_init_weight: every 2-D .weight orthogonal with gain 1, att.key 0.1, att.output 0
            orthogonal(att.receptance.weight, 1.0)
            orthogonal(att.key.weight, 0.1)
            orthogonal(att.value.weight, 1.0)
            zero_or_orthogonal(att.output.weight, 0.5)
            att.ln_x.weight.fill_(((1 + i) / L) ** 0.7)
            att.ln_x.bias.zero_()
            put(ffn.x_k, 1.0 - ddd ** (r1**4))
            orthogonal(ffn.key.weight, 1.0)
            zero_or_orthogonal(ffn.value.weight, 0.5)
    return model


def build_model(config, seed: int = 0, zero_projections: bool = True, dtype=torch.float32, device="cpu") -> RWKV7:
    """A freshly initialised RWKV-7 of this config (init on the CPU in fp32 so results do not depend on device)."""
    model = init_weights(RWKV7(config), seed=seed, zero_projections=zero_projections)
    return model.to(device=device, dtype=dtype)
