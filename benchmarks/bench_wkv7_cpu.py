"""RWKV-7's state update on the CPU: the chunked form against the reference recurrence, fp32, forward.

    python benchmarks/bench_wkv7_cpu.py   # (B, T, C) = (1, 4096, 768), N = 64 -> results/wkv7/wkv7_cpu_speed.csv

RWKV-7-like inputs (log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr in (0, 1), a random state), at each
torch thread count given (2, then 1 for comparison: the recurrence's small ops gain nothing from a second thread,
and lose much when the machine is shared). At each thread count, each form is timed REPEATS times, taking turns,
without autograd; the table holds the median wall time, the median CPU time of the process (less disturbed by
other work on the machine), and each form's relative error against the recurrence in the same run. The ratios to
the recurrence are printed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.ops.rwkv7 import wkv7_chunked, wkv7_recurrent
from rwkv_lab.results import results_dir, write_table


def rwkv7_inputs(B, T, H, N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*(s or (B, T, H, N)), generator=gen)  # noqa: E731
    r, k, v = randn(), randn(), randn()
    log_w = -math.exp(-0.5) * torch.sigmoid(randn())
    kappa = F.normalize(randn(), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=gen)
    return r, log_w, k, v, -kappa, kappa * iclr, randn(B, H, N, N)


def time_forms(forms, inputs, repeats):
    """One row per form at the current thread count: median wall and CPU time, ratios, errors vs the recurrence."""
    wall = {name: [] for name in forms}
    cpu = {name: [] for name in forms}
    outputs = {}
    with torch.no_grad():
        for name, fn in forms.items():  # one untimed call each (allocator, caches)
            outputs[name] = fn(*inputs)
        for _ in range(repeats):
            for name, fn in forms.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(*inputs)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)

    y_ref, s_ref = outputs["recurrent"]
    ref_s = statistics.median(wall["recurrent"])
    ref_cpu = statistics.median(cpu["recurrent"])
    rows = []
    B, T, H, N = inputs[0].shape
    for name in forms:
        y, s = outputs[name]
        median_s, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        rows.append(
            {
                "form": name,
                "B": B,
                "T": T,
                "C": H * N,
                "H": H,
                "N": N,
                "dtype": "fp32",
                "threads": torch.get_num_threads(),
                "repeats": repeats,
                "median_s": median_s,
                "median_cpu_s": median_cpu,
                "tokens_per_s": B * T / median_s,
                "speedup_vs_recurrent": ref_s / median_s,
                "cpu_speedup_vs_recurrent": ref_cpu / median_cpu,
                "rel_err_y_vs_recurrent": rel_error(y, y_ref),
                "rel_err_state_vs_recurrent": rel_error(s, s_ref),
            }
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1x4096x768", help="BxTxC")
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--threads", default="2,1", help="torch thread counts, each timed in turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="16,32,64", help="chunk sizes of the chunked form to time")
    args = parser.parse_args()
    B, T, C = map(int, args.shape.split("x"))
    N = args.head_size
    H = C // N
    inputs = rwkv7_inputs(B, T, H, N)
    forms = {"recurrent": wkv7_recurrent}
    for chunk in map(int, args.chunks.split(",")):
        forms[f"chunked-{chunk}"] = lambda *x, chunk=chunk: wkv7_chunked(*x, chunk_size=chunk)

    load_before = os.getloadavg()
    rows = []
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        rows += time_forms(forms, inputs, args.repeats)
    table = pd.DataFrame(rows)
    params = vars(args) | {
        "inputs": "RWKV-7-like: log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr ~ U(0, 1)",
        # other work on the machine (1, 5, 15 min), which slows the many small ops of the recurrence most
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    path = write_table(results_dir() / "wkv7" / "wkv7_cpu_speed.csv", table, params)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    for row in rows:
        if row["form"] != "recurrent":
            print(
                f"{row['form']}: {row['speedup_vs_recurrent']:.2f}x the recurrence in wall time, "
                f"{row['cpu_speedup_vs_recurrent']:.2f}x in CPU time ({row['threads']} threads)"
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
