"""Nothing lost, nothing silent: safe writes, a race-free result cache, checked inputs, clear command-line errors."""

import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import NEOX_TOKENIZER, REPO, random_model

from rwkv_lab.__main__ import main as cli
from rwkv_lab.evaluation.cache import CacheError, ResultCache
from rwkv_lab.inference.generation import generate
from rwkv_lab.loading.checkpoint import CheckpointError, load_model, save_model
from rwkv_lab.loading.tokenizer import BPETokenizer, ByteTokenizer, check_tokenizer
from rwkv_lab.models.rwkv4.config import PRESETS, RWKVConfig
from rwkv_lab.results import atomic_write, read_table, write_json, write_table

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=0, dtype=torch.float32)


# ---- writes that never lose data -------------------------------------------------------------------------------


def test_convert_refuses_an_existing_destination_without_force(tmp_path, model, capsys):
    src = save_model(model, tmp_path / "m.safetensors")
    notes = tmp_path / "notes.pth"
    notes.write_text("my notes")
    notes.chmod(0o644)
    assert cli(["convert", str(src), str(notes), "--to", "pth"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; pass force=True (--force)" in err
    assert notes.read_text() == "my notes" and notes.stat().st_mode & 0o777 == 0o644
    assert cli(["convert", str(src), str(notes), "--to", "pth", "--force"]) == 0
    assert torch.equal(load_model(notes).head.weight, model.head.weight)


def test_convert_force_replaces_a_sharded_folder_whole(tmp_path, model):
    old = random_model(TINY, seed=9, dtype=torch.float32)
    folder = save_model(old, tmp_path / "hf", format="transformers")
    # make it a sharded folder, as transformers writes large models
    from safetensors.torch import load_file, save_file

    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:5]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in keys[5:]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < 5 else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(load_model(folder).head.weight, old.head.weight)
    src = save_model(model, tmp_path / "new.safetensors")
    assert cli(["convert", str(src), str(folder), "--to", "transformers"]) == 1
    assert cli(["convert", str(src), str(folder), "--to", "transformers", "--force"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_model(folder).head.weight, model.head.weight)


def test_save_model_never_empties_a_folder_that_is_not_a_checkpoint(tmp_path, model):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        save_model(model, tmp_path / "docs", format="transformers")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "years of work"


def test_file_checkpoints_need_their_suffix(tmp_path, model):
    with pytest.raises(ValueError, match=r"a safetensors checkpoint is a file named \*\.safetensors"):
        save_model(model, tmp_path / "noext")
    assert cli(["convert", "default", str(tmp_path / "noext")]) == 1
    assert not (tmp_path / "noext").exists()


def test_atomic_writes_keep_the_umask_and_the_replaced_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_json(tmp_path / "r.json", {"x": 1})
        assert path.stat().st_mode & 0o777 == 0o640
        path.chmod(0o604)
        write_json(path, {"x": 2})
        assert path.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


WRITER = """
import sys, time
from pathlib import Path
from rwkv_lab.results import atomic_write

def slow(tmp):
    with open(tmp, "wb") as f:
        for _ in range(400):
            f.write(b"x" * (1 << 20))
            f.flush()
            time.sleep(0.01)

print("writing", flush=True)
atomic_write(Path(sys.argv[1]), slow)
"""


def test_a_write_killed_outright_leaves_the_target_intact_and_its_temporary_is_swept(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"the old contents")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().strip() == b"writing"
    deadline = time.time() + 30
    while not list(tmp_path.glob(".big.bin.*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # some megabytes into the write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"the old contents"
    left = list(tmp_path.glob(".big.bin.*.tmp"))
    print(f"temporaries left by the killed writer: {[p.name for p in left]}")
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))  # the next write sweeps the dead writer's temporary
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_a_table_and_its_provenance_are_one_unit(tmp_path):
    import pandas as pd

    path = write_table(tmp_path / "t.csv", pd.DataFrame({"a": [1, 2]}), {"run": 1})
    frame, meta = read_table(path)
    assert frame["a"].tolist() == [1, 2] and meta["params"] == {"run": 1}
    path.write_text("a\n3\n")  # another run's table beside this run's provenance
    with pytest.raises(ValueError, match="do not belong together"):
        read_table(path)


def test_json_is_strict(tmp_path):
    path = write_json(tmp_path / "r.json", {"nan": math.nan, "inf": -math.inf, "n": torch.tensor(2.5)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["results"] == {"nan": None, "inf": None, "n": 2.5}
    with pytest.raises(TypeError, match="cannot write object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


# ---- the lm-eval result cache ----------------------------------------------------------------------------------

CACHE_WRITER = """
import sys, time
from pathlib import Path
from rwkv_lab.evaluation.cache import ResultCache
folder, me, start, trials = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
for trial in range(trials):
    while time.time() < start + 0.25 * trial:  # the four processes open each fresh cache in the same millisecond
        pass
    cache = ResultCache(folder / f"cache{trial}.jsonl", {"model": "m"})
    for i in range(20):
        cache.put("loglikelihood", [me, i], [i, True])
"""


def test_four_processes_opening_a_fresh_cache_together_lose_nothing(tmp_path):
    trials = 20
    start = str(time.time() + 4.0)  # after every process has imported torch
    procs = [
        subprocess.Popen([sys.executable, "-c", CACHE_WRITER, str(tmp_path), str(p), start, str(trials)], cwd=REPO)
        for p in range(4)
    ]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    counts = [len(ResultCache(tmp_path / f"cache{t}.jsonl", {"model": "m"}).entries) for t in range(trials)]
    print(f"entries per cache (80 written each): {counts}")
    assert counts == [80] * trials


def test_a_damaged_cache_is_reported_with_its_file(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"model_ident')  # truncated header
    with pytest.raises(CacheError, match=f"result cache {path}: its first line is not a cache header"):
        ResultCache(path, {"model": "m"})
    path.write_text("")
    with pytest.raises(CacheError, match=str(path)):
        ResultCache(path, {"model": "m"})
    path.write_text('{"model_identity": {"model": "m"}}\n[1, 2]\n{"key": "k1", "value": 1}\n{"key": "k2", "val')
    with pytest.warns(RuntimeWarning, match=f"{path}, line 2: not an entry") as record:
        cache = ResultCache(path, {"model": "m"})
    assert any("line 4" in str(w.message) for w in record)
    assert cache.entries == {"k1": 1}
    cache.put("x", [1], 2)  # after a truncated last line: a line of its own, not glued onto it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = ResultCache(path, {"model": "m"})
    assert again.get("x", [1]) == 2 and again.entries["k1"] == 1


# ---- checks at the boundary ------------------------------------------------------------------------------------


def test_non_finite_weights_are_named(tmp_path, model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["blocks.1.att.key.weight"][0, 0] = math.nan
    sd["head.weight"][3, 1] = math.inf
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.warns(RuntimeWarning, match=r"2 tensors hold NaN or infinite values: \['blocks.1.att.key.weight', "):
        load_model(tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="head.weight"):
        load_model(tmp_path / "nan.pth", strict=True)


def test_non_finite_states_are_refused(model):
    state = model.init_state(1)
    state.packed[0, 1, 1, 5] = math.nan
    with pytest.raises(
        ValueError, match=r"state holds NaN or infinite values \(first at .* = \[0, 1, 1, 5\], slot att_a"
    ):
        model(torch.tensor([[1, 2]]), state)
    state = model.init_state(1)
    state.packed[0, 0, 3, 0] = math.inf
    with pytest.raises(ValueError, match="slot att_p"):
        model.step(torch.tensor([1]), state)


def test_missing_layers_are_errors(tmp_path):
    model = random_model(RWKVConfig(n_layer=4, n_embd=16, vocab_size=257), dtype=torch.float32)
    sd = model.state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.2.")}, tmp_path / "gap.pth")
    with pytest.raises(CheckpointError, match=r"none of blocks \[2\]"):
        load_model(tmp_path / "gap.pth")
    torch.save({k: v for k, v in sd.items() if k != "blocks.3.ffn.value.weight"}, tmp_path / "part.pth")
    with pytest.raises(CheckpointError, match=r"missing \['blocks.3.ffn.value.weight'\]"):
        load_model(tmp_path / "part.pth")


@pytest.mark.parametrize("fmt, name", [("safetensors", "m.safetensors"), ("pth", "m.pth"), ("transformers", "hf")])
def test_an_ffn_width_other_than_4C_loads_in_every_format(tmp_path, fmt, name):
    for ffn in (2 * 16, 3 * 16 + 5):
        model = random_model(RWKVConfig(n_layer=2, n_embd=16, vocab_size=257, ffn_dim=ffn), dtype=torch.float32)
        loaded = load_model(save_model(model, tmp_path / f"{ffn}" / name, format=fmt))
        assert loaded.config.dim_ffn == ffn
        tokens = torch.tensor([[1, 5, 9]])
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])


def test_training_variant_keys_get_a_clear_error(tmp_path, model):
    sd = dict(model.state_dict()) | {"head_q.weight": torch.zeros(4, 4), "head_k.weight": torch.zeros(4, 4)}
    torch.save(sd, tmp_path / "variant.pth")
    with pytest.raises(CheckpointError, match="tiny-attention"):
        load_model(tmp_path / "variant.pth")


def test_token_dtypes_and_prefill_chunk(model):
    with pytest.raises(TypeError, match="int64 or int32"):
        model(torch.tensor([[1, 2]], dtype=torch.uint8))
    with pytest.raises(TypeError, match="int64 or int32"):
        model.step(torch.tensor([1], dtype=torch.int16))
    for chunk in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be a positive number"):
            model.prefill(torch.tensor([[1, 2, 3]]), chunk=chunk)


def test_a_tokenizer_that_does_not_fit_the_model():
    neox_model = random_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=50277), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"byte tokenizer \(257 ids\) does not fit this model's vocabulary of 50277"):
        check_tokenizer(ByteTokenizer(), neox_model)
    with pytest.raises(ValueError, match="lone surrogate"):
        BPETokenizer(NEOX_TOKENIZER).encode("ok \ud800")
    with pytest.raises(ValueError, match="lone surrogate"):
        ByteTokenizer().encode("\udfff")


def test_a_mistyped_local_path_is_never_sent_to_the_hub(tmp_path, model, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a local path went to the hub")

    monkeypatch.setattr("rwkv_lab.loading.checkpoint.download_file", no_hub)
    monkeypatch.setattr("rwkv_lab.loading.checkpoint.download_snapshot", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    save_model(model, tmp_path / "ck" / "tiny.pth", format="pth")
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint file or folder at 'ck/tiny.pht'; did you mean 'ck/tiny.pth'"
    ):
        load_model("ck/tiny.pht")
    with pytest.raises(FileNotFoundError, match="no checkpoint file or folder at 'model.safetensors'"):
        load_model("model.safetensors")


def test_generate_prefills_through_the_last_position_only(model, monkeypatch):
    rows = []
    head = model.head.forward
    monkeypatch.setattr(model.head, "forward", lambda x: rows.append(tuple(x.shape)) or head(x))
    generate(model, ByteTokenizer(), "x" * 300, max_new_tokens=3, temperature=0)
    assert rows[0] == (1, TINY.n_embd), rows  # the prompt's 300 positions: one row through the head
    assert all(math.prod(r[:-1]) == 1 for r in rows), rows  # then one token per step


# ---- the command line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "hi", "--model", "/nonexistent.pth", "--temperature", "-1"],
        ["generate", "hi", "--model", "/nonexistent.pth", "--top-p", "0"],
        ["generate", "hi", "--model", "/nonexistent.pth", "--stop", ""],
        ["generate", "hi", "--model", "/nonexistent.pth", "--max-new-tokens", "-5"],
        ["generate", "hi", "--model", "/nonexistent.pth", "--seed", "x"],
        ["convert", "a"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2_before_any_model_loads(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(args)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and "Traceback" not in last and "nonexistent" not in last


def test_a_failed_operation_is_one_line_and_exit_1_unless_debug(tmp_path, capsys):
    missing = str(tmp_path / "zzz" / "model.pth")
    assert cli(["info", missing]) == 1
    err = capsys.readouterr().err
    expected = f"no checkpoint file or folder at {missing!r} ({str(tmp_path)!r} has nothing named like 'zzz')"
    assert err == f"rwkv-lab info: error: {expected}\n"
    with pytest.raises(FileNotFoundError):
        cli(["--debug", "info", missing])


def test_the_readme_commands_run_as_written(tmp_path, capsys):
    assert cli(["generate", "Hello", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert cli(["info", "default"]) == 0
    assert cli(["convert", "default", str(tmp_path / "out"), "--to", "transformers"]) == 0
    assert cli(["info", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "byte-6x256" in out and "parameters" in out


@pytest.mark.parametrize(
    "config, match",
    [
        ("[1, 2]", "holds a list, not a JSON object"),
        ("null", "holds a NoneType, not a JSON object"),
        ('{"hidden_size": "abc", "num_hidden_layers": 2, "vocab_size": 257}', "wrong type or value"),
        ('{"hidden_size": 32, "num_hidden_layers": 2', "not valid JSON"),
    ],
)
def test_a_broken_config_json_is_named(tmp_path, model, config, match):
    folder = save_model(model, tmp_path / "hf", format="transformers")
    (folder / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=match) as err:
        load_model(folder)
    assert "config.json" in str(err.value)


def test_broken_safetensors_metadata_and_shard_index(tmp_path, model):
    from safetensors.torch import load_file, save_file

    path = save_model(model, tmp_path / "m.safetensors")
    save_file(load_file(path), str(path), metadata={"rwkv_lab_config": '{"n_layer": "two"}'})
    with pytest.raises(CheckpointError, match=r"m.safetensors: its metadata 'rwkv_lab_config' is not a valid"):
        load_model(path)
    folder = save_model(model, tmp_path / "hf", format="transformers")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    with pytest.raises(CheckpointError, match="is not a shard index"):
        load_model(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"head.weight": "gone.safetensors"}}')
    with pytest.raises(CheckpointError, match=r"names shards that are not in the folder: \['gone.safetensors'\]"):
        load_model(folder)


def test_the_lm_eval_backend_uses_a_folders_own_tokenizer(tmp_path, monkeypatch):
    from rwkv_lab.evaluation.backend import RWKVLM

    neox = random_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=50277), dtype=torch.float32)
    folder = save_model(neox, tmp_path / "hf", format="transformers", tokenizer_file=NEOX_TOKENIZER)
    monkeypatch.delenv("RWKV_LAB_TOKENIZER", raising=False)
    monkeypatch.setattr("rwkv_lab.loading.tokenizer.download_file", lambda *a, **k: pytest.fail("went to the hub"))
    lm = RWKVLM(pretrained=str(folder))
    assert lm.tokenizer.name == str(folder / "tokenizer.json")


@pytest.mark.parametrize(
    "script, args, match",
    [
        ("bench_wkv.py", ["--shapes", "8x1024"], "--shapes takes BxTxC"),
        ("bench_wkv.py", ["--shapes", "8xmanyx768"], "--shapes takes BxTxC"),
        ("bench_training.py", ["--memory-budget", "0.5"], "needs --saved-activations partitioner"),
        ("bench_training.py", ["--saved-activations", "all"], "invalid choice"),
    ],
)
def test_benchmark_arguments_are_checked_before_any_device_is_touched(script, args, match, monkeypatch, capsys):
    """A mistyped benchmark option is a usage error (exit 2, what was expected) at once, on any machine: the GPU
    benchmarks check their arguments before they look for the device. Each script runs as `python SCRIPT ARGS` runs
    it (as __main__, that argv), in this process: a fresh one would spend ~3 s importing what this one has."""
    path = REPO / "benchmarks" / script
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(path), run_name="__main__")
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert match in err, err


# ---- round two (issue 29): folders, temporaries, one-line errors ---------------------------------------------


def dead_pid() -> int:
    """The id of a process that has exited (a writer killed outright)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def one_line_error(err: str, *fragments: str) -> str:
    """`err` (stderr) is one line holding every fragment; returns it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_convert_force_onto_a_folder_replaces_only_the_checkpoint(tmp_path, model, capsys):
    neox = random_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=50277), dtype=torch.float32)
    folder = save_model(neox, tmp_path / "hf", format="transformers", tokenizer_file=NEOX_TOKENIZER)
    (folder / "NOTES.md").write_text("my notes")
    (folder / "logs").mkdir()
    (folder / "logs" / "run.txt").write_text("a log")
    tokenizer_files = {n: (folder / n).read_text() for n in ("tokenizer.json", "tokenizer_config.json")}
    assert cli(["convert", str(folder), str(folder), "--to", "transformers", "--force", "--dtype", "bfloat16"]) == 0
    assert load_model(folder, dtype="float32").head.weight.dtype == torch.float32
    assert torch.equal(load_model(folder).head.weight, neox.head.weight.bfloat16().float())
    assert (folder / "NOTES.md").read_text() == "my notes" and (folder / "logs" / "run.txt").read_text() == "a log"
    assert {n: (folder / n).read_text() for n in tokenizer_files} == tokenizer_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary left beside it
    # converting a folder writes its tokenizer too
    assert cli(["convert", str(folder), str(tmp_path / "copy"), "--to", "transformers"]) == 0
    assert (tmp_path / "copy" / "tokenizer.json").read_text() == tokenizer_files["tokenizer.json"]
    assert not (tmp_path / "copy" / "NOTES.md").exists()


def test_written_checkpoints_get_the_umasks_modes(tmp_path, model):
    old = os.umask(0o022)
    try:
        folder = save_model(model, tmp_path / "hf", format="transformers")
        single = save_model(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (folder, *folder.iterdir(), single)}
    assert modes == {"hf": 0o755, "model.safetensors": 0o644, "config.json": 0o644, "m.safetensors": 0o644}


def test_safetensors_own_temporaries_are_the_projects(tmp_path, model, monkeypatch):
    """safetensors writes `.tmpXXXXXX` beside the file it is given: it is given one in a staging folder named for
    the checkpoint and the writer, which the next write sweeps once the writer is dead."""
    import safetensors.torch

    folders = []
    real = safetensors.torch.save_file
    monkeypatch.setattr(
        safetensors.torch,
        "save_file",
        lambda sd, name, **kw: folders.append(Path(name).parent.name) or real(sd, name, **kw),
    )
    save_model(model, tmp_path / "m.safetensors")
    save_model(model, tmp_path / "hf", format="transformers")
    assert re.fullmatch(rf"\.m\.safetensors\.{os.getpid()}\.\w+\.st", folders[0]), folders
    assert re.fullmatch(rf"\.hf\.{os.getpid()}\.\w+\.st", folders[1]), folders
    # what a writer killed outright leaves: safetensors' temporary in its staging folder, a half-built folder
    pid = dead_pid()
    for left in (f".m.safetensors.{pid}.x1.st", f".hf.{pid}.x2.tmp", f".hf.{pid}.x3.st"):
        (tmp_path / left).mkdir()
        (tmp_path / left / ".tmpAbC123").write_bytes(b"x" * 1000)
    (tmp_path / f".hf.{os.getpid()}.x4.tmp").mkdir()  # a live writer's: not touched
    save_model(model, tmp_path / "m.safetensors")
    save_model(model, tmp_path / "hf", format="transformers")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".hf.{os.getpid()}.x4.tmp", "hf", "m.safetensors"]


def test_a_folder_replace_killed_between_its_renames_is_recovered(tmp_path, model):
    old = random_model(TINY, seed=5, dtype=torch.float32)
    folder = save_model(old, tmp_path / "hf", format="transformers")
    (folder / "NOTES.md").write_text("my notes")
    # the state a kill between the two renames leaves: the old folder moved aside, the new one still a temporary
    pid = dead_pid()
    os.rename(folder, tmp_path / f".hf.{pid}.old")
    save_model(model, tmp_path / f"new{pid}", format="transformers").rename(tmp_path / f".hf.{pid}.abc.tmp")
    loaded = load_model(folder)  # the next load puts the old folder back and sweeps the temporary
    assert torch.equal(loaded.head.weight, old.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"] and (folder / "NOTES.md").exists()
    # and the next write does the same before it replaces the checkpoint (refused without --force)
    os.rename(folder, tmp_path / f".hf.{pid}.old")
    src = save_model(model, tmp_path / "src.safetensors")
    assert cli(["convert", str(src), str(folder), "--to", "transformers"]) == 1
    assert torch.equal(load_model(folder).head.weight, old.head.weight)


class RunsCode:
    """A pickle that runs a command when loaded unsafely."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("random.pth", "is not a checkpoint"),
        ("random.bin", "is not a checkpoint"),
        ("evil.pth", "it holds code (its pickle imports posix.system, which could run code"),
        ("evil_raw.bin", "it holds code (its pickle imports posix.system, which could run code"),
        ("truncated.pth", "the file is truncated or not a checkpoint"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line_saying_which(tmp_path, model, capsys, name, expected):
    """Random bytes, a pickle that would run code (a torch.save and a plain pickle of one), a truncated file: one
    line naming the file and which it is, never torch's advice to load it unsafely; the code never runs."""
    import pickle

    path, sentinel = tmp_path / name, tmp_path / "ran"
    if name.startswith("random"):
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1)).byte().numpy())
    elif name == "evil.pth":
        torch.save({"head.weight": torch.zeros(2), "x": RunsCode(sentinel)}, path)
    elif name == "evil_raw.bin":
        path.write_bytes(pickle.dumps({"x": RunsCode(sentinel)}, protocol=4))
    else:
        torch.save(model.state_dict(), tmp_path / "whole.pth")
        path.write_bytes((tmp_path / "whole.pth").read_bytes()[:3000])
    assert cli(["info", str(path)]) == 1
    line = one_line_error(capsys.readouterr().err, str(path), expected)
    assert "weights_only" not in line
    assert not sentinel.exists()


def test_float8_weights_are_widened_on_load_and_named_on_convert(tmp_path, model, capsys):
    sd = {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "f8.pth")
    loaded = load_model(tmp_path / "f8.pth")
    assert torch.equal(loaded.head.weight, sd["head.weight"].float())
    assert cli(["convert", str(tmp_path / "f8.pth"), str(tmp_path / "out.safetensors")]) == 1
    one_line_error(capsys.readouterr().err, "float8_e4m3fn weights", "pass dtype= (--dtype) one of")
    assert cli(["convert", str(tmp_path / "f8.pth"), str(tmp_path / "out.safetensors"), "--dtype", "fp16"]) == 0


def test_stop_none_means_no_stop_strings(model):
    tokens = dict(max_new_tokens=4, temperature=0)
    assert generate(model, ByteTokenizer(), "ab", stop=None, **tokens) == generate(
        model, ByteTokenizer(), "ab", **tokens
    )


def test_debug_is_taken_after_the_subcommand_too(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        cli(["info", str(tmp_path / "none.pth"), "--debug"])
    assert cli(["info", str(tmp_path / "none.pth")]) == 1


def test_generate_on_a_device_this_torch_lacks_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["generate", "hi", "--device", "cuda"]) == 1
    one_line_error(capsys.readouterr().err, "device 'cuda' is not available", "use 'cpu'")


def test_generate_uses_a_folders_own_tokenizer_and_fails_fast_offline(tmp_path, monkeypatch, capsys):
    neox = random_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=50277), dtype=torch.float32)
    folder = save_model(neox, tmp_path / "hf", format="transformers", tokenizer_file=NEOX_TOKENIZER)
    monkeypatch.delenv("RWKV_LAB_TOKENIZER", raising=False)
    monkeypatch.setattr("rwkv_lab.loading.tokenizer.download_file", lambda *a, **k: pytest.fail("went to the hub"))
    assert cli(["generate", "hi", "--model", str(folder), "--max-new-tokens", "3", "--seed", "0"]) == 0
    monkeypatch.undo()
    # without a tokenizer of its own, offline (HF_HUB_OFFLINE), then with no network (the hub's host refuses or does
    # not answer, no HF_HUB_OFFLINE): one line at once each, without huggingface_hub's half a minute of retries
    single = save_model(neox, tmp_path / "neox.safetensors")
    for label, hub_env, says in (
        ("offline", {"HF_HUB_OFFLINE": "1"}, "could not get tokenizer.json of 'EleutherAI/gpt-neox-20b'"),
        (
            "unreachable hub",
            {"HF_ENDPOINT": "http://127.0.0.1:9"},
            "hub (http://127.0.0.1:9): it is offline or did not",
        ),
    ):
        env = {k: v for k, v in os.environ.items() if k not in ("RWKV_LAB_TOKENIZER", "HF_HUB_OFFLINE")}
        env |= hub_env | {"HF_HOME": str(tmp_path / "hf_home")}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "rwkv_lab", "generate", "hi", "--model", str(single)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
        )
        seconds = time.perf_counter() - start
        print(f"{label}: failure after {seconds:.1f} s")
        assert proc.returncode == 1 and seconds < 20, (label, proc.returncode, seconds)
        one_line_error(proc.stderr, says, "--tokenizer")


def test_a_pth_missing_its_last_layers_is_warned_about(tmp_path):
    full = random_model(RWKVConfig(n_layer=6, n_embd=256, vocab_size=257), dtype=torch.float32)
    sd = {k: v for k, v in full.state_dict().items() if not k.startswith("blocks.5.")}
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.warns(RuntimeWarning, match="5 layers of width 256, but the known models of that width have 6"):
        assert load_model(tmp_path / "cut.pth").config.n_layer == 5
    torch.save(full.state_dict(), tmp_path / "whole.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "whole.pth")


def test_generate_with_nan_weights_exits_non_zero(tmp_path, model, capsys):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.weight"][0, 0] = math.nan
    torch.save(sd, tmp_path / "nan.pth")
    assert cli(["generate", "hi", "--model", str(tmp_path / "nan.pth"), "--max-new-tokens", "2"]) == 1
    one_line_error(capsys.readouterr().err, "1 tensors hold NaN or infinite values: ['head.weight']")


# ---- the training command line's run folder -------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (root / f"mod_{i:02d}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(30)))
    return root


def train_args(corpus_dir, out, *extra) -> list[str]:
    """A byte-2x32 run of 8 steps on the CPU, seconds long."""
    base = ["--model", "byte-2x32", "--context", "32", "--batch-size", "4", "--tokens", "1k", "--eval-every", "4"]
    base += ["--eval-tokens", "256", "--device", "cpu", "--data", str(corpus_dir), "--val-fraction", "0.3"]
    return base + ["--out", str(out), *extra]


def train_cli(args, env=None) -> subprocess.Popen:
    """`python -m rwkv_lab.training` in a process of its own, started (several run at once)."""
    cmd = [sys.executable, "-m", "rwkv_lab.training", *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.slow
def test_training_refuses_an_earlier_run_and_a_second_process(corpus_dir, tmp_path, capsys):
    from rwkv_lab.training.trainer import main as train_main

    out = tmp_path / "run"
    assert train_main(train_args(corpus_dir, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train_main(train_args(corpus_dir, out, "--lr", "3e-3")) == 1
    one_line_error(capsys.readouterr().err, "holds an earlier run (checkpoint.pt, log.csv", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a second process training into the same folder fails at once, in one line; once the first is gone (killed
    # outright, its lock file left behind) the folder is free again
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    rc, _, err = finish(train_cli(train_args(corpus_dir, out, "--overwrite")))
    assert rc == 1
    one_line_error(err, f"another training (pid {holder.pid}) is writing to {out}")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert train_main(train_args(corpus_dir, out, "--overwrite", "--lr", "3e-3")) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["lr"] == 3e-3


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from rwkv_lab.training.trainer import lock_run
lock = lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_training_command_line_errors_are_one_line(corpus_dir, tmp_path):
    """Each refused before any corpus is read or step taken (--data is missing: that error would come first)."""
    (tmp_path / "a_file").write_text("x")
    damaged = {"random": tmp_path / "random", "truncated": tmp_path / "truncated", "weights": tmp_path / "weights"}
    for folder in damaged.values():
        folder.mkdir()
    # seeded: some random files (about 1 in 13) fail inside the unpickler (IndexError): "truncated", not this error
    noise = torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(1)).byte().numpy()
    (damaged["random"] / "checkpoint.pt").write_bytes(noise.tobytes())
    torch.save({"config": {}, "model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pt")
    (damaged["truncated"] / "checkpoint.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:2000])
    torch.save({"w": torch.zeros(3)}, damaged["weights"] / "checkpoint.pt")
    no_data = ["--data", str(tmp_path / "no_such_corpus")]
    cases = [  # (arguments, exit status, what the one line says)
        (["--device", "cuda"], 1, "device 'cuda' is not available"),
        (["--model", "nope"], 2, "unknown preset 'nope'; expected one of ['1.5B', '14B', '169M'"),
        (["--out", tmp_path / "a_file"], 1, f"--out {tmp_path / 'a_file'} is a file; expected a folder"),
        (["--out", tmp_path / "a_file" / "run"], 1, "a_file is a file, so no folder can be made there"),
        (["--out", damaged["random"], "--resume"], 1, f"{damaged['random'] / 'checkpoint.pt'} is not a checkpoint"),
        (["--out", damaged["truncated"], "--resume"], 1, f"could not read {damaged['truncated'] / 'checkpoint.pt'}"),
        (["--out", damaged["weights"], "--resume"], 1, "is not a training checkpoint (python -m rwkv_lab.training"),
        (["--out", tmp_path / "new", "--resume"], 1, "no training checkpoint at"),
        (["--resume", "--overwrite"], 2, "give one of them"),
    ]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # a machine without a GPU, wherever the test runs
    procs = [train_cli(train_args(corpus_dir, tmp_path / "run", *no_data, *args), env) for args, _, _ in cases]
    for (args, status, message), proc in zip(cases, procs):
        rc, _, err = finish(proc)
        assert rc == status, (args, err)
        one_line_error(err, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder: only the checks that do not depend on it")
def test_training_refuses_an_unwritable_out_before_the_first_step(corpus_dir, tmp_path, capsys):
    from rwkv_lab.training.trainer import main as train_main

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert train_main(train_args(corpus_dir, locked / "run", "--data", str(tmp_path / "none"))) == 1
    one_line_error(capsys.readouterr().err, "is not writable; expected a folder you can write")


def test_resume_takes_the_saved_settings_prints_overrides_and_knows_a_finished_run(corpus_dir, tmp_path, capsys):
    from rwkv_lab.training.trainer import main as train_main

    out = tmp_path / "run"
    assert train_main(train_args(corpus_dir, out, "--lr", "3e-3", "--tokens", "512")) == 0
    capsys.readouterr()
    # not given: the saved run's (lr 3e-3, not the default); given and different: printed, then in force
    assert train_main(train_args(corpus_dir, out, "--resume", "--tokens", "1k", "--min-lr", "2e-4")) == 0
    err = capsys.readouterr().err
    assert "overriding the saved run's settings: tokens 512 -> 1000, min_lr 0.0001 -> 0.0002" in err, err
    config = torch.load(out / "checkpoint.pt", weights_only=True)["config"]
    assert (config["lr"], config["tokens"], config["min_lr"]) == (3e-3, 1000, 2e-4)
    # a finished run: says so, exit 0, writes nothing
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    assert train_main(train_args(corpus_dir, out, "--resume", "--tokens", "1k")) == 0
    captured = capsys.readouterr()
    one_line_error(captured.err, f"the run in {out} is finished (8 of 8 steps): nothing to do")
    assert captured.out == "" and (out / "checkpoint.pt").stat().st_mtime_ns == before


def test_training_help_describes_every_option_with_its_default(capsys):
    from rwkv_lab.training.trainer import HELP, TrainConfig
    from rwkv_lab.training.trainer import main as train_main

    with pytest.raises(SystemExit) as exited:  # in this process: a fresh one would spend ~3 s importing
        train_main(["--help"])
    assert exited.value.code == 0
    stdout = capsys.readouterr().out
    options = re.findall(r"^  (--[\w-]+)", stdout, re.M)
    assert len(options) > 30 and "--lr" in options and "--overwrite" in options
    text = " ".join(stdout.split())  # as one line: argparse wraps the descriptions
    for name, help in HELP.items():
        option = "--" + name.replace("_", "-")
        assert f"{option} {name.upper()} {help} (default: {getattr(TrainConfig(), name)})" in text, name
    assert "--lr LR peak learning rate (default: 0.001)" in text


def test_a_short_run_leaves_its_warm_up():
    from types import SimpleNamespace

    from rwkv_lab.training.trainer import TrainConfig, Trainer

    short = TrainConfig(tokens=200_000)  # 13 steps of 32 x 512 tokens
    rates = [Trainer.lr_at(SimpleNamespace(cfg=short), step) for step in range(short.steps)]
    print(f"{short.steps} steps, warm-up {short.warmup}: rates {[f'{r:.2e}' for r in rates]}")
    assert short.steps == 13 and short.warmup == 2
    assert max(rates) == short.lr and rates[-1] < 0.15 * short.lr  # at the end near min_lr (0.1 lr)
    assert TrainConfig(tokens=100_000_000).warmup == 100  # a long run: the 100 steps it always had


def test_notebook_parameters_are_checked_before_any_notebook_runs(tmp_path):
    """Each mistake one line, all of them at once, exit 2, nothing executed: a typo, a value of the wrong type,
    one outside the choices the cell lists, a negative count. Good values pass the same check."""
    from rwkv_lab.run_notebooks import check_parameters, notebook_sources

    mistakes = [
        (
            ["-p", "devcie", "cuda"],
            "-p devcie cuda: no notebook to run has a parameter 'devcie'; did you mean 'device'?",
        ),
        (["-p", "n_gpus", "abc"], "-p n_gpus abc: 04_cost_estimates.py's n_gpus is an int (default 64); got 'abc'"),
        (["-p", "gpu", "B200"], "gpu is one of 'A100 SXM', 'H100 SXM', 'H200 SXM'; got 'B200'"),
        (["-p", "n_gpus", "-5"], "n_gpus is never negative (default 64); got -5"),
        (["-p", "sizes", "169M"], "sizes is a list (default ['169M']); got '169M'"),
    ]
    args = [a for given, _ in mistakes for a in given]
    proc = subprocess.run(
        [sys.executable, "-m", "rwkv_lab.run_notebooks", *args, "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == len(mistakes), proc.stderr
    for line, (_, expected) in zip(lines, mistakes):
        assert line.startswith("python -m rwkv_lab.run_notebooks: error: ") and expected in line, line
    assert list(tmp_path.iterdir()) == []  # no notebook ran
    good = [("device", "cuda"), ("gpu", "H200 SXM"), ("n_gpus", "8"), ("price_per_hour", "3"), ("limit", "None")]
    assert check_parameters(good + [("sizes", "['169M', '430M']"), ("dtype", "bfloat16")], notebook_sources()) == []


def test_a_notebook_made_with_parameters_sets_them_after_its_parameters_cell(tmp_path):
    """to_notebook(parameters=...): a cell tagged injected-parameters right after the parameters cell (as papermill
    injects them), whose values win when the notebook runs; a name the notebook lacks is refused in one line,
    nothing written."""
    import nbformat

    from rwkv_lab.run_notebooks import to_notebook

    source = REPO / "notebooks" / "06_training.py"
    nb = nbformat.read(to_notebook(source, tmp_path / "06.ipynb", parameters={"live_tokens": 123}), as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = tags.index(["parameters"])
    assert tags[at + 1] == ["injected-parameters"] and nb.cells[at + 1].cell_type == "code"
    scope = {}
    exec(nb.cells[at].source + "\n" + nb.cells[at + 1].source, scope)
    assert scope["live_tokens"] == 123 and scope["live_context"] == 128  # the rest keep their defaults
    with pytest.raises(ValueError, match="no notebook to run has a parameter 'live_token'; did you mean"):
        to_notebook(source, tmp_path / "bad.ipynb", parameters={"live_token": 1})
    assert not (tmp_path / "bad.ipynb").exists()
