"""Data-parallel lm-eval with the rwkv_lab backend: one process vs N processes (torchrun, one per GPU), same
checkpoint, same tasks, through lm-eval's own command line.

    python benchmarks/bench_lm_eval_dp.py --preset 1.5B --nproc 2 --tasks piqa,lambada_openai --data-dir DATA

Writes results/lm_eval/data_parallel.csv (+ .meta.json): wall seconds of each run (model loading included),
the speed-up, and whether the N-process metrics equal the one-process metrics.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.evaluation.tasks import task_manager
from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.models.rwkv4.model import build_at_size
from rwkv_lab.results import results_dir, write_table


def run(launcher, args, checkpoint, tasks_dir, out):
    cmd = launcher + [
        "-m",
        "rwkv_lab.evaluation",
        "--model",
        "rwkv_lab",
        "--model_args",
        f"pretrained={checkpoint},tokenizer={args.tokenizer},dtype={args.dtype}",
        "--device",
        args.device,
        "--batch_size",
        str(args.batch_size),
        "--tasks",
        args.tasks,
        "--include_path",
        str(tasks_dir),
        "--output_path",
        str(out),
    ]
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    (result,) = Path(out).rglob("results_*.json")
    return seconds, json.loads(result.read_text())["results"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="1.5B")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--tasks", default="piqa,lambada_openai")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tokenizer", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = save_model(build_at_size(args.preset, torch.float16, "cpu"), tmp / "model.safetensors")
        task_manager(args.data_dir, tmp / "tasks")
        one, r1 = run([sys.executable], args, checkpoint, tmp / "tasks", tmp / "one")
        many, rn = run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}"],
            args,
            checkpoint,
            tmp / "tasks",
            tmp / "many",
        )
    same = all(
        abs(r1[t][k] - rn[t][k]) <= 1e-6 * max(1, abs(r1[t][k]))
        for t in r1
        for k in r1[t]
        if isinstance(r1[t][k], float) and "stderr" not in k
    )
    frame = pd.DataFrame([{"processes": 1, "seconds": one}, {"processes": args.nproc, "seconds": many}])
    frame["speedup"] = one / frame["seconds"]
    frame["metrics_equal_one_process"] = [True, same]
    print(frame.to_string(), json.dumps(r1, indent=1)[:1500])
    write_table(
        results_dir() / "lm_eval" / "data_parallel.csv", frame, vars(args) | {"metrics": r1}, device=args.device
    )


if __name__ == "__main__":
    main()
