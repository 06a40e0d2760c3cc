"""The transformer the RWKV generations are compared with: Pythia-shaped GPT-NeoX (transformers, SDPA attention),
at Pythia's sizes or matched to an RWKV config's width, depth and vocabulary."""

from ..protocol import Architecture
from ..rwkv4.config import PRESETS, RWKVConfig, get_config
from .model import (
    PYTHIA_FOR,
    forward_flops_per_token,
    gpt_neox,
    kv_cache_bytes_per_token,
    matched_transformer,
    pythia_model,
)

ARCH = Architecture(
    name="transformer",
    label="GPT-NeoX",
    description="a Pythia-shaped GPT-NeoX matched to an RWKV config (12 D^2 per layer against RWKV-4's 13 D^2)",
    config_class=RWKVConfig,  # the shapes it is matched to
    presets=PRESETS,
    get_config=get_config,
    model_class=None,
    build=lambda config, seed=0, context=1024, **options: matched_transformer(config, context, seed=seed),
    forward_flops_per_token=lambda config, context: forward_flops_per_token(
        config.n_layer, config.n_embd, config.vocab_size, context
    ),
    recurrent=False,
    foreign_model_types=("gpt_neox",),
)

__all__ = [
    "ARCH",
    "PYTHIA_FOR",
    "forward_flops_per_token",
    "gpt_neox",
    "kv_cache_bytes_per_token",
    "matched_transformer",
    "pythia_model",
]
