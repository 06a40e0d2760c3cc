"""Results with provenance, written atomically (an interrupted run never leaves half a file)."""

from __future__ import annotations

import datetime as dt
import json
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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


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


def provenance(params: dict | None = None, device=None) -> dict:
    """Who, where and what: device, versions, git commit, date and the run's parameters."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        # a copy of the tree (a lent GPU machine) is told its commit through the environment: its .git may be stale
        "git_commit": os.environ.get("RWKV_LAB_GIT_COMMIT") or _git("rev-parse", "HEAD"),
        # changes to the code, not to results/ (which the run itself is rewriting)
        "git_dirty": None
        if os.environ.get("RWKV_LAB_GIT_COMMIT")
        else bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "params": params or {},
    }


def atomic_write(path: Path, write) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def write_json(path, results, params: dict | None = None, device=None) -> Path:
    """{"provenance": ..., "results": results} as JSON."""
    text = _dumps({"provenance": provenance(params, device), "results": results})
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_table(path, frame, params: dict | None = None, device=None) -> Path:
    """A pandas DataFrame as CSV, with its provenance beside it in <name>.meta.json."""
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    meta = _dumps(provenance(params, device))
    atomic_write(path.with_suffix(".meta.json"), lambda tmp: tmp.write_text(meta))
    return path


def save_figure(fig, path, params: dict | None = None, device=None) -> Path:
    """A matplotlib figure as PNG, with its provenance beside it in <name>.meta.json."""
    path = Path(path)
    atomic_write(
        path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    )
    meta = _dumps(provenance(params, device))
    atomic_write(path.with_suffix(".meta.json"), lambda tmp: tmp.write_text(meta))
    return path


def find_result(relative: str) -> Path:
    """A results file: this run's (results_dir()) if it exists, else the committed one in the repository."""
    here = results_dir() / relative
    return here if here.exists() else REPO_ROOT / "results" / relative
