"""Downloads from the Hugging Face hub, cached by huggingface_hub, with one clear error when that fails."""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(OSError):
    """The hub could not be reached and the cache does not hold what was asked for."""


def is_repo_id(source: str) -> bool:
    """'owner/name' that is not an existing local path."""
    return bool(_REPO_ID.match(source)) and not os.path.exists(source)


CHECKPOINT_HINT = (
    "pass a local path instead (a BlinkDL .pth file, a transformers folder with config.json, or a .safetensors file)"
)


def _explain(repo_id: str, what: str, err: Exception, hint: str = CHECKPOINT_HINT) -> Exception:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)) and not isinstance(err, GatedRepoError):
        return FileNotFoundError(f"the hub has no repository or revision {repo_id!r}: {err}")
    if not hub_reachable():  # only the cache was read: huggingface_hub's own advice (go online) does not apply
        return HubUnavailableError(
            f"could not get {what} of {repo_id!r} from the Hugging Face hub ({constants.ENDPOINT}): it is offline "
            f"or did not answer within {PROBE_SECONDS:.0f} s, and the local cache ({constants.HF_HUB_CACHE}) does "
            f"not hold it. Connect once to fill the cache, or {hint}."
        )
    return HubUnavailableError(
        f"could not get {what} of {repo_id!r} from the Hugging Face hub, and the local cache "
        f"({constants.HF_HUB_CACHE}) does not hold it ({type(err).__name__}: {err}). "
        f"Connect once to fill the cache, or {hint}."
    )


PROBE_SECONDS = 3.0  # how long the hub's host may take to accept a connection before it counts as unreachable


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub's host accepts a connection within PROBE_SECONDS (asked once per process). Unreachable,
    downloads read the local cache alone: huggingface_hub would otherwise retry each request for half a minute
    before saying the same."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def download_file(repo_id: str, filename: str, revision: str | None = None, hint: str = CHECKPOINT_HINT) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=not hub_reachable()))
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one explained error
        raise _explain(repo_id, filename, err, hint) from err


def download_snapshot(repo_id: str, patterns: list[str], revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        local = not hub_reachable()
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local))
    except Exception as err:  # noqa: BLE001
        raise _explain(repo_id, f"files {patterns}", err) from err
