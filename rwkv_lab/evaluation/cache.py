"""The lm-eval result cache of one model: one JSON line per request, keyed by the request; the header names the
model (the checkpoint's SHA-256, dtype, tokenizer), so two models never share results."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path


def file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of a folder's files in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


class CacheError(ValueError):
    """A result cache file that cannot be used as it is (its message names the file and what to do)."""


class ResultCache:
    """Results of one model, one JSON line per request, keyed by the request; the header names the model.

    Safe for several processes sharing one file (data-parallel evaluation): the file is created with its header
    in one step (linked into place, so no process sees it half-written or truncates another's entries), and each
    entry is appended as one line under an exclusive lock. A damaged line (an interrupted write) is skipped with a
    warning that names the file and line; a damaged header is an error that names the file.
    """

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity, self.entries = Path(path), identity, {}
        self._create()
        lines = self.path.read_text().split("\n")
        try:
            header = json.loads(lines[0])
            if not isinstance(header, dict) or "model_identity" not in header:
                raise ValueError("no model_identity")
        except ValueError as err:
            raise CacheError(
                f"result cache {self.path}: its first line is not a cache header ({err}); "
                "the file is damaged or not a cache: delete it or use another cache_dir"
            ) from None
        if header["model_identity"] != identity:
            raise CacheError(
                f"result cache {self.path} holds results of another model "
                f"({header['model_identity']}); this model is {identity}. Use another cache_dir or delete the file."
            )
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["value"]
            except (ValueError, TypeError, KeyError):
                warnings.warn(
                    f"result cache {self.path}, line {number}: not an entry (an interrupted write?); "
                    "skipped, its request will be computed again",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def _create(self) -> None:
        """The file with its header, created at once if absent (a fully written temporary linked into place)."""
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"model_identity": self.identity}) + "\n")
            try:
                os.link(tmp, self.path)  # fails if another process created it first: theirs is as good
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)

    @staticmethod
    def key(kind: str, args) -> str:
        return hashlib.sha256(json.dumps([kind, args], sort_keys=True).encode()).hexdigest()

    def get(self, kind: str, args):
        return self.entries.get(self.key(kind, args))

    def put(self, kind: str, args, value) -> None:
        k = self.key(kind, args)
        self.entries[k] = value
        line = json.dumps({"key": k, "value": value}) + "\n"
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                # a line cut short by an interrupted writer must not swallow this one
                f.seek(0, os.SEEK_END)
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                f.write(line.encode())
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
