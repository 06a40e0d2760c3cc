"""The lm-eval result cache of one model: one JSON line per request, keyed by the request; the header names the
model (the checkpoint's SHA-256, dtype, tokenizer), so two models never share results."""

from __future__ import annotations

import hashlib
import json
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


class ResultCache:
    """Results of one model, one JSON line per request, keyed by the request; the header names the model."""

    def __init__(self, path: Path, identity: dict):
        self.path, self.identity, self.entries = Path(path), identity, {}
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            header = json.loads(lines[0]) if lines else {}
            if header.get("model_identity") != identity:
                raise ValueError(
                    f"cache {self.path} holds results of another model "
                    f"({header.get('model_identity')}); this model is {identity}. "
                    f"Use another cache_dir or delete the file."
                )
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of an interrupted write
                    continue
                self.entries[entry["key"]] = entry["value"]
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"model_identity": identity}) + "\n")

    @staticmethod
    def key(kind: str, args) -> str:
        return hashlib.sha256(json.dumps([kind, args], sort_keys=True).encode()).hexdigest()

    def get(self, kind: str, args):
        return self.entries.get(self.key(kind, args))

    def put(self, kind: str, args, value) -> None:
        k = self.key(kind, args)
        self.entries[k] = value
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": k, "value": value}) + "\n")
