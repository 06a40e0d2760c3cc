"""Load and save RWKV-4 weights in every format they are released in.

Formats (spec: "Checkpoint formats and key names"):
- ``pth``: BlinkDL's released files, a plain state dict, loaded with ``torch.load(weights_only=True)``.
- ``transformers``: a folder with config.json and model.safetensors / pytorch_model.bin (sharded or not),
  the keys renamed (``rwkv.`` prefix, ``attention``, ``feed_forward``, ...).
- ``safetensors``: this project's own file, BlinkDL key names plus the config in the metadata.
Hub repo ids ('RWKV/rwkv-4-169m-pile', 'BlinkDL/rwkv-4-pile-169m', 'owner/name/file.pth') download through
huggingface_hub's cache.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch

from ..config import RWKVConfig
from ..model import RESCALE_EVERY, RWKV
from ..results import atomic_write
from .default import DEFAULT_DESCRIPTION, DEFAULT_WEIGHTS
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
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
_LAYER_COUNT_KEY = re.compile(r"^blocks\.(\d+)\.ln1\.weight$")

# The released BlinkDL files (hub model cards BlinkDL/rwkv-4-pile-*; reference/rwkv4_pile_model_cards.csv).
BLINKDL_FILES = {
    "BlinkDL/rwkv-4-pile-169m": "RWKV-4-Pile-169M-20220807-8023.pth",
    "BlinkDL/rwkv-4-pile-430m": "RWKV-4-Pile-430M-20220808-8066.pth",
    "BlinkDL/rwkv-4-pile-1b5": "RWKV-4-Pile-1B5-20220903-8040.pth",
    "BlinkDL/rwkv-4-pile-3b": "RWKV-4-Pile-3B-20221008-8023.pth",
    "BlinkDL/rwkv-4-pile-7b": "RWKV-4-Pile-7B-20221115-8047.pth",
    "BlinkDL/rwkv-4-pile-14b": "RWKV-4-Pile-14B-20230213-8019.pth",
}


class CheckpointError(ValueError):
    """A file or folder that is not a usable RWKV-4 checkpoint; the message says what was expected."""


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in SUPPORTED_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in SUPPORTED_DTYPES:
        return SUPPORTED_DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(SUPPORTED_DTYPES)}")


# ---- key names -------------------------------------------------------------------------------------------------

_HF_RENAMES = [  # (BlinkDL, transformers), inside the key; the embedding is renamed as a prefix
    (".ln0.", ".pre_ln."),
    (".att.", ".attention."),
    (".ffn.", ".feed_forward."),
    ("time_mix_k", "time_mix_key"),
    ("time_mix_v", "time_mix_value"),
    ("time_mix_r", "time_mix_receptance"),
]


def blinkdl_to_hf_key(key: str) -> str:
    if key == "head.weight":
        return key
    if key.startswith("emb."):
        key = "embeddings." + key[len("emb.") :]
    for ours, theirs in _HF_RENAMES:
        key = key.replace(ours, theirs)
    return "rwkv." + key


def hf_to_blinkdl_key(key: str) -> str:
    if key == "head.weight":
        return key
    if not key.startswith("rwkv."):
        raise CheckpointError(
            f"unexpected key {key!r} in a transformers RWKV checkpoint (expected 'rwkv.*' or 'head.weight')"
        )
    key = key[len("rwkv.") :]
    if key.startswith("embeddings."):
        key = "emb." + key[len("embeddings.") :]
    for ours, theirs in reversed(_HF_RENAMES):
        key = key.replace(theirs, ours)
    return key


def is_hf_state_dict(sd: dict) -> bool:
    return any(k.startswith("rwkv.") for k in sd)


# ---- reading files ---------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            # Files written with the legacy (non-zip) serialisation cannot be memory-mapped.
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors, which could run code when "
            f"unpickled. Only plain state dicts of tensors are accepted (torch.load weights_only=True). ({err})"
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged pickle fails in arbitrary ways (IndexError, EOFError, ...)
        raise CheckpointError(
            f"could not read {path} as a PyTorch checkpoint: the file is truncated or not a checkpoint ({err})"
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


def _read_hf_folder(folder: Path) -> tuple[dict, RWKVConfig]:
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}/config.json is missing or not valid JSON ({err})") from err
    config = config_from_hf(hf_config)
    shards: list[Path] = []
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).exists():
            index = json.loads((folder / index_name).read_text())
            shards = [folder / name for name in sorted(set(index["weight_map"].values()))]
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
            else _check_tensor_dict(_torch_load(shard), shard)
        )
        sd.update(part)
    return {hf_to_blinkdl_key(k): v for k, v in sd.items()}, config


def config_from_hf(hf: dict) -> RWKVConfig:
    if hf.get("model_type") not in (None, "rwkv"):
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}; expected 'rwkv' (RWKV-4)")
    try:
        C, L, V = int(hf["hidden_size"]), int(hf["num_hidden_layers"]), int(hf["vocab_size"])
    except KeyError as err:
        raise CheckpointError(f"config.json lacks {err}; expected hidden_size, num_hidden_layers, vocab_size") from err
    if (hf.get("attention_hidden_size") or C) != C:
        raise CheckpointError(
            f"attention_hidden_size {hf['attention_hidden_size']} != hidden_size {C}: "
            "RWKV-4 Pile models use equal sizes, which is all this implementation supports"
        )
    if (hf.get("intermediate_size") or 4 * C) != 4 * C:
        raise CheckpointError(f"intermediate_size {hf['intermediate_size']} != 4 * hidden_size = {4 * C}")
    return RWKVConfig(
        n_layer=L,
        n_embd=C,
        vocab_size=V,
        ctx_len=int(hf.get("context_length", 1024)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        name=hf.get("_name_or_path") or "custom",
    )


def config_from_state_dict(sd: dict, name: str = "custom") -> RWKVConfig:
    """n_layer, n_embd and the vocabulary from the BlinkDL keys, as the released files carry no config."""
    if "emb.weight" not in sd or sd["emb.weight"].dim() != 2:
        raise CheckpointError(
            f"cannot infer the model size: the checkpoint has no 2-D 'emb.weight' (found keys such as {sorted(sd)[:5]})"
        )
    V, C = sd["emb.weight"].shape
    layers = [int(m.group(1)) for k in sd if (m := _LAYER_COUNT_KEY.match(k))]
    if not layers:
        raise CheckpointError("cannot infer the number of layers: no 'blocks.N.ln1.weight' keys in the checkpoint")
    return RWKVConfig(n_layer=max(layers) + 1, n_embd=int(C), vocab_size=int(V), name=name)


def read_checkpoint(path) -> tuple[dict, RWKVConfig]:
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
        if "rwkv_lab_config" in metadata:
            config = RWKVConfig.from_dict(json.loads(metadata["rwkv_lab_config"]))
        else:
            config = None
    else:
        sd, config = _check_tensor_dict(_torch_load(path), path), None
    if is_hf_state_dict(sd):
        sd = {hf_to_blinkdl_key(k): v for k, v in sd.items()}
    return sd, config or config_from_state_dict(sd, name=path.stem)


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A local path as is; a hub id ('owner/name' or 'owner/name/file') downloaded into the hub cache."""
    if os.path.exists(source) or not (is_repo_id(source) or is_repo_id("/".join(source.split("/")[:2]))):
        return Path(source)
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
        raise type(err)(f"{err} (no local file or folder {source!r} exists either)") from err


# ---- building a model ------------------------------------------------------------------------------------------


def model_from_state_dict(sd: dict, config: RWKVConfig, dtype=torch.float32, device="cpu") -> RWKV:
    """Check every key and shape against the config, then place the weights (no fp32 copy of the whole model)."""
    dtype = resolve_dtype(dtype)
    with torch.device("meta"):
        model = RWKV(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match an RWKV-4 with {config.n_layer} layers of width {config.n_embd}: "
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


def load_model(source, dtype="float32", device="cpu", revision: str | None = None) -> RWKV:
    """Load RWKV-4 from 'default', a local file or folder, or a hub id; compute dtype and device chosen here.

    The model's `source` attribute records where it came from (notebooks print it).
    """
    if str(source) == "default":
        sd, config = read_checkpoint(DEFAULT_WEIGHTS)
        model = model_from_state_dict(sd, config, dtype=dtype, device=device)
        model.source = DEFAULT_DESCRIPTION
        return model
    resolve_dtype(dtype)  # fail before any download
    path = resolve_source(str(source), revision)
    sd, config = read_checkpoint(path)
    model = model_from_state_dict(sd, config, dtype=dtype, device=device)
    model.source = str(source)
    return model


def default_model(dtype=torch.float32, device="cpu") -> RWKV:
    """The embedded default model (default.py): no download, any dtype and device."""
    return load_model("default", dtype=dtype, device=device)


# ---- writing ---------------------------------------------------------------------------------------------------


def hf_config_dict(config: RWKVConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "attention_hidden_size": config.n_embd,
        "intermediate_size": config.dim_ffn,
        "context_length": config.ctx_len,
        "layer_norm_epsilon": config.layer_norm_eps,
        "rescale_every": RESCALE_EVERY,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def save_model(model: RWKV, path, format: str = "safetensors", dtype=None, tokenizer_file=None) -> Path:
    """Write `model` as 'safetensors' (ours), 'pth' (BlinkDL) or 'transformers' (a folder; with `tokenizer_file`,
    a tokenizers JSON such as GPT-NeoX-20B's, the folder also loads with AutoTokenizer)."""
    from safetensors.torch import save_file

    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; expected one of {FORMATS}")
    if tokenizer_file is not None and format != "transformers":
        raise ValueError(f"tokenizer_file is written only into a 'transformers' folder, not a {format!r} file")
    dtype = resolve_dtype(dtype) if dtype is not None else model.dtype
    path = Path(path)
    sd = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in model.state_dict().items()}
    if format == "safetensors":
        meta = {"format": "pt", "rwkv_lab_config": model.config.to_json()}
        atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=meta))
    elif format == "pth":
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    else:
        path.mkdir(parents=True, exist_ok=True)
        hf_sd = {blinkdl_to_hf_key(k): v for k, v in sd.items()}
        atomic_write(path / "model.safetensors", lambda tmp: save_file(hf_sd, str(tmp), metadata={"format": "pt"}))
        config_text = json.dumps(hf_config_dict(model.config, dtype), indent=2)
        atomic_write(path / "config.json", lambda tmp: tmp.write_text(config_text))
        if tokenizer_file is not None:
            tokenizer_text = Path(tokenizer_file).read_text()
            atomic_write(path / "tokenizer.json", lambda tmp: tmp.write_text(tokenizer_text))
            eot = "<|endoftext|>"  # token 0: document separator, BOS/EOS of the RWKV-4 Pile models
            tok_config = json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": eot,
                    "bos_token": eot,
                    "unk_token": eot,
                    "model_max_length": model.config.ctx_len,
                }
            )
            atomic_write(path / "tokenizer_config.json", lambda tmp: tmp.write_text(tok_config))
    return path


def convert(source, destination, format: str = "safetensors", dtype=None) -> Path:
    """Read any supported checkpoint and write it in `format` (tensors unchanged unless `dtype` is given)."""
    path = resolve_source(str(source))
    sd, config = read_checkpoint(path)
    source_dtype = next(iter(sd.values())).dtype
    model = model_from_state_dict(sd, config, dtype=dtype or source_dtype)
    return save_model(model, destination, format=format)
