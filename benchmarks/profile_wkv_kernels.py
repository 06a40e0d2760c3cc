"""Per-kernel GPU time of the Triton WKV for several launch configurations (the tuning tool).

    python benchmarks/profile_wkv_kernels.py [--out DIR]

Prints one table: configuration x shape x kernel -> microseconds per call (torch.profiler, median over calls),
and writes it as CSV with provenance after every configuration (each one compiles the kernels anew, so a run cut
by a time limit keeps the configurations it measured).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wkv import official_inputs  # noqa: E402 - a sibling script

from rwkv_lab.measure.timing import time_fn
from rwkv_lab.ops.rwkv4 import triton_kernels as wkv_triton
from rwkv_lab.ops.rwkv4 import wkv
from rwkv_lab.results import results_dir, write_table

CONFIGS = [  # (CHUNK, BLOCK_C, SCAN_BLOCK_C, SUB)
    (32, 64, 16, 8),
    (64, 64, 16, 8),
    (64, 32, 16, 8),
    (64, 128, 16, 8),
    (64, 64, 16, 16),
    (128, 64, 16, 8),
]
CASES = [
    ((1, 16384, 2048), torch.float32, False),
    ((8, 1024, 2048), torch.bfloat16, True),
    ((1, 65536, 4096), torch.bfloat16, False),
    ((16, 4096, 2048), torch.bfloat16, True),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n, (chunk, block_c, scan_c, sub) in enumerate(CONFIGS, 1):
        wkv_triton.CHUNK, wkv_triton.BLOCK_C, wkv_triton.SCAN_BLOCK_C, wkv_triton.SUB = chunk, block_c, scan_c, sub
        for shape, dtype, backward in CASES:
            w, u, k, v, s = official_inputs(*shape, dtype, "cuda")
            if backward:
                k.requires_grad_(True)
                v.requires_grad_(True)
                gy = torch.randn_like(v)

            def call():
                y, _ = wkv(w, u, k, v, s, backend="triton")
                if backward:
                    y.backward(gy)

            total = time_fn(call, "cuda", warmup=3, repeat=10)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    call()
                torch.cuda.synchronize()
            for evt in prof.key_averages():
                if evt.device_type.name == "CUDA" and evt.count >= 5:
                    rows.append(
                        {
                            "chunk": chunk,
                            "block_c": block_c,
                            "scan_block_c": scan_c,
                            "sub": sub,
                            "shape": str(shape),
                            "dtype": str(dtype).removeprefix("torch."),
                            "backward": backward,
                            "kernel": evt.key[:22],
                            "us_per_call": evt.device_time_total / evt.count,
                            "total_ms": total * 1e3,
                        }
                    )
            torch.cuda.empty_cache()
        frame = pd.DataFrame(rows)
        params = {"configs": CONFIGS, "configs_measured": n}
        write_table((args.out or results_dir()) / "wkv_kernel_profile.csv", frame, params, device="cuda")
        print(f"configuration {n}/{len(CONFIGS)} (CHUNK={chunk}, BLOCK_C={block_c}, SUB={sub}) written", flush=True)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(
            frame.pivot_table(
                index=["shape", "dtype", "chunk", "block_c", "sub", "total_ms"], columns="kernel", values="us_per_call"
            )
            .round(1)
            .to_string()
        )


if __name__ == "__main__":
    main()
