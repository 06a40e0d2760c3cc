"""GPU memory and speed of RWKV-4 vs the size-matched Pythia (transformers GPTNeoX, SDPA, KV cache) across contexts.

    python benchmarks/profile_memory.py --sizes 169M,1.5B,7B --batch 1 --tag _b1
    python benchmarks/profile_memory.py --sizes 1.5B --batch 8 --gen-max 65536 --tag _b8

Random weights at the real shapes (speed and memory do not depend on the values). RWKV: prefill contexts 512 to
--prefill-max in one parallel call, generation contexts 1k to --gen-max (1M) built up in 16k-token chunks, decoding
through a CUDA graph. Pythia: the same, generation until out of memory. Training: forward + backward, bf16
autocast, 512 to --train-max. `--peers` also measures, on the same weights and in the same run, the `rwkv` package
(fp16, its CUDA kernel) and transformers' RwkvForCausalLM (its Python loop when its hub kernel is unreachable).
Writes results/profile/memory_profile<tag>.csv (+ .meta.json, with the measured copy bandwidth) after every model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.measure.memory import free_memory
from rwkv_lab.measure.profiler import (
    finish,
    generation_series,
    measure_prefill,
    measure_training,
    rwkv_subject,
    series,
    transformer_subject,
)
from rwkv_lab.measure.timing import copy_bandwidth, is_oom, time_fn
from rwkv_lab.models.rwkv4.model import RWKV, build_at_size
from rwkv_lab.models.transformer.model import PYTHIA_FOR, pythia_model
from rwkv_lab.results import results_dir, write_table


def doubling(lo: int, hi: int) -> list[int]:
    out = []
    while lo <= hi:
        out.append(lo)
        lo *= 2
    return out


def peer_rows(model: RWKV, size: str, args) -> list[dict]:
    """The `rwkv` package and transformers' RWKV on this model's weights: prefill and per-token decode."""
    rows = []
    base = {"params": model.num_params(), "dtype": "float16", "batch": 1}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        os.environ.setdefault("RWKV_JIT_ON", "1")
        os.environ.setdefault("RWKV_CUDA_ON", "1")
        pth = save_model(model, Path(tmp) / "peer.pth", format="pth", dtype=torch.float16)
        from rwkv.model import RWKV as PackageRWKV

        pkg = PackageRWKV(model=str(pth)[:-4], strategy="cuda fp16")
        tokens = torch.randint(1, 50277, (args.peer_prefill,)).tolist()
        s = time_fn(lambda: pkg.forward(tokens, None), "cuda", warmup=1, repeat=3)
        rows.append(
            base
            | {
                "model": f"rwkv package {size}",
                "arch": "rwkv-package",
                "kind": "prefill",
                "context": len(tokens),
                "status": "ok",
                "seconds": s,
                "tokens_per_s": len(tokens) / s,
            }
        )
        _, state = pkg.forward(tokens[:1024], None)
        s = (
            time_fn(
                lambda: [pkg.forward([t], [x.clone() for x in state]) for t in tokens[:16]], "cuda", warmup=1, repeat=3
            )
            / 16
        )
        rows.append(
            base
            | {
                "model": f"rwkv package {size}",
                "arch": "rwkv-package",
                "kind": "generation",
                "context": 1024,
                "status": "ok",
                "seconds": s,
                "tokens_per_s": 1 / s,
            }
        )
        free_memory("cuda")
        if args.hf_peer_prefill:
            from transformers import RwkvForCausalLM

            save_model(model, Path(tmp) / "hf", format="transformers", dtype=torch.float16)
            hf = RwkvForCausalLM.from_pretrained(Path(tmp) / "hf", torch_dtype=torch.float16).cuda().eval()
            x = torch.randint(1, 50277, (1, args.hf_peer_prefill), device="cuda")
            with torch.no_grad():
                t0 = time.perf_counter()
                out = hf(x, use_cache=True)
                torch.cuda.synchronize()
                s = time.perf_counter() - t0
                rows.append(
                    base
                    | {
                        "model": f"transformers RWKV {size}",
                        "arch": "rwkv-transformers",
                        "kind": "prefill",
                        "context": x.shape[1],
                        "status": "ok",
                        "seconds": s,
                        "tokens_per_s": x.shape[1] / s,
                    }
                )
                st = out.state
                tok = x[:, -1:]
                s = time_fn(lambda: hf(tok, state=[t.clone() for t in st], use_cache=True), "cuda", warmup=1, repeat=5)
                rows.append(
                    base
                    | {
                        "model": f"transformers RWKV {size}",
                        "arch": "rwkv-transformers",
                        "kind": "generation",
                        "context": x.shape[1],
                        "status": "ok",
                        "seconds": s,
                        "tokens_per_s": 1 / s,
                    }
                )
            from transformers.models.rwkv import modeling_rwkv

            rows[-1]["note"] = rows[-2]["note"] = (
                "CUDA kernel"
                if getattr(modeling_rwkv, "rwkv_cuda_kernel", None) is not None
                else "Python loop (no kernel)"
            )
            del hf
            free_memory("cuda")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="169M,1.5B,7B")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prefill-max", type=int, default=65536)
    parser.add_argument("--gen-max", type=int, default=2**20)
    parser.add_argument("--train-max", type=int, default=8192)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--peers", default="", help="sizes at which to measure the rwkv package and transformers' RWKV")
    parser.add_argument("--peer-prefill", type=int, default=4096)
    parser.add_argument("--hf-peer-prefill", type=int, default=1024, help="0: skip transformers' RWKV")
    parser.add_argument("--skip", default="", help="'transformer' or 'rwkv': measure only the other")
    parser.add_argument("--series-seconds", type=float, default=120, help="time limit of one generation series")
    parser.add_argument("--compile", action="store_true", help="RWKV decodes through torch.compile + CUDA graph")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    bandwidth = copy_bandwidth(device)
    params = vars(args) | {
        "copy_bandwidth_Bps": bandwidth,
        "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
    }
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows, out = [], results_dir() / "profile" / f"memory_profile{args.tag}.csv"
    for size in args.sizes.split(","):
        for arch in ("rwkv", "transformer"):
            if arch == args.skip:
                continue
            free_memory(device)
            if arch == "rwkv":
                model = build_at_size(size, dtype, device)
                subject = rwkv_subject(
                    model, f"RWKV-4 {size}" + (" compiled" if args.compile else ""), compile=args.compile
                )
            else:
                model = pythia_model(PYTHIA_FOR[size], dtype, device, max_positions=2**21)
                subject = transformer_subject(model, PYTHIA_FOR[size])
            B = args.batch
            rows += series(measure_prefill, subject, B, doubling(512, args.prefill_max))
            rows += generation_series(
                subject, B, doubling(1024, args.gen_max), args.decode_steps, max_seconds=args.series_seconds
            )
            rows += series(measure_training, subject, B, doubling(512, args.train_max))
            if arch == "rwkv" and size in args.peers.split(","):
                try:
                    rows += peer_rows(model, size, args)
                except Exception as err:  # noqa: BLE001 - a peer that fails to build is a recorded outcome
                    rows.append({"model": f"peers {size}", "kind": "peer", "status": f"error: {err}"[:300]})
                    if is_oom(err):
                        free_memory(device)
            del model, subject
            write_table(out, finish(pd.DataFrame(rows)), params, device=device)
            print(pd.DataFrame(rows).tail(12).to_string(), flush=True)


if __name__ == "__main__":
    main()
