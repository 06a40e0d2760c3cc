"""An RWKV-7 trained by flash-linear-attention's own code, saved as fla saves it, with fla's logits beside it: a
model another implementation trained, which ours must load "as released" and match to float32 rounding
(`check_ours_against_fla` in tests/test_rwkv7_fla.py runs those checks on a folder this script wrote; the CPU smoke
run below is tested there). The GPU run's folder is meant for tests/fixtures/fla_rwkv7_trained.

On a GPU (what the committed fixture comes from):

    PYTHONPATH=$PWD python scripts/make_fla_fixture.py --out OUT/fla_rwkv7_trained

fla's RWKV7Config / RWKV7ForCausalLM (a byte vocabulary of 257, our ByteTokenizer's: byte b is token b + 1, token 0
end-of-text; 2 layers of 128 channels in heads of 64, LoRA widths and a channel mix of their own), initialised by
fla, trained by fla's own forward and loss (its chunk_rwkv7 Triton kernels, its fused norms, token shift and
cross-entropy; plain AdamW, float32 by default: under bf16 autocast fla's kernels would get bfloat16 and float32
operands mixed, which fla's own tests never do) on byte windows of this interpreter's standard library
(`build_corpus`), for at most --steps steps and --seconds seconds after the first step (whose Triton autotuning can
take minutes). The model is saved with save_pretrained (bf16 weights by default: ~1 MB), reloaded from that folder
by fla's from_pretrained, cast to float32, and run by fla on two fixed byte prompts of PROMPT_LEN < 64 tokens in
eval mode without grad: fla's layer then takes fused_mul_recurrent_rwkv7 (its elementwise float32 recurrence; 64
tokens or more would take chunk_rwkv7, whose dots may be tf32). Which of the two ran is counted, not assumed, and
recorded; TF32 is turned off for the torch matmuls around it. Written into --out: the model folder, the prompts'
tokens and fla's logits (fla_logits.safetensors) and provenance.json (versions, device, steps, losses, the modes).

On the CPU, as a smoke test of this script (minutes; the output is not a fixture):

    TRITON_INTERPRET=1 PYTHONPATH=$PWD python scripts/make_fla_fixture.py --device cpu --steps 2 --batch 2 \
        --seq-len 32 --out /tmp/fla_smoke

fla's Triton kernels then run in Triton's interpreter, each autotuned kernel with its first configuration, except
chunk_rwkv7, which does not run there (chunk_dplr_fwd_kernel_h calls .to() on a range() index): training on the
CPU uses fla's float32 reference of the same recurrence (fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence)
in its place, and torch's cross-entropy in place of fla's fused one (CUDA only); provenance.json says so.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

SHAPE = dict(  # fla's RWKV7Config arguments: sizes of their own where fla allows, heads of 64 as released models
    hidden_size=128,
    num_hidden_layers=2,
    head_dim=64,
    vocab_size=257,  # rwkv_lab's ByteTokenizer: tokenizer_for picks bytes for this vocabulary
    intermediate_size=448,
    decay_low_rank_dim=24,
    a_low_rank_dim=20,
    v_low_rank_dim=12,
    gate_low_rank_dim=40,
)
PROMPT_LEN = 61  # < 64: fla's RWKV7Attention takes chunk_rwkv7 at 64 tokens or more, even in eval mode
PROMPTS = [  # cut to PROMPT_LEN bytes
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    'import os\nimport sys\n\n\nclass Reader:\n    """Read the lines of a file, one at a time."""\n',
]
LOG_EVERY = 25


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to create (refused if it exists)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test of this script")
    p.add_argument("--steps", type=int, default=2000, help="most training steps (default 2000)")
    p.add_argument("--seconds", type=float, default=120.0, help="most seconds of training after the first step")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50, help="steps of linear warmup")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="training: float32 throughout (default: every kernel gets one dtype), or bf16 autocast",
    )
    p.add_argument("--save-dtype", default="bf16", choices=["bf16", "fp32"], help="the saved weights' dtype")
    p.add_argument("--max-files", type=int, default=400, help="standard-library files read for the corpus")
    p.add_argument("--val-windows", type=int, default=32, help="held-out windows of --seq-len the loss is taken on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        p.error(f"--out {args.out} already exists; refusing to overwrite it (give a new folder)")
    if args.steps < 0 or args.batch < 1 or args.seq_len < 2 or args.seconds <= 0:
        p.error("--steps must be >= 0, --batch >= 1, --seq-len >= 2 and --seconds > 0")
    return args


def say(*parts) -> None:
    print(*parts, flush=True)


def naive_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, **_):
    """chunk_rwkv7's recurrence by fla's own float32 reference, for training on the CPU only (chunk_rwkv7 does not
    run in Triton's interpreter). fla's naive form takes (B, H, T, N) and scales q by N^-0.5 itself."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence

    N = r.shape[-1]
    heads_first = lambda x: x.transpose(1, 2)  # noqa: E731  (B, T, H, N) <-> (B, H, T, N)
    q, w, k, v, a, b = map(heads_first, (r * (scale * N**0.5), w, k, v, a, b))
    o, S = dplr_recurrence(q, k, v, a, b, w, initial_state=initial_state, output_final_state=output_final_state)
    return heads_first(o), S


@contextlib.contextmanager
def counted_wkv(train_on_cpu: bool = False):
    """Count which state update fla's RWKV7Attention calls (it picks by mode, grad and length); on the CPU in
    training, put fla's naive recurrence in chunk_rwkv7's place."""
    import fla.layers.rwkv7 as layer

    calls: Counter = Counter()
    saved = {name: getattr(layer, name) for name in ("chunk_rwkv7", "fused_mul_recurrent_rwkv7")}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    chunk = naive_chunk_rwkv7 if train_on_cpu else saved["chunk_rwkv7"]
    layer.chunk_rwkv7 = counting("chunk_rwkv7", chunk)
    layer.fused_mul_recurrent_rwkv7 = counting("fused_mul_recurrent_rwkv7", saved["fused_mul_recurrent_rwkv7"])
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(layer, name, fn)


def first_config_only() -> None:
    """Triton's interpreter has no driver to time configurations with: each autotuned kernel takes its first (as
    tests/test_rwkv7_fla.py's fla_triton fixture does)."""
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]


def windows(data, batch: int, seq_len: int, gen):
    """`batch` random windows of `seq_len` tokens: (B, T) int64."""
    import torch

    starts = torch.randint(0, len(data) - seq_len, (batch,), generator=gen)
    return torch.stack([data[s : s + seq_len] for s in starts.tolist()]).long()


def training_precision(args, device):
    """bf16 autocast (on CUDA, with --precision bf16) or nothing: float32."""
    import torch

    if args.precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(model, corpus, args, device) -> dict:
    """fla's forward and loss (labels = the inputs; fla shifts them), AdamW, linear warmup, clipping at 1."""
    import torch

    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    if device.type == "cpu":  # fla's fused cross-entropy is CUDA only: the plain loss fla takes without it
        model.criterion = torch.nn.CrossEntropyLoss()
    model.train()
    losses, step, first_step_s, after_first = [], 0, None, None
    started = time.monotonic()
    with counted_wkv(train_on_cpu=device.type == "cpu") as calls:
        while step < args.steps and (after_first is None or time.monotonic() - after_first < args.seconds):
            for group in opt.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
            x = windows(corpus.train, args.batch, args.seq_len, gen).to(device)
            with training_precision(args, device):
                loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.detach().float())
            step += 1
            if after_first is None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                after_first = time.monotonic()
                first_step_s = after_first - started
                say(f"step 1: loss {losses[0].item():.4f}, {first_step_s:.1f} s (Triton compiling / autotuning)")
            elif step % LOG_EVERY == 0:
                say(f"step {step}: loss {losses[-1].item():.4f}, {time.monotonic() - after_first:.1f} s")
    if device.type == "cuda":
        torch.cuda.synchronize()
    last = torch.stack(losses[-20:]).tolist() if losses else []
    return {
        "steps": step,
        "first_step_seconds": first_step_s,
        "seconds_after_first_step": time.monotonic() - after_first if after_first is not None else 0.0,
        "first_loss": losses[0].item() if losses else None,
        "final_loss": last[-1] if last else None,
        "final_loss_mean_of_last_20": sum(last) / len(last) if last else None,
        "train_wkv_calls": dict(calls),
        "train_loss_fn": type(model.criterion).__name__
        if model.criterion is not None
        else "fla's FusedCrossEntropyLoss + l2_warp (its config's defaults)",
        "train_wkv": (
            "fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence in chunk_rwkv7's place (CPU smoke test: "
            "chunk_rwkv7 does not run in Triton's interpreter)"
            if device.type == "cpu"
            else "fla.ops.rwkv7.chunk_rwkv7 (Triton)"
        ),
    }


def val_loss(model, corpus, args, device) -> float:
    """fla's loss on held-out windows (the validation files), eval mode, in the training's precision."""
    import torch

    gen = torch.Generator().manual_seed(args.seed + 2)
    x = windows(corpus.val, args.val_windows, args.seq_len, gen).to(device)
    model.eval()
    with torch.no_grad(), training_precision(args, device), counted_wkv(train_on_cpu=device.type == "cpu"):
        return model(input_ids=x, labels=x).loss.item()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(args, tmp: Path) -> dict:
    """Train, save and compute fla's logits into `tmp`; the provenance."""
    import torch
    from fla.models import RWKV7Config, RWKV7ForCausalLM
    from safetensors.torch import save_file

    from rwkv_lab.loading.tokenizer import ByteTokenizer
    from rwkv_lab.results import device_name, provenance
    from rwkv_lab.training.corpus import build_corpus, unigram_loss

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make_fla_fixture.py: --device cuda but torch.cuda.is_available() is False")
    if device.type == "cpu":
        first_config_only()
    torch.manual_seed(args.seed)
    torch.cuda.manual_seed_all(args.seed)

    tokenizer = ByteTokenizer()
    assert tokenizer.vocab_size == SHAPE["vocab_size"]
    corpus = build_corpus(tokenizer=tokenizer, max_files=args.max_files)
    say(f"corpus: {len(corpus.train)} train / {len(corpus.val)} val tokens from {corpus.source}")

    config = RWKV7Config(**SHAPE)
    model = RWKV7ForCausalLM(config).to(device)  # fla's own initialisation
    n_params = sum(p.numel() for p in model.parameters())
    say(f"fla RWKV7ForCausalLM: {n_params} parameters on {device_name(device)}")
    trained = train(model, corpus, args, device)
    say(f"trained {trained['steps']} steps: loss {trained['first_loss']} -> {trained['final_loss']}")
    held_out = val_loss(model, corpus, args, device)
    unigram = unigram_loss(corpus)
    say(f"held-out loss {held_out:.4f} nats/token (byte frequencies alone: {unigram:.4f})")

    model_dir = tmp / "model"
    model.to(torch.bfloat16 if args.save_dtype == "bf16" else torch.float32).save_pretrained(model_dir)

    # fla's logits from the saved folder, float32, without TF32 anywhere
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    reloaded = RWKV7ForCausalLM.from_pretrained(model_dir).float().eval().to(device)
    tokens = torch.tensor([tokenizer.encode(text)[:PROMPT_LEN] for text in PROMPTS])  # (B, T)
    assert tokens.shape == (len(PROMPTS), PROMPT_LEN)
    with torch.no_grad(), counted_wkv() as calls:
        logits = reloaded(tokens.to(device)).logits.float().cpu()  # (B, T, V)
    n_layer = SHAPE["num_hidden_layers"]
    if dict(calls) != {"fused_mul_recurrent_rwkv7": n_layer}:
        raise RuntimeError(f"fla's logits ran {dict(calls)}, not fused_mul_recurrent_rwkv7 once per layer")
    if not torch.isfinite(logits).all():
        raise RuntimeError("fla's logits are not finite")
    mode = "fused_mul_recurrent_rwkv7 (eval, no grad, T < 64)"
    save_file({"tokens": tokens, "logits": logits}, str(tmp / "fla_logits.safetensors"), metadata={"mode": mode})
    say(f"fla's logits {tuple(logits.shape)} by {mode}")

    prov = provenance(vars(args) | {"out": str(args.out)}, device=device)
    prov |= {
        "what": "an RWKV-7 trained by fla's own code (model/, as fla's save_pretrained writes it) and fla's float32 "
        "logits on `prompts` (fla_logits.safetensors: tokens (B, T) int64, logits (B, T, V) float32)",
        "fla_core": metadata.version("fla-core"),
        "flash_linear_attention": metadata.version("flash-linear-attention"),
        "transformers": metadata.version("transformers"),
        "triton": metadata.version("triton"),
        "config": SHAPE,
        "parameters": n_params,
        "corpus": corpus.summary(),
        "training": trained,
        "held_out_loss": held_out,
        "held_out_unigram_loss": unigram,
        "saved_dtype": args.save_dtype,
        "prompts": [text[:PROMPT_LEN] for text in PROMPTS],
        "logits_mode": mode,
        "logits_wkv_calls": dict(calls),
        "logits_dtype": "float32 (weights loaded by fla's from_pretrained, then .float())",
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    prov["files_sha256"] = {p.relative_to(tmp).as_posix(): sha256(p) for p in files}
    return prov


def main(argv=None) -> None:
    args = parse_args(argv)
    # fla's kernels read TRITON_INTERPRET when they are defined: before fla (or rwkv_lab) is imported
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # written whole, then renamed to --out
    tmp.mkdir()
    try:
        prov = make(args, tmp)
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
        if out.exists():
            raise SystemExit(f"make_fla_fixture.py: {out} appeared while this ran; refusing to overwrite it")
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    say(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
