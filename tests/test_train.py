"""Training: the corpus builder, the trainer (loss falls, resume is exact), the matched transformer, the shipped
default model against its card."""

import dataclasses
import math
import os
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TOL, assert_rel_close, torchrun

from rwkv_lab.loading.checkpoint import default_model
from rwkv_lab.loading.default import default_card, heldout_text
from rwkv_lab.training.corpus import build_corpus, is_validation, unigram_loss
from rwkv_lab.training.cuda_graph import device_lrs
from rwkv_lab.training.trainer import TrainConfig, Trainer, build, main, parse_count


@pytest.fixture(autouse=True)
def fresh_compiler():
    """torch.compile's state dropped after each test here, so none compiles in the shadow of another: the fused
    blocks' compiled function (one per setting, shared by the tests) otherwise meets a new dtype or shape as a
    recompilation with dynamic shapes (the memory test below: 118 s after the other fused-block tests, 15 s alone).
    Compiled graphs stay in inductor's on-disk cache."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """Forty small Python-like files: enough for a split by file and a few training steps."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        sub = root / ("pkg" if i % 3 else "") / f"mod_{i:02d}.py"
        sub.parent.mkdir(exist_ok=True)
        body = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(30))
        sub.write_text(f'"""module {i}"""\n\n{body}')
    (root / "notes.txt").write_text("not python")
    return root


def tiny_cli(text_dir, **options) -> list[str]:
    """`python -m rwkv_lab.training` arguments for a byte-2x32 run on the test corpus on the CPU."""
    base = {
        "model": "byte-2x32",
        "context": 32,
        "eval_every": 4,
        "eval_tokens": 256,
        "device": "cpu",
        "data": text_dir,
        "val_fraction": 0.2,
    }
    return [arg for key, value in (base | options).items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def tiny(**kw) -> TrainConfig:
    defaults = dict(
        model="byte-2x32",
        context=32,
        batch_size=4,
        tokens=4 * 32 * 12,
        warmup_steps=3,
        eval_every=6,
        log_every=3,
        eval_tokens=512,
        device="cpu",
        lr=3e-3,
    )
    return TrainConfig(**(defaults | kw))


def test_corpus_is_deterministic_and_split_by_file(text_dir):
    a, b = build_corpus(text_dir, val_fraction=0.2), build_corpus(text_dir, val_fraction=0.2)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val) and a.files_sha256 == b.files_sha256
    assert a.n_train_files + a.n_val_files == 40  # only *.py
    assert a.val_files == sorted(a.val_files) and all(is_validation(f, 0.2) for f in a.val_files)
    # a file's split does not depend on the other files
    assert build_corpus(text_dir, val_fraction=0.2, max_files=20).val_files == [
        f for f in a.val_files if f < sorted(p.relative_to(text_dir).as_posix() for p in text_dir.rglob("*.py"))[20]
    ]
    assert int((a.train == 0).sum()) == a.n_train_files  # one end-of-text after every document
    assert a.train_bytes == int((a.train != 0).sum())  # bytes are tokens 1..256
    assert 0 < unigram_loss(a) < math.log(257)


def test_corpus_from_one_file_and_bad_sources(tmp_path, text_dir):
    single = build_corpus(text_dir / "notes.txt", val_fraction=0.5)
    assert single.n_val_files == 1 and len(single.train) > 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="no files matching"):
        build_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        build_corpus(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="val_fraction"):
        build_corpus(text_dir, val_fraction=1.5)


def test_a_few_steps_reduce_the_loss(text_dir):
    corpus = build_corpus(text_dir, val_fraction=0.2)
    for arch in ("rwkv", "transformer"):
        trainer = Trainer(tiny(arch=arch), corpus, progress=False)
        before = trainer.evaluate()
        log = trainer.run()
        after = log["val_loss"].dropna().iloc[-1]
        print(f"{arch}: val loss {before:.3f} -> {after:.3f}")
        assert after < before - 0.5
        assert list(log["step"]) == [3, 6, 9, 12] and log["tokens_per_s"].gt(0).all()


def test_training_is_deterministic_and_resume_is_exact(text_dir, tmp_path):
    corpus = build_corpus(text_dir, val_fraction=0.2)
    straight = Trainer(tiny(), corpus, progress=False)
    straight.run(7)
    expected = float(straight.train_step())

    first = Trainer(tiny(), corpus, progress=False)
    first.run(7, checkpoint=tmp_path / "ckpt.pt")
    resumed = Trainer(tiny(), corpus, progress=False).load(tmp_path / "ckpt.pt")
    got = float(resumed.train_step())
    print(f"next-step loss: uninterrupted {expected:.8f}, resumed {got:.8f}")
    assert got == expected
    assert resumed.log == first.log
    with pytest.raises(ValueError, match="context=32"):
        Trainer(tiny(context=16), corpus, progress=False).load(tmp_path / "ckpt.pt")


def test_rates_read_from_tensors_train_alike_and_save_as_numbers(text_dir, tmp_path):
    """A CUDA-graph step reads each group's rate from its own tensor, which the schedule fills in place
    (device_lrs, set_lr): the same steps as Python floats; the checkpoint stores numbers. The capture itself needs
    a GPU: benchmarks/check_cuda_graph.py records it against the eager step (results/training/)."""
    corpus = build_corpus(text_dir, val_fraction=0.2)
    plain = Trainer(tiny(), corpus, progress=False)
    plain.run(5)
    assert plain.graphed_step is None and not plain.frame()["cuda_graph"].any()  # the CPU: never captured
    tensors = Trainer(tiny(), corpus, progress=False)
    device_lrs(tensors.optimizer, tensors.device)
    tensors.run(5, checkpoint=tmp_path / "ckpt.pt")
    rates = [g["lr"] for g in tensors.optimizer.param_groups]
    assert all(isinstance(r, torch.Tensor) for r in rates)
    assert len({float(r) for r in rates}) > 1  # one tensor per group: the decays' scaled rates stay their own
    # the rate as a float32 tensor instead of a float64 number: equal up to rounding
    losses = [torch.tensor([r["train_loss"] for r in run.log]) for run in (tensors, plain)]
    assert_rel_close("train losses, tensor rates vs numbers", *losses, TOL["float32 step"])
    for (name, a), b in zip(plain.model.named_parameters(), tensors.model.parameters()):
        assert_rel_close(f"{name} after 5 steps, tensor rates vs numbers", b, a, TOL["float32"])
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(type(g["lr"]) is float for g in saved)
    resumed = Trainer(tiny(), corpus, progress=False).load(tmp_path / "ckpt.pt")
    assert_rel_close("next loss, resumed vs uninterrupted", resumed.train_step(), plain.train_step(), TOL["float32"])


@pytest.mark.slow
def test_the_compiled_cross_entropy_reads_the_first_vocab_columns():
    """lm_loss on CUDA: the cross-entropy through torch.compile (compiled here for the CPU) over the first V
    columns of padded logits (the rest masked), and the masked one eager, against the eager one over the sliced
    logits: loss and the logits' gradient, which is zero in the padding; float64, an odd vocabulary and row
    count."""
    from rwkv_lab.training.loss import cross_entropy, fused_cross_entropy, masked_cross_entropy

    gen = torch.Generator().manual_seed(0)
    V, V_pad, N = 277, 320, 37
    logits = torch.randn(N, V_pad, generator=gen, dtype=torch.float64) * 4
    logits[:, V:] = 0  # the padded head's zero rows
    logits.requires_grad_(True)
    targets = torch.randint(0, V, (N,), generator=gen)
    ref_logits = logits.detach()[:, :V].clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(ref_logits, targets)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    losses = (("eager", cross_entropy), ("masked", masked_cross_entropy), ("compiled", fused_cross_entropy()))
    for name, loss_fn in losses:
        loss = loss_fn(logits, targets, V)
        (grad,) = torch.autograd.grad(loss, logits)
        assert_rel_close(f"{name} cross-entropy over the first V columns", loss, ref, TOL["float64 algebra"])
        assert_rel_close(f"{name} cross-entropy gradient", grad[:, :V], ref_grad, TOL["float64 algebra"])
        assert not grad[:, V:].any(), f"{name}: the padding got a gradient"


def test_matched_transformer_is_within_ten_percent():
    for size in ("byte-4x128", "byte-6x256", "byte-10x384"):
        rwkv = build(TrainConfig(arch="rwkv", model=size))[0]
        gpt = build(TrainConfig(arch="transformer", model=size))[0]
        n_r, n_t = (sum(p.numel() for p in m.parameters()) for m in (rwkv, gpt))
        print(f"{size}: RWKV {n_r:,}, transformer {n_t:,} ({n_t / n_r:.3f})")
        assert abs(n_t / n_r - 1) < 0.10


def test_the_matched_transformer_is_causal_and_positioned_at_long_context():
    """Rules out a masking bug behind the transformer's weaker T = 4096 runs: through the training loss' call, at
    T = 4096 (past Pythia's 2048 trained positions) a token changes no logit before it and every logit from it on."""
    from rwkv_lab.training.loss import logits_of

    torch.manual_seed(0)
    model, _ = build(TrainConfig(arch="transformer", model="byte-2x32", context=4096))
    model.eval()
    x = torch.randint(1, 257, (1, 4096), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[0, 3000] = (x[0, 3000] % 256) + 1  # another byte at position 3000
    with torch.no_grad():
        a, b = logits_of(model, x)[0], logits_of(model, y)[0]
    before = (a[:3000] - b[:3000]).abs().max().item()
    after = (a[3000:] - b[3000:]).abs().amax(dim=-1)
    changed = float((after > 0).float().mean())
    print(f"max change before the edited token {before:.2e}; positions from it on that changed: {changed:.0%}")
    assert before == 0.0 and bool((after > 0).all())


def test_a_span_draws_the_tokens_of_the_longer_context(text_dir):
    """`span`: a step at context 16 cut from spans of 64 sees exactly the tokens of a step at context 64."""
    corpus = build_corpus(text_dir, val_fraction=0.2)
    long = Trainer(TrainConfig(model="byte-2x32", context=64, batch_size=2, tokens=1000), corpus, progress=False)
    cut = Trainer(TrainConfig(model="byte-2x32", context=16, batch_size=8, span=64, tokens=1000), corpus, False)
    plain = Trainer(TrainConfig(model="byte-2x32", context=16, batch_size=8, tokens=1000), corpus, progress=False)
    for _ in range(3):
        (x, y), (xc, yc), (xp, _) = long.next_batch(), cut.next_batch(), plain.next_batch()
        assert torch.equal(xc.reshape(2, 64), x) and torch.equal(yc.reshape(2, 64), y)
        assert not torch.equal(xp.reshape(2, 64), x)  # independent windows: other tokens
    with pytest.raises(ValueError, match="span must be 0 or a multiple of context"):
        TrainConfig(context=16, batch_size=8, span=24)


def test_bad_training_input_is_refused(text_dir):
    corpus = build_corpus(text_dir, val_fraction=0.2)
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="lstm")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    bpe = dataclasses.replace(corpus, vocab_size=50277, tokenizer="20B_tokenizer.json")
    with pytest.raises(ValueError, match="50277 token ids but model 'byte-2x32' has a vocabulary of 257"):
        Trainer(tiny(), bpe)
    with pytest.raises(ValueError, match="longer than the corpus"):
        Trainer(tiny(context=10**6), corpus)
    assert parse_count("20M") == 20_000_000 and parse_count("512k") == 512_000 and parse_count("1e3") == 1000


def test_the_training_command_line_reports_a_bad_setting_or_a_failed_run_in_one_line(text_dir, tmp_path, capsys):
    """A setting TrainConfig refuses is bad usage (one line, exit 2); a run that cannot start (a context longer than
    the corpus) fails in one line with exit 1, and `--debug` shows its traceback instead."""
    for options, message in (
        ({"arch": "lstm"}, "arch must be one of"),
        ({"activation_memory_budget": 0.5}, "needs saved_activations='partitioner'"),
        ({"saved_activations": "all"}, "saved_activations must be one of"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(tiny_cli(text_dir, out=tmp_path / "run", **options))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err.splitlines()[-1], err
    args = tiny_cli(text_dir, context=10**6, out=tmp_path / "run")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "longer than the corpus" in err, err
    with pytest.raises(ValueError, match="longer than the corpus"):
        main(args + ["--debug"])
    assert not (tmp_path / "run").exists()


def test_command_line_trains_and_exports(text_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_cli(text_dir, batch_size=4, tokens="1k", out=out)
    assert main(args) == 0
    assert (out / "log.csv").exists() and (out / "log.meta.json").exists() and (out / "checkpoint.pt").exists()
    from rwkv_lab import load_model

    assert load_model(out / "model.safetensors").config.n_layer == 2


def test_train_compare_exports_the_best_run_and_records_skipped_ones(text_dir, tmp_path):
    """benchmarks/train_compare.py: the export is written as soon as a run is the best (a sweep cut short keeps
    it), and runs past the deadline are rows of the summary."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "train_compare.py"
    env = dict(os.environ, RWKV_LAB_RESULTS=str(tmp_path))
    common = ["--sizes", "byte-2x32", "--contexts", "32", "--tokens", "512", "--tokens-per-step", "128"]
    common += ["--eval-every", "2", "--warmup-steps", "1", "--corpus", str(text_dir), "--val-fraction", "0.2"]
    run = [sys.executable, str(script), *common, "--arch-lrs", "rwkv:1e-3,rwkv:1e-2,transformer:1e-3"]
    export = ["--export-size", "byte-2x32", "--export-context", "32"]
    out = subprocess.run([*run, *export], check=True, env=env, capture_output=True, text=True).stdout
    assert out.index("exported rwkv4 byte-2x32 at lr 0.001") < out.index(
        "'arch': 'transformer'"
    )  # before the sweep ends
    summary = pd.read_csv(tmp_path / "training" / "summary.csv")
    assert len(summary) == 3 and summary["chosen"].sum() == 2
    # each architecture's first rate before any second one: a deadline never leaves an architecture out
    assert list(zip(summary["arch"], summary["lr"])) == [("rwkv", 1e-3), ("transformer", 1e-3), ("rwkv", 1e-2)]
    from rwkv_lab import load_model

    assert load_model(tmp_path / "training" / "rwkv4-byte-2x32-T32.safetensors").config.n_embd == 32
    subprocess.run([*run, "--deadline-min", "1e-9", "--tag", "_late"], check=True, env=env)
    late = pd.read_csv(tmp_path / "training" / "summary_late.csv")
    assert late["status"].tolist() == ["skipped (deadline)"] * 3


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_shipped_default_matches_its_card(arch):
    """Each generation's packaged default: its loss on the held-out slice is the one its card measured, well
    below the byte frequencies'."""
    card = default_card(arch)
    model = default_model(arch=arch)
    assert model.config.arch == arch
    text = heldout_text()
    tokens = torch.tensor([[0] + [b + 1 for b in text.encode("utf-8")]])
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    loss = float(torch.nn.functional.cross_entropy(logits[0].double(), tokens[0, 1:]))
    expected = card["checked_here"]["heldout_loss"]
    print(f"{arch}: held-out loss {loss:.6f}, card {expected:.6f}; unigram {card['training']['unigram_val_loss']:.3f}")
    assert abs(loss - expected) <= 1e-4 * expected
    assert card["training"]["val_loss"] < 0.5 * card["training"]["unigram_val_loss"]
    assert model.num_params() == card["params"]


def test_gradient_accumulation_follows_the_same_curve(text_dir):
    corpus = build_corpus(text_dir, val_fraction=0.2)
    whole = Trainer(tiny(batch_size=8), corpus, progress=False)
    split = Trainer(tiny(batch_size=8, grad_accum=4), corpus, progress=False)
    a = [float(whole.train_step()) for _ in range(6)]
    b = [float(split.train_step()) for _ in range(6)]
    err = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"loss curve, 1 vs 4 micro-batches: worst relative difference {err:.2e}")
    assert err < 1e-5
    with pytest.raises(ValueError, match="must split evenly"):
        Trainer(tiny(batch_size=6, grad_accum=4), corpus)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_data_parallel_processes_follow_the_one_process_curve(text_dir, tmp_path, parallel):
    """torchrun with two gloo processes on the CPU (DDP, or FSDP with the weights, gradients and AdamW state
    sharded) against one process, the same global batch of 8; the exported weights agree too."""
    import os
    import subprocess
    import sys

    import pandas as pd

    from rwkv_lab.loading.checkpoint import load_model

    common = tiny_cli(text_dir, batch_size=8, tokens="2k", log_every=1, parallel=parallel)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    logs = {}
    for name, launcher in (
        ("one", [sys.executable, "-m", "rwkv_lab.training"]),
        ("two", torchrun(2) + ["-m", "rwkv_lab.training"]),
    ):
        out = subprocess.run(
            launcher + common + ["--out", str(tmp_path / name)], capture_output=True, text=True, env=env, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        logs[name] = pd.read_csv(tmp_path / name / "log.csv")
    one, two = logs["one"], logs["two"]
    assert len(one) == len(two) == 8
    err = ((one["train_loss"] - two["train_loss"]).abs() / one["train_loss"]).max()
    val = ((one["val_loss"] - two["val_loss"]).abs() / one["val_loss"]).max()
    print(f"{parallel}, 2 processes vs 1: train loss worst relative difference {err:.2e}, validation {val:.2e}")
    assert err < 1e-5 and val < 1e-5
    weights = [load_model(tmp_path / name / "model.safetensors").state_dict() for name in ("one", "two")]
    for key, value in weights[0].items():
        assert_rel_close(f"{parallel} exported {key}", weights[1][key], value, 1e-4)


@pytest.mark.slow
def test_a_sharded_run_resumes_exactly(text_dir, tmp_path):
    """FSDP on two gloo processes: 3 steps, a checkpoint (gathered from the shards), 3 more; a fresh pair of
    processes loads the checkpoint (scattered back) and its 3 steps give the same losses."""
    import os
    import subprocess

    script = tmp_path / "resume.py"
    script.write_text(
        f"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_train import tiny
from rwkv_lab.training.corpus import build_corpus
from rwkv_lab.training.trainer import Trainer
dist.init_process_group("gloo")
corpus = build_corpus({str(text_dir)!r}, val_fraction=0.2)
first = Trainer(tiny(batch_size=8, parallel="fsdp"), corpus, progress=False)
[first.train_step() for _ in range(3)]
first.save({str(tmp_path / "ckpt.pt")!r})
a = [float(first.train_step()) for _ in range(3)]
second = Trainer(tiny(batch_size=8, parallel="fsdp"), corpus, progress=False).load({str(tmp_path / "ckpt.pt")!r})
b = [float(second.train_step()) for _ in range(3)]
if dist.get_rank() == 0:
    print("LOSSES", a, b)
dist.destroy_process_group()
"""
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run(torchrun(2) + [str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOSSES"))
    a, b = eval(line[len("LOSSES") :].replace("] [", "], ["))  # noqa: S307 - our own printed lists
    err = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"FSDP resume: losses {a} vs {b}, worst relative difference {err:.2e}")
    assert err < 1e-6


def test_the_optimizer_follows_rwkv_lms_recipe(text_dir):
    """Weight decay on the projection matrices only; time_decay at 2x and time_first at 3x the rate."""
    from rwkv_lab.models import architecture
    from rwkv_lab.training.trainer import param_groups

    LR_SCALE = architecture("rwkv4").lr_scale

    trainer = Trainer(tiny(), build_corpus(text_dir, val_fraction=0.2), progress=False)
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    by_name = {named[id(p)]: g for g in param_groups(trainer.model, 0.1) for p in g["params"]}
    assert by_name["blocks.0.att.key.weight"]["weight_decay"] == 0.1
    assert by_name["head.weight"]["weight_decay"] == 0.1
    for name in ("emb.weight", "blocks.0.att.time_mix_k", "blocks.0.ln1.weight", "blocks.1.att.time_decay"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["blocks.1.att.time_decay"]["lr_scale"] == LR_SCALE["time_decay"] == 2.0
    assert by_name["blocks.1.att.time_first"]["lr_scale"] == LR_SCALE["time_first"] == 3.0
    assert by_name["blocks.1.ffn.key.weight"]["lr_scale"] == 1.0
    trainer.train_step()
    rates = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[2.0] == pytest.approx(2 * rates[1.0]) and rates[3.0] == pytest.approx(3 * rates[1.0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, dtype, tol",
    [("chunked", torch.float64, TOL["float64 model"]), ("triton", torch.float32, TOL["float32"])],
    ids=["chunked-float64", "triton-float32"],
)
def test_the_fused_blocks_train_like_the_eager_ones(backend, dtype, tol):
    """The fast path of the parallel form (blocks through torch.compile; the default on CUDA), forced on here,
    against the eager blocks: loss, final state and every gradient, the incoming state's included, from a random
    non-zero state at an odd length. Float64 with the chunked WKV; fp32 with the Triton kernel (interpreted)."""
    from rwkv_lab.models.rwkv4.config import RWKVConfig
    from rwkv_lab.models.rwkv4.model import build_model

    # odd T (17) and C (21): partial chunks and channel blocks
    model = build_model(RWKVConfig(n_layer=2, n_embd=21, vocab_size=257), seed=1, zero_projections=False)
    model = model.to(dtype)
    model.configure(backend=backend)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 257, (2, 18), generator=gen)
    _, state0 = model(torch.randint(0, 257, (2, 5), generator=gen))  # a reachable, non-empty state

    def run(fused: bool):
        model.configure(fused_blocks=fused)
        model.zero_grad()
        state = state0.detach().clone().requires_grad_(True)
        logits, state_out = model(x[:, :-1], state)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        (loss + state_out.packed[:, :, 1].sum() * 1e-3).backward()  # the final state carries a gradient too
        grads = {n: p.grad.clone() for n, p in model.named_parameters()} | {"state": state.packed.grad}
        return loss.detach(), state_out.detach(), grads

    eager_loss, eager_state, eager_grads = run(False)
    loss, state, grads = run(True)
    assert_rel_close(f"fused {backend} loss", loss, eager_loss, tol)
    assert_rel_close(f"fused {backend} final state", state, eager_state, tol)
    for name, g in grads.items():
        assert_rel_close(f"fused {backend} grad {name}", g, eager_grads[name], tol)


@pytest.mark.slow
def test_what_the_fused_blocks_keep_changes_memory_and_nothing_else():
    """RWKV.saved_activations: 'matmuls' (the default: the matmuls' and the WKV's outputs kept, the elementwise work
    recomputed) and the partitioner under a budget of 0.5 each keep fewer bytes for the backward than the
    partitioner's default (counted by saved-tensor hooks, in one process: each setting compiles its own graphs),
    and both give the eager blocks' loss and gradients."""
    from rwkv_lab.measure.memory import saved_for_backward
    from rwkv_lab.models.rwkv4.config import RWKVConfig
    from rwkv_lab.models.rwkv4.model import build_model

    model = build_model(RWKVConfig(n_layer=1, n_embd=21, vocab_size=257), seed=1, zero_projections=False)
    model.configure(backend="chunked")
    x = torch.randint(0, 257, (2, 18), generator=torch.Generator().manual_seed(0))

    def step(fused: bool, saved: str = "matmuls", budget: float = 1.0):
        model.configure(fused_blocks=fused, saved_activations=saved, activation_memory_budget=budget)
        model.zero_grad()

        def forward():
            logits, _ = model(x[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

        kept = sum(r["bytes"] for r in saved_for_backward(forward, model))
        return kept, {n: p.grad.clone() for n, p in model.named_parameters()}

    kept_eager, eager = step(False)
    kept_partitioner, _ = step(True, "partitioner")
    kept_half, grads_half = step(True, "partitioner", 0.5)
    kept_matmuls, grads_matmuls = step(True, "matmuls")
    print(
        f"bytes kept for the backward: eager {kept_eager}, partitioner {kept_partitioner}, partitioner at budget "
        f"0.5 {kept_half}, matmuls {kept_matmuls}"
    )
    assert kept_half < kept_partitioner and kept_matmuls < kept_partitioner
    for label, grads in (("partitioner at budget 0.5", grads_half), ("matmuls", grads_matmuls)):
        for name, g in grads.items():
            assert_rel_close(f"fused, {label}, grad {name}", g, eager[name], TOL["float32"])
    with pytest.raises(ValueError, match="activation_memory_budget"):
        tiny(activation_memory_budget=1.5)
    with pytest.raises(ValueError, match="needs saved_activations='partitioner'"):
        tiny(activation_memory_budget=0.5)
    with pytest.raises(ValueError, match="saved_activations must be one of"):
        tiny(saved_activations="all")
    assert tiny(saved_activations="partitioner", activation_memory_budget=0.5).activation_memory_budget == 0.5


@pytest.mark.slow
def test_the_matmuls_path_keeps_the_block_input_and_the_matmul_and_wkv_outputs():
    """saved_activations='matmuls' keeps, per layer, exactly one (tokens, 4C) tensor (the channel-mix key) and
    thirteen (tokens, C) ones: the block's input, the five mixes (the LayerNorm and mix kernels' outputs, the
    matmuls' inputs), the time-mix's k, v, r and output, the WKV's y, the channel-mix's receptance and value;
    everything else elementwise is recomputed. Counted as the difference of depths 1 and 2 (fp32, the Triton WKV
    interpreted, whose per-chunk states are the only other growth), so a policy that stopped matching the ops'
    names (and recomputed the matmuls) or kept more would fail here."""
    from rwkv_lab.measure.memory import saved_for_backward
    from rwkv_lab.models.rwkv4.config import RWKVConfig
    from rwkv_lab.models.rwkv4.model import build_model

    # one sequence: the interpreted Triton kernels take time per token; the tensors kept per layer do not change
    B, T, C = 1, 32, 16
    x = torch.randint(0, 257, (B, T + 1), generator=torch.Generator().manual_seed(0))
    per_depth = {}
    for layers in (1, 2):
        model = build_model(RWKVConfig(n_layer=layers, n_embd=C, vocab_size=257), seed=1, zero_projections=False)
        model.configure(backend="triton", fused_blocks=True)

        def forward(model=model):
            logits, _ = model(x[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

        rows = saved_for_backward(forward, model)
        numels = [math.prod(r["shape"]) for r in rows]  # a matmul's output is kept as (B * T, C): count sizes
        per_depth[layers] = {width: numels.count(B * T * width) for width in (C, 4 * C)}
    per_layer = {width: per_depth[2][width] - per_depth[1][width] for width in (C, 4 * C)}
    print(f"(tokens, C) and (tokens, 4C) tensors kept per layer: {per_layer}")
    assert per_layer == {C: 13, 4 * C: 1}


def test_the_fused_blocks_are_the_default_on_cuda_only():
    from rwkv_lab.models.rwkv4.config import RWKVConfig
    from rwkv_lab.models.rwkv4.model import build_model

    model = build_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=16))
    cpu, meta = torch.zeros(1, 1, 8), torch.zeros(1, 1, 8, device="meta")
    assert model.run.fused_blocks == "auto" and not model.uses_fused_blocks(cpu, "auto", None)
    assert not model.uses_fused_blocks(meta, "chunked", None)
    model.configure(fused_blocks=True)
    assert model.uses_fused_blocks(cpu, "chunked", None)
    assert not model.uses_fused_blocks(cpu, "chunked", trace=[])  # a trace records in Python: eager
    assert not model.uses_fused_blocks(cpu, "recurrent", None)
    model.configure(fused_blocks="auto")
    cuda = types.SimpleNamespace(is_cuda=True)  # stands in for a CUDA tensor: only its device is asked
    assert model.uses_fused_blocks(cuda, "triton", None)  # training on CUDA
    with torch.no_grad():
        assert not model.uses_fused_blocks(cuda, "triton", None)  # inference keeps the measured eager blocks
    assert not model.uses_fused_blocks(cuda, "chunked", None)


def test_comparisons_read_the_chosen_runs_and_the_fastest_paths():
    """A learning-rate sweep is compared through its best run per (arch, size, context); a training-step table
    through each architecture's faster path (RWKV-4's fused blocks, the faster of Pythia's two)."""
    import pandas as pd

    from rwkv_lab.training.report import chosen_curves, chosen_runs, fastest_paths, side_by_side, sweep_edges

    runs = pd.DataFrame(
        {
            "arch": ["rwkv", "rwkv", "transformer", "transformer"],
            "model": ["m"] * 4,
            "context": [512] * 4,
            "lr": [1e-3, 3e-3, 1e-3, 3e-3],
            "status": ["ok"] * 4,
            "val_bpb": [1.3, 1.2, 1.4, 1.5],
            "params": [10, 10, 9, 9],
            "tokens_per_s": [1.0, 1.0, 2.0, 2.0],
            "peak_memory_GiB": [1.0] * 4,
            "chosen": [False, True, True, False],
        }
    )
    assert chosen_runs(runs)["lr"].tolist() == [3e-3, 1e-3]
    edges = sweep_edges(runs)  # both chosen rates lie at an end of their two-rate sweeps
    assert list(zip(edges["arch"], edges["edge"])) == [("rwkv", "largest"), ("transformer", "smallest")]
    middle = pd.concat([runs, runs.iloc[[1]].assign(lr=1e-2, val_bpb=1.25, chosen=False)])
    assert sweep_edges(middle)["arch"].tolist() == ["transformer"]  # rwkv's 3e-3 now sits inside 1e-3..1e-2
    assert sweep_edges(runs.iloc[[1]]).empty  # one rate: no sweep, no edge
    table = side_by_side(runs)  # the old runs' 'rwkv' read as the registry's rwkv4
    assert table["val_bpb_rwkv4"].item() == 1.2 and table["val_bpb_transformer"].item() == 1.4
    assert table["speed_ratio_rwkv4_over_tf"].item() == 0.5
    three = pd.concat([runs, runs[runs["arch"] == "rwkv"].assign(arch="rwkv7", val_bpb=[1.1, 1.0])])
    table = side_by_side(three)
    assert table["val_bpb_rwkv7"].item() == 1.0 and table["bpb_ratio_rwkv7_over_tf"].item() == 1.0 / 1.4
    curves = runs.drop(columns="chosen").assign(tokens=1)
    assert chosen_curves(curves, runs)["lr"].tolist() == [3e-3, 1e-3]
    assert len(chosen_runs(runs.drop(columns="chosen"))) == 4  # no sweep: every run
    steps = pd.DataFrame(
        {
            "variant": ["RWKV-4", "RWKV-4 eager", "RWKV-7", "RWKV-7 eager", "Pythia", "Pythia compiled"],
            "arch": ["RWKV-4", "RWKV-4", "RWKV-7", "RWKV-7", "Pythia", "Pythia"],
            "model": ["169M", "169M", "pile-168M", "pile-168M", "pythia-160m", "pythia-160m"],
            "context": [1024] * 6,
            "status": ["ok"] * 6,
            "tokens_per_s": [3.0, 9.0, 1.0, 5.0, 2.0, 4.0],  # an eager RWKV row is never the choice, even when faster
        }
    )
    assert fastest_paths(steps)["variant"].tolist() == ["RWKV-4", "RWKV-7", "Pythia compiled"]


def test_best_and_final_finds_where_validation_bottoms_out():
    from rwkv_lab.training.report import best_and_final

    curves = pd.DataFrame(
        {
            "arch": ["rwkv"] * 4 + ["transformer"] * 2,
            "lr": [1e-3] * 4 + [3e-3] * 2,
            "tokens": [10, 20, 30, 40, 10, 20],
            "val_bpb": [2.0, 1.5, 1.7, 1.9, 3.0, 2.5],
        }
    )
    runs = best_and_final(curves, train_tokens=10).set_index("arch")
    assert runs.loc["rwkv", "best_val_bpb"] == 1.5 and runs.loc["rwkv", "best_at_epochs"] == 2.0
    assert runs.loc["rwkv", "final_val_bpb"] == 1.9 and runs.loc["rwkv", "final_epochs"] == 4.0
    assert runs.loc["transformer", "best_val_bpb"] == runs.loc["transformer", "final_val_bpb"] == 2.5


def test_per_token_activations_count_what_grows_with_the_tokens():
    from rwkv_lab.training.report import per_token_activations

    kinds = pd.DataFrame(
        {
            "arch": ["rwkv"] * 3 + ["transformer"],
            "path": ["fused"] * 3 + ["compiled"],
            "activation_memory_budget": [1.0] * 3 + [None],
            "kind": ["bfloat16 x 1C", "float32 x 1C", "bfloat16 other", "bfloat16 x 4C"],
            "bytes_per_token_layer": [3 * 2 * 8, 4 * 8, 1000.0, 2 * 2 * 4 * 8],  # width 8
        }
    )
    out = per_token_activations(kinds, width=8).set_index("arch")["bf16_BTC_tensors_per_layer"]
    assert out["rwkv"] == 5.0 and out["transformer"] == 8.0  # 3 bf16 + one fp32 (= 2); the weights' copy left out


def test_the_context_gap_is_split_into_the_batch_share():
    import pandas as pd

    from rwkv_lab.training.report import context_gap_shares

    runs = pd.DataFrame(
        {
            "arch": ["rwkv"] * 3 + ["transformer"] * 3,
            "context": [512, 4096, 512] * 2,
            "span": [512, 4096, 4096] * 2,
            "val_bpb_at_512": [2.0, 2.4, 2.3, 3.0, 4.0, 3.1],
        }
    )
    shares = context_gap_shares(runs).set_index("arch")
    assert shares.loc["rwkv", "gap"] == pytest.approx(0.4) and shares.loc["rwkv", "batch_share"] == pytest.approx(0.75)
    assert shares.loc["transformer", "batch_share"] == pytest.approx(0.1)  # the context makes most of this gap
    assert shares["cause"].tolist() == ["the batch's fewer draws", "the context"]


def test_kernel_time_by_kind_sums_each_steps_kernels():
    from rwkv_lab.training.report import kernel_time_by_kind

    kernels = pd.DataFrame(
        {
            "variant": ["RWKV-4"] * 3 + ["Pythia compiled"] * 2,
            "size": ["169M"] * 5,
            "context": [1024] * 5,
            "kernel": ["gemm_a", "gemm_b", "_bwd_chunk", "gemm_a", "flash_fwd"],
            "kind": ["matmul", "matmul", "WKV (Triton)", "matmul", "attention"],
            "ms": [1.0, 2.0, 0.5, 4.0, 3.0],
        }
    )
    wide = kernel_time_by_kind(kernels).set_index("variant")
    assert wide.loc["RWKV-4", "matmul"] == 3.0 and wide.loc["RWKV-4", "attention"] == 0.0
    assert wide.loc["RWKV-4", "device_ms"] == 3.5 and wide.loc["Pythia compiled", "device_ms"] == 7.0
