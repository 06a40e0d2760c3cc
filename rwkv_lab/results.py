"""Results with provenance, written atomically (an interrupted run never leaves half a file)."""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ENV_RESULTS = "RWKV_LAB_RESULTS"  # where results go instead of the repository's results/
REPO_ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    env = os.environ.get(ENV_RESULTS)
    return Path(env) if env else REPO_ROOT / "results"


def _git(*args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() if strip else out.stdout


def device_name(device=None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} logical cores)"


# git_dirty is True, False, or one of these strings saying why it is not known (never null: a reader could not tell
# "clean" from "not recorded")
DIRTY_UNKNOWN_NO_GIT = "unknown: no .git and no $RWKV_LAB_GIT_COMMIT (a copy of the tree told nothing of its code)"
DIRTY_UNKNOWN_NO_DIFF = (
    "unknown: no .git; the commit passed in through $RWKV_LAB_GIT_COMMIT without $RWKV_LAB_GIT_DIFF_SHA256"
)


def code_state() -> dict:
    """The code that runs: its commit and a SHA-256 of the uncommitted changes to it (results/ excluded, which the
    run itself rewrites; None when there are none). A copy of the tree without .git (a lent GPU machine) is told
    both through $RWKV_LAB_GIT_COMMIT and $RWKV_LAB_GIT_DIFF_SHA256, as `git_state_env()` prints them (an empty
    $RWKV_LAB_GIT_DIFF_SHA256: a clean tree; unset: not known, and `git_dirty` says so)."""
    if os.environ.get("RWKV_LAB_GIT_COMMIT"):
        if "RWKV_LAB_GIT_DIFF_SHA256" not in os.environ:
            return {
                "git_commit": os.environ["RWKV_LAB_GIT_COMMIT"],
                "git_dirty": DIRTY_UNKNOWN_NO_DIFF,
                "git_diff_sha256": None,
            }
        diff = os.environ["RWKV_LAB_GIT_DIFF_SHA256"] or None
        return {"git_commit": os.environ["RWKV_LAB_GIT_COMMIT"], "git_dirty": diff is not None, "git_diff_sha256": diff}
    diff = _git("diff", "HEAD", "--", ".", ":!results", strip=False)
    if diff is None:
        return {"git_commit": None, "git_dirty": DIRTY_UNKNOWN_NO_GIT, "git_diff_sha256": None}
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(diff),
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


# The code this process runs: its state when the package was imported (a few ms of git). A result records this,
# not the tree at the time it is written, which a long run may outlive while the tree is edited.
CODE_AT_START = code_state()


def git_state_env() -> str:
    """Shell assignments that tell a copy of this tree (without .git) its code state: `$(python -c ...)`."""
    state = code_state()
    return f"RWKV_LAB_GIT_COMMIT={state['git_commit']} RWKV_LAB_GIT_DIFF_SHA256={state['git_diff_sha256'] or ''}"


def command_line() -> str | None:
    """The command this process runs, as typed (None inside a Jupyter kernel, whose argv names only the kernel)."""
    argv = [os.path.relpath(a, REPO_ROOT) if a.startswith(str(REPO_ROOT)) else a for a in sys.argv]
    if not argv or not argv[0] or "ipykernel" in argv[0]:
        return None
    return " ".join(["python", *argv])


def provenance(params: dict | None = None, device=None) -> dict:
    """Who, where and what: device, versions, the code's commit and uncommitted diff when this process started
    (CODE_AT_START), date, the command, the run's parameters."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **CODE_AT_START,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": command_line(),
        "params": params or {},
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def process_gone(pid: str) -> bool:
    """Whether the process `pid` (as written in a temporary's name) no longer exists: its temporaries are stale.
    Not a number, or another user's live process: False (never another's to remove)."""
    try:
        os.kill(int(pid), 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _stale(tmp: Path) -> bool:
    """A temporary of atomic_write, `.name.<pid>.<random>.tmp`, whose writing process no longer exists (killed where
    nothing could clean up)."""
    parts = tmp.name.rsplit(".", 3)
    return len(parts) == 4 and process_gone(parts[-3])


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`: readers never see half a file.

    The temporary, `.name.<pid>.<random>.tmp`, is removed on any exception (KeyboardInterrupt included); one left
    by a process killed outright (SIGKILL) is removed by the next write to the same path, once that process is
    gone. The result gets the mode a new file gets under the umask, or that of the file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _stale(old):
            old.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _strict(obj):
    """A JSON-ready copy: NaN and infinities become null; numpy and torch scalars, paths and dtypes become plain
    values; anything else that JSON cannot hold is an error (never its repr)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars and arrays, torch tensors
        return _strict(obj.tolist())
    if isinstance(obj, (Path, torch.dtype, torch.device)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} {obj!r:.80} as JSON; convert it to a number, string or list")


def _dumps(obj) -> str:
    return json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n"


# A rerun that measures the same numbers leaves the committed files untouched (`make run` must not dirty the
# checkout): each writer compares the new content with the file's, excluding the provenance (date, commit) and
# the `volatile` fields, the wall-clock timings a live CPU run measures anew each time (a timing moves by a few
# percent run to run, so a file holding one would change on every run; its value stays that of the run that last
# changed the data). The provenance is refreshed only together with the data it describes.


def _drop(results, volatile):
    """`results` without the keys named in `volatile`, at any depth (dicts in lists included)."""
    if isinstance(results, dict):
        return {k: _drop(v, volatile) for k, v in results.items() if k not in volatile}
    if isinstance(results, (list, tuple)):
        return [_drop(v, volatile) for v in results]
    return results


def write_json(path, results, params: dict | None = None, device=None, volatile=()) -> Path:
    """{"provenance": ..., "results": results} as strict JSON (NaN written as null). Left as it is when it already
    holds the same results and parameters (the keys in `volatile`, timings, not compared)."""
    path = Path(path)
    kept = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            same = _strict(_drop(old["results"], volatile)) == _strict(_drop(results, volatile))
            if same and old["provenance"].get("params") == _strict(params or {}):
                return path
            kept = _carried(old["provenance"])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or another format: rewritten
    text = _dumps({"provenance": provenance(params, device) | kept, "results": results})
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# what a file's provenance says about the file rather than about one run of it: kept when a run rewrites the file
# (scripts/results_index.py lists each file with its description); `command_described`, how the file is made
# (from the hand-written index), only where the process cannot record its own command (a notebook's kernel)
CARRIED = ("description",)


def _carried(old: dict) -> dict:
    kept = {k: old[k] for k in CARRIED if k in old}
    if command_line() is None and "command_described" in old:
        kept["command_described"] = old["command_described"]
    return kept


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def meta_path(path) -> Path:
    """Where a results file's provenance lives: <stem>.meta.json beside a table or figure (write_table,
    save_figure), <name>.meta.json beside any other file (a log, an executed notebook, results/README.md: a log
    often shares its stem with its run's table)."""
    path = Path(path)
    if path.suffix in (".csv", ".png"):
        return path.with_suffix(".meta.json")
    return path.with_name(path.name + ".meta.json")


def provenance_of(path) -> dict | None:
    """A results file's provenance: inside it (write_json's JSON) or in its meta file; None if it has none."""
    path = Path(path)
    if path.suffix == ".json" and not path.name.endswith(".meta.json"):
        try:
            inside = json.loads(path.read_text()).get("provenance")
        except (ValueError, AttributeError):
            inside = None
        if inside is not None:
            return inside
    meta = meta_path(path)
    return json.loads(meta.read_text()) if meta.exists() else None


def _write_with_meta(path: Path, write, params, device, content=None) -> Path:
    """A data file and its provenance <name>.meta.json as one unit: the provenance records the data's SHA-256, so
    a reader (read_table) refuses a pair from two different runs, whatever stopped a write between the two.

    `content`: the SHA-256 of what the file says, compared with the one recorded to leave an unchanged file (and
    its provenance) untouched; by default the file's bytes."""
    path = Path(path)
    content_hash = {}

    def write_and_hash(tmp):
        write(tmp)
        content_hash["sha256"] = _sha256(tmp)

    meta_file = meta_path(path)
    params = _strict(params or {})
    old = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if path.exists() and old:
        with tempfile.TemporaryDirectory() as scratch:
            tmp = Path(scratch) / path.name
            write(tmp)
            new = content or _sha256(tmp)
        recorded = old.get("content_sha256") or old.get("data_sha256")
        if recorded == new and old.get("params") == params and old.get("data_sha256") == _sha256(path):
            return path
    atomic_write(path, write_and_hash)
    record = (
        provenance(params, device) | _carried(old) | {"data_file": path.name, "data_sha256": content_hash["sha256"]}
    )
    if content:
        record["content_sha256"] = content
    atomic_write(meta_file, lambda tmp: tmp.write_text(_dumps(record)))
    return path


def _frame_sha256(frame, volatile) -> str:
    kept = frame.drop(columns=[c for c in volatile if c in frame.columns])
    return hashlib.sha256(kept.to_csv(index=False).encode()).hexdigest()


def write_table(path, frame, params: dict | None = None, device=None, volatile=()) -> Path:
    """A pandas DataFrame as CSV, with its provenance beside it in <name>.meta.json (one unit: see read_table).
    Left as it is when the table, less its `volatile` columns (timings), and the parameters are unchanged."""
    content = _frame_sha256(frame, volatile) if volatile else None
    return _write_with_meta(path, lambda tmp: frame.to_csv(tmp, index=False), params, device, content)


def record_file(path, params: dict | None = None, device=None, **fields) -> Path:
    """Provenance for a file some other tool wrote (a log, a screenshot, an executed notebook): <name>.meta.json
    beside it (meta_path), recording its SHA-256 and `fields` (e.g. command=); left as it is while the file is
    unchanged."""
    path = Path(path)
    meta_file = meta_path(path)
    digest = _sha256(path)
    old = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if old.get("data_sha256") == digest:
        return meta_file
    record = provenance(params, device) | _carried(old) | {k: v for k, v in fields.items() if v is not None}
    record |= {"data_file": path.name, "data_sha256": digest}
    return atomic_write(meta_file, lambda tmp: tmp.write_text(_dumps(record)))


def read_table(path):
    """(DataFrame, provenance) of a table written by write_table; refuses a CSV whose provenance describes other
    data (files written before the hash was recorded are read as they are)."""
    import pandas as pd

    path = Path(path)
    meta_file = meta_path(path)
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} has no provenance beside it ({meta_file.name} is missing)")
    meta = json.loads(meta_file.read_text())
    expected = meta.get("data_sha256")
    if expected is not None and expected != _sha256(path):
        raise ValueError(
            f"{path} and {meta_file.name} do not belong together (the provenance records another file's hash): "
            "a write was interrupted between the two; rerun what wrote them"
        )
    return pd.read_csv(path), meta


def save_figure(fig, path, params: dict | None = None, device=None, drawn_from=None) -> Path:
    """A matplotlib figure as PNG, with its provenance beside it in <name>.meta.json. Left as it is when the
    image is unchanged, or, for a figure of timings, when `drawn_from` (what it shows less the timings: a
    DataFrame or JSON-ready data) is."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    content = None
    if drawn_from is not None:
        text = drawn_from.to_csv(index=False) if hasattr(drawn_from, "to_csv") else _dumps(drawn_from)
        content = hashlib.sha256(text.encode()).hexdigest()
    return _write_with_meta(
        path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"), params, device, content
    )


def find_result(relative: str) -> Path:
    """A results file: this run's (results_dir()) if it exists, else the committed one in the repository."""
    here = results_dir() / relative
    return here if here.exists() else REPO_ROOT / "results" / relative


# The index of results/ (results/README.md), generated from the provenance of every file in it.
INDEX_HEAD = """# results/

Written by `scripts/results_index.py` from the provenance of each file (do not edit: rerun it). Every file here
was written by code in this repository; its provenance is inside it (a JSON file's `provenance`) or beside it
(`<stem>.meta.json` beside a table or figure, `<name>.meta.json` beside any other file): device, versions, git
commit and uncommitted diff, date, command, parameters. Files committed before provenance was recorded for them
carry a `reconstructed` record from git history instead (the commit that last changed them; no device or date is
invented).

**Current** results are everything outside `history/`: one file per question, the one the README's table and
the notebooks read. **Superseded** runs lie under `history/<the path they had>`, kept with their provenance; no
headline reads them.
"""


def data_files(root=None) -> list[Path]:
    """Every file under results/ but the provenance files themselves (and atomic_write's temporaries)."""
    root = Path(root) if root else REPO_ROOT / "results"
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".meta.json") and not p.name.startswith(".")
    )


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _where(meta: dict) -> str:
    """Device and code, as recorded: a reconstructed record names only the commit that last changed the file."""
    if "reconstructed" in meta and "device" not in meta:
        return f"not recorded; committed in {meta['committed_in'][:7]}"
    commit = (meta.get("git_commit") or "no commit")[:7]
    dirty = meta.get("git_dirty")
    state = {True: " + uncommitted changes", False: ""}.get(dirty, " (uncommitted changes unknown)")
    device = meta.get("device", "device not recorded")
    device = "CPU (2 cores)" if device.startswith("CPU") and "(2 logical" in device else device.removeprefix("NVIDIA ")
    return f"{device}, {commit}{state}, {str(meta.get('date_utc', ''))[:10]}".rstrip(", ")


def _command(meta: dict) -> str:
    if meta.get("command"):
        return f"`{meta['command']}`"
    return meta.get("command_described") or "not recorded"


def index_text() -> str:
    """results/README.md as the provenance of every file under the repository's results/ says it (scripts/
    results_index.py writes it; a test checks the committed one)."""
    root = REPO_ROOT / "results"
    groups: dict[tuple[bool, str, str, str], list[str]] = {}
    for path in data_files(root):
        if path == root / "README.md":
            continue
        relative = path.relative_to(root).as_posix()
        meta = provenance_of(path)
        if meta is None:
            raise ValueError(f"results/{relative} has no provenance; write it with rwkv_lab.results (record_file)")
        key = (
            relative.startswith("history/"),
            meta.get("description", "(no description in its provenance)"),
            _command(meta),
            _where(meta),
        )
        groups.setdefault(key, []).append(relative)
    lines = [INDEX_HEAD]
    for superseded, title in ((False, "## Current"), (True, "## History (superseded runs)")):
        lines += [title, "", "| files | what | written by | where, code, date |", "|---|---|---|---|"]
        for (old, what, cmd, at), files in sorted(groups.items(), key=lambda kv: kv[1][0]):
            if old == superseded:
                names = ", ".join(f"`{f}`" for f in files)
                lines.append(f"| {names} | {_cell(what)} | {_cell(cmd)} | {_cell(at)} |")
        lines.append("")
    return "\n".join(lines)


def write_index() -> Path:
    """Rewrite results/README.md (and its provenance) from the provenance of every file, when it changed."""
    index = REPO_ROOT / "results" / "README.md"
    text = index_text()
    if not index.exists() or index.read_text() != text:
        atomic_write(index, lambda tmp: tmp.write_text(text))
    record_file(index, description="this index of results/, generated from the provenance of every file")
    return index
