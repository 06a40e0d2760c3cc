"""Tokenizers: GPT-NeoX-20B BPE (every RWKV-4 Pile model), RWKV World (the RWKV World / G1 models) and bytes
(the embedded default model).

All have token 0 = end-of-text, the document separator and the evaluation prefix (the models have no BOS).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from pathlib import Path

from ..models.vocab import BYTE_VOCAB, WORLD_VOCAB
from .hub import download_file, is_repo_id

NEOX_HUB_REPO = "EleutherAI/gpt-neox-20b"
TOKENIZER_HINT = (
    "pass the tokenizer as a local tokenizer.json (tokenizer=... in Python, --tokenizer on the command "
    "line, or $RWKV_LAB_TOKENIZER), 'world' for an RWKV World model, or 'bytes' for a byte-level model"
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

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, the texts spread over the CPU's cores by `tokenizers` (a batch of prompts is
        tokenized while nothing runs on the GPU: this is on generate's path to its first token)."""
        for text in texts:
            utf8(text)
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"  # shipped in the `rwkv` package beside its reference TRIE_TOKENIZER
WORLD_PACKAGE_HINT = "pip install 'rwkv>=0.8.26'"


class WorldTokenizer:
    """The RWKV World tokenizer: greedy longest match over the UTF-8 bytes against a vocabulary of 65,529 byte
    strings (ids 1..65529; every single byte among them, so any text encodes), end-of-text 0.

    Ids are those of the `rwkv` package's TRIE_TOKENIZER (tests/test_world_tokenizer.py compares them). The trie is
    nested dicts keyed by byte value, a node's token id under the key 256: a dict lookup per byte is what makes
    the walk faster than the package's 256-slot lists of objects."""

    vocab_size = 65536  # the World models' embedding rows; ids 65530..65535 are padding no text encodes to
    eot_id = 0

    def __init__(self, path: str | Path, name: str | None = None):
        self.name = name or str(path)
        self._trie, self._bytes = _parse_world_vocab(str(path))

    def encode(self, text: str) -> list[int]:
        return self.encode_bytes(utf8(text))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Greedy longest match: at each position the longest vocabulary entry that starts there."""
        root, ids, start, n = self._trie, [], 0, len(data)
        while start < n:
            node, end = root, start
            while end < n:
                node = node.get(data[end])
                if node is None:
                    break
                end += 1
                if 256 in node:  # a token ends here: the longest so far
                    token, stop = node[256], end
            ids.append(token)
            start = stop
        return ids

    def decode_bytes(self, ids) -> bytes:
        """The tokens' bytes joined; end-of-text adds none."""
        ids = list(ids)
        try:
            return b"".join(map(self._bytes.__getitem__, ids))
        except (KeyError, TypeError):
            for i in ids:  # name the first id the join could not look up
                try:
                    self._bytes[i]
                except (KeyError, TypeError):
                    raise ValueError(
                        f"token id {i!r} is not an int in 0..{len(self._bytes) - 1}, the RWKV World vocabulary"
                    ) from None
            raise

    def decode(self, ids) -> str:
        """Text, with a character split between tokens (or bytes that are no UTF-8) shown as U+FFFD, as the other
        tokenizers do; incremental decoding (inference/generation.py) holds such a tail back until it completes."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _literal_text(line: str) -> str:
    """What lies between a vocabulary line's first and last space: the token as a Python str or bytes literal."""
    return line[line.index(" ") + 1 : line.rindex(" ")]


def _literal(line: str):
    """A vocabulary line's token literal, or None."""
    try:
        return ast.literal_eval(_literal_text(line))
    except (ValueError, SyntaxError):
        return None


@functools.lru_cache(maxsize=4)
def _parse_world_vocab(path: str) -> tuple[dict, dict[int, bytes]]:
    """(trie, id -> bytes) from a vocabulary file of lines `<id> <Python str or bytes literal> <byte length>`,
    ids 1, 2, ... in order. Parsed once per process (about 0.3 s)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the RWKV World vocabulary {path} ({err})") from None
    try:  # every literal in one parse: 4x faster than line by line
        literals = ast.literal_eval("(" + ",".join(map(_literal_text, lines)) + ",)")
    except (ValueError, SyntaxError):
        literals = ()
    if len(literals) != len(lines):  # a line is not one literal: line by line, to name it
        literals = [_literal(line) for line in lines]
    trie: dict = {}
    id_bytes = {0: b""}
    for number, (line, token) in enumerate(zip(lines, literals), 1):
        try:
            token = token.encode("utf-8") if isinstance(token, str) else token
        except UnicodeEncodeError:  # a lone surrogate
            token = None
        first, last = line.split(" ", 1)[0], line.rsplit(" ", 1)[-1]
        if not (isinstance(token, bytes) and token and first == str(number) and last == str(len(token))):
            raise ValueError(
                f"{path} line {number} is not '{number} <str or bytes literal> <its byte length>': {line[:80]!r}"
            )
        node = trie
        for byte in token:
            node = node.setdefault(byte, {})
        node[256] = number
        id_bytes[number] = token
    missing = [b for b in range(256) if 256 not in trie.get(b, {})]
    if missing:
        raise ValueError(f"{path} lacks the single byte {missing[0]:#04x}, so not every text could be encoded")
    return trie, id_bytes


def world_tokenizer(path: str | Path | None = None) -> WorldTokenizer:
    """The RWKV World tokenizer (vocabulary 65,536) from the `rwkv` package's vocabulary file, or from `path`."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no RWKV World vocabulary file at {str(path)!r}")
        return WorldTokenizer(path)
    spec = importlib.util.find_spec("rwkv")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the RWKV World vocabulary ships in the `rwkv` package: {WORLD_PACKAGE_HINT}")
    file = Path(next(iter(spec.submodule_search_locations)), WORLD_VOCAB_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"the installed `rwkv` package has no {WORLD_VOCAB_FILE}: {WORLD_PACKAGE_HINT}")
    return WorldTokenizer(file, name=Path(WORLD_VOCAB_FILE).stem)


def load_tokenizer(source: str | None = None):
    """'bytes', 'world' (RWKV World, from the `rwkv` package), a tokenizer.json path, a hub repo id, or None:
    $RWKV_LAB_TOKENIZER, else GPT-NeoX-20B from the hub."""
    if source is None:
        source = os.environ.get(ENV_TOKENIZER) or NEOX_HUB_REPO
    if source == "bytes":
        return ByteTokenizer()
    if source == "world":
        return world_tokenizer()
    if is_repo_id(source):
        return BPETokenizer(download_file(source, "tokenizer.json", hint=TOKENIZER_HINT))
    if not os.path.exists(source):
        raise FileNotFoundError(
            f"no tokenizer file at {source!r}; expected 'bytes', 'world', a tokenizer.json or a hub repo id"
        )
    return BPETokenizer(source)


def encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids: through the tokenizer's own `encode_batch` where it has one (BPETokenizer: all cores),
    else one `encode` a text (any object with `encode` serves as a tokenizer)."""
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch is not None else [tokenizer.encode(text) for text in texts]


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


BY_VOCAB = {BYTE_VOCAB: "bytes", WORLD_VOCAB: "world"}  # any other vocabulary: GPT-NeoX-20B


def tokenizer_for(model, source: str | None = None):
    """The tokenizer that fits the model: `source` if given; else the tokenizer.json of the folder the model was
    loaded from (`model.source_path`, set by load_model: a transformers folder carries its own); else chosen by
    the vocabulary: bytes for 257 tokens, the RWKV World tokenizer for 65,536 (RWKV-7 World / G1), GPT-NeoX-20B
    for any other (the Pile models of both generations)."""
    folder = getattr(model, "source_path", None)
    if source is None and folder is not None and Path(folder, "tokenizer.json").is_file():
        source = str(Path(folder, "tokenizer.json"))
    if source is None:
        source = BY_VOCAB.get(model.config.vocab_size)
    tokenizer = load_tokenizer(source)
    check_tokenizer(tokenizer, model)
    return tokenizer
