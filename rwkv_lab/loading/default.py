"""The embedded default model: trained by this suite, shipped in the package, runs everywhere without a download.

The files live here (weights, card, held-out text); `checkpoint.default_model()` loads them.
A byte-level RWKV-4 (6 layers x 256 channels, 5.3M parameters) trained on the Python standard library by
`benchmarks/train_compare.py` on an H100; weights in bf16 (10.5 MB), computed in the dtype asked for. Its card,
default_model/MODEL_CARD.md (numbers in card.json), says what it saw, how well it predicts held-out code and the
command that reproduces it. `untrained_model()` is the same architecture at the official initialisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.rwkv4.config import PRESETS
from ..models.rwkv4.model import build_model

DEFAULT_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_WEIGHTS = DEFAULT_DIR / "model.safetensors"
DEFAULT_CARD = DEFAULT_DIR / "card.json"
HELDOUT_TEXT = DEFAULT_DIR / "heldout.txt"  # a held-out slice of the validation split, for checks and notebooks
DEFAULT_PRESET = "byte-6x256"
DEFAULT_DESCRIPTION = f"default: RWKV-4 {DEFAULT_PRESET} trained on the Python standard library (byte-level)"


def default_card() -> dict:
    return json.loads(DEFAULT_CARD.read_text())


def heldout_text() -> str:
    return HELDOUT_TEXT.read_text(encoding="utf-8")


def untrained_model(seed: int = 0, dtype=torch.float32, device="cpu"):
    """The default's architecture at the official initialisation, its projections drawn rather than zeroed so the
    output still depends on the context (see model.init_weights): the 'before' of the trained default."""
    model = build_model(PRESETS[DEFAULT_PRESET], seed=seed, zero_projections=False, dtype=dtype, device=device)
    model.source = f"RWKV-4 {DEFAULT_PRESET}, untrained (official init, seed {seed})"
    return model.eval()
