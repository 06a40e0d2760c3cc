"""rwkv-lab: RWKV-4 and RWKV-7 in their parallel (transformer) and recurrent (RNN) formulations, beside a matched
transformer, with the tools to compare them.

The layers, each importing only from those above it in this list (ARCHITECTURE.md):
    ops/                            the operators of each generation (reference beside the fast forms)
    models/                         the generations behind one registry (rwkv4, rwkv7, transformer)
    results, cost                   results with provenance; the training-cost arithmetic
    loading/                        checkpoints, hub, tokenizers, the embedded default model
    inference/                      generation through the fast decoder, sampling on the device
    training/                       trainer, corpus, loss
    measure/                        timing, memory, the sweeps against a transformer
    evaluation/                     the lm-eval backend, tasks, published tables
    analysis/                       equivalence, numerics, implicit attention, state dynamics
"""

from .analysis.equivalence import compare_formulations, rel_error
from .inference.generation import generate, stream
from .loading.checkpoint import CheckpointError, convert, default_model, load_model, save_model
from .loading.tokenizer import ByteTokenizer, load_tokenizer, tokenizer_for, world_tokenizer
from .models import ARCHITECTURES, architecture, architecture_of
from .models.rwkv4.config import PRESETS, RWKVConfig, get_config
from .models.rwkv4.model import RWKV, build_model, init_weights

__all__ = [
    "ARCHITECTURES",
    "architecture",
    "architecture_of",
    "ByteTokenizer",
    "CheckpointError",
    "PRESETS",
    "RWKV",
    "RWKVConfig",
    "build_model",
    "compare_formulations",
    "convert",
    "default_model",
    "generate",
    "get_config",
    "init_weights",
    "load_model",
    "load_tokenizer",
    "rel_error",
    "save_model",
    "stream",
    "tokenizer_for",
    "world_tokenizer",
]
__version__ = "0.1.0"
