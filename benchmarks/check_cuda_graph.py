"""The trainer's CUDA-graph step (TrainConfig.cuda_graph, the default on CUDA) against its eager step, on the GPU.

    python benchmarks/check_cuda_graph.py [--sizes byte-6x256,169M] [--steps 10]

For each architecture and size, three runs of the trainer from the same seed on the same batches: eager, eager
again (how far two eager runs differ: atomics in reductions make them not bitwise equal), and graphed (the first
steps eager, then captured and replayed); and a graphed run saved halfway and resumed by a new trainer. Each
against the first eager run: the relative error of every step's loss and of the final weights, the worst
parameter named. Writes results/training/cuda_graph_check.json and prints each row.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.results import results_dir, write_json
from rwkv_lab.training.corpus import build_corpus
from rwkv_lab.training.trainer import TrainConfig, Trainer


def train(cfg: TrainConfig, corpus, steps: int, resume_at: int | None = None) -> tuple[torch.Tensor, dict, bool]:
    """(losses per step, final weights, whether the step was captured) of `steps` steps; with `resume_at`, saved
    there and continued by a fresh trainer."""
    trainer = Trainer(cfg, corpus, progress=False)
    losses = []
    for _ in range(resume_at or steps):
        losses.append(trainer.train_step())
    if resume_at:
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(Path(tmp) / "checkpoint.pt")
            trainer = Trainer(cfg, corpus, progress=False).load(Path(tmp) / "checkpoint.pt")
        for _ in range(steps - resume_at):
            losses.append(trainer.train_step())
    captured = trainer.graphed_step is not None and trainer.graphed_step.captured
    weights = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    return torch.stack(losses), weights, captured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="byte-6x256,169M")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--archs", default="rwkv,transformer")
    args = parser.parse_args()
    corpus = build_corpus(None)  # the standard library, bytes: the 169M's vocabulary holds them
    rows = []
    for size in args.sizes.split(","):
        for arch in args.archs.split(","):
            base = dict(arch=arch, model=size, context=args.context, batch_size=args.batch, lr=1e-3)
            base |= dict(tokens=args.steps * args.batch * args.context, warmup_steps=2)
            eager = TrainConfig(**base, cuda_graph=False)
            graphed = TrainConfig(**base, cuda_graph=True)
            reference = train(eager, corpus, args.steps)
            runs = {
                "eager again": train(eager, corpus, args.steps),
                "graphed": train(graphed, corpus, args.steps),
                "graphed, resumed": train(graphed, corpus, args.steps, resume_at=args.steps // 2 + 1),
            }
            for what, (losses, weights, captured) in runs.items():
                worst = max((rel_error(weights[n], w), n) for n, w in reference[1].items())
                row = {"arch": arch, "model": size, "run": what, "captured": captured, "steps": args.steps}
                row |= {"rel_err_loss": rel_error(losses, reference[0]), "rel_err_worst_weight": worst[0]}
                row |= {"worst_weight": worst[1], "final_loss": float(losses[-1])}
                rows.append(row)
                print(row, flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run, nothing captured
    write_json(results_dir() / "training" / "cuda_graph_check.json", rows, vars(args), device=device)


if __name__ == "__main__":
    main()
