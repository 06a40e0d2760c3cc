"""Training: the corpus builder, the trainer (loss falls, resume is exact), the matched transformer, the shipped
default model against its card."""

import dataclasses
import math

import pytest
import torch
from helpers import torchrun

from rwkv_lab.loading.checkpoint import default_model
from rwkv_lab.loading.default import default_card, heldout_text
from rwkv_lab.training.corpus import build_corpus, is_validation, unigram_loss
from rwkv_lab.training.trainer import TrainConfig, Trainer, build, main, parse_count


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


def test_matched_transformer_is_within_ten_percent():
    for size in ("byte-4x128", "byte-6x256", "byte-10x384"):
        rwkv = build(TrainConfig(arch="rwkv", model=size))[0]
        gpt = build(TrainConfig(arch="transformer", model=size))[0]
        n_r, n_t = (sum(p.numel() for p in m.parameters()) for m in (rwkv, gpt))
        print(f"{size}: RWKV {n_r:,}, transformer {n_t:,} ({n_t / n_r:.3f})")
        assert abs(n_t / n_r - 1) < 0.10


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


def test_command_line_trains_and_exports(text_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_cli(text_dir, batch_size=4, tokens="1k", out=out)
    assert main(args) == 0
    assert (out / "log.csv").exists() and (out / "log.meta.json").exists() and (out / "checkpoint.pt").exists()
    from rwkv_lab import load_model

    assert load_model(out / "model.safetensors").config.n_layer == 2


def test_shipped_default_matches_its_card():
    card = default_card()
    model = default_model()
    text = heldout_text()
    tokens = torch.tensor([[0] + [b + 1 for b in text.encode("utf-8")]])
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    loss = float(torch.nn.functional.cross_entropy(logits[0].double(), tokens[0, 1:]))
    expected = card["checked_here"]["heldout_loss"]
    print(f"held-out loss {loss:.6f}, card {expected:.6f}; unigram {card['training']['unigram_val_loss']:.3f}")
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
def test_two_data_parallel_processes_follow_the_one_process_curve(text_dir, tmp_path):
    """torchrun with two gloo processes on the CPU against one process, the same global batch of 8."""
    import os
    import subprocess
    import sys

    import pandas as pd

    common = tiny_cli(text_dir, batch_size=8, tokens="2k", log_every=1)
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
    print(f"2 processes vs 1: train loss worst relative difference {err:.2e}, validation {val:.2e}")
    assert err < 1e-5 and val < 1e-5


@pytest.mark.slow
def test_a_compiled_model_trains_like_the_eager_one():
    """torch.compile of the whole RWKV (CPU, chunked WKV) through the shared training loss: same loss and
    gradients as eager. (On CUDA the Triton WKV's autograd.Function still breaks inductor's backward: issue 14.)"""
    from helpers import TOL, assert_rel_close

    from rwkv_lab.config import RWKVConfig
    from rwkv_lab.model import build_model
    from rwkv_lab.training.loss import lm_loss

    model = build_model(RWKVConfig(n_layer=2, n_embd=32, vocab_size=257), seed=1, zero_projections=False)
    model.wkv_backend = "chunked"
    x = torch.randint(0, 257, (2, 17), generator=torch.Generator().manual_seed(0))
    eager = lm_loss(model, x[:, :-1], x[:, 1:])
    eager.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = lm_loss(torch.compile(model), x[:, :-1], x[:, 1:])
    compiled.backward()
    assert_rel_close("compiled loss", compiled.detach(), eager.detach(), TOL["float32 step"])
    for name, p in model.named_parameters():
        assert_rel_close(f"compiled grad {name}", p.grad, grads[name], TOL["float32"])
