"""RWKV-4 vs a matched GPT-NeoX transformer, trained on the same tokens with the same recipe (rwkv_lab.training).

    python benchmarks/train_compare.py --sizes byte-4x128,byte-6x256,byte-10x384 --contexts 512 --tokens 40M \
        --lrs 1e-3,3e-3

For every (size, context) both architectures train on the same batches, each on its fast path (RWKV's fused
blocks, the transformer through torch.compile), once per learning rate of `--lrs` (or of `--arch-lrs`, per
architecture); the run with the best final validation bits/byte per (architecture, size, context) is marked
`chosen`, and comparisons read the chosen runs. The validation curves, tokens/s and peak memory go to
results/training/curves.csv and one row per run to results/training/summary.csv, rewritten after every run (an
interrupted sweep keeps what finished). `--export-size` names the RWKV size whose chosen run's weights become, for each
recurrent architecture trained, results/training/<arch>-<size>-T<context><tag>.safetensors (bf16), the candidate
for that generation's packaged default model, written (atomically) as soon as a run of that size beats the earlier
ones, so that a sweep cut short keeps it.
Out-of-memory is a recorded outcome, and runs that would start after `--deadline-min` are recorded as skipped.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.measure.timing import OOM, or_oom
from rwkv_lab.models import architecture
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.corpus import build_corpus, unigram_loss
from rwkv_lab.training.trainer import ALIASES, ARCHS, TrainConfig, Trainer, bits_per_byte, parse_count, parse_switch


def train(cfg: TrainConfig, corpus, curves: list, keep_weights: bool) -> dict:
    trainer = Trainer(cfg, corpus, progress=True)
    frame = trainer.run()
    final = frame.dropna(subset=["val_loss"]).iloc[-1]
    steady = frame.iloc[len(frame) // 2 :]  # after compilation and warm-up
    curves.append(frame.assign(lr=cfg.lr))
    return {
        "status": "ok",
        "params": trainer.n_params,
        "val_loss": final["val_loss"],
        "val_bpb": final["val_bpb"],
        "tokens_per_s": float(steady["tokens_per_s"].median()),
        "train_seconds": final["train_seconds"],
        "flops": final["flops"],
        "peak_memory_GiB": frame["peak_memory_bytes"].max() / 2**30,
        "cuda_graph": bool(frame["cuda_graph"].iloc[-1]),
    } | ({"weights": trainer.model.cpu()} if keep_weights else {})


def mark_chosen(frame: pd.DataFrame) -> pd.DataFrame:
    """`chosen`: the run with the lowest final validation bits/byte of its (architecture, size, context)."""
    frame["chosen"] = False
    ok = frame[frame["status"] == "ok"]
    if len(ok):
        best = ok.groupby(["arch", "model", "context"])["val_bpb"].idxmin()
        frame.loc[best.values, "chosen"] = True
    return frame


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="byte-4x128,byte-6x256,byte-10x384")
    parser.add_argument("--contexts", default="512")
    parser.add_argument("--tokens", type=parse_count, default=parse_count("40M"))
    parser.add_argument("--tokens-per-step", type=int, default=32768)
    parser.add_argument(
        "--archs",
        default="rwkv,transformer",
        help=f"the architectures to train, each as its rows name it: {', '.join(ARCHS + tuple(ALIASES))} ('rwkv' is "
        "RWKV-4, the name of the runs before the second generation)",
    )
    parser.add_argument("--lrs", default="1e-3", help="peak learning rates to sweep, comma-separated")
    parser.add_argument(
        "--arch-lrs",
        default="",
        help="per architecture instead, e.g. 'rwkv:3e-3,rwkv:6e-3,transformer:3e-3' (an architecture named here "
        "sweeps only its rates listed here)",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--export-size", default="byte-6x256")
    parser.add_argument("--export-context", type=int, default=512)
    parser.add_argument("--deadline-min", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--tag", default="", help="suffix of the output files (runs split over several calls)")
    parser.add_argument("--corpus", default=None, help="a directory of .py files or a text file (default: stdlib)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="of the corpus's files, held out")
    parser.add_argument(
        "--cuda-graph",
        type=parse_switch,
        default=True,
        help="TrainConfig.cuda_graph for every run (on: each step replays a CUDA graph; off: kernel by kernel)",
    )
    parser.add_argument("--wkv-backend", default="auto", help="TrainConfig.wkv_backend: the recurrent operators' form")
    args = parser.parse_args()
    archs = args.archs.split(",")
    if set(archs) - set(ARCHS) - set(ALIASES):
        parser.error(f"--archs {args.archs!r}: expected names from {', '.join(ARCHS + tuple(ALIASES))}")
    lrs = {arch: [float(x) for x in args.lrs.split(",")] for arch in archs}
    named = [item.split(":") for item in filter(None, args.arch_lrs.split(","))]
    unknown = {arch for arch, *_ in named} - set(archs)
    if unknown or any(len(item) != 2 for item in named):
        parser.error(f"--arch-lrs {args.arch_lrs!r}: expected arch:rate items with arch in {', '.join(archs)}")
    for arch in {arch for arch, _ in named}:
        lrs[arch] = [float(lr) for a, lr in named if a == arch]
    t_start = time.time()
    corpus = build_corpus(args.corpus, val_fraction=args.val_fraction)
    base = {
        "corpus": corpus.summary(),
        "unigram_val_loss": unigram_loss(corpus),
        "unigram_val_bpb": bits_per_byte(unigram_loss(corpus), corpus.val_bytes_per_token),
    }
    print(base, flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = results_dir() / "training"

    def write(summary: list, curves: list):
        """Rewrite both tables: after every run and every skipped one, so an interrupted sweep keeps each."""
        params = vars(args) | base
        write_table(out / f"summary{args.tag}.csv", mark_chosen(pd.DataFrame(summary)), params)
        if curves:
            write_table(out / f"curves{args.tag}.csv", pd.concat(curves, ignore_index=True), params)

    curves, summary, best_export = [], [], {}  # per architecture, the exported run's validation bits/byte
    for context in map(int, args.contexts.split(",")):
        for size in args.sizes.split(","):
            # each architecture's first rate before any architecture's second: a sweep cut by the deadline still
            # holds every architecture
            rounds = max(len(lrs[arch]) for arch in archs)
            for arch, lr in [(a, lrs[a][i]) for i in range(rounds) for a in archs if i < len(lrs[a])]:
                cfg = TrainConfig(
                    arch=arch,
                    model=size,
                    context=context,
                    tokens=args.tokens,
                    lr=lr,
                    min_lr=lr / 10,
                    batch_size=max(1, args.tokens_per_step // context),
                    eval_every=args.eval_every,
                    warmup_steps=args.warmup_steps,
                    cuda_graph=args.cuda_graph,
                    wkv_backend=args.wkv_backend,
                )
                row = {"arch": arch, "model": size, "context": context, "lr": lr}
                row |= {"batch_size": cfg.batch_size, "tokens": args.tokens}
                if args.deadline_min and time.time() - t_start > 60 * args.deadline_min:
                    summary.append(row | {"status": "skipped (deadline)"})
                    write(summary, curves)
                    continue
                name = architecture(cfg.arch).name
                export = architecture(cfg.arch).recurrent and (size, context) == (
                    args.export_size,
                    args.export_context,
                )
                result = or_oom(lambda: train(cfg, corpus, curves, export), device)
                if export and result is not OOM:
                    weights = result.pop("weights")
                    if name not in best_export or result["val_bpb"] < best_export[name]:
                        best_export[name] = result["val_bpb"]
                        path = out / f"{name}-{size}-T{context}{args.tag}.safetensors"
                        save_model(weights, path, dtype=torch.bfloat16)
                        print(f"exported {name} {size} at lr {lr} ({result['val_bpb']:.4f} bits/byte) to {path}")
                row |= {"status": "oom"} if result is OOM else result
                summary.append(row)
                print(row, flush=True)
                write(summary, curves)
    print(pd.DataFrame(summary).to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
