"""Multi-GPU training throughput: the training command line (`python -m rwkv_lab.training`) under torchrun on 1
and on N GPUs, the same sequences per GPU (weak scaling), DDP and optionally FSDP.

    python benchmarks/bench_ddp.py --model 430M --tokenizer 20B_tokenizer.json --gpus 2 [--parallel ddp,fsdp]

Each run trains `--steps` optimizer steps on this interpreter's standard library (the trainer's default corpus) and
logs tokens/s every `--log-every` steps; the first log interval (compilation, warm-up) is dropped and the median of
the rest is the run's throughput. Writes results/training/ddp_scaling.csv (+ .meta.json): tokens/s per run and
the speed-up over one GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.results import read_table, results_dir, write_table


def launch(n_gpus: int, parallel: str, args, out: Path) -> dict:
    """One training run on n_gpus processes; its throughput from the log it wrote."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_gpus}", "--master_port=29611"]
    cmd += ["-m", "rwkv_lab.training", "--model", args.model, "--tokenizer", args.tokenizer]
    cmd += ["--context", str(args.context), "--batch-size", str(args.sequences_per_gpu * n_gpus)]
    cmd += ["--tokens", str(args.steps * args.sequences_per_gpu * n_gpus * args.context)]
    cmd += ["--log-every", str(args.log_every), "--eval-every", str(args.steps), "--eval-tokens", "16384"]
    cmd += ["--warmup-steps", "10", "--parallel", parallel, "--out", str(out)]
    row = {"gpus": n_gpus, "parallel": parallel if n_gpus > 1 else "none", "model": args.model}
    row |= {"context": args.context, "sequences_per_gpu": args.sequences_per_gpu, "steps": args.steps}
    print(" ".join(cmd), flush=True)
    done = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "4"})
    if done.returncode != 0:
        return row | {"status": f"failed (exit {done.returncode})"}
    log, _ = read_table(out / "log.csv")
    steady = log.iloc[1:]  # the first interval holds compilation
    tps = float(steady["tokens_per_s"].median())
    return row | {
        "status": "ok",
        "tokens_per_s": tps,
        "tokens_per_s_per_gpu": tps / n_gpus,
        "peak_memory_GiB": log["peak_memory_bytes"].max() / 2**30,
        "final_train_loss": float(log["train_loss"].iloc[-1]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="430M")
    parser.add_argument("--tokenizer", required=True, help="the GPT-NeoX-20B tokenizer.json (the Pile models')")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--parallel", default="ddp", help="comma-separated: ddp, fsdp")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--sequences-per-gpu", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(1, "ddp")] + [(args.gpus, p) for p in args.parallel.split(",")]
        for n, parallel in runs:
            rows.append(launch(n, parallel, args, Path(tmp) / f"{n}-{parallel}"))
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    one = frame[(frame["gpus"] == 1) & (frame["status"] == "ok")]
    if len(one) and "tokens_per_s" in frame:
        frame["speedup_over_one_gpu"] = frame["tokens_per_s"] / float(one["tokens_per_s"].iloc[0])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_table(results_dir() / "training" / "ddp_scaling.csv", frame, vars(args), device=device)
    print(frame.to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
