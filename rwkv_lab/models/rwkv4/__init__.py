"""RWKV-4 (the Pile models, 169M to 14B): config and presets, the network in both formulations, RWKV-LM's
initialisation, the checkpoint key map, and how its parallel form runs fast (fast_path.py)."""

from ..protocol import Architecture
from . import checkpoint
from .config import PRESETS, RWKVConfig, get_config
from .model import RWKV, RWKV4State, build_model, init_weights

ARCH = Architecture(
    name="rwkv4",
    label="RWKV-4",
    description="RWKV-4: vector state, the WKV's exponentially decaying average",
    config_class=RWKVConfig,
    presets=PRESETS,
    get_config=get_config,
    model_class=RWKV,
    build=lambda config, seed=0, context=None, **options: init_weights(RWKV(config), seed=seed, **options),
    forward_flops_per_token=lambda config, context=None: config.forward_flops_per_token,
    # RWKV-LM's RWKV-4 recipe: the decays at 2x and the current token's bonus at 3x the rate
    lr_scale={"time_decay": 2.0, "time_first": 3.0},
    checkpoint=checkpoint,
)

__all__ = ["ARCH", "PRESETS", "RWKV", "RWKV4State", "RWKVConfig", "build_model", "get_config", "init_weights"]
