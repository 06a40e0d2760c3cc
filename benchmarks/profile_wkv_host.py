"""Where the host time of one WKV forward + backward goes: our eager path, the custom operator that compiled
graphs call, and fla's `fused_recurrent_rwkv4`, at the benchmark's small shapes (bf16).

    python benchmarks/profile_wkv_host.py

Per path and shape: the host's part of a call (issued with the device idle), the device's part (the call
replayed from a CUDA graph) and the call as a program sees it (CUDA events, kernel by kernel), for the forward
alone and for forward + backward (`torch.autograd.grad`). Writes results/wkv/wkv_host_profile.csv with its
provenance, and prints torch.profiler's host-side table and a Python profile (cProfile) of each path.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wkv import FLA, official_inputs, peer_fla  # noqa: E402 - a sibling script

from rwkv_lab.measure.timing import graphed_seconds, host_seconds, time_fn
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.wkv import triton_kernels as wkv_triton

SHAPES = [(8, 1024, 768), (8, 1024, 2048)]


def paths() -> dict:
    """name -> fn(w, u, k, v, state) -> (y, state), each path a program can take."""
    out = {
        "triton, eager (EagerWKV)": wkv_triton.wkv_triton,
        "triton, custom operator (as compiled graphs call it)": lambda w, u, k, v, s: wkv_triton.wkv_forward(
            w, u, k, v, s
        )[:2],
    }
    fla = peer_fla()
    if fla is not None:
        out[FLA] = lambda w, u, k, v, s: fla(w, u, k, v, s, backward=k.requires_grad)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for shape in SHAPES:
        w, u, k, v, s = official_inputs(*shape, torch.bfloat16, device)
        leaves = [x.detach().clone().requires_grad_(True) for x in (u, k, v)]
        gy = torch.randn_like(v)
        for name, fn in paths().items():

            def forward(fn=fn):
                with torch.no_grad():
                    return fn(w, u, k, v, s)

            def forward_backward(fn=fn):
                y, _ = fn(w, *leaves, s)
                return torch.autograd.grad(y, leaves, gy)

            for what, call in (("forward", forward), ("forward+backward", forward_backward)):
                row = {"path": name, "B": shape[0], "T": shape[1], "C": shape[2], "dtype": "bf16", "call": what}
                row["host_ms"] = host_seconds(call, device) * 1e3
                row["graphed_ms"] = graphed_seconds(call, device) * 1e3
                row["eager_ms"] = time_fn(call, device) * 1e3
                rows.append(row)
                print(row, flush=True)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    forward_backward()
                torch.cuda.synchronize(device)
            print(f"--- host-side profile, 5 forward+backward calls: {name} {shape}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
            # the Python side (Triton's launcher, autograd's Function, the allocations' callers), per function
            python = cProfile.Profile()
            python.enable()
            for _ in range(50):
                forward_backward()
            python.disable()
            torch.cuda.synchronize(device)
            print(f"--- Python profile, 50 forward+backward calls: {name} {shape}")
            pstats.Stats(python).sort_stats("tottime").print_stats(20)
    frame = pd.DataFrame(rows)
    path = write_table(results_dir() / "wkv" / "wkv_host_profile.csv", frame, {"shapes": SHAPES}, device=device)
    print(frame.to_string(float_format=lambda x: f"{x:.3f}"), "\n->", path)


if __name__ == "__main__":
    main()
