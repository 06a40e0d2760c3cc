"""Every checkpoint format round-trips; bad files are refused with a message that says what was expected."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import random_model
from safetensors.torch import load_file, save_file

from rwkv_lab.__main__ import main as cli
from rwkv_lab.loading.checkpoint import (
    BLINKDL_FILES,
    CheckpointError,
    convert,
    load_model,
    read_checkpoint,
    save_model,
)
from rwkv_lab.loading.hub import HubUnavailableError
from rwkv_lab.models.rwkv4.checkpoint import blinkdl_key, hf_key
from rwkv_lab.models.rwkv4.config import PRESETS

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=0, dtype=torch.float32)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


@pytest.mark.parametrize("fmt,name", [("safetensors", "m.safetensors"), ("pth", "m.pth"), ("transformers", "hf")])
def test_round_trip(tmp_path, model, fmt, name):
    path = save_model(model, tmp_path / name, format=fmt)
    loaded = load_model(path)
    assert loaded.config.n_layer == TINY.n_layer and loaded.config.n_embd == TINY.n_embd
    assert same_weights(model, loaded)
    tokens = torch.tensor([[1, 2, 3, 200]])
    assert torch.equal(loaded(tokens)[0], model(tokens)[0])
    assert loaded.source == str(path)


def test_transformers_folder_with_pytorch_model_bin(tmp_path, model):
    folder = save_model(model, tmp_path / "hf", format="transformers")
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    assert same_weights(model, load_model(folder))


def test_sharded_transformers_folder(tmp_path, model):
    folder = save_model(model, tmp_path / "hf", format="transformers")
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for shard, names in shards.items():
        save_file({k: sd[k] for k in names}, folder / shard, metadata={"format": "pt"})
        weight_map |= {k: shard for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert same_weights(model, load_model(folder))


@pytest.mark.parametrize("disk_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("compute", ["float32", "bfloat16", "float16", "float64"])
def test_half_precision_files_and_compute_dtype(tmp_path, model, disk_dtype, compute):
    # the released .pth files are fp16/bf16 state dicts
    path = tmp_path / "released.pth"
    torch.save({k: v.to(disk_dtype) for k, v in model.state_dict().items()}, path)
    loaded = load_model(path, dtype=compute)
    assert loaded.dtype == getattr(torch, compute)
    assert torch.equal(loaded.head.weight, model.head.weight.to(disk_dtype).to(loaded.dtype))


def test_key_names_follow_the_spec():
    assert hf_key("emb.weight") == "rwkv.embeddings.weight"
    assert hf_key("blocks.0.ln0.bias") == "rwkv.blocks.0.pre_ln.bias"
    assert hf_key("blocks.3.att.time_mix_k") == "rwkv.blocks.3.attention.time_mix_key"
    assert hf_key("blocks.3.ffn.time_mix_r") == "rwkv.blocks.3.feed_forward.time_mix_receptance"
    assert hf_key("blocks.1.att.time_decay") == "rwkv.blocks.1.attention.time_decay"
    assert hf_key("head.weight") == "head.weight"
    for key in random_model(TINY).state_dict():
        assert blinkdl_key(hf_key(key)) == key


def test_convert_between_all_formats_and_cli(tmp_path, model):
    pth = save_model(model, tmp_path / "a.pth", format="pth")
    hf = convert(pth, tmp_path / "hf", format="transformers")
    ours = convert(hf, tmp_path / "b.safetensors", format="safetensors", dtype="bfloat16")
    assert cli(["convert", str(ours), str(tmp_path / "c.pth"), "--to", "pth"]) == 0
    back = load_model(tmp_path / "c.pth")
    assert (
        back.dtype == torch.float32
        and next(iter(torch.load(tmp_path / "c.pth", weights_only=True).values())).dtype == torch.bfloat16
    )
    assert torch.equal(back.head.weight, model.head.weight.to(torch.bfloat16).float())


# ---- the hub, offline: a cache laid out as huggingface_hub writes it -------------------------------------------


def fill_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    for name, src in files.items():
        (snapshot / name).write_bytes(src.read_bytes())


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_ids_load_from_the_cache(tmp_path, model, offline_hub):
    hf = save_model(model, tmp_path / "hf", format="transformers")
    fill_hub_cache(
        offline_hub,
        "RWKV/rwkv-4-tiny-pile",
        {"config.json": hf / "config.json", "model.safetensors": hf / "model.safetensors"},
    )
    assert same_weights(model, load_model("RWKV/rwkv-4-tiny-pile"))
    pth = save_model(model, tmp_path / "x.pth", format="pth")
    fill_hub_cache(offline_hub, "BlinkDL/rwkv-4-pile-169m", {BLINKDL_FILES["BlinkDL/rwkv-4-pile-169m"]: pth})
    assert same_weights(model, load_model("BlinkDL/rwkv-4-pile-169m"))
    fill_hub_cache(offline_hub, "someone/rwkv-files", {"sub.pth": pth})
    assert same_weights(model, load_model("someone/rwkv-files/sub.pth"))


def test_hub_offline_without_cache_explains(offline_hub):
    with pytest.raises(
        HubUnavailableError, match=r"could not get .* 'RWKV/rwkv-4-169m-pile' .* local cache.*local path"
    ):
        load_model("RWKV/rwkv-4-169m-pile")


def test_missing_local_path():
    with pytest.raises(FileNotFoundError, match="no checkpoint file or folder at '/nonexistent/model.pth'"):
        load_model("/nonexistent/model.pth")


# ---- bad files -------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys(tmp_path, model):
    sd = dict(model.state_dict())
    del sd["blocks.1.att.time_first"]
    sd["blocks.1.att.bonus"] = torch.zeros(TINY.n_embd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"missing \['blocks.1.att.time_first'\].*unexpected \['blocks.1.att.bonus'\]"
    ):
        load_model(tmp_path / "bad.pth")


def test_shapes_that_contradict_the_config(tmp_path, model):
    sd = dict(model.state_dict())
    sd["blocks.1.ffn.key.weight"] = torch.zeros(3 * TINY.n_embd, TINY.n_embd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"blocks.1.ffn.key.weight: got \(96, 32\), expected \(128, 32\)"):
        load_model(tmp_path / "bad.pth")


def test_config_json_that_contradicts_the_weights(tmp_path, model):
    folder = save_model(model, tmp_path / "hf", format="transformers")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing.*blocks.2"):
        load_model(folder)
    config |= {"num_hidden_layers": 2, "model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'llama'; expected 'rwkv'"):
        load_model(folder)


@pytest.mark.parametrize("fmt,name", [("pth", "m.pth"), ("safetensors", "m.safetensors")])
def test_truncated_files(tmp_path, model, fmt, name):
    path = save_model(model, tmp_path / name, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a"):
        load_model(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        load_model(tmp_path / "notes.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_model(tmp_path / "list.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_model(tmp_path / "folder")


class Exploit:
    """Unpickling this would create a file: a checkpoint must never run it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    sd = dict(model.state_dict())
    sd["blocks.0.att.time_decay"] = Exploit(marker)
    torch.save(sd, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load .*could run code"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_unsupported_dtype(tmp_path, model):
    path = save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"unsupported dtype 'int8'; expected one of"):
        load_model(path, dtype="int8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_model("default", dtype=torch.complex64)


def test_safetensors_without_our_metadata_infers_the_config(tmp_path, model):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "plain.safetensors")
    sd, config = read_checkpoint(tmp_path / "plain.safetensors")
    assert (config.n_layer, config.n_embd, config.vocab_size) == (TINY.n_layer, TINY.n_embd, TINY.vocab_size)


def test_a_tokenizer_goes_only_into_a_transformers_folder(tmp_path):
    from helpers import NEOX_TOKENIZER

    model = random_model(PRESETS["tiny"], dtype=torch.float32)
    with pytest.raises(ValueError, match="tokenizer_file is written only into a 'transformers' folder"):
        save_model(model, tmp_path / "m.pth", format="pth", tokenizer_file=NEOX_TOKENIZER)
