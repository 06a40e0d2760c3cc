"""Where the host time of one WKV forward + backward goes: our eager path, the custom operator that compiled
graphs call, and fla's `fused_recurrent_rwkv4`, at the benchmark's small shapes (bf16).

    python benchmarks/profile_wkv_host.py

Our kernels launch through `triton_launch.CachedLauncher`; each of our paths is also measured with every launch
through Triton's own launcher (", Triton's launcher"), with the scans as kernels of their own (", scan kernels":
seven launches, as beyond 16 chunks, instead of five), and one launch of one kernel both ways.

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
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wkv import FLA, official_inputs, peer_fla  # noqa: E402 - a sibling script

from rwkv_lab.measure.timing import graphed_seconds, host_seconds, time_fn
from rwkv_lab.ops.rwkv4 import triton_kernels as wkv_triton
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.triton_launch import CachedLauncher

SHAPES = [(8, 1024, 768), (8, 1024, 2048)]


def with_setting(owner, name: str, value):
    """fn -> fn run with owner.name set to value (restored after the call)."""

    def wrap(fn):
        def run(*args, **kwargs):
            kept = getattr(owner, name)
            setattr(owner, name, value)
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(owner, name, kept)

        return run

    return wrap


# every kernel launched by Triton's own launcher (the cache of compiled kernels bypassed)
through_tritons_launcher = with_setting(CachedLauncher, "enabled", False)
# the scans as kernels of their own at every length (seven launches), as beyond 16 chunks
through_the_scan_kernels = with_setting(wkv_triton, "SCAN_HERE_MAX_CHUNKS", 0)


def paths() -> dict:
    """name -> fn(w, u, k, v, state) -> (y, state), each path a program can take."""
    ours = {
        "triton, eager (EagerWKV)": wkv_triton.wkv_triton,
        "triton, custom operator (as compiled graphs call it)": lambda w, u, k, v, s: wkv_triton.wkv_forward(
            w, u, k, v, s
        )[:2],
    }
    out = dict(ours)
    for name, fn in ours.items():
        out[name + ", Triton's launcher"] = through_tritons_launcher(fn)
        out[name + ", scan kernels"] = through_the_scan_kernels(fn)
    fla = peer_fla()
    if fla is not None:
        out[FLA] = lambda w, u, k, v, s: fla(w, u, k, v, s, backward=k.requires_grad)
    return out


def one_launch(shape, w, u, k, v, device) -> list[dict]:
    """One launch of the forward's output kernel, through CachedLauncher and through Triton's launcher."""
    B, T, C = shape
    N = triton.cdiv(T, wkv_triton.CHUNK)
    enter, y = torch.zeros(B, N, 3, C, device=device), torch.empty_like(v)
    grid = wkv_triton._grid_chunks(B, N, C)

    def launch():
        # the entering states read from `enter` (as after the scan kernel): no summaries, no initial state
        wkv_triton._fwd_output[grid](
            k,
            v,
            w,
            u,
            None,
            None,
            None,
            enter,
            None,
            None,
            y,
            None,
            T,
            C,
            N,
            CHUNK=wkv_triton.CHUNK,
            BLOCK_C=wkv_triton.BLOCK_C,
            SCAN_HERE=False,
            HAS_INIT=False,
            HAS_LENGTHS=False,
            num_warps=wkv_triton._warps(),
        )

    rows = []
    for name, call in (
        ("one launch (_fwd_output)", launch),
        ("one launch (_fwd_output), Triton's launcher", through_tritons_launcher(launch)),
    ):
        row = {"path": name, "B": B, "T": T, "C": C, "dtype": "bf16", "call": "launch"}
        row["host_ms"] = host_seconds(call, device) * 1e3
        row["graphed_ms"] = graphed_seconds(call, device) * 1e3
        row["eager_ms"] = time_fn(call, device) * 1e3
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for shape in SHAPES:
        w, u, k, v, s = official_inputs(*shape, torch.bfloat16, device)
        rows += one_launch(shape, w, u, k, v, device)
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
