"""What every model generation provides: the recurrent-LM protocol and the architecture record the registry holds.

A generation is a package under `rwkv_lab/models/` (rwkv4, rwkv7, transformer) that owns its config, network,
official initialisation, checkpoint key map and detection, and its facts. The rest of the suite (loading,
generation, the decoder, lm-eval, the trainer, the profiler, cost) asks the registry (`rwkv_lab.models`) for the
`Architecture` of a model, config or checkpoint, and never branches on names.

A recurrent LM (RWKV-4, RWKV-7) has, with tokens (B, T) of int64 ids and `state` its own `RecurrentState`:

    logits, state = model(tokens, state=None)            # parallel form: (B, T, V) and the state after the last token
    hidden, state = model.hidden(tokens, state=None)     # the same without the head: (B, T, C) after ln_out
    last, state = model.prefill(tokens, state=None, chunk=None)  # logits of the last position only (B, V)
    logits, state = model.step(token, state)             # recurrent form: token (B,) -> (B, V)
    state = model.init_state(batch)                      # the empty state
    model(tokens, state, trace=[])                       # per layer, a dict of what the layer computed

and `config`, `dtype`, `device`, `state_dtype`. Prefill then step equals stepping every token; the parallel form
equals the recurrent one (tests/test_model.py, tests/test_rwkv7_model.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .state import RecurrentState


@runtime_checkable
class RecurrentLM(Protocol):
    config: Any

    def forward(self, tokens: torch.Tensor, state: RecurrentState | None = None, **kwargs): ...

    def hidden(self, tokens: torch.Tensor, state: RecurrentState | None = None, **kwargs): ...

    def prefill(self, tokens: torch.Tensor, state: RecurrentState | None = None, **kwargs): ...

    def step(self, token: torch.Tensor, state: RecurrentState | None = None, **kwargs): ...

    def init_state(self, batch: int = 1) -> RecurrentState: ...


@dataclass(frozen=True)
class Architecture:
    """One model generation as the suite sees it.

    name: the registry key ("rwkv4", "rwkv7", "transformer"), also `config.arch` and the trainer's `--arch`.
    config_class / model_class: its config dataclass and network (`model_class(config)` builds it uninitialised).
    presets: name -> config (the released sizes and small ones); `get_config(name)` also parses the generation's
        own spelled sizes (e.g. byte-6x256).
    init: `init(model, seed=0, **options)`: the official initialisation, in place, returning the model.
    recurrent: whether it is a recurrent LM (the protocol above), with a constant-size state.
    lr_scale: parameter-name suffix -> learning-rate multiplier (RWKV-LM's layerwise recipe); others get 1.
    checkpoint: the generation's checkpoint module: `matches(state_dict)`, `config_from_state_dict(sd, name)` and
        the hub layout's key map (see rwkv_lab/models/rwkv4/checkpoint.py for the functions it provides).
    """

    name: str
    description: str
    config_class: type
    model_class: type
    presets: dict
    get_config: Callable[[str], Any]
    init: Callable[..., Any]
    recurrent: bool = True
    lr_scale: dict = field(default_factory=dict)
    checkpoint: Any = None

    def build(self, config, seed: int = 0, dtype=torch.float32, device="cpu", **init_options):
        """A freshly initialised model of `config` (initialised on the CPU in fp32, so results do not depend on the
        device), then moved."""
        model = self.init(self.model_class(config), seed=seed, **init_options)
        return model.to(device=device, dtype=dtype)
