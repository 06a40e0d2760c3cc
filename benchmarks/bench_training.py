"""Measured training cost: one optimizer step (forward + backward + AdamW, bf16 autocast) of RWKV-4 and of the
size-matched Pythia transformer (transformers GPTNeoXForCausalLM, SDPA), on one GPU.

    python benchmarks/bench_training.py [--sizes 169M,430M,1.5B] [--contexts 1024,8192] [--tokens-per-step 16384]

Writes results/cost/training_mfu.csv (+ .meta.json) after every configuration, so an interrupted run keeps what it
measured. MFU = model FLOPs per second (rwkv_lab.cost: RWKV 3 x 2 (V D + 13 D^2 L) per token; the transformer
3 x (2 (V D + 12 D^2 L) + 4 L D T)) over (a) the measured bf16 matmul peak and (b) the datasheet peak.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from tqdm import tqdm

from rwkv_lab import cost
from rwkv_lab.baseline import PYTHIA_FOR, pythia_model
from rwkv_lab.measure.timing import OOM, or_oom, time_fn
from rwkv_lab.model import build_at_size
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.loss import lm_loss


def matmul_peak(device, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / time_fn(lambda: a @ b, device, warmup=5, repeat=20)


def build(arch: str, name: str, device, context: int):
    """(model, vocabulary, training FLOPs per token) of RWKV-4 `name` or Pythia `name`, fp32 weights on the device."""
    if arch == "RWKV-4":
        model = build_at_size(name, torch.float32, device).train()
        flops = cost.training_flops_per_token(cost.rwkv_forward_flops_per_token(model.config))
        return model, model.config.vocab_size, flops
    model = pythia_model(name, torch.float32, device, max_positions=max(2048, context)).train()
    L, D, V = model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size
    return model, V, cost.training_flops_per_token(cost.transformer_forward_flops_per_token(L, D, V, context))


def step_time(model, vocab, batch, context, device) -> float:
    """Median seconds of one optimizer step: the library's training loss (bf16 autocast), backward, fused AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, context + 1), generator=gen).to(device)

    def step():
        lm_loss(model, tokens[:, :-1], tokens[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_fn(step, device, warmup=2, repeat=5)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1.5B,169M,430M")
    parser.add_argument("--contexts", default="1024,8192")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    datasheet = cost.H200 if "H200" in torch.cuda.get_device_name(device) else cost.H100
    print(f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; datasheet {datasheet.peak_flops / 1e12:.0f}")
    params = vars(args) | {
        "measured_peak_flops": peak,
        "datasheet": datasheet.name,
        "datasheet_peak_flops": datasheet.peak_flops,
    }
    rows = []
    jobs = [
        (arch, size, int(T))
        for size in args.sizes.split(",")
        for T in args.contexts.split(",")
        for arch in ("RWKV-4", "Pythia")
    ]
    for arch, size, T in tqdm(jobs, desc="training step"):
        batch = max(1, args.tokens_per_step // T)
        name = size if arch == "RWKV-4" else PYTHIA_FOR[size]
        row = {"arch": arch, "model": name, "context": T, "batch": batch}

        def measure():
            model, vocab, flops_per_token = build(arch, name, device, T)
            torch.cuda.reset_peak_memory_stats(device)
            seconds = step_time(model, vocab, batch, T, device)
            tps = batch * T / seconds
            return {
                "status": "ok",
                "params": sum(p.numel() for p in model.parameters()),
                "step_ms": seconds * 1e3,
                "tokens_per_s": tps,
                "train_flops_per_token": flops_per_token,
                "mfu_vs_measured_peak": cost.mfu(tps, flops_per_token, peak),
                "mfu_vs_datasheet": cost.mfu(tps, flops_per_token, datasheet.peak_flops),
                "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30,
            }

        result = or_oom(measure, device)
        row |= {"status": "oom"} if result is OOM else result
        torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
        write_table(results_dir() / "cost" / "training_mfu.csv", pd.DataFrame(rows), params, device=device)
    frame = pd.DataFrame(rows)
    print(frame.to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
