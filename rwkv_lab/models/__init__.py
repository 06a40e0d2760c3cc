"""Model generations behind one seam: a package per generation (rwkv4, rwkv7, transformer), each owning its
config, network, initialisation, checkpoint key map and facts, and this registry the rest of the suite asks
instead of branching on names (protocol.py says what a generation provides; state.py the state object).

    arch = architecture("rwkv7")                  # by name
    arch = architecture_of(model)                 # of a model (or a config)
    model = arch.build(arch.get_config("tiny"))   # officially initialised
"""

from __future__ import annotations

from . import rwkv4, rwkv7, transformer
from .protocol import Architecture, RecurrentLM
from .state import RecurrentState

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (rwkv4.ARCH, rwkv7.ARCH, transformer.ARCH)}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def architecture_of(obj) -> Architecture:
    """The generation of a model (possibly wrapped by DDP or torch.compile) or of a config."""
    for arch in ARCHITECTURES.values():
        if isinstance(obj, arch.config_class) and getattr(obj, "arch", None) == arch.name or arch.owns(obj):
            return arch
    raise TypeError(f"{type(obj).__name__} is not a model or config of a known generation ({sorted(ARCHITECTURES)})")


def checkpoint_architecture(sd: dict) -> Architecture | None:
    """The recurrent generation whose BlinkDL key set `sd` (a state dict) has, or None."""
    return next((a for a in ARCHITECTURES.values() if a.checkpoint and a.checkpoint.matches(sd)), None)


def hub_architecture(model_type: str | None) -> Architecture | None:
    """The generation whose hub layout has this config.json model_type (None: RWKV-4's files of old)."""
    model_type = model_type or rwkv4.checkpoint.HF_MODEL_TYPE
    return next((a for a in ARCHITECTURES.values() if a.checkpoint and a.checkpoint.HF_MODEL_TYPE == model_type), None)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "RecurrentLM",
    "RecurrentState",
    "architecture",
    "architecture_of",
    "checkpoint_architecture",
    "hub_architecture",
]
