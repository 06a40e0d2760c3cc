"""RWKV-7's state update in a prefill (the forward alone, no gradients) on the GPU: which backend `wkv7` should use.

    python benchmarks/bench_wkv7_prefill.py            # -> results/wkv7/wkv7_prefill_backends.csv
    python benchmarks/bench_wkv7_prefill.py --fla      # fla-core's chunk_rwkv7 beside them (minutes of autotuning)

The Triton kernel steps one token at a time with B H N/rows programs: at a prefill's small batch it runs few
programs for T dependent steps. The chunked form does everything but the state's passing for all chunks at once
and then loops T/64 times over one batched N x N matmul. The chunked Triton kernels (triton_chunked, forward only)
do the chunked form's per-chunk work in one launch over all chunks (tl.dot, chunks of 16) and pass the state in a
second, T/16 steps per program. This measures the three (and fla's chunked Triton kernel with --fla) at batch 1
and 8, T = 1024 to 16384, the 0.1B and 1.5B widths (C = 768, 2048; N = 64), fp16 inputs and an fp32 state, each
the median of 10 calls (CUDA events), with its relative error against the float64 chunked form (computed on the
GPU) at the smallest T. Written after each shape, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wkv7 import LOWER_BOUND, fla_candidates, rwkv7_inputs  # noqa: E402 - a sibling script

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.timing import time_fn
from rwkv_lab.ops.rwkv7 import wkv7
from rwkv_lab.results import results_dir, write_table

BATCHES = (1, 8)
LENGTHS = (1024, 4096, 16384)
WIDTHS = (768, 2048)
N = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--fla", action="store_true", help="fla-core's chunk_rwkv7 too (its autotuning: minutes)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    candidates = {
        "triton": lambda *x: wkv7(*x, backend="triton", check=False),
        "triton_chunked": lambda *x: wkv7(*x, backend="triton_chunked", check=False),
        "chunked": lambda *x: wkv7(*x, backend="chunked", check=False),
    }
    if args.fla:
        fla = fla_candidates(device)
        candidates["fla chunk_rwkv7 lower_bound"] = fla["fla chunk_rwkv7 lower_bound"]
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    shapes = list(itertools.product(ints(args.batches), ints(args.lengths), ints(args.widths)))
    params = vars(args) | {"N": N, "inputs": "fp16, RWKV-7-like (bench_wkv7.rwkv7_inputs), fp32 state"}
    params |= {"lower_bound": LOWER_BOUND}
    rows = []
    for B, T, C in shapes:
        H = C // N
        inputs = rwkv7_inputs(B, T, H, N, torch.float16, device)
        if T == min(ints(args.lengths)):
            exact = [x.double() for x in inputs]
            with torch.no_grad():
                ref_y, ref_s = wkv7(*exact, backend="chunked", check=False)
        else:
            ref_y = None
        for name, fn in candidates.items():
            row = {"candidate": name, "B": B, "T": T, "C": C, "H": H, "N": N}
            try:
                with torch.no_grad():
                    y, s = fn(*inputs)
                    ms = 1e3 * time_fn(lambda fn=fn, x=inputs: fn(*x), device)
                row |= {"ms": ms, "tokens_per_s": B * T / ms * 1e3}
                if ref_y is not None:
                    row |= {"rel_err_y": rel_error(y.double(), ref_y), "rel_err_state": rel_error(s.double(), ref_s)}
            except Exception as err:  # noqa: BLE001 - a failing candidate (memory, compilation) is a data point
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            rows.append(row)
            print(row, flush=True)
        del inputs
        torch.cuda.empty_cache() if device.type == "cuda" else None
        frame = pd.DataFrame(rows)
        write_table(
            results_dir() / "wkv7" / "wkv7_prefill_backends.csv",
            frame,
            params | {"complete": (B, T, C) == shapes[-1]},
            device=device,
        )
    print(pd.DataFrame(rows).to_string(), flush=True)


if __name__ == "__main__":
    main()
