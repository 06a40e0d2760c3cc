"""State tracking, trained short and tested long: RWKV-7, RWKV-4 and the matched transformer on the word problem
of a permutation group (rwkv_lab.training.state_tracking; notebook 06 reads what this writes).

    python benchmarks/state_tracking.py --tasks parity,S5 --train-length 16 --test-length 128 --steps 1500 \
        --threads 1                                                     # the CPU run, minutes
    python benchmarks/state_tracking.py --tasks parity,S3,S5 --model byte-4x128 --train-length 32 \
        --test-length 512 --steps 20000 --batch-size 256 --lrs 1e-3,3e-3 --tag _gpu        # on a GPU

Each architecture trains, at the same width and depth (`--model`, its byte-level size), the same steps, batch and
schedule (the trainer's), on fresh words of `--train-length` elements with the prefix product as the target at
every position, once per rate of `--lrs` and seed of `--seeds`; then each is scored on fresh words of
`--test-length` at every length (a causal model answers every prefix). Of a sweep the run with the lowest final
validation loss at the training length is marked `chosen` (the test words never choose). Writes, rewritten after
every run: results/state_tracking/summary<tag>.csv (one row per run), accuracy<tag>.csv (per run and length) and
curves<tag>.csv (the trainer's logs).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from rwkv_lab.models import ARCHITECTURES
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.state_tracking import summarise, train_word_problem, word_problem
from rwkv_lab.training.trainer import ALIASES


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="parity,S5", help="comma-separated: parity, S2 ... S5")
    parser.add_argument("--archs", default="rwkv7,rwkv4,transformer")
    parser.add_argument("--model", default="byte-2x64", help="the byte-level size every architecture trains at")
    parser.add_argument("--train-length", type=int, default=16)
    parser.add_argument("--test-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", default="3e-3", help="peak learning rates, comma-separated")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--test-words", type=int, default=512, help="words scored at each length")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (a loaded CPU: 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    args = parser.parse_args()
    archs = [ALIASES.get(a, a) for a in args.archs.split(",")]
    if set(archs) - set(ARCHITECTURES):
        parser.error(f"--archs {args.archs!r}: expected names from {', '.join(ARCHITECTURES)}")
    try:
        groups = [word_problem(name) for name in args.tasks.split(",")]
    except ValueError as err:
        parser.error(str(err))
    if args.test_length < args.train_length:
        parser.error(f"--test-length ({args.test_length}) must be at least --train-length ({args.train_length})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = results_dir() / "state_tracking"
    logs, accuracy = [], []
    for group in groups:
        for seed in map(int, args.seeds.split(",")):
            for arch in archs:
                for lr in map(float, args.lrs.split(",")):
                    log, acc = train_word_problem(
                        group,
                        arch,
                        args.model,
                        args.train_length,
                        args.test_length,
                        args.steps,
                        batch_size=args.batch_size,
                        lr=lr,
                        seed=seed,
                        device=device,
                        test_words=args.test_words,
                    )
                    logs.append(log)
                    accuracy.append(acc)
                    summary = summarise(pd.concat(logs, ignore_index=True), pd.concat(accuracy, ignore_index=True))
                    print(summary.iloc[-1].to_dict(), flush=True)
                    params = vars(args) | {"chance": {g.name: g.chance for g in groups}}
                    for name, table, what in (
                        ("summary", summary, "one row per run"),
                        ("accuracy", pd.concat(accuracy, ignore_index=True), "accuracy at every length, per run"),
                        ("curves", pd.concat(logs, ignore_index=True), "the trainer's log of each run"),
                    ):
                        described = params | {
                            "description": f"state tracking (word problems) trained short, tested long: {what}"
                        }
                        write_table(out / f"{name}{args.tag}.csv", table, described, device)
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
