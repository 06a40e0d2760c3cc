"""RWKV-4's checkpoints: the BlinkDL key set (this package's parameter names), its detection and the sizes read
from the weights, and the hub layout of transformers' `RwkvForCausalLM` (keys and config.json) both ways."""

from __future__ import annotations

import re
import warnings

import torch

from ..checks import CheckpointError
from ..run_config import RunConfig
from .config import PRESETS, RWKVConfig

HF_MODEL_TYPE = "rwkv"  # config.json's model_type of transformers' RWKV-4
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
# keys of RWKV-4 training runs this implementation does not model: a clear error rather than a wrong model
UNSUPPORTED_KEYS = {
    "pos_emb": "learned position embeddings (pos_emb_x / pos_emb_y)",
    "head_q": "the tiny-attention head (head_q / head_k / copy_mask)",
    "head_k": "the tiny-attention head",
    "copy_mask": "the tiny-attention head",
    "tiny_": "tiny attention (tiny_ln / tiny_q / tiny_k / tiny_v)",
}

# ---- key names -------------------------------------------------------------------------------------------------

_HF_RENAMES = [  # (BlinkDL, transformers), inside the key; the embedding is renamed as a prefix
    (".ln0.", ".pre_ln."),
    (".att.", ".attention."),
    (".ffn.", ".feed_forward."),
    ("time_mix_k", "time_mix_key"),
    ("time_mix_v", "time_mix_value"),
    ("time_mix_r", "time_mix_receptance"),
]


def hf_key(key: str) -> str:
    """A BlinkDL key -> transformers' RwkvForCausalLM key."""
    if key == "head.weight":
        return key
    if key.startswith("emb."):
        key = "embeddings." + key[len("emb.") :]
    for ours, theirs in _HF_RENAMES:
        key = key.replace(ours, theirs)
    return "rwkv." + key


def blinkdl_key(key: str) -> str:
    """A transformers RwkvForCausalLM key -> the BlinkDL key."""
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


def to_hf_state_dict(sd: dict) -> dict:
    """A BlinkDL state dict in transformers' RwkvForCausalLM names (the tensors unchanged)."""
    return {hf_key(k): v for k, v in sd.items()}


def from_hf_state_dict(hf_sd: dict, config=None) -> dict:
    """transformers' RwkvForCausalLM state dict in BlinkDL names (the tensors unchanged)."""
    return {blinkdl_key(k): v for k, v in hf_sd.items()}


def is_hf_state_dict(sd: dict) -> bool:
    return any(k.startswith("rwkv.") for k in sd)


def matches(sd: dict) -> bool:
    """A BlinkDL RWKV-4 state dict: the WKV's time_decay in the first block."""
    return "blocks.0.att.time_decay" in sd


def config_from_hf(hf: dict, where: str = "config.json") -> RWKVConfig:
    """The RWKVConfig of a transformers config.json (already parsed); `where` names the file in errors."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where} holds a {type(hf).__name__}, not a JSON object with the model's settings")
    try:
        return _config_from_hf(hf)
    except (TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise CheckpointError(f"{where}: {err}") from None
        raise CheckpointError(f"{where} has a setting of the wrong type or value ({err})") from None


def _config_from_hf(hf: dict) -> RWKVConfig:
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
    F = int(hf.get("intermediate_size") or 4 * C)
    return RWKVConfig(
        n_layer=L,
        n_embd=C,
        vocab_size=V,
        ctx_len=int(hf.get("context_length", 1024)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        name=hf.get("_name_or_path") or "custom",
        ffn_dim=None if F == 4 * C else F,
    )


def config_from_state_dict(sd: dict, name: str = "custom") -> RWKVConfig:
    """n_layer, n_embd, the FFN width and the vocabulary from the BlinkDL keys (the released files carry no
    config); a gap in the block indices, or keys of training variants this implementation lacks, are errors."""
    odd = sorted(
        {
            what
            for k in sd
            for part in k.split(".")
            for prefix, what in UNSUPPORTED_KEYS.items()
            if part.startswith(prefix)
        }
    )
    if odd:
        raise CheckpointError(
            f"this checkpoint uses {'; '.join(odd)}, which rwkv_lab's RWKV-4 does not implement "
            "(it loads the released Pile models' key set)"
        )
    if "emb.weight" not in sd or sd["emb.weight"].dim() != 2:
        raise CheckpointError(
            f"cannot infer the model size: the checkpoint has no 2-D 'emb.weight' (found keys such as {sorted(sd)[:5]})"
        )
    V, C = sd["emb.weight"].shape
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
    if not blocks:
        raise CheckpointError("cannot infer the number of layers: no 'blocks.N.*' keys in the checkpoint")
    gaps = sorted(set(range(max(blocks) + 1)) - blocks)
    if gaps:
        raise CheckpointError(
            f"the checkpoint has blocks up to {max(blocks)} but none of blocks {gaps[:8]}: a truncated or edited file"
        )
    ffn = sd.get("blocks.0.ffn.key.weight")
    F = int(ffn.shape[0]) if ffn is not None and ffn.dim() == 2 else 4 * int(C)
    check_known_depth(max(blocks) + 1, int(C), int(V), name)
    return RWKVConfig(
        n_layer=max(blocks) + 1, n_embd=int(C), vocab_size=int(V), name=name, ffn_dim=None if F == 4 * C else F
    )


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
        "rescale_every": RunConfig.rescale_every,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def check_known_depth(n_layer: int, n_embd: int, vocab_size: int, where: str) -> None:
    """A warning when a file without a config (the .pth format) has the width and vocabulary of known sizes
    (config.PRESETS) but none of their depths: the layers were counted from the keys, so a file that lost its
    last blocks would otherwise load, without a word, as a smaller model."""
    depths = sorted({p.n_layer for p in PRESETS.values() if (p.n_embd, p.vocab_size) == (n_embd, vocab_size)})
    if depths and n_layer not in depths:
        warnings.warn(
            f"{where}: {n_layer} layers of width {n_embd}, but the known models of that width have "
            f"{' or '.join(map(str, depths))}: a truncated file? (the format carries no config; the layers were "
            "counted from its keys)",
            RuntimeWarning,
            stacklevel=3,
        )
