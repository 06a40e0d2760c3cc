"""RWKV-7 checkpoints: BlinkDL's x070 `.pth` (our own parameter names) and the hub layout of fla's
`RWKV7ForCausalLM` (flash-linear-attention: fla/models/rwkv7/, fla/layers/rwkv7.py, utils/convert_from_rwkv7.py).

    matches(sd)                         # is this a BlinkDL x070 state dict
    config = config_from_state_dict(sd, name)
    fla_key("blocks.3.att.w1") == "model.layers.3.attn.w_lora.lora.0.weight"; blinkdl_key(...) the inverse
    fla_sd = to_fla_state_dict(sd); sd = from_fla_state_dict(fla_sd, config)   # values too (transposes, squeezes)
    hf_config_dict(config) / config_from_hf(config_json)                         # fla's config.json both ways
"""

from __future__ import annotations

import re

import torch

from ..checks import CheckpointError
from .config import RWKV7Config

DEEP_EMBED = "ffn.s_emb"
HF_MODEL_TYPE = "rwkv7"  # config.json's model_type of fla's RWKV7ForCausalLM (the hub's RWKV-7 folders)

# BlinkDL name -> fla name outside the blocks
_GLOBAL = {
    "emb.weight": "model.embeddings.weight",
    "ln_out.weight": "model.norm.weight",
    "ln_out.bias": "model.norm.bias",
    "head.weight": "lm_head.weight",
}
_MODULES = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_ATT_LINEAR = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
# fla's LoRA is nn.Sequential(Linear(C, D, bias=False), activation, Linear(D, C)): w0 its bias, w1 and w2 the
# transposed weights; the gate's has no bias (RWKV-7 has no g0)
_LORA = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}
# layer 0 has no value residual: fla builds no v_lora there, BlinkDL checkpoints carry unused v0 v1 v2
_UNUSED = re.compile(r"^blocks\.0\.att\.v[012]$")


def matches(sd: dict) -> bool:
    """Whether `sd` is a BlinkDL RWKV-7 (x070) state dict."""
    return "blocks.0.att.r_k" in sd and "emb.weight" in sd


def refuse_deep_embed(sd: dict) -> None:
    deep = sorted(k for k in sd if DEEP_EMBED in k)
    if deep:
        raise CheckpointError(
            f"this is an RWKV-7 DeepEmbed checkpoint ({deep[0]} and {len(deep) - 1} more ffn.s_emb* keys), which "
            "rwkv_lab does not implement; use a plain x070 checkpoint"
        )


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"not an RWKV-7 x070 state dict: key {key!r} is missing")
    return tuple(sd[key].shape)


def config_from_state_dict(sd: dict, name: str = "custom") -> RWKV7Config:
    """Every size read from the weights: L from the block keys, V and C from emb, H and N from r_k, each LoRA width
    from its matrix, the channel-mix width from ffn.key."""
    refuse_deep_embed(sd)
    V, C = _shape(sd, "emb.weight")
    H, N = _shape(sd, "blocks.0.att.r_k")
    layers = {int(m[1]) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))}
    L = max(layers) + 1
    if layers != set(range(L)):
        raise CheckpointError(f"RWKV-7 state dict has blocks {sorted(layers)}; expected 0..{L - 1} without gaps")
    if _shape(sd, "head.weight") != (V, C):
        raise CheckpointError(f"head.weight has shape {_shape(sd, 'head.weight')}; expected (V, C) = {(V, C)} from emb")
    if H * N != C:
        raise CheckpointError(f"blocks.0.att.r_k has shape {(H, N)} but H * N must equal n_embd = {C}")
    value_layer = 1 if L > 1 else 0  # layer 0's value LoRA is unused (and absent from fla's weights)
    return RWKV7Config(
        n_layer=L,
        n_embd=C,
        vocab_size=V,
        head_size=N,
        decay_lora=_shape(sd, "blocks.0.att.w1")[1],
        iclr_lora=_shape(sd, "blocks.0.att.a1")[1],
        value_lora=_shape(sd, f"blocks.{value_layer}.att.v1")[1],
        gate_lora=_shape(sd, "blocks.0.att.g1")[1],
        ffn_dim=_shape(sd, "blocks.0.ffn.key.weight")[0],
        name=name,
    )


def fla_key(key: str) -> str | None:
    """The fla name of a BlinkDL key; None for layer 0's unused value-residual LoRA (v0, v1, v2), which fla lacks."""
    if key in _GLOBAL:
        return _GLOBAL[key]
    if _UNUSED.match(key):
        return None
    m = re.match(r"^blocks\.(\d+)\.(\w+)\.(.+)$", key)
    if not m or m[2] not in _MODULES:
        raise KeyError(f"{key!r} is not a key of a BlinkDL RWKV-7 checkpoint")
    layer, module, rest = m[1], m[2], m[3]
    if module == "att":
        if lora := re.match(r"^([wavg])([012])$", rest):
            rest = f"{lora[1]}_lora.lora.{_LORA[lora[2]]}"
        else:
            head, _, tail = rest.partition(".")
            rest = f"{_ATT_LINEAR[head]}.{tail}" if head in _ATT_LINEAR else rest
    return f"model.layers.{layer}.{_MODULES[module]}.{rest}"


_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}
_MODULES_BACK = {v: k for k, v in _MODULES.items()}
_ATT_LINEAR_BACK = {v: k for k, v in _ATT_LINEAR.items()}
_LORA_BACK = {v: k for k, v in _LORA.items()}


def blinkdl_key(key: str) -> str:
    """The BlinkDL name of an fla key (the inverse of fla_key)."""
    if key in _GLOBAL_BACK:
        return _GLOBAL_BACK[key]
    m = re.match(r"^model\.layers\.(\d+)\.(\w+)\.(.+)$", key)
    if not m or m[2] not in _MODULES_BACK:
        raise KeyError(f"{key!r} is not a key of fla's RWKV7ForCausalLM")
    layer, module, rest = m[1], m[2], m[3]
    if module == "attn":
        if lora := re.match(r"^([wavg])_lora\.lora\.(\d\.\w+)$", rest):
            rest = f"{lora[1]}{_LORA_BACK[lora[2]]}"
        else:
            head, _, tail = rest.partition(".")
            rest = f"{_ATT_LINEAR_BACK[head]}.{tail}" if head in _ATT_LINEAR_BACK else rest
    return f"blocks.{layer}.{_MODULES_BACK[module]}.{rest}"


def _lora_index(key: str) -> str | None:
    m = re.search(r"\.att\.[wavg]([012])$", key)
    return m[1] if m else None


# fla keeps these as (C,) where BlinkDL has (1, 1, C); its x_r ... x_g stay (1, 1, C)
_FLAT_IN_FLA = re.compile(r"\.(att\.(k_k|k_a|[wav]0)|ffn\.x_k)$")


def to_fla_state_dict(sd: dict) -> dict:
    """A BlinkDL x070 state dict in fla's names and shapes (LoRA matrices transposed, biases and ffn.x_k flat)."""
    refuse_deep_embed(sd)
    out = {}
    for key, value in sd.items():
        name = fla_key(key)
        if name is None:
            continue
        if _lora_index(key) in ("1", "2"):
            value = value.t()
        elif _FLAT_IN_FLA.search(key):
            value = value.reshape(-1)
        out[name] = value.contiguous()
    return out


def from_fla_state_dict(fla_sd: dict, config: RWKV7Config | None) -> dict:
    """fla's state dict in BlinkDL names and shapes; layer 0's unused v0 v1 v2 are filled with zeros (their width
    from `config`, or, for a file without one, from a later layer's value LoRA)."""
    C = config.n_embd if config is not None else fla_sd["model.embeddings.weight"].shape[1]
    if config is not None:
        value_lora = config.value_lora
    else:
        widths = [v.shape[0] for k, v in fla_sd.items() if k.endswith("attn.v_lora.lora.0.weight")]
        value_lora = widths[0] if widths else RWKV7Config(n_layer=1, n_embd=C).value_lora
    out = {}
    for key, value in fla_sd.items():
        name = blinkdl_key(key)
        if _lora_index(name) in ("1", "2"):
            value = value.t()
        elif _FLAT_IN_FLA.search(name):
            value = value.reshape(1, 1, C)
        out[name] = value.contiguous()
    like = out["blocks.0.att.w0"]
    out["blocks.0.att.v0"] = torch.zeros(1, 1, C, dtype=like.dtype)
    out["blocks.0.att.v1"] = torch.zeros(C, value_lora, dtype=like.dtype)
    out["blocks.0.att.v2"] = torch.zeros(value_lora, C, dtype=like.dtype)
    return out


def hf_config_dict(config: RWKV7Config, dtype: torch.dtype | None = None) -> dict:
    """fla's config.json for this shape (RWKV7Config of fla-hub's rwkv7 folders)."""
    torch_dtype = {} if dtype is None else {"torch_dtype": str(dtype).removeprefix("torch.")}
    return torch_dtype | {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": "rwkv7",
        "attn": None,
        "attn_mode": "chunk",
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "head_dim": config.head_size,
        "num_heads": config.n_head,
        "vocab_size": config.vocab_size,
        "intermediate_size": config.dim_ffn,
        "hidden_ratio": config.dim_ffn / config.n_embd,
        "decay_low_rank_dim": config.decay_lora,
        "a_low_rank_dim": config.iclr_lora,
        "v_low_rank_dim": config.value_lora,
        "gate_low_rank_dim": config.gate_lora,
        "value_dim": [config.n_embd] * config.n_layer,
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": config.layer_norm_eps,
        "max_position_embeddings": config.ctx_len,
        "tie_word_embeddings": False,
        "fuse_norm": False,
        "use_cache": True,
    }


def is_hf_state_dict(sd: dict) -> bool:
    """A state dict in fla's RWKV7ForCausalLM names (saved as one file)."""
    return any(k.startswith("model.layers.") and ".attn." in k for k in sd)


# the seam's names for the hub layout (rwkv_lab.models.protocol: every generation's checkpoint module has them)
to_hf_state_dict = to_fla_state_dict
from_hf_state_dict = from_fla_state_dict


def config_from_hf(d: dict, where: str = "config.json", name: str | None = None) -> RWKV7Config:
    """fla's config.json (parsed) as an RWKV7Config; errors name `where` (CheckpointError, one line)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{where} holds a {type(d).__name__}, not a JSON object with the model's settings")
    try:
        return _config_from_fla(d, name or d.get("_name_or_path") or "custom")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err.args[0] if isinstance(err, KeyError) else err}") from None


def _config_from_fla(d: dict, name: str = "custom") -> RWKV7Config:
    """An fla config.json as an RWKV7Config; a variant this network is not (hybrid attention layers, tied
    embeddings, another activation or value width) is refused with what differs."""
    if d.get("model_type") not in ("rwkv7", "rwkv7_fla"):
        raise ValueError(f"not an fla RWKV-7 config: model_type is {d.get('model_type')!r}, expected 'rwkv7'")
    C, L = d["hidden_size"], d["num_hidden_layers"]
    differs = {
        "attn": (d.get("attn"), None),
        "tie_word_embeddings": (d.get("tie_word_embeddings", False), False),
        "hidden_act": (d.get("hidden_act", "sqrelu"), "sqrelu"),
        "norm_first": (d.get("norm_first", True), True),
        "norm_bias": (d.get("norm_bias", True), True),
        "value_dim": (d.get("value_dim") or [C] * L, [C] * L),
    }
    bad = {key: got for key, (got, want) in differs.items() if got != want}
    if bad:
        raise ValueError(f"fla RWKV-7 variant not supported by rwkv_lab's RWKV-7: {bad}")
    unset = [
        key for key in ("decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim") if not d.get(key)
    ]
    if unset:
        raise ValueError(
            f"fla config leaves {unset} unset (fla's defaults differ from RWKV-LM's); read them from the weights"
        )
    head_size = d.get("head_dim") or C // d["num_heads"]
    ffn = d.get("intermediate_size") or 32 * -(-int(C * (d.get("hidden_ratio") or 4)) // 32)
    return RWKV7Config(
        n_layer=L,
        n_embd=C,
        vocab_size=d["vocab_size"],
        head_size=head_size,
        decay_lora=d["decay_low_rank_dim"],
        iclr_lora=d["a_low_rank_dim"],
        value_lora=d["v_low_rank_dim"],
        gate_lora=d["gate_low_rank_dim"],
        ffn_dim=ffn,
        ctx_len=d.get("max_position_embeddings", 4096),
        layer_norm_eps=float(d.get("norm_eps", 1e-5)),
        name=name,
    )
