"""The decoder's first call, where torch.compile builds the step: with each block a compile region (the default:
torch.compiler.nested_compile_region around a layer, compiled once per kind of layer) and with every region
inlined (torch._dynamo.config.inline_invoke_subgraph: L copies of the layer compiled, as before regions).

    python benchmarks/decode_compile_time.py --device cpu --specs rwkv4:169M,rwkv7:pile-168M
    python benchmarks/decode_compile_time.py --device cuda --specs rwkv4:1.5B,rwkv7:pile-1.47B --dtype float16
    # -> results/inference/decode_compile_time_<device>.csv

Each measurement runs in a fresh process with inductor's on-disk caches off (TORCHINDUCTOR_FORCE_DISABLE_CACHES),
so it is what a fresh machine pays: the seconds of the decoder's first `step` at batch 1 (compilation, and on CUDA
the graph capture), its compile level after (a failure falls back to a lower level: its reasons are kept) and the
machine's load average, since compilation is CPU work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pandas as pd
import torch

from rwkv_lab.results import results_dir, write_table

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def first_step(spec: str, regions: bool, device: str, dtype: str) -> dict:
    """In this process: the seconds of a fresh decoder's first compiled step for model_at(spec)."""
    import torch._dynamo.config  # noqa: PLC0415

    from rwkv_lab.inference.decoder import Decoder  # noqa: PLC0415
    from rwkv_lab.measure.profiler import model_at  # noqa: PLC0415

    if not regions:
        if not hasattr(torch._dynamo.config, "inline_invoke_subgraph"):
            return {"error": f"torch {torch.__version__} has no inline_invoke_subgraph: regions cannot be turned off"}
        torch._dynamo.config.inline_invoke_subgraph = True
    model = model_at(spec, DTYPES[dtype], device)
    decoder = Decoder(model, 1, compile=True)
    tokens, state = torch.tensor([3], device=device), model.init_state(1)
    start = time.perf_counter()
    with torch.no_grad():
        decoder.step(tokens, state)
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "first_step_s": time.perf_counter() - start,
        "compile_level": str(decoder.compile),
        "fallbacks": " | ".join(decoder.fallbacks),
        "load_average": os.getloadavg()[0],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default="rwkv4:169M,rwkv7:pile-168M", help="model_at specs, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--tag", default="")
    parser.add_argument("--one", nargs=2, metavar=("SPEC", "REGIONS"), help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(first_step(args.one[0], args.one[1] == "on", args.device, args.dtype)))
        return
    rows = []
    env = os.environ | {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    for spec in args.specs.split(","):
        for regions in ("on", "off"):
            child = [sys.executable, __file__, "--one", spec, regions, "--device", args.device, "--dtype", args.dtype]
            done = subprocess.run(child, env=env, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-500:]}
            rows.append({"spec": spec, "regions": regions, "dtype": args.dtype, **result})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    path = results_dir() / "inference" / f"decode_compile_time_{args.device}{args.tag}.csv"
    write_table(path, frame, params={**vars(args), "torch": torch.__version__})
    print(frame.to_string(index=False), f"\nwrote {path}")


if __name__ == "__main__":
    main()
