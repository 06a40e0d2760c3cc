"""The embedded default models: trained by this suite, shipped in the package, run everywhere without a download.

One per recurrent generation, each a folder of weights, card and (RWKV-4's) held-out text; `load_model` reads them by
name ("default" is RWKV-4's, "default-rwkv7" RWKV-7's; `checkpoint.default_model(arch)`), and "untrained-<arch>" is
a default's architecture at the official initialisation. Both are byte-level
6 layers x 256 channels trained on the Python standard library by `benchmarks/train_compare.py` on a GPU, with the
same tokens and recipe, weights in bf16, computed in the dtype asked for. Each card (MODEL_CARD.md, numbers in
card.json, written by scripts/make_model_card.py) says what it saw, how well it predicts held-out code and the
command that reproduces it. `untrained_model(arch)` is the same architecture at the official initialisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import architecture

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DefaultModel:
    source: str  # the name load_model takes
    arch: str
    label: str  # how figures and prints name its generation
    preset: str
    directory: Path

    @property
    def weights(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def card_path(self) -> Path:
        return self.directory / "card.json"

    @property
    def description(self) -> str:
        return f"{self.source}: {self.label} {self.preset} trained on the Python standard library (byte-level)"

    def card(self) -> dict:
        return json.loads(self.card_path.read_text())


DEFAULTS = {
    "rwkv4": DefaultModel("default", "rwkv4", "RWKV-4", "byte-6x256", HERE / "default_model"),
    "rwkv7": DefaultModel("default-rwkv7", "rwkv7", "RWKV-7", "byte-6x256", HERE / "default_model_rwkv7"),
}
BY_SOURCE = {default.source: default for default in DEFAULTS.values()}

# RWKV-4's, the default of every entry point that takes a model
DEFAULT_DIR = DEFAULTS["rwkv4"].directory
DEFAULT_WEIGHTS = DEFAULTS["rwkv4"].weights
DEFAULT_CARD = DEFAULTS["rwkv4"].card_path
DEFAULT_PRESET = DEFAULTS["rwkv4"].preset
DEFAULT_DESCRIPTION = DEFAULTS["rwkv4"].description
HELDOUT_TEXT = DEFAULT_DIR / "heldout.txt"  # a held-out slice of the validation split, for checks and notebooks


def default_named(source) -> DefaultModel | None:
    """The embedded default a source names ('default', 'default-rwkv7'), None for anything else."""
    return BY_SOURCE.get(str(source))


def untrained_named(source) -> str | None:
    """The generation whose default architecture, untrained, a source names ('untrained-rwkv4', 'untrained-rwkv7'):
    a stand-in where a default's weights are not trained yet, labelled as such wherever it is printed."""
    name = str(source).removeprefix("untrained-")
    return name if str(source).startswith("untrained-") and name in DEFAULTS else None


def default_card(arch: str = "rwkv4") -> dict:
    return DEFAULTS[architecture(arch).name].card()


def heldout_text() -> str:
    return HELDOUT_TEXT.read_text(encoding="utf-8")


def untrained_model(seed: int = 0, dtype=torch.float32, device="cpu", arch: str = "rwkv4"):
    """A default's architecture at the official initialisation, its projections drawn rather than zeroed so the
    output still depends on the context (see each generation's init_weights): the 'before' of the trained default."""
    default = DEFAULTS[architecture(arch).name]
    spec = architecture(default.arch)
    model = spec.build(spec.get_config(default.preset), seed=seed, zero_projections=False)
    model = model.to(dtype=dtype, device=device)
    model.source = f"{default.label} {default.preset}, untrained (official init, seed {seed})"
    return model.eval()
