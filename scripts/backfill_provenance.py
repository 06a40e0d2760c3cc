"""Provenance for the results files that were committed without any (logs, screenshots, executed notebooks), and
each file's description and command from results/README.md as it was hand-written until commit 8bbbeb8 (before
scripts/results_index.py generated it from the provenance). Run once; rerunning changes nothing.

    python scripts/backfill_provenance.py

What git knows is recorded, nothing else: the commit that last added or changed the file (`git log
--diff-filter=AM --follow`), its date as the commit's (not the run's), the command and description from the
README's row for the file, and `reconstructed` saying so. A device or run date that was not recorded is not
invented: a log's run is often the same as a table's beside it, whose own provenance names the device.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rwkv_lab.results import atomic_write, meta_path, provenance_of  # noqa: E402

RESULTS = ROOT / "results"
OLD_INDEX_COMMIT = "8bbbeb8"  # the last hand-written results/README.md
RECONSTRUCTED = (
    "reconstructed by scripts/backfill_provenance.py from git history (the commit that last added or changed the "
    "file, `committed_in`, and its date, not the run's) and the "
    "hand-written results/README.md of commit 8bbbeb8 (command, description); device and run date not recorded"
)
# git_dirty was written as null by runs on a lent GPU machine: the tree there has no .git, the commit was passed in
# through $RWKV_LAB_GIT_COMMIT (or filled in afterwards) and the uncommitted diff was not
DIRTY_UNKNOWN = (
    "unknown: recorded as null; the run's tree had no .git, its commit was passed in (or filled in afterwards) "
    "without the hash of any uncommitted changes"
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def old_path(relative: str) -> str:
    """The path a file had in the hand-written index: before results/history/ and before cost/ was renamed."""
    relative = relative.removeprefix("history/")
    return "cost/" + relative.removeprefix("training_speed/") if relative.startswith("training_speed/") else relative


def index_rows(text: str) -> list[tuple[list[str], str, str]]:
    """(file patterns, command, description) of each row of the hand-written index."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        patterns = []
        for name in names:
            if name.startswith("_"):  # a tag beside a named file: `profile/memory_profile_b1_small.csv`, `_b1_7B`
                base = patterns[0] if patterns else ""
                stem = re.sub(r"_[^/_]*(\.\w+)$", "", base.rsplit(".", 1)[0] + ".x")
                patterns.append(f"{stem}{name}.*")
            elif "/" in name or name.endswith((".csv", ".json", ".log", ".png", ".ipynb")):
                patterns.append(name)
        if "(+ `_" in cells[0] or "_*" in cells[0]:
            patterns += [p.replace(".csv", "_*.csv") for p in patterns if p.endswith(".csv")]
        stems = {p.rsplit(".", 1)[0] for p in patterns if not p.endswith("*")}
        patterns += [f"{s}.*" for s in stems]  # a row's table names its meta and log by stem too
        command, what = cells[1], cells[2]
        if rows and command.startswith(("the same run", "the same 169M")) and "printed output" in what:
            # "their printed output" of "the same runs": the command and description of the row above
            command, what = rows[-1][1], f"the printed output of: {rows[-1][2]}"
        rows.append((patterns, command, what))
    return rows


# files the hand-written index named in words only (its norm_mix row: "with their training_vs_pythia_*, ...,
# logs") or not at all (the budget-0.5 runs and the context study, described only by the README's measured table
# of that commit, whose wording is kept here)
NAMED_IN_WORDS = {
    "cost/*_norm_mix_o*": "cost/training_mfu_norm_mix_on.csv",  # the row naming this file
    "profile/memory_profile_*": "profile/memory_profile_b1_small.csv",  # "... _b1_7B, _b1_compiled, _b8"
    # "training/train512.log, training/train4096.log, training/train_default*.log | the same runs": which runs
    "training/train512.log": ("output", "training/summary.csv"),
    "training/train4096.log": ("output", "training/summary.csv"),
    "training/train_default.log": ("output", "training/summary_default.csv"),
    "training/train_default_50M.log": ("output", "training/summary_default_50M.csv"),
    "training/train_default_40M.log": ("output", "training/summary_default_40M.csv"),
    "cost/*budget0.5*": (
        "`benchmarks/bench_training.py --memory-budget 0.5` on an H200 (README's measured table at 8bbbeb8)",
        "the same with the partitioner under `activation_memory_budget` 0.5 (it recomputes part of what it keeps), "
        "each step launched kernel by kernel, same run; RWKV-4 beside Pythia",
    ),
    "training/context_effect*": (
        "`benchmarks/context_effect.py` (CPU, 2 cores; README's measured table at 8bbbeb8)",
        "why T = 4096 trains slower per token: bits/byte on the same 512-token validation windows, trained at "
        "T = 512 / T = 4096 / T = 512 on the T = 4096 run's tokens (byte-4x128)",
    ),
}


def describe(relative: str, rows) -> tuple[str, str] | None:
    """(command, description) of the first row naming the file exactly, else the first whose pattern matches it."""
    name = old_path(relative)
    for pattern, found in NAMED_IN_WORDS.items():
        if fnmatch.fnmatch(name, pattern):
            if isinstance(found, str):
                return next((c, w) for patterns, c, w in rows if found in patterns)
            if found[0] == "output":
                command, what = next((c, w) for patterns, c, w in rows if found[1] in patterns)
                return command, f"the printed output of: {what}"
            return found
    for patterns, command, what in rows:
        if name in patterns:
            return command, what
    for patterns, command, what in rows:
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return command, what
    return None


def committed_in(relative: str) -> tuple[str, str]:
    """The commit that last added or changed the file's content (renames followed, not counted) and its date."""
    out = git("log", "-1", "--diff-filter=AM", "--follow", "--format=%H %cI", "--", f"results/{relative}")
    commit, date = out.split()
    return commit, date


def data_files() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and not p.name.endswith(".meta.json"))


def main() -> int:
    rows = index_rows(git("show", f"{OLD_INDEX_COMMIT}:results/README.md"))
    changed = 0
    for path in data_files():
        relative = path.relative_to(RESULTS).as_posix()
        if relative == "README.md":
            continue  # written with its provenance by scripts/results_index.py
        found = describe(relative, rows)
        meta = provenance_of(path)
        if meta is None:
            commit, date = committed_in(relative)
            meta = {"reconstructed": RECONSTRUCTED, "committed_in": commit, "commit_date_utc": date}
            meta |= {"data_file": path.name}
        record = dict(meta)
        if found and "description" not in record:
            record["description"] = found[1]
        if found and not record.get("command"):
            record.setdefault("command_described", found[0])
        if record.get("git_dirty", False) is None:
            record["git_dirty"] = DIRTY_UNKNOWN
        if "data_sha256" not in record and path.suffix not in (".json",):
            import hashlib

            record["data_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        if record == meta and provenance_of(path) is not None:
            continue
        changed += 1
        if path.suffix == ".json" and "provenance" in json.loads(path.read_text()):
            data = json.loads(path.read_text())
            data["provenance"] = record
            text = json.dumps(data, indent=2) + "\n"
            atomic_write(path, lambda tmp: tmp.write_text(text))
        else:
            text = json.dumps(record, indent=2) + "\n"
            atomic_write(meta_path(path), lambda tmp: tmp.write_text(text))
    print(f"{changed} provenance record(s) written")
    missing = [p.relative_to(RESULTS).as_posix() for p in data_files() if "description" not in (provenance_of(p) or {})]
    print(f"{len(missing)} without a description:", *missing, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
