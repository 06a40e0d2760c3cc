"""The WKV numerics study: error vs T for every formulation and dtype (rwkv_lab/numerics.py), up to 1M tokens.

    python benchmarks/wkv_numerics.py [--max-log2-T 20] [--channels 64]

Writes results/numerics/wkv_numerics.csv (+ .meta.json) and results/figures/wkv_numerics.png; the figure adds
the GPU kernel's errors from results/wkv/wkv_kernel_check.json when that file exists.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from rwkv_lab.analysis.wkv_error import plot_study, run_study
from rwkv_lab.results import results_dir, save_figure, write_table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-log2-T", type=int, default=20)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the committed CSV")
    args = parser.parse_args()
    lengths = [1, 16] + [2**e for e in range(8, args.max_log2_T + 1, 4)]
    if lengths[-1] != 2**args.max_log2_T:
        lengths.append(2**args.max_log2_T)
    params = {"lengths": lengths, "channels": args.channels, "device": args.device}
    out = results_dir()
    csv = out / "numerics" / "wkv_numerics.csv"
    if args.replot:
        frame = pd.read_csv(csv)
        params = json.loads(csv.with_suffix(".meta.json").read_text())["params"]
    else:
        frame = run_study(lengths, channels=args.channels, device=args.device)
        write_table(csv, frame, params, device=args.device)
    check_path = out / "wkv" / "wkv_kernel_check.json"
    check = pd.DataFrame(json.loads(check_path.read_text())["results"]) if check_path.exists() else None
    save_figure(plot_study(frame, check), out / "figures" / "wkv_numerics.png", params, device=args.device)
    ok = frame[frame["status"] == "ok"]
    print(
        ok.pivot_table(index=["inputs", "T"], columns=["backend", "dtype"], values="rel_err_y").to_string(
            float_format=lambda x: f"{x:.1e}"
        )
    )
    print("non-finite values:", int(ok["nonfinite"].sum()))


if __name__ == "__main__":
    main()
