"""What a training step keeps for its backward, per layer and token: RWKV-4's and RWKV-7's blocks (eager, and fused
through torch.compile around the Triton operator) beside the matched GPT-NeoX layer (eager, and through
torch.compile), counted with autograd's saved-tensor hooks.

    TRITON_INTERPRET=1 python benchmarks/saved_activations.py [--width 64] [--batch 2] [--context 128]

Runs on the CPU (the Triton operators under the interpreter, inductor's C++ backend for the compiled parts): the
partitioner that decides what a compiled graph saves and what it recomputes is the same on both devices, so this is
the part of the GPU's peak memory that comes from activations, counted without a GPU. Each model is built at two
depths; per-layer numbers are the difference divided by the layers added, so the embedding, head and loss cancel.
Each generation's fused path is counted keeping the matmuls' and the operator's outputs (RunConfig.saved_activations
'matmuls', the default) and as the partitioner chooses: RWKV-4's at several budgets, RWKV-7's at 1 (all it
chooses). Bytes are given per token and layer, and in units of "one (tokens, C)
tensor in bf16" (2 C bytes per token). Writes results/training/saved_activations.csv (per model and path) and
saved_activations_by_kind.csv (per layer: how many (tokens, k·C) tensors of each dtype are kept).
"""

from __future__ import annotations

import argparse
import os

import pandas as pd
import torch

from rwkv_lab.measure.memory import saved_for_backward
from rwkv_lab.models import architecture
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.trainer import TrainConfig
from rwkv_lab.training.trainer import build as build_for_training


def saved(model, tokens: torch.Tensor) -> list[dict]:
    """What one training step of `model` on `tokens` keeps for its backward, under bf16 autocast."""
    x, y = tokens[:, :-1], tokens[:, 1:]

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out.logits
            return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    return saved_for_backward(forward, model)


def build(arch: str, path: str, layers: int, width: int, context: int, keeps: str = "matmuls", budget: float = 1.0):
    """The model a training run builds (trainer.build), on the path being counted."""
    cfg = TrainConfig(
        arch=arch,
        model=f"byte-{layers}x{width}",
        context=context,
        wkv_backend="triton",
        saved_activations=keeps,
        activation_memory_budget=budget,
    )
    model, _ = build_for_training(cfg)
    if architecture(arch).recurrent:
        model.configure(fused_blocks=path == "fused")  # True: the fused blocks on any device (on CUDA, 'auto' does)
        return model
    return torch.compile(model) if path == "compiled" else model


def kind(row: dict, tokens: int, width: int) -> str:
    """'bfloat16 x 4C' for a (B, T, 4C) bf16 tensor; '<dtype> other' for what does not grow with the tokens."""
    numel = row["bytes"] // torch.empty(0, dtype=getattr(torch, row["dtype"])).element_size()
    if numel % (tokens * width):
        return f"{row['dtype']} other"
    return f"{row['dtype']} x {numel // (tokens * width)}C"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", default="2,4", help="the two depths whose difference is counted")
    parser.add_argument(
        "--budgets",
        default="1,0.8,0.5,0.2",
        help="RWKV-4's RunConfig.activation_memory_budget values (the partitioner's fused path)",
    )
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("run with TRITON_INTERPRET=1: the Triton WKV runs on the CPU under its interpreter")
    lo, hi = map(int, args.layers.split(","))
    B, T, C = args.batch, args.context, args.width
    tokens = torch.randint(0, 257, (B, T + 1), generator=torch.Generator().manual_seed(0))
    summary, kinds = [], []
    budgets = [float(b) for b in args.budgets.split(",")]
    runs = [("rwkv4", "eager", None, 1.0), ("rwkv4", "fused", "matmuls", 1.0)]
    runs += [("rwkv4", "fused", "partitioner", b) for b in budgets]
    runs += [("rwkv7", "eager", None, 1.0), ("rwkv7", "fused", "matmuls", 1.0), ("rwkv7", "fused", "partitioner", 1.0)]
    runs += [("transformer", "eager", None, 1.0), ("transformer", "compiled", None, 1.0)]
    for arch, path, keeps, budget in runs:
        counted = {}
        for layers in (lo, hi):
            model = build(arch, path, layers, C, T, keeps or "matmuls", budget)
            counted[layers] = pd.DataFrame(saved(model, tokens))
        per_layer = (counted[hi]["bytes"].sum() - counted[lo]["bytes"].sum()) / (hi - lo)
        row = {"arch": arch, "path": path, "saved_activations": keeps}
        row["activation_memory_budget"] = budget if keeps == "partitioner" else None
        row |= {"width": C, "batch": B, "context": T}
        row |= {"bytes_per_token_layer": per_layer / (B * T)}
        row["bf16_BTC_tensors_per_layer"] = per_layer / (B * T * C * 2)
        summary.append(row)
        by_kind = {
            layers: frame.assign(kind=[kind(r, B * T, C) for r in frame.to_dict("records")])
            .groupby("kind")["bytes"]
            .agg(["count", "sum"])
            for layers, frame in counted.items()
        }
        delta = by_kind[hi].sub(by_kind[lo], fill_value=0) / (hi - lo)
        for name, d in delta.iterrows():
            if d["count"]:
                kinds.append(
                    {k: row[k] for k in ("arch", "path", "saved_activations", "activation_memory_budget")}
                    | {"kind": name, "tensors_per_layer": d["count"]}
                    | {"bytes_per_token_layer": d["sum"] / (B * T)}
                )
        print(row, flush=True)
    params = vars(args)
    write_table(results_dir() / "training" / "saved_activations.csv", pd.DataFrame(summary), params, device="cpu")
    frame = pd.DataFrame(kinds)
    write_table(results_dir() / "training" / "saved_activations_by_kind.csv", frame, params, device="cpu")
    print(frame.to_string())


if __name__ == "__main__":
    main()
