"""What every model generation provides: the recurrent-LM protocol and the architecture record the registry holds.

A generation is a package under `rwkv_lab/models/` (rwkv4, rwkv7, transformer) that owns its config, network,
official initialisation, checkpoint key map and detection, and its facts. The rest of the suite (loading,
generation, the decoder, lm-eval, the trainer, the profiler, cost) asks the registry (`rwkv_lab.models`) for the
`Architecture` of a model, config or checkpoint, and never branches on names.

A recurrent LM (RWKV-4, RWKV-7) has, with tokens (B, T) of int64 ids and `state` its own `RecurrentState`:

    logits, state = model(tokens, state=None)            # parallel form: (B, T, V) and the state after the last token
    hidden, state = model.hidden(tokens, state=None)     # the same without the head: (B, T, C) after ln_out
    last, state = model.prefill(tokens, state=None, chunk=None)  # logits of the last position only (B, V)
    last, state = model.prefill(tokens, state, lengths=lengths)  # right-padded prompts, lengths (B,): each
                                                        # sequence's logits and state at its own last token
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


def matrices_but_embeddings(name: str, param: torch.Tensor) -> bool:
    """The usual weight-decay rule (nanoGPT, Pythia, RWKV-LM's RWKV-4): 2-D parameters except the embedding."""
    return param.dim() == 2 and "emb" not in name.lower()


@dataclass(frozen=True)
class Architecture:
    """One model generation as the suite sees it.

    name: the registry key ("rwkv4", "rwkv7", "transformer"), the trainer's `--arch` and a saved file's metadata.
    presets: name -> config (the released sizes and small ones); `get_config(name)` also parses the generation's
        spelled sizes (e.g. byte-6x256).
    model_class: the network (`model_class(config)` builds it uninitialised); None where an outside library
        builds it (the transformer).
    build: `build(config, seed=0, context=1024, **options)`: a freshly initialised model, officially
        initialised (RWKV-LM's recipe for each RWKV generation), in fp32 on the CPU.
    forward_flops_per_token: `(config, context) -> int`, the matrix FLOPs of one token's forward pass (attention
        grows with the context; an RNN's does not).
    recurrent: a recurrent LM (the protocol above), with a constant-size state.
    lr_scale: parameter-name suffix -> learning-rate multiplier (RWKV-LM's layerwise recipe); others get 1.
    checkpoint: the generation's checkpoint module (matches, config_from_state_dict, the hub layout's key map and
        config.json both ways: see rwkv_lab/models/rwkv4/checkpoint.py), None where there is none.
    foreign_model_types: the `config.model_type` of another library's classes that stand for this generation
        (transformers' GPT-NeoX for the transformer baseline).
    takes_weight_decay: `(parameter name, parameter) -> bool`, which parameters AdamW decays (default: the
        projection matrices, not embeddings, norms, mixes or decays, as nanoGPT and Pythia do).
    label: what a table's or a figure's reader calls it ("RWKV-7"); default the name.
    """

    name: str
    description: str
    config_class: type
    presets: dict
    get_config: Callable[[str], Any]
    model_class: type | None
    build: Callable[..., Any]
    forward_flops_per_token: Callable[[Any, int], int]
    recurrent: bool = True
    lr_scale: dict = field(default_factory=dict)
    checkpoint: Any = None
    foreign_model_types: tuple = ()
    takes_weight_decay: Callable[[str, torch.Tensor], bool] = field(default=None)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.takes_weight_decay is None:
            object.__setattr__(self, "takes_weight_decay", matrices_but_embeddings)

    def owns(self, model) -> bool:
        """Whether `model` (possibly wrapped by DDP or torch.compile) is one of this generation's networks."""
        inner = getattr(model, "_orig_mod", model)
        inner = getattr(inner, "module", inner)
        config = getattr(inner, "config", None)
        return getattr(config, "arch", None) == self.name or getattr(config, "model_type", None) in (
            self.foreign_model_types
        )
