"""RWKV-7 configuration: the released shapes (Pile and World), small ones for tests, byte-level sizes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

from ..base import ModelConfig
from ..vocab import BYTE_VOCAB, WORLD_VOCAB

# The RWKV-7 Pile models' vocabulary: the GPT-NeoX-20B tokenizer's 50277 ids padded to 50304 rows (RWKV-LM
# RWKV-v7/train_temp/demo-training-prepare-v7-pile.sh: --vocab_size 50304; fla's utils/convert_from_rwkv7.py reads
# emb.weight as (50304, C)). RWKV-4's Pile checkpoints keep 50277 rows.
PILE_VOCAB = 50304
LORAS = ("decay_lora", "iclr_lora", "value_lora", "gate_lora")


def lora_width(n_embd: int, factor: float, power: float = 0.5) -> int:
    """RWKV-LM's suggested LoRA width, max(32, round(factor C^power / 32) * 32): the x070 training code the
    released models were trained with uses factor 1.8 (decay w and in-context learning rate a), 1.3 (value
    residual v) at power 0.5 and 0.6 at power 0.8 (gate g); they give the released shapes (e.g. 64/64/32/128
    at C=768, 96/96/64/256 at C=2048) except the World / G1 0.4B's gate (128, not 160). RWKV-LM's current
    train_temp suggests other factors for new models."""
    return max(32, int(round(factor * n_embd**power / 32) * 32))


@dataclass(frozen=True)
class RWKV7Config(ModelConfig):
    """One RWKV-7 shape. The LoRA widths default to RWKV-LM's formulas of n_embd (`lora_width`), the channel mix to
    4C; both are stored resolved, so two configs of one shape are equal; checkpoints that differ set them
    (config_from_state_dict)."""

    arch: ClassVar[str] = "rwkv7"

    n_layer: int
    n_embd: int
    vocab_size: int = PILE_VOCAB
    head_size: int = 64
    decay_lora: int | None = None  # w1 (C, D), w2 (D, C)
    iclr_lora: int | None = None  # a1, a2: the in-context learning rate
    value_lora: int | None = None  # v1, v2: the value residual's mix
    gate_lora: int | None = None  # g1, g2: the output gate
    ffn_dim: int | None = None  # the channel-mix width; None: 4 * n_embd, as every released x070 model
    ctx_len: int = 4096  # training context of the released models; the recurrent form has no limit
    layer_norm_eps: float = 1e-5
    name: str = "custom"

    def __post_init__(self):
        for field in ("n_layer", "n_embd", "vocab_size", "head_size", "ctx_len"):
            _check_positive_int(field, getattr(self, field))
        for field in (*LORAS, "ffn_dim"):
            value = getattr(self, field)
            if value is not None:
                _check_positive_int(field, value, "or None")
        if self.n_embd % self.head_size:
            raise ValueError(
                f"RWKV7Config.n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size}): C = H N"
            )
        if not (isinstance(self.layer_norm_eps, float) and self.layer_norm_eps > 0):
            raise ValueError(f"RWKV7Config.layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}")
        defaults = {
            "decay_lora": lora_width(self.n_embd, 1.8),
            "iclr_lora": lora_width(self.n_embd, 1.8),
            "value_lora": lora_width(self.n_embd, 1.3),
            "gate_lora": lora_width(self.n_embd, 0.6, 0.8),
            "ffn_dim": 4 * self.n_embd,
        }
        for field, value in defaults.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def dim_ffn(self) -> int:
        return self.ffn_dim

    @property
    def lora_sum(self) -> int:
        return self.decay_lora + self.iclr_lora + self.value_lora + self.gate_lora

    @property
    def n_params(self) -> int:
        """Exact parameter count of a BlinkDL x070 checkpoint (layer 0's unused value-residual LoRA included):
        2VC + 4C + L (4C^2 + 2CF + 2C (D_w + D_a + D_v + D_g) + 19C). The 19C per layer: ln1, ln2 (4C), six
        mixes, w0 a0 v0, k_k k_a, r_k (H N = C), ln_x (2C), ffn.x_k."""
        V, C, L, F = self.vocab_size, self.n_embd, self.n_layer, self.dim_ffn
        return 2 * V * C + 4 * C + L * (4 * C * C + 2 * C * F + 2 * C * self.lora_sum + 19 * C)

    @property
    def state_numbers(self) -> int:
        """Numbers in the recurrent state of one sequence: per layer two token shifts (2C) and an N x N matrix per
        head (H N^2 = C N), independent of T."""
        return self.n_layer * (2 * self.n_embd + self.n_embd * self.head_size)

    @property
    def flops_parts(self) -> dict[str, int]:
        """One token's forward FLOPs (2 per multiply-add) by where they go: `projections` r, k, v, output (4 C^2 per
        layer); `loras` the four low-rank paths' two matrices each (2 C (D_w + D_a + D_v + D_g) per layer; layer 0
        skips the value residual's); `channel_mix` (2 C F); `state_update` per head 5 N^2 multiply-adds (S diag(w),
        S a, (S a) b^T, v k^T, S r: 5 C N per layer, the O(C N) a transformer's attention has in O(C T)); `head`
        (V C). Elementwise work (norms, mixes, gates, activations) is not counted."""
        C, L, F, N = self.n_embd, self.n_layer, self.dim_ffn, self.head_size
        return {
            "projections": 2 * L * 4 * C * C,
            "loras": 2 * (L * 2 * C * self.lora_sum - 2 * C * self.value_lora),
            "channel_mix": 2 * L * 2 * C * F,
            "state_update": 2 * L * 5 * C * N,
            "head": 2 * self.vocab_size * C,
        }

    @property
    def forward_flops_per_token(self) -> int:
        """Floating-point operations of one token's forward, counting 2 per multiply-add: the sum of `flops_parts`
        (every matmul and the state update), independent of the context."""
        return sum(self.flops_parts.values())


def _check_positive_int(field: str, value, alternative: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"RWKV7Config.{field} must be a positive int{' ' + alternative if alternative else ''}, got {value!r}"
        )


def _released(name: str, n_layer: int, n_embd: int, vocab_size: int, **widths) -> RWKV7Config:
    return RWKV7Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, name=name, **widths)


PRESETS: dict[str, RWKV7Config] = {
    # The Pile models (GPT-NeoX-20B tokenizer, 332B tokens), beside RWKV-4 Pile and Pythia: BlinkDL's
    # RWKV-x070-Pile-{168M,421M,1.47B} (paper arXiv 2503.14456, appendix; fla-hub/rwkv7-*-pile).
    "pile-168M": _released("pile-168M", 12, 768, PILE_VOCAB),
    "pile-421M": _released("pile-421M", 24, 1024, PILE_VOCAB),
    "pile-1.47B": _released("pile-1.47B", 24, 2048, PILE_VOCAB),
    # The World models (World tokenizer): the paper's four, 0.19B to 2.9B parameters.
    "world-0.1B": _released("world-0.1B", 12, 768, WORLD_VOCAB),
    # its gate LoRA is 128 wide (the G1 0.4B checkpoint's g1; the card's 0.450B parameters), not the formula's 160,
    # which the Pile 421M has (its 421M parameters): tests/test_rwkv7_model.py RELEASED_SHAPES
    "world-0.4B": _released("world-0.4B", 24, 1024, WORLD_VOCAB, gate_lora=128),
    "world-1.5B": _released("world-1.5B", 24, 2048, WORLD_VOCAB),
    "world-2.9B": _released("world-2.9B", 32, 2560, WORLD_VOCAB),
    # Tests: four heads of 8, narrow LoRAs (float64 gradients through a Python loop stay fast).
    "tiny": RWKV7Config(
        n_layer=2,
        n_embd=32,
        vocab_size=BYTE_VOCAB,
        head_size=8,
        decay_lora=8,
        iclr_lora=8,
        value_lora=4,
        gate_lora=16,
        ctx_len=256,
        name="tiny",
    ),
}


_BYTE_NAME = re.compile(r"^byte-(\d+)x(\d+)$")


def get_config(name: str) -> RWKV7Config:
    """A preset, or any byte-level size spelt 'byte-<layers>x<width>' (e.g. 'byte-4x128'; heads of 64, or of the
    width's largest power-of-two divisor below 64 for narrower models)."""
    if name in PRESETS:
        return PRESETS[name]
    match = _BYTE_NAME.match(name)
    if match:
        n_layer, n_embd = int(match[1]), int(match[2])
        if n_layer < 1 or n_embd < 1:
            raise KeyError(f"byte size {name!r} needs at least one layer and one channel")
        head_size = math.gcd(n_embd, 64)
        return RWKV7Config(n_layer=n_layer, n_embd=n_embd, vocab_size=BYTE_VOCAB, head_size=head_size, name=name)
    raise KeyError(f"unknown RWKV-7 preset {name!r}; expected one of {sorted(PRESETS)} or 'byte-<layers>x<width>'")
