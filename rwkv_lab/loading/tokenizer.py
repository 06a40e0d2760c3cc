"""Tokenizers: GPT-NeoX-20B BPE (every RWKV-4 Pile model) and bytes (the embedded default model).

Both have token 0 = end-of-text, the document separator and the evaluation prefix (the models have no BOS).
"""

from __future__ import annotations

import os
from pathlib import Path

from .hub import download_file, is_repo_id

NEOX_HUB_REPO = "EleutherAI/gpt-neox-20b"
TOKENIZER_HINT = (
    "pass the tokenizer as a local tokenizer.json (tokenizer=... in Python, --tokenizer on the command "
    "line, or $RWKV_LAB_TOKENIZER), or 'bytes' for a byte-level model"
)


def utf8(text) -> bytes:
    """The text as UTF-8, or a clear error for what is not text (bytes, None) or not valid Unicode."""
    if not isinstance(text, str):
        raise TypeError(f"text to encode must be a str; got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"the text holds a lone surrogate {text[err.start]!r} at index {err.start}, which is not "
            "valid Unicode: it has no UTF-8 bytes to tokenize"
        ) from None


ENV_TOKENIZER = "RWKV_LAB_TOKENIZER"  # a tokenizer.json to use instead of the hub copy


class ByteTokenizer:
    """UTF-8 bytes as tokens 1..256, end-of-text 0: no vocabulary file, and every character is readable."""

    vocab_size = 257
    eot_id = 0
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in utf8(text)]

    def decode(self, ids) -> str:
        return bytes(i - 1 for i in ids if i != self.eot_id).decode("utf-8", errors="replace")


class BPETokenizer:
    """A `tokenizers` JSON tokenizer (GPT-NeoX-20B for the RWKV-4 Pile models)."""

    eot_id = 0

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ValueError(f"{path} is not a tokenizers JSON file ({err})") from err
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.name = str(path)

    def encode(self, text: str) -> list[int]:
        utf8(text)
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(source: str | None = None):
    """'bytes', a tokenizer.json path, a hub repo id, or None: $RWKV_LAB_TOKENIZER, else GPT-NeoX-20B from the hub."""
    if source is None:
        source = os.environ.get(ENV_TOKENIZER) or NEOX_HUB_REPO
    if source == "bytes":
        return ByteTokenizer()
    if is_repo_id(source):
        return BPETokenizer(download_file(source, "tokenizer.json", hint=TOKENIZER_HINT))
    if not os.path.exists(source):
        raise FileNotFoundError(f"no tokenizer file at {source!r}; expected 'bytes', a tokenizer.json or a hub repo id")
    return BPETokenizer(source)


def check_tokenizer(tokenizer, model) -> None:
    """Every id the tokenizer can produce must index the model's embedding, and a byte tokenizer fits only a
    byte-level model (on a BPE model its ids would be read as unrelated BPE tokens)."""
    if isinstance(tokenizer, ByteTokenizer) and model.config.vocab_size != ByteTokenizer.vocab_size:
        own = NEOX_HUB_REPO if model.config.vocab_size >= 50000 else "its tokenizer.json"
        raise ValueError(
            f"the byte tokenizer (257 ids) does not fit this model's vocabulary of {model.config.vocab_size}: "
            f"use the model's own tokenizer ({own})"
        )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens but the model's vocabulary has only "
            f"{model.config.vocab_size}: ids beyond it have no embedding. Use the model's own tokenizer "
            f"({'bytes' if model.config.vocab_size == ByteTokenizer.vocab_size else NEOX_HUB_REPO})."
        )


def tokenizer_for(model, source: str | None = None):
    """The tokenizer that fits the model: `source` if given; else the tokenizer.json of the folder the model was
    loaded from (`model.source_path`, set by load_model: a transformers folder carries its own); else bytes for a
    257-token vocabulary, GPT-NeoX-20B for any other."""
    folder = getattr(model, "source_path", None)
    if source is None and folder is not None and Path(folder, "tokenizer.json").is_file():
        source = str(Path(folder, "tokenizer.json"))
    if source is None and model.config.vocab_size == ByteTokenizer.vocab_size:
        source = "bytes"
    tokenizer = load_tokenizer(source)
    check_tokenizer(tokenizer, model)
    return tokenizer
