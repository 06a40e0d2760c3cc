"""The numerics study: error vs T for every formulation of a generation's operator and dtype
(rwkv_lab/analysis/wkv_error.py), RWKV-4's WKV up to 1M tokens, RWKV-7's state update on the CPU at moderate T.

    python benchmarks/wkv_numerics.py [--operator rwkv4] [--max-log2-T 20] [--channels 64]
    python benchmarks/wkv_numerics.py --operator rwkv7 --max-log2-T 14

Writes the operator's study file (rwkv4: results/numerics/wkv_numerics.csv, rwkv7: results/numerics/
wkv7_numerics.csv, each + .meta.json) and its figure (results/figures/wkv_numerics.png, wkv7_numerics.png); the
figure adds the GPU kernel's fp32 errors from its check (results/wkv/wkv_kernel_check.json from
benchmarks/bench_wkv.py, results/wkv7/wkv7_kernel_check.json from benchmarks/bench_wkv7.py) when that file exists.
"""

from __future__ import annotations

import argparse
import json
from pathlib import PurePosixPath

import pandas as pd

from rwkv_lab.analysis.wkv_error import OPERATORS, plot_study, run_study
from rwkv_lab.results import results_dir, save_figure, write_table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operator", choices=sorted(OPERATORS), default="rwkv4", help="whose operator (generation)")
    parser.add_argument("--max-log2-T", type=int, default=None, help="default: 20 for rwkv4, 14 for rwkv7")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["recurrent", "chunked", "attention"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the committed CSV")
    args = parser.parse_args()
    operator = OPERATORS[args.operator]
    # RWKV-7's float64 reference is a Python loop over tokens (RWKV-4's steps chunks at once): 2^14 takes minutes
    max_log2 = args.max_log2_T or {"rwkv4": 20, "rwkv7": 14}[args.operator]
    lengths = [1, 16] + [2**e for e in range(8, max_log2 + 1, 4)]
    if lengths[-1] != 2**max_log2:
        lengths.append(2**max_log2)
    params = {
        "operator": args.operator,
        "lengths": lengths,
        "channels": args.channels,
        "backends": args.backends,
        "device": args.device,
        "description": f"{operator.name}: error vs T (to {lengths[-1]:,} tokens) of every formulation and dtype",
    }
    out = results_dir()
    csv = out / operator.study_file
    if args.replot:
        frame = pd.read_csv(csv)
        params = json.loads(csv.with_suffix(".meta.json").read_text())["params"]
    else:
        frame = run_study(
            lengths, backends=args.backends, channels=args.channels, device=args.device, operator=operator
        )
        write_table(csv, frame, params, device=args.device)
    check_path = out / operator.kernel_check_file
    check = operator.kernel_check(json.loads(check_path.read_text())["results"]) if check_path.exists() else None
    figure = out / "figures" / f"{PurePosixPath(operator.study_file).stem}.png"
    save_figure(plot_study(frame, check, operator.name), figure, params, device=args.device)
    ok = frame[frame["status"] == "ok"]
    print(
        ok.pivot_table(index=["inputs", "T"], columns=["backend", "dtype"], values="rel_err_y").to_string(
            float_format=lambda x: f"{x:.1e}"
        )
    )
    print("non-finite values:", int(ok["nonfinite"].sum()))


if __name__ == "__main__":
    main()
