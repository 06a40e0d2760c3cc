"""rwkv-lab: RWKV-4 in its parallel (transformer) and recurrent (RNN) formulations, with the tools to compare them."""

from .checkpoint import CheckpointError, convert, load_model, save_model
from .config import PRESETS, RWKVConfig, get_config
from .default import default_model
from .equivalence import compare_formulations, rel_error
from .generation import generate, stream
from .model import RWKV, build_model, init_weights
from .tokenizer import ByteTokenizer, load_tokenizer, tokenizer_for

__all__ = [
    "ByteTokenizer", "CheckpointError", "PRESETS", "RWKV", "RWKVConfig", "build_model",
    "compare_formulations", "convert", "default_model", "generate", "get_config", "init_weights", "load_model",
    "load_tokenizer", "rel_error", "save_model", "stream", "tokenizer_for",
]
__version__ = "0.1.0"
