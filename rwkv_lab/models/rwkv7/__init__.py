"""RWKV-7 ("Goose", x070) as a model generation: config, network, official init, checkpoints, registry record."""

from __future__ import annotations

from ..protocol import Architecture
from . import checkpoint
from .config import PILE_VOCAB, PRESETS, WORLD_VOCAB, RWKV7Config, get_config
from .init import build_model, init_weights
from .model import RWKV7, RWKV7State

# RWKV-LM x070's optimizer groups (train_temp/src/model.py, configure_optimizers): att.w0 (the decay bias) at 2x
# the learning rate, everything else 1x. Weight decay goes only to 2-D parameters named `.weight` (the
# projections, ffn, emb, head), never to the LoRA matrices (w1 ... g2, not `.weight`), mixes, biases or norms:
# see takes_weight_decay.
LR_SCALE = {"att.w0": 2.0}


def takes_weight_decay(name: str, param) -> bool:
    """Whether RWKV-LM x070 applies weight decay to this parameter (when its weight_decay > 0)."""
    return "att.w0" not in name and param.squeeze().dim() >= 2 and ".weight" in name


ARCH = Architecture(
    name="rwkv7",
    label="RWKV-7",
    description='RWKV-7 "Goose" (x070): a recurrent LM whose state is a matrix per head, updated by a generalised '
    "delta rule (vector decays, in-context learning rate), BlinkDL's x070 checkpoints",
    config_class=RWKV7Config,
    presets=PRESETS,
    get_config=get_config,
    model_class=RWKV7,
    build=lambda config, seed=0, context=None, **options: init_weights(RWKV7(config), seed=seed, **options),
    forward_flops_per_token=lambda config, context=None: config.forward_flops_per_token,
    recurrent=True,
    lr_scale=LR_SCALE,
    checkpoint=checkpoint,
    takes_weight_decay=takes_weight_decay,
)

__all__ = [
    "ARCH",
    "LR_SCALE",
    "PILE_VOCAB",
    "PRESETS",
    "RWKV7",
    "WORLD_VOCAB",
    "RWKV7Config",
    "RWKV7State",
    "build_model",
    "checkpoint",
    "get_config",
    "init_weights",
    "takes_weight_decay",
]
