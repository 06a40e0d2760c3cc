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


def code_state() -> dict:
    """The code that runs: its commit and a SHA-256 of the uncommitted changes to it (results/ excluded, which the
    run itself rewrites; None when there are none). A copy of the tree without .git (a lent GPU machine) is told
    both through $RWKV_LAB_GIT_COMMIT and $RWKV_LAB_GIT_DIFF_SHA256, as `git_state_env()` prints them."""
    if os.environ.get("RWKV_LAB_GIT_COMMIT"):
        diff = os.environ.get("RWKV_LAB_GIT_DIFF_SHA256") or None
        return {"git_commit": os.environ["RWKV_LAB_GIT_COMMIT"], "git_dirty": diff is not None, "git_diff_sha256": diff}
    diff = _git("diff", "HEAD", "--", ".", ":!results", strip=False)
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(diff) if diff is not None else None,
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


# The code this process runs: its state when the package was imported (a few ms of git). A result records this,
# not the tree at the time it is written, which a long run may outlive while the tree is edited.
CODE_AT_START = code_state()


def git_state_env() -> str:
    """Shell assignments that tell a copy of this tree (without .git) its code state: `$(python -c ...)`."""
    state = code_state()
    return f"RWKV_LAB_GIT_COMMIT={state['git_commit']} RWKV_LAB_GIT_DIFF_SHA256={state['git_diff_sha256'] or ''}"


def provenance(params: dict | None = None, device=None) -> dict:
    """Who, where and what: device, versions, the code's commit and uncommitted diff when this process started
    (CODE_AT_START), date, the run's parameters."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **CODE_AT_START,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "params": params or {},
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stale(tmp: Path) -> bool:
    """A temporary of atomic_write whose writing process no longer exists (killed where nothing could clean up)."""
    try:
        pid = int(tmp.name.rsplit(".", 3)[-3])
        os.kill(pid, 0)
    except (ValueError, IndexError):
        return False
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


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


def write_json(path, results, params: dict | None = None, device=None) -> Path:
    """{"provenance": ..., "results": results} as strict JSON (NaN written as null)."""
    text = _dumps({"provenance": provenance(params, device), "results": results})
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_with_meta(path: Path, write, params, device) -> Path:
    """A data file and its provenance <name>.meta.json as one unit: the provenance records the data's SHA-256, so
    a reader (read_table) refuses a pair from two different runs, whatever stopped a write between the two."""
    path = Path(path)
    content_hash = {}

    def write_and_hash(tmp):
        write(tmp)
        content_hash["sha256"] = _sha256(tmp)

    atomic_write(path, write_and_hash)
    meta = _dumps(provenance(params, device) | {"data_file": path.name, "data_sha256": content_hash["sha256"]})
    atomic_write(path.with_suffix(".meta.json"), lambda tmp: tmp.write_text(meta))
    return path


def write_table(path, frame, params: dict | None = None, device=None) -> Path:
    """A pandas DataFrame as CSV, with its provenance beside it in <name>.meta.json (one unit: see read_table)."""
    return _write_with_meta(path, lambda tmp: frame.to_csv(tmp, index=False), params, device)


def read_table(path):
    """(DataFrame, provenance) of a table written by write_table; refuses a CSV whose provenance describes other
    data (files written before the hash was recorded are read as they are)."""
    import pandas as pd

    path = Path(path)
    meta_path = path.with_suffix(".meta.json")
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} has no provenance beside it ({meta_path.name} is missing)")
    meta = json.loads(meta_path.read_text())
    expected = meta.get("data_sha256")
    if expected is not None and expected != _sha256(path):
        raise ValueError(
            f"{path} and {meta_path.name} do not belong together (the provenance records another file's hash): "
            "a write was interrupted between the two; rerun what wrote them"
        )
    return pd.read_csv(path), meta


def save_figure(fig, path, params: dict | None = None, device=None) -> Path:
    """A matplotlib figure as PNG, with its provenance beside it in <name>.meta.json."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return _write_with_meta(
        path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight"), params, device
    )


def find_result(relative: str) -> Path:
    """A results file: this run's (results_dir()) if it exists, else the committed one in the repository."""
    here = results_dir() / relative
    return here if here.exists() else REPO_ROOT / "results" / relative
