"""Training: the trainer (AdamW, schedule, bits-per-byte, save/resume), the corpus, the shared loss, and the
comparison of runs. `python -m rwkv_lab.training --help` is the command line."""

from .corpus import Corpus, build_corpus
from .trainer import TrainConfig, Trainer, bits_per_byte, build, main, parse_count

__all__ = ["Corpus", "TrainConfig", "Trainer", "bits_per_byte", "build", "build_corpus", "main", "parse_count"]
