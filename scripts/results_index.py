"""Write results/README.md, the index of results/, from the provenance of every file in it (rwkv_lab.results.
index_text): what each file holds (its `description`), what wrote it (the recorded command, else the one
described), where and at which commit. Which file is current is where it lies: results/history/ holds the
superseded runs, everything else is current.

    python scripts/results_index.py          # rewrite results/README.md (and its provenance)
    python scripts/results_index.py --check  # exit 1 if results/README.md differs from what the provenance says

A new result's description: add `"description"` to its provenance once (a rerun keeps it, rwkv_lab.results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rwkv_lab.results import REPO_ROOT, index_text, write_index  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if results/README.md is stale")
    args = parser.parse_args(argv)
    if args.check:
        index = REPO_ROOT / "results" / "README.md"
        if not index.exists() or index.read_text() != index_text():
            print("results/README.md differs from the provenance: run python scripts/results_index.py", file=sys.stderr)
            return 1
        return 0
    write_index()
    return 0


if __name__ == "__main__":
    sys.exit(main())
