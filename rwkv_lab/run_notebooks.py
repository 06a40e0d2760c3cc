"""Execute the notebooks headless from a clean kernel: `python -m rwkv_lab.run_notebooks [-p NAME VALUE] ...`.

The sources are jupytext percent-format scripts, notebooks/NN_name.py (reviewed and linted like code); each is
turned into a notebook and executed by papermill. Parameters go to every notebook's `parameters` cell, checked
against those cells first (names, the types of their defaults, choices written 'a | b', no negative number where
the default is not negative): one line per mistake and nothing runs. With none, each runs on the embedded default
model on the CPU, its widgets off (HEADLESS). Executed copies are written to <results>/notebooks/NN_name.ipynb.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .results import REPO_ROOT, atomic_write, record_file, results_dir, write_index

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# the kernel JupyterLab opens the notebooks with (make lab): this venv's Python, named after the project
KERNEL = {"name": "rwkv-lab", "display_name": "rwkv-lab (.venv)", "language": "python"}
# Headless there is no frontend to draw widgets, and nbclient can block for good on a cell that displays one
# (jupyter/nbclient#312; our CI's run hung on notebook 04's slider cell): a notebook whose parameters cell declares
# one of these runs with this value unless a parameter passed in says otherwise.
HEADLESS = {"interactive": False}
# a cell running longer than this fails the run with papermill's timeout error rather than hang it
CELL_TIMEOUT_S = 1800


def parse_value(text: str):
    """Python literals as such ('1024', 'None', "['a']"), anything else as a string ('cuda')."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass
class Parameter:
    """A variable of a notebook's `parameters` cell: its default (which gives its type) and the comment beside it
    (choices written 'a | b | c'; 'None' where None is accepted)."""

    name: str
    default: object
    comment: str

    def mistake(self, value) -> str | None:
        """What is wrong with `value` for this parameter, or None."""
        default, expected = self.default, type(self.default).__name__
        expected = f"{'an' if expected[0] in 'aeiou' else 'a'} {expected}"
        if value is None:
            ok = default is None or "None" in self.comment
            return None if ok else f"is {expected} (default {default!r}); None is not one of its values"
        if default is None:
            return None  # the cell's comment says what it takes; nothing to infer a type from
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            return f"is {expected} (default {default!r}); got {value!r}"
        if isinstance(default, list) and default and not isinstance(default[0], bool):
            kind = (int, float) if isinstance(default[0], (int, float)) else type(default[0])
            odd = [v for v in value if not isinstance(v, kind) or isinstance(v, bool)]
            if odd:
                return f"is a list of {type(default[0]).__name__} (default {default!r}); got {odd[0]!r} in it"
        numbers = value if isinstance(value, list) else [value]
        if all(not isinstance(d, bool) and isinstance(d, (int, float)) and d >= 0 for d in numbers_of(default)):
            negative = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0]
            if negative:  # counts, sizes, prices, indices: a cell whose default is not negative takes none
                return f"is never negative (default {default!r}); got {negative[0]!r}"
        choices = [c.strip() for c in self.comment.split("|")] if "|" in self.comment else []
        if choices and isinstance(value, str) and value not in choices:
            return f"is one of {', '.join(map(repr, choices))}; got {value!r}"
        return None


def numbers_of(default) -> list:
    return [d for d in (default if isinstance(default, list) else [default]) if isinstance(d, (int, float))]


def declared_parameters(notebook: Path) -> dict[str, Parameter]:
    """The variables of the notebook's cell tagged `parameters` (a .py source or an .ipynb), each with its default
    and comment, read with ast (nothing runs)."""
    import jupytext

    for cell in jupytext.read(notebook).cells:
        if "parameters" not in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        lines, found = source.splitlines(), {}
        for node in ast.parse(source).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                continue
            try:
                default = ast.literal_eval(node.value)
            except ValueError:
                continue  # an expression, not a literal: nothing to check a value against
            rest = lines[node.end_lineno - 1][node.end_col_offset :]
            comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
            found[node.targets[0].id] = Parameter(node.targets[0].id, default, comment)
        return found
    return {}


def check_parameters(parameters: list[tuple[str, str]], notebooks: list[Path]) -> list[str]:
    """Each -p NAME VALUE against the parameters cells of the notebooks to run, before any runs: one line per
    mistake (a name none of them declares, a value of the wrong type, not among the stated choices, negative
    where the default is not)."""
    declared = {nb.name: declared_parameters(nb) for nb in notebooks}
    known = sorted({name for params in declared.values() for name in params})
    mistakes = []
    for name, text in parameters:
        value = parse_value(text)
        owners = [nb for nb, params in declared.items() if name in params]
        if not owners:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"the parameters are {', '.join(known)}"
            mistakes.append(f"-p {name} {text}: no notebook to run has a parameter {name!r}; {hint}")
            continue
        for nb in owners:
            wrong = declared[nb][name].mistake(value)
            if wrong:
                mistakes.append(f"-p {name} {text}: {nb}'s {name} {wrong}")
                break
    return mistakes


def notebook_sources() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def to_notebook(source: Path, destination: Path, paired: bool = False, parameters: dict | None = None) -> Path:
    """The jupytext source as an .ipynb without outputs; `paired`: jupytext keeps the two in step when the
    notebook is edited in JupyterLab (make lab); `parameters`: a cell tagged `injected-parameters` setting them
    follows the `parameters` cell, as papermill injects them (each checked against that cell first)."""
    import jupytext
    import nbformat

    notebook = jupytext.read(source)
    if parameters:
        mistakes = check_parameters([(name, repr(value)) for name, value in parameters.items()], [source])
        if mistakes:
            raise ValueError("; ".join(mistakes))
        at = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
        lines = ["# Injected parameters"] + [f"{name} = {value!r}" for name, value in parameters.items()]
        cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]})
        notebook.cells.insert(at + 1, cell)
    if paired:
        notebook.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        notebook.metadata["kernelspec"] = dict(KERNEL)
    jupytext.write(notebook, destination)
    return destination


def install_kernel(prefix: str | Path = sys.prefix) -> Path:
    """Registers this interpreter as the Jupyter kernel KERNEL under `prefix` (by default the venv's own, where
    the venv's JupyterLab finds it); returns the kernelspec's folder."""
    from ipykernel.kernelspec import install

    return Path(install(kernel_name=KERNEL["name"], display_name=KERNEL["display_name"], prefix=str(prefix)))


_BAR = re.compile(r"^.*\d+%\|.*\|")  # a tqdm progress line


def _as_a_terminal_shows(text: str) -> str:
    """Each line as a terminal leaves it: what follows the last carriage return (progress bars redraw with \\r)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def tidy_for_static_view(path: Path) -> Path:
    """An executed notebook made to read well without a kernel (GitHub, nbviewer): progress-bar widgets, which
    have no saved state and would show their first frame ("0%"), are dropped; progress printed as text keeps only
    its last frame per line. Nothing else changes."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            plain = "".join(data.get("text/plain", ""))
            if "application/vnd.jupyter.widget-view+json" in data and _BAR.match(plain):
                continue
            if out.get("output_type") == "stream":
                text = "".join(out["text"])
                previous = outputs[-1] if outputs else {}
                if previous.get("output_type") == "stream" and previous.get("name") == out.get("name"):
                    previous["text"] = _as_a_terminal_shows(previous["text"] + text)  # one stream, as printed
                    continue
                out["text"] = _as_a_terminal_shows(text)
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return path


# A cell tagged `timings` prints or draws wall-clock timings of the machine it runs on, which move by a few percent
# from run to run: its outputs are not compared when deciding whether a rerun changed the executed notebook (a
# rerun that changed nothing else leaves the committed copy untouched, its timings those of the run that last
# changed something). The run's own timings (papermill's start, end and durations, execution counts) never are.
VOLATILE_TAG = "timings"
# More differs between identical runs: progress bars on stderr (tqdm prints its rate, it/s), the random id pandas
# gives each styled table (<table id="T_5b789">) and an object's address in its plain-text fallback
# (<pandas.io.formats.style.Styler at 0x7fd3c62c3bd0>); none of it is compared.
STYLER_ID = re.compile(r"\bT_[0-9a-f]{5}(?=[_\"\s])")
ADDRESS = re.compile(r" at 0x[0-9a-f]+>")


def _comparable_output(out: dict):
    if out.get("output_type") == "stream" and out.get("name") == "stderr":
        return None
    out = {k: v for k, v in out.items() if k != "execution_count"}
    data = dict(out.get("data", {}))
    for kind, pattern, fixed in (("text/html", STYLER_ID, "T_"), ("text/plain", ADDRESS, " at 0x>")):
        if kind in data:
            text = "".join(data[kind]) if isinstance(data[kind], list) else data[kind]
            data[kind] = pattern.sub(fixed, text)
    return out | {"data": data} if data else out


def comparable(nb: dict) -> dict:
    """What a rerun must reproduce of an executed notebook: sources, and the outputs of every cell not tagged
    `timings` (stderr's progress bars and styled tables' random ids aside), without the execution's metadata
    (times, durations, counts)."""
    cells = []
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        outputs = [] if VOLATILE_TAG in tags else cell.get("outputs", [])
        outputs = [o for o in map(_comparable_output, outputs) if o is not None]
        cells.append({"source": cell.get("source"), "outputs": outputs})
    return {"cells": cells, "parameters": nb.get("metadata", {}).get("papermill", {}).get("parameters")}


def keep_if_unchanged(new: Path, old: Path) -> bool:
    """Move the executed notebook `new` over `old` unless they are comparable()-equal; True if `old` changed."""
    if old.exists():
        try:
            same = comparable(json.loads(new.read_text())) == comparable(json.loads(old.read_text()))
        except ValueError:
            same = False
        if same:
            new.unlink()
            return False
    atomic_write(old, lambda tmp: tmp.write_bytes(new.read_bytes()))
    new.unlink()
    return True


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
            declared = papermill.inspect_notebook(str(source))
            given = {name: value for name, value in HEADLESS.items() if name in declared} | (parameters or {})
            executed = Path(tmp) / f"executed_{out.name}"
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=given,
                cwd=str(nb.parent),
                kernel_name="python3",
                progress_bar=True,
                execution_timeout=CELL_TIMEOUT_S,
            )
            keep_if_unchanged(tidy_for_static_view(executed), out)
        record_file(
            out,
            given,
            command=f"python -m rwkv_lab.run_notebooks {nb.name}",
            description=f"notebooks/{nb.name} executed headless (papermill) with these parameters",
        )
        written.append(out)
    if output_dir.resolve() == (REPO_ROOT / "results" / "notebooks").resolve():
        write_index()  # the index lists the notebooks' results with their provenance
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
        help="set a parameters-cell variable, e.g. -p device cuda -p rwkv4_source RWKV/rwkv-4-169m-pile",
    )
    parser.add_argument("--output-dir", help="where executed notebooks go (default: results/notebooks)")
    parser.add_argument(
        "--pair",
        action="store_true",
        help="only register the rwkv-lab kernel and write notebooks/NN_name.ipynb paired with its source (for "
        "JupyterLab), run nothing",
    )
    args = parser.parse_args(argv)
    if args.pair:
        print(f"kernel {KERNEL['name']!r} registered in {install_kernel()}")
        for source in notebook_sources():
            target = source.with_suffix(".ipynb")
            if not target.exists():  # an existing one may hold the user's outputs; jupytext keeps it in step
                print(to_notebook(source, target, paired=True))
        return 0
    notebooks = [Path(n) for n in args.notebooks] or notebook_sources()
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        parser.error(f"no notebook at {', '.join(missing)}; expected .py sources or .ipynb files")
    mistakes = check_parameters(args.parameter, notebooks)
    for mistake in mistakes:  # all of them at once, before any notebook runs
        print(f"{parser.prog}: error: {mistake}", file=sys.stderr)
    if mistakes:
        return 2
    params = {name: parse_value(value) for name, value in args.parameter}
    run_notebooks(notebooks, params, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
