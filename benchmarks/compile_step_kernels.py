"""How long the decode step's Triton kernels take to compile for an H100, one after another and side by side
(rwkv_lab.triton_launch.compiling_in_parallel, as the decoder's first step does), on this machine's CPU: no GPU
needed (triton_launch.HopperWithoutDevice names the sm_90 target; ptxas ships with Triton).

    python benchmarks/compile_step_kernels.py          # -> results/inference/step_kernel_compile.csv

A decoder's first call on a fresh machine is mostly this compilation (the H100 runs of
results/inference/generation_rwkv7_168M_levels.csv: 3 s of warm-up with Triton's cache warm, 14 s cold). Each
measurement runs in a fresh process with an empty Triton cache: one step of batch 1 in fp16 through the step
kernels, every launch compiling and launching nothing, timed whole (the torch ops between the launches are a few
milliseconds of it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pandas as pd

from rwkv_lab.results import results_dir, write_table

CHILD = """
import json, sys, time, torch
from triton.runtime import driver
from rwkv_lab.triton_launch import HopperWithoutDevice, compiling_in_parallel, launches_compile_only
driver.set_active(HopperWithoutDevice())
from rwkv_lab.models import architecture
arch_name, size, mode, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
arch = architecture(arch_name)
model = arch.build(arch.get_config(size)).half().eval().configure(step_kernels=True)
state = model.init_state(1)
with torch.no_grad():
    t0 = time.perf_counter()
    with compiling_in_parallel(workers) if mode == "parallel" else launches_compile_only():
        model.step(torch.tensor([1]), state, check=False)
    seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", default="rwkv7:pile-168M,rwkv4:169M", help="arch:size, comma-separated")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    rows = []
    for spec in args.specs.split(","):
        arch, size = spec.split(":")
        for run in range(1, args.repeats + 1):
            for mode in ("one by one", "parallel"):
                with tempfile.TemporaryDirectory() as cache:
                    command = [sys.executable, "-c", CHILD, arch, size, mode, str(args.workers)]
                    done = subprocess.run(command, env=env | {"TRITON_CACHE_DIR": cache}, capture_output=True,
                                          text=True, check=True)  # fmt: skip
                seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
                rows.append({"arch": arch, "size": size, "run": run, "compile": mode, "seconds": seconds,
                             "workers": args.workers if mode == "parallel" else 1})  # fmt: skip
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    params = vars(args) | {"target": "sm_90 (H100), compiled on this machine's CPU", "dtype": "float16", "batch": 1}
    write_table(results_dir() / "inference" / "step_kernel_compile.csv", frame, params, device="cpu")
    print(frame.groupby(["arch", "size", "compile"])["seconds"].median().to_string())


if __name__ == "__main__":
    main()
