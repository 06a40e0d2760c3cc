"""Load and save the weights of every model generation (rwkv_lab.models) in every format they are released in.

Formats (spec: "Checkpoint formats and key names"):
- ``pth``: BlinkDL's released files, a plain state dict, loaded with ``torch.load(weights_only=True)``; which
  generation it is, and every size, is read from its keys and shapes (each generation's `checkpoint.matches` and
  `config_from_state_dict`).
- ``transformers``: a folder with config.json and model.safetensors / pytorch_model.bin (sharded or not), the
  hub layout of the generation config.json's model_type names (RWKV-4: transformers' ``rwkv``; RWKV-7: fla's
  ``rwkv7``), the keys renamed by that generation's key map.
- ``safetensors``: this project's own file, BlinkDL key names plus the architecture and config in the metadata.
Hub repo ids ('RWKV/rwkv-4-169m-pile', 'BlinkDL/rwkv-4-pile-169m', 'owner/name/file.pth') download through
huggingface_hub's cache.
"""

from __future__ import annotations

import difflib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..models import Architecture, architecture, architecture_of, checkpoint_architecture, hub_architecture
from ..models.checks import CheckpointError
from ..results import atomic_write, process_gone
from .default import DEFAULTS, default_named, untrained_model, untrained_named
from .hub import HubUnavailableError, download_file, download_snapshot, is_repo_id

FORMATS = ("safetensors", "pth", "transformers")
SUPPORTED_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
# file names that mark a local path even when no file exists there (a typo must not go to the hub)
LOCAL_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".json", ".ckpt")

# The released BlinkDL files (hub model cards BlinkDL/rwkv-4-pile-*; reference/rwkv4_pile_model_cards.csv).
BLINKDL_FILES = {
    "BlinkDL/rwkv-4-pile-169m": "RWKV-4-Pile-169M-20220807-8023.pth",
    "BlinkDL/rwkv-4-pile-430m": "RWKV-4-Pile-430M-20220808-8066.pth",
    "BlinkDL/rwkv-4-pile-1b5": "RWKV-4-Pile-1B5-20220903-8040.pth",
    "BlinkDL/rwkv-4-pile-3b": "RWKV-4-Pile-3B-20221008-8023.pth",
    "BlinkDL/rwkv-4-pile-7b": "RWKV-4-Pile-7B-20221115-8047.pth",
    "BlinkDL/rwkv-4-pile-14b": "RWKV-4-Pile-14B-20230213-8019.pth",
}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in SUPPORTED_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in SUPPORTED_DTYPES:
        return SUPPORTED_DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(SUPPORTED_DTYPES)}")


# ---- reading files ---------------------------------------------------------------------------------------------


# globals a plain state dict's pickle names (torch's weights_only allowlist: tensors, storages, dtypes, OrderedDict)
_DATA_GLOBALS = {
    "collections.OrderedDict",
    "collections.Counter",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
}


def _pickle_globals(data: bytes) -> list[str] | None:
    """The module.name of every global the pickles at the start of `data` import (torch's legacy files are several
    pickles in a row), or None where `data` does not start with a well-formed pickle (random bytes, a truncated or
    foreign file). Read with pickletools: nothing is unpickled."""
    import io
    import pickletools

    stream, names, complete = io.BytesIO(data), [], False
    while stream.tell() < len(data):
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL" or op.name == "INST":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - pickletools fails in many ways on bytes that are not a pickle
            break
        complete = True
    return names if complete else None


def _refused_pickle(path: Path) -> CheckpointError:
    """Why torch's weights-only unpickler refused `path`, in one line: a pickle that imports code (what it names),
    or no checkpoint at all. Never the advice to load it unsafely."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith(".pkl")]
                data = archive.read(pickles[0]) if pickles else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, RuntimeError):
        data = b""
    names = _pickle_globals(data)
    code = sorted({n for n in names or () if not n.startswith("torch.") and n not in _DATA_GLOBALS})
    if code:
        return CheckpointError(
            f"refused to load {path}: it holds code (its pickle imports {', '.join(code[:5])}, which could run code "
            "when unpickled); a checkpoint holds only tensors"
        )
    return CheckpointError(f"{path} is not a checkpoint: expected a PyTorch state dict of tensors (torch.save)")


def _first_line(err: Exception) -> str:
    """The first sentence of an error's message (torch's run to paragraphs of advice)."""
    return str(err).strip().split("\n")[0].split(". ")[0]


def torch_load(path, map_location="cpu"):
    """torch.load(weights_only=True) of `path`, its failures as one-line CheckpointErrors that name the file: not a
    checkpoint, truncated, or refused because its pickle holds code (which never runs)."""
    path = Path(path)
    try:
        try:
            with warnings.catch_warnings():  # torch's note on a pickle protocol it may not support: refused below
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as err:
            # Files written with the legacy (non-zip) serialisation cannot be memory-mapped.
            if "mmap" not in str(err):
                raise
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused_pickle(path) from err
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged pickle fails in arbitrary ways (IndexError, EOFError, ...)
        raise CheckpointError(
            f"could not read {path} as a PyTorch checkpoint: the file is truncated or not a checkpoint "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    return obj


def _safetensors_load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as err:  # noqa: BLE001 - safetensors raises its own untyped errors
        raise CheckpointError(
            f"could not read {path} as safetensors: the file is truncated or not a safetensors file ({err})"
        ) from err


def _check_tensor_dict(sd, path) -> dict:
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(
            f"{path} does not hold a state dict (a non-empty mapping of names to tensors); got {type(sd).__name__}"
        )
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; expected a state dict of tensors")
    return sd


def _read_hf_folder(folder: Path) -> tuple[dict, object]:
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}/config.json is missing or not valid JSON ({err})") from err
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    arch = hub_architecture(model_type)
    if arch is None:
        known = " or ".join(f"{a.checkpoint.HF_MODEL_TYPE!r} ({a.description.split(':')[0]})" for a in _recurrent())
        raise CheckpointError(f"{folder}/config.json has model_type {model_type!r}; expected {known}")
    config = arch.checkpoint.config_from_hf(hf_config, str(folder / "config.json"))
    shards: list[Path] = []
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).exists():
            try:
                index = json.loads((folder / index_name).read_text())
                shards = [folder / name for name in sorted(set(index["weight_map"].values()))]
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                raise CheckpointError(
                    f"{folder / index_name} is not a shard index (JSON with a 'weight_map' of tensor -> file): "
                    f"{type(err).__name__}: {err}"
                ) from None
            missing = [s.name for s in shards if not s.exists()]
            if missing:
                raise CheckpointError(f"{folder / index_name} names shards that are not in the folder: {missing}")
            break
        if (folder / single).exists():
            shards = [folder / single]
            break
    if not shards:
        raise CheckpointError(
            f"{folder} has a config.json but no weights: expected model.safetensors or "
            "pytorch_model.bin (or their sharded .index.json forms)"
        )
    sd = {}
    for shard in shards:
        part = (
            _safetensors_load(shard)[0]
            if shard.suffix == ".safetensors"
            else _check_tensor_dict(torch_load(shard), shard)
        )
        sd.update(part)
    return arch.checkpoint.from_hf_state_dict(sd, config), config


def _recurrent() -> list[Architecture]:
    from ..models import ARCHITECTURES  # noqa: PLC0415 - read when needed: generations may be registered later

    return [a for a in ARCHITECTURES.values() if a.checkpoint is not None]


def config_from_state_dict(sd: dict, name: str = "custom"):
    """(BlinkDL-named state dict, config): the generation and every size read from the keys and shapes (the
    released files carry no config). A state dict in a hub layout's key names, saved as one file, is renamed.
    What no generation recognises is read as RWKV-4, the first, whose errors say what its files hold."""
    arch = checkpoint_architecture(sd)
    if arch is None:
        hub = next((a for a in _recurrent() if a.checkpoint.is_hf_state_dict(sd)), None)
        if hub is not None:
            sd = hub.checkpoint.from_hf_state_dict(sd, None)
            arch = checkpoint_architecture(sd)
    arch = arch or architecture("rwkv4")
    return sd, arch.checkpoint.config_from_state_dict(sd, name=name)


def read_checkpoint(path) -> tuple[dict, object]:
    """A local file or folder -> (BlinkDL-named state dict, config)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is a folder without config.json; expected a transformers-format folder")
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        sd, metadata = _safetensors_load(path)
        config = None
        if "rwkv_lab_config" in metadata:
            try:  # files written before the second generation carry no architecture: RWKV-4's
                config_class = architecture(metadata.get("rwkv_lab_arch", "rwkv4")).config_class
                config = config_class.from_dict(json.loads(metadata["rwkv_lab_config"]))
            except (ValueError, TypeError, AttributeError) as err:
                raise CheckpointError(
                    f"{path}: its metadata 'rwkv_lab_config' is not a valid config of its architecture "
                    f"{metadata.get('rwkv_lab_arch', 'rwkv4')!r} ({err})"
                ) from None
    else:
        sd, config = _check_tensor_dict(torch_load(path), path), None
    if config is not None:
        return sd, config
    return config_from_state_dict(sd, name=path.stem)


def looks_like_path(source: str) -> bool:
    """A string meant as a local file or folder: './x', '/x', '~/x', a bare file name with a checkpoint suffix,
    or a path whose first directory exists here ('ck/tiny.pht'). Such a string is never sent to the hub, while
    'owner/name' and 'owner/name/file.pth' (no local folder 'owner') are hub ids."""
    if source.startswith((".", "/", "~")) or "\\" in source:
        return True
    if "/" not in source:  # a bare file name; with a checkpoint suffix it cannot be a hub id ('owner/name')
        return source.lower().endswith(LOCAL_SUFFIXES)
    return os.path.isdir(source.split("/")[0])


def closest_existing(source: str) -> str:
    """A hint naming the existing file or folder closest to a mistyped path (or where the path stops existing)."""
    path = Path(os.path.expanduser(source))
    missing = path
    while not missing.parent.exists() and missing.parent != missing.parent.parent:
        missing = missing.parent  # the first component that does not exist
    parent = missing.parent
    names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    near = difflib.get_close_matches(missing.name, names, n=1, cutoff=0.6)
    if not near:
        return f" ({str(parent)!r} has nothing named like {missing.name!r})"
    return f"; did you mean {str(parent / near[0]) + str(path)[len(str(missing)) :]!r}?"


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A local path as is; a hub id ('owner/name' or 'owner/name/file') downloaded into the hub cache."""
    expanded = os.path.expanduser(source)
    recover_interrupted(expanded)
    if os.path.exists(expanded):
        return Path(expanded)
    if looks_like_path(source) or not (is_repo_id(source) or is_repo_id("/".join(source.split("/")[:2]))):
        raise FileNotFoundError(f"no checkpoint file or folder at {source!r}{closest_existing(source)}")
    parts = source.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or BLINKDL_FILES.get("/".join(parts[:2]))
    try:
        if filename:
            return download_file(repo_id, filename, revision)
        folder = download_snapshot(repo_id, ["config.json", "*.safetensors", "model.safetensors.index.json"], revision)
        if not any(folder.glob("*.safetensors")):
            folder = download_snapshot(
                repo_id, ["config.json", "pytorch_model*.bin", "pytorch_model.bin.index.json"], revision
            )
        return folder
    except (HubUnavailableError, FileNotFoundError) as err:
        raise type(err)(f"no local file or folder {source!r} exists, so it was taken as a hub id: {err}") from err


# ---- building a model ------------------------------------------------------------------------------------------


def _checkable(v: torch.Tensor) -> torch.Tensor:
    """`v` in a dtype torch.isfinite takes: float8 weights (not implemented for them) widened to float32."""
    return v if v.dtype in SUPPORTED_DTYPES.values() else v.float()


def check_device(device) -> torch.device:
    """`device` as a torch.device, or a one-line error where this machine has none such (checked before any work:
    torch's own error is an assertion deep inside the first copy to it)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"device {str(device)!r} is not available: {why} (torch {torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_finite(sd: dict, where: str, strict: bool = False) -> None:
    """Weights holding NaN or infinity: an error under `strict`, else a warning naming them (such a model's
    logits are not finite, and greedy decoding silently picks token 0)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(_checkable(v)).all())]
    if not bad:
        return
    message = f"{where}: {len(bad)} tensors hold NaN or infinite values: {bad[:8]}{' ...' if len(bad) > 8 else ''}"
    if strict:
        raise CheckpointError(message)
    warnings.warn(
        message + " (the model's outputs will not be finite; load with strict=True to refuse it)",
        RuntimeWarning,
        stacklevel=3,
    )


def model_from_state_dict(sd: dict, config, dtype=torch.float32, device="cpu"):
    """Check every key and shape against the config, then place the weights (no fp32 copy of the whole model)."""
    dtype = resolve_dtype(dtype)
    arch = architecture_of(config)
    with torch.device("meta"):
        model = arch.model_class(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match an {arch.name} with {config.n_layer} layers of width {config.n_embd}: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)} in all), "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)} in all)"
        )
    wrong = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        details = "; ".join(f"{k}: got {got}, expected {exp}" for k, got, exp in wrong[:5])
        raise CheckpointError(
            f"{len(wrong)} tensors have shapes that contradict the config "
            f"(L={config.n_layer}, C={config.n_embd}, V={config.vocab_size}): {details}"
        )
    not_float = [k for k, v in sd.items() if not v.is_floating_point()]
    if not_float:
        raise CheckpointError(f"tensors {not_float[:5]} are not floating point; RWKV weights are fp16/bf16/fp32")
    placed = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in sd.items()}
    model.load_state_dict(placed, strict=True, assign=True)
    return model.eval()


def load_model(source, dtype="float32", device="cpu", revision: str | None = None, strict: bool = False):
    """Load a model of any generation from 'default' ('default-rwkv7', 'untrained-rwkv7': default.py), a local file
    or folder, or a hub id; compute dtype and device
    chosen here.

    The model's `source` attribute records where it came from (notebooks print it), `source_path` the local file or
    folder it was read from. Non-finite weights are
    reported with their names: a warning, or an error with `strict=True`.
    """
    check_device(device)
    if default := default_named(source):
        if not default.weights.exists():
            raise CheckpointError(
                f"{source!r}: the {default.label} default model is not trained yet (no {default.weights}); "
                f"'untrained-{default.arch}' is its architecture untrained"
            )
        sd, config = read_checkpoint(default.weights)
        model = model_from_state_dict(sd, config, dtype=dtype, device=device)
        model.source = default.description
        return model
    if arch := untrained_named(source):
        return untrained_model(dtype=resolve_dtype(dtype), device=device, arch=arch)
    resolve_dtype(dtype)  # fail before any download
    path = resolve_source(str(source), revision)
    sd, config = read_checkpoint(path)
    check_finite(sd, str(source), strict)
    model = model_from_state_dict(sd, config, dtype=dtype, device=device)
    model.source = str(source)
    model.source_path = path  # the local file or folder (a hub id's cache): tokenizer_for looks for its tokenizer
    return model


def default_model(dtype=torch.float32, device="cpu", arch: str = "rwkv4"):
    """A generation's embedded default model (default.py): no download, any dtype and device."""
    return load_model(DEFAULTS[architecture(arch).name].source, dtype=dtype, device=device)


# ---- writing ---------------------------------------------------------------------------------------------------


FILE_SUFFIXES = {"safetensors": (".safetensors",), "pth": (".pth", ".pt")}


# The files a transformers checkpoint consists of: what replacing one replaces. Everything else in its folder (the
# tokenizer's files, a user's notes, logs) is carried into the new folder.
_CHECKPOINT_FILE = re.compile(
    r"^(config\.json|generation_config\.json|(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)"
    r"|(model\.safetensors|pytorch_model\.bin)\.index\.json)$"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def _writer_dead(entry: Path, prefix: str) -> bool:
    """Whether the process that made `entry`, named `prefix` + '<pid>.<...>', no longer exists."""
    return process_gone(entry.name[len(prefix) :].split(".")[0])


def recover_interrupted(path) -> None:
    """Undo what a writer of `path` killed outright (SIGKILL, power loss) left beside it: its temporary folders
    (`.NAME.<pid>.*.tmp/`, safetensors' staging `.NAME.<pid>.*.st/`) are removed; a folder it had moved aside to
    replace (`.NAME.<pid>.old`) goes back to NAME when nothing took its place, else it is removed. Only entries of
    dead processes are touched: a live writer's are its own. Called by every write and load of `path`."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        entries = sorted(e for e in path.parent.iterdir() if e.name.startswith(prefix))
    except OSError:  # no such folder, or not ours to list
        return
    for entry in entries:
        if not entry.name.endswith((".tmp", ".st", ".old")) or not entry.is_dir() or not _writer_dead(entry, prefix):
            continue  # a file temporary is atomic_write's to sweep
        try:
            if entry.name.endswith(".old") and not path.exists():
                os.rename(entry, path)  # killed between the two renames of _replace_folder: the old folder returns
            else:
                shutil.rmtree(entry)
        except OSError:  # a read-only folder: a load goes on, a write fails on its own
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_dir(path: Path, kind: str) -> Path:
    """A folder beside `path` named '.NAME.<pid>.<random>.<kind>', which recover_interrupted removes once this
    process is gone."""
    return Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=f".{kind}"))


def _save_safetensors(sd: dict, file: Path, metadata: dict, owner: Path) -> None:
    """safetensors' save_file at `file`. It writes its own temporary (`.tmpXXXXXX`, mode 0600) beside the file it
    is given, which nothing would remove after a kill: it is given a file in a staging folder of `owner`'s
    (recover_interrupted sweeps it), and the result gets the umask's mode."""
    from safetensors.torch import save_file

    staging = _temporary_dir(owner, "st")
    try:
        save_file_at = staging / "model.safetensors"
        save_file(sd, str(save_file_at), metadata=metadata)
        os.chmod(save_file_at, 0o666 & ~_umask())  # a new file's mode
        os.replace(save_file_at, file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _carry(source: Path, destination: Path) -> None:
    """`source` (a file, link or folder) at `destination` without copying data: files hard-linked (copied where
    the file system has no hard links), folders rebuilt around them, links as links."""

    def link(src, dst):
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=link)
        shutil.copystat(source, destination)
    else:
        link(source, destination)


def _replace_folder(path: Path, fill) -> None:
    """Write a transformers folder: fill(tmp) writes the checkpoint's files into a new folder beside `path`; what
    the old folder holds besides an earlier checkpoint's files (_CHECKPOINT_FILE: old shards, a stale index) is
    carried over unless fill wrote it (tokenizer files, a user's notes and logs); then the new folder takes the
    old one's place by two renames. A failure or a kill before them leaves the old folder; a kill between them
    leaves it at `.NAME.<pid>.old`, which the next write or load (recover_interrupted) moves back."""
    tmp = _temporary_dir(path, "tmp")
    try:
        fill(tmp)
        if path.exists():
            for entry in path.iterdir():
                if not _CHECKPOINT_FILE.match(entry.name) and not (tmp / entry.name).exists():
                    _carry(entry, tmp / entry.name)
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o777 & ~_umask())  # mkdtemp's is 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        trash = path.parent / f".{path.name}.{os.getpid()}.old"
        os.rename(path, trash)
        os.rename(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, path)


def check_destination(path: Path, format: str) -> None:
    """Whether `path` can take a `format` checkpoint, before anything is read or written: a known format, a file
    with the format's suffix (how loading tells the formats apart), no folder where a file goes and no file where
    a folder goes, and never a folder that is not a checkpoint (it would be replaced whole)."""
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; expected one of {FORMATS}")
    if format in FILE_SUFFIXES and path.suffix.lower() not in FILE_SUFFIXES[format]:
        raise ValueError(
            f"a {format} checkpoint is a file named *{' or *'.join(FILE_SUFFIXES[format])}; got "
            f"{str(path)!r} (the suffix is how loading tells the formats apart)"
        )
    if format in FILE_SUFFIXES and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; a {format} checkpoint is a file")
    if format == "transformers" and path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} is a file; a transformers checkpoint is a folder")
        if any(path.iterdir()) and not (path / "config.json").exists():
            raise FileExistsError(
                f"{path} is a folder that is not a checkpoint (no config.json): refusing to replace it"
            )


def save_model(
    model, path, format: str = "safetensors", dtype=None, tokenizer_file=None, tokenizer_folder=None
) -> Path:
    """Write `model` as 'safetensors' (ours), 'pth' (BlinkDL) or 'transformers' (a folder; with `tokenizer_file`,
    a tokenizers JSON such as GPT-NeoX-20B's, the folder also loads with AutoTokenizer; with `tokenizer_folder`,
    the tokenizer files (TOKENIZER_FILES) found there are copied in).

    A file is replaced atomically. A transformers folder must be empty or already a checkpoint folder (it has
    config.json): any other existing folder is refused, never emptied. In a checkpoint folder only the files a
    checkpoint consists of are replaced; everything else in it stays (see _replace_folder). Files and folders get
    the umask's modes (or those of what they replace)."""
    path = Path(path)
    recover_interrupted(path)
    check_destination(path, format)
    if (tokenizer_file is not None or tokenizer_folder is not None) and format != "transformers":
        raise ValueError(
            f"tokenizer_file is written only into a 'transformers' folder, not a {format!r} file (tokenizer_folder too)"
        )
    dtype = resolve_dtype(dtype) if dtype is not None else model.dtype
    sd = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in model.state_dict().items()}
    if format == "safetensors":
        meta = {"format": "pt", "rwkv_lab_arch": model.config.arch, "rwkv_lab_config": model.config.to_json()}
        atomic_write(path, lambda tmp: _save_safetensors(sd, tmp, meta, owner=path))
    elif format == "pth":
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    else:
        keys = architecture_of(model).checkpoint
        hf_sd = keys.to_hf_state_dict(sd)
        config_text = json.dumps(keys.hf_config_dict(model.config, dtype), indent=2)

        def fill(folder: Path):
            _save_safetensors(hf_sd, folder / "model.safetensors", {"format": "pt"}, owner=path)
            (folder / "config.json").write_text(config_text)
            if tokenizer_folder is not None:
                for name in TOKENIZER_FILES:
                    if Path(tokenizer_folder, name).is_file():
                        shutil.copyfile(Path(tokenizer_folder, name), folder / name)
            if tokenizer_file is not None:
                (folder / "tokenizer.json").write_text(Path(tokenizer_file).read_text())
                eot = "<|endoftext|>"  # token 0: document separator, BOS/EOS of the RWKV-4 Pile models
                tok_config = {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": eot,
                    "bos_token": eot,
                    "unk_token": eot,
                    "model_max_length": model.config.ctx_len,
                }
                (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))

        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_folder(path, fill)
    return path


def convert(source, destination, format: str = "safetensors", dtype=None, force: bool = False) -> Path:
    """Read any supported checkpoint and write it in `format` (tensors unchanged unless `dtype` is given).

    An existing destination is refused unless `force`: then a file is replaced, and of a transformers folder the
    checkpoint's files only (see save_model)."""
    destination = Path(destination)
    recover_interrupted(destination)
    if destination.exists() and not force:
        raise FileExistsError(f"{destination} exists; pass force=True (--force) to replace it")
    check_destination(destination, format)  # before the source is read, which can take minutes
    path = default.weights if (default := default_named(source)) else resolve_source(str(source))
    sd, config = read_checkpoint(path)
    source_dtype = next(iter(sd.values())).dtype
    if dtype is None and source_dtype not in SUPPORTED_DTYPES.values():
        raise CheckpointError(
            f"{source} holds {str(source_dtype).removeprefix('torch.')} weights, which rwkv_lab reads (widened) but "
            f"does not write: pass dtype= (--dtype) one of {sorted(SUPPORTED_DTYPES)}"
        )
    model = model_from_state_dict(sd, config, dtype=dtype or source_dtype)
    # a transformers folder's tokenizer goes with its weights
    tokenizer_folder = path if format == "transformers" and path.is_dir() else None
    return save_model(model, destination, format=format, tokenizer_folder=tokenizer_folder)
