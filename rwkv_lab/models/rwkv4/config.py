"""Model configuration: the six RWKV-4 Pile presets and small ones for tests and the embedded default."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from ..base import ModelConfig
from ..vocab import BYTE_VOCAB, NEOX_VOCAB


@dataclass(frozen=True)
class RWKVConfig(ModelConfig):
    arch: ClassVar[str] = "rwkv4"  # the registry's key (rwkv_lab.models)

    n_layer: int
    n_embd: int
    vocab_size: int = NEOX_VOCAB
    ctx_len: int = 1024  # training context of the released models; the recurrent form has no limit
    layer_norm_eps: float = 1e-5
    name: str = "custom"
    ffn_dim: int | None = None  # the channel-mix width; None: 4 * n_embd, as every released Pile model

    def __post_init__(self):
        for field in ("n_layer", "n_embd", "vocab_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RWKVConfig.{field} must be a positive int, got {value!r}")
        if self.ffn_dim is not None and (
            isinstance(self.ffn_dim, bool) or not isinstance(self.ffn_dim, int) or self.ffn_dim < 1
        ):
            raise ValueError(f"RWKVConfig.ffn_dim must be a positive int or None, got {self.ffn_dim!r}")

    @property
    def dim_ffn(self) -> int:
        return self.ffn_dim or 4 * self.n_embd

    @property
    def n_params(self) -> int:
        """Exact parameter count, 2VD + (5D^2 + 2DF) L + D(11L + 4); with F = 4D, 2VD + 13D^2 L + D(11L + 4)
        (RWKV paper, Table 2)."""
        V, D, L, F = self.vocab_size, self.n_embd, self.n_layer, self.dim_ffn
        return 2 * V * D + (5 * D * D + 2 * D * F) * L + D * (11 * L + 4)

    @property
    def forward_flops_per_token(self) -> int:
        """RWKV-4's exact matrix FLOPs per token, 2 (V D + 13 D^2 L) with F = 4D (RWKV paper, Table 2; the
        channel mix's 2DF in general): independent of the context."""
        V, D, L, F = self.vocab_size, self.n_embd, self.n_layer, self.dim_ffn
        return 2 * (V * D + (5 * D * D + 2 * D * F) * L)

    @property
    def state_numbers(self) -> int:
        """Numbers in the recurrent state of one sequence: 5 vectors of C per layer, independent of T."""
        return 5 * self.n_embd * self.n_layer


PRESETS: dict[str, RWKVConfig] = {
    "169M": RWKVConfig(n_layer=12, n_embd=768, name="169M"),
    "430M": RWKVConfig(n_layer=24, n_embd=1024, name="430M"),
    "1.5B": RWKVConfig(n_layer=24, n_embd=2048, name="1.5B"),
    "3B": RWKVConfig(n_layer=32, n_embd=2560, name="3B"),
    "7B": RWKVConfig(n_layer=32, n_embd=4096, name="7B"),
    "14B": RWKVConfig(n_layer=40, n_embd=5120, name="14B"),
    # Tests: small enough for float64 gradients through a Python loop over 1000 tokens.
    "tiny": RWKVConfig(n_layer=2, n_embd=32, vocab_size=BYTE_VOCAB, ctx_len=256, name="tiny"),
    # The embedded default model (see default.py): byte-level, 5.1M parameters.
    "byte-6x256": RWKVConfig(n_layer=6, n_embd=256, vocab_size=BYTE_VOCAB, ctx_len=1024, name="byte-6x256"),
}


_BYTE_NAME = re.compile(r"^byte-(\d+)x(\d+)$")


def get_config(name: str) -> RWKVConfig:
    """A preset, or any byte-level size spelt 'byte-<layers>x<width>' (e.g. 'byte-4x128')."""
    if name in PRESETS:
        return PRESETS[name]
    match = _BYTE_NAME.match(name)
    if match:
        return RWKVConfig(n_layer=int(match[1]), n_embd=int(match[2]), vocab_size=BYTE_VOCAB, name=name)
    raise KeyError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)} or 'byte-<layers>x<width>'")
