"""Execute the notebooks headless from a clean kernel: `python -m rwkv_lab.run_notebooks [-p NAME VALUE] ...`.

The sources are jupytext percent-format scripts, notebooks/NN_name.py (reviewed and linted like code); each is
turned into a notebook and executed by papermill. Parameters go to every notebook's `parameters` cell; with
none, each runs on the embedded default model on the CPU. Executed copies are written to
<results>/notebooks/NN_name.ipynb.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from .results import REPO_ROOT, results_dir

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def parse_value(text: str):
    """Python literals as such ('1024', 'None', "['a']"), anything else as a string ('cuda')."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_sources() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def to_notebook(source: Path, destination: Path) -> Path:
    """The jupytext source as an .ipynb without outputs (what JupyterLab opens with jupytext installed)."""
    import jupytext

    jupytext.write(jupytext.read(source), destination)
    return destination


def run_notebooks(notebooks=None, parameters: dict | None = None, output_dir=None) -> list[Path]:
    import tempfile

    import papermill

    notebooks = [Path(n) for n in notebooks] if notebooks else notebook_sources()
    if not notebooks:
        raise FileNotFoundError(f"no notebooks found in {NOTEBOOK_DIR}")
    output_dir = Path(output_dir) if output_dir else results_dir() / "notebooks"
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for nb in notebooks:
        out = output_dir / nb.with_suffix(".ipynb").name
        print(f"executing {nb.name} -> {out}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            source = to_notebook(nb, Path(tmp) / out.name) if nb.suffix == ".py" else nb
            papermill.execute_notebook(
                str(source),
                str(out),
                parameters=parameters or {},
                cwd=str(nb.parent),
                kernel_name="python3",
                progress_bar=True,
            )
        written.append(out)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rwkv_lab.run_notebooks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "notebooks", nargs="*", help="notebooks to run, .py sources or .ipynb (default: notebooks/NN_*.py)"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameters-cell variable, e.g. -p device cuda -p model_source RWKV/rwkv-4-169m-pile",
    )
    parser.add_argument("--output-dir", help="where executed notebooks go (default: results/notebooks)")
    args = parser.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.parameter}
    run_notebooks(args.notebooks, params, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
