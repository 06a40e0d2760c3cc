"""The embedded default model: runs everywhere, needs no download, builds in well under a second.

Until the suite ships a trained model, it is a byte-level RWKV-4 (6 layers x 256 channels) with the official
initialisation and seed 0, its projections drawn instead of zeroed so the output depends on the context
(see model.init_weights).
"""

from __future__ import annotations

import torch

from .config import PRESETS
from .model import RWKV, build_model

DEFAULT_PRESET = "byte-6x256"
DEFAULT_SEED = 0
DEFAULT_DESCRIPTION = (f"default: RWKV-4 {DEFAULT_PRESET} (byte-level, untrained; official init, "
                       f"seed {DEFAULT_SEED})")


def default_model(dtype=torch.float32, device="cpu") -> RWKV:
    model = build_model(PRESETS[DEFAULT_PRESET], seed=DEFAULT_SEED, zero_projections=False, dtype=dtype, device=device)
    model.source = DEFAULT_DESCRIPTION
    return model.eval()
