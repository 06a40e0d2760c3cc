"""A training corpus every machine has: the Python standard library of the running interpreter.

    corpus = build_corpus()                        # stdlib .py files, byte tokens, split by file
    corpus = build_corpus("my_texts/", tokenizer=load_tokenizer("20B_tokenizer.json"))

Files are read in sorted order and joined with end-of-text (token 0) between documents. A file goes to the
validation split when the SHA-1 of its relative path falls below `val_fraction`: the split does not depend on which
other files exist, so two Python versions agree on every file they share. `files_sha256` hashes the list of
(relative path, size) pairs, naming exactly which corpus a model saw.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..loading.tokenizer import ByteTokenizer

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: Path, pattern: str = "*.py") -> list[Path]:
    """Files under `root` matching `pattern`, sorted by relative path, skipping installed packages and caches."""
    root = Path(root)
    files = [p for p in root.rglob(pattern) if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relative_path: str, val_fraction: float) -> bool:
    digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < val_fraction * 2**32


@dataclass
class Corpus:
    train: torch.Tensor  # (N_train,) token ids
    val: torch.Tensor  # (N_val,)
    source: str
    files_sha256: str
    n_train_files: int
    n_val_files: int
    train_bytes: int
    val_bytes: int
    tokenizer: str
    vocab_size: int
    val_files: list[str] = field(default_factory=list)

    @property
    def val_bytes_per_token(self) -> float:
        """Converts nats per token into bits per byte: bpb = loss / ln 2 / bytes_per_token."""
        return self.val_bytes / max(1, len(self.val))

    def summary(self) -> dict:
        return {
            "source": self.source,
            "files_sha256": self.files_sha256,
            "tokenizer": self.tokenizer,
            "n_train_files": self.n_train_files,
            "n_val_files": self.n_val_files,
            "train_tokens": len(self.train),
            "val_tokens": len(self.val),
            "train_bytes": self.train_bytes,
            "val_bytes": self.val_bytes,
        }


def _tokens(docs: list[str], tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eot_id)
    dtype = torch.int16 if tokenizer.vocab_size <= 2**15 else torch.int32
    return torch.tensor(ids, dtype=dtype)


def build_corpus(
    source=None, tokenizer=None, val_fraction: float = 0.05, pattern: str = "*.py", max_files: int | None = None
) -> Corpus:
    """Tokenise a directory (files matching `pattern`, split by file) or one text file (its last `val_fraction`
    of characters held out). None: this interpreter's standard library."""
    tokenizer = tokenizer or ByteTokenizer()
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    root = Path(source) if source is not None else stdlib_dir()
    if not root.exists():
        raise FileNotFoundError(f"corpus source {root} does not exist; expected a directory or a text file")
    if root.is_file():
        text = root.read_text(encoding="utf-8", errors="replace")
        if not text:
            raise ValueError(f"corpus file {root} is empty")
        cut = int(len(text) * (1 - val_fraction))
        entries, train_docs, val_docs = [(root.name, len(text))], [text[:cut]], [text[cut:]]
        val_names = [root.name]
    else:
        files = list_files(root, pattern)[:max_files]
        if not files:
            raise ValueError(f"no files matching {pattern!r} under {root}")
        entries, train_docs, val_docs, val_names = [], [], [], []
        for path in files:
            rel = path.relative_to(root).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            entries.append((rel, len(text)))
            if is_validation(rel, val_fraction):
                val_docs.append(text)
                val_names.append(rel)
            else:
                train_docs.append(text)
        if not val_docs or not train_docs:
            raise ValueError(
                f"{len(files)} files under {root} give an empty train or validation split; "
                f"use more files or another val_fraction"
            )
    listing = "\n".join(f"{name}\t{size}" for name, size in entries)
    return Corpus(
        train=_tokens(train_docs, tokenizer),
        val=_tokens(val_docs, tokenizer),
        source=str(root),
        files_sha256=hashlib.sha256(listing.encode("utf-8")).hexdigest(),
        n_train_files=len(train_docs),
        n_val_files=len(val_docs),
        train_bytes=sum(len(d.encode("utf-8")) for d in train_docs),
        val_bytes=sum(len(d.encode("utf-8")) for d in val_docs),
        tokenizer=getattr(tokenizer, "name", type(tokenizer).__name__),
        vocab_size=tokenizer.vocab_size,
        val_files=val_names,
    )


def unigram_loss(corpus: Corpus) -> float:
    """Cross-entropy (nats/token) on validation of token frequencies counted on train (add-one smoothed): the
    baseline a model that ignores context reaches."""
    counts = torch.bincount(corpus.train.long(), minlength=corpus.vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return float(-logp[corpus.val.long()].mean())
