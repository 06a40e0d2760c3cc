"""GPU memory and speed of RWKV-4 vs the size-matched Pythia (transformers GPTNeoX) across contexts, each on the
path a user takes today.

    python benchmarks/profile_memory.py --sizes 169M,430M,1.5B --batch 1 --tag _b1
    python benchmarks/profile_memory.py --sizes 1.5B --batch 8 --gen-max 65536 --tag _b8

Random weights at the real shapes (speed and memory do not depend on the values), bf16 for inference. RWKV:
prefill contexts 512 to --prefill-max in one parallel call (`model.prefill`: its default blocks around the Triton
WKV), generation contexts 1k to --gen-max (1M) built up in 16k-token chunks, decoding through the library's decoder
as `generate` does (compiled step in a CUDA graph; `--decode-graph-only`: the graph without the compiler).
Pythia: SDPA attention (flash on a first chunk) and its KV cache, generation until out of memory. End-to-end
generation: a prompt of 1k to --e2e-max tokens prefilled, then --e2e-new-tokens decoded, timed together, beside
the decode-only rows. Training: forward + backward, bf16 autocast, fp32 weights, 512 to --train-max, through the
trainer's fast path (`fast_path`: RWKV's fused blocks, Pythia through torch.compile). Out of memory is a row
(status 'oom'). `--peers` also measures, on the same weights and in the same run, the `rwkv` package (fp16, its
CUDA kernel) and transformers' RwkvForCausalLM (its Python loop when its hub kernel is unreachable).
Writes results/profile/memory_profile<tag>.csv (+ .meta.json, with the measured copy bandwidth) after every series.
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
    measure_end_to_end,
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
from rwkv_lab.training.trainer import fast_path


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
    parser.add_argument("--e2e-max", type=int, default=16384, help="longest prompt of the end-to-end generation")
    parser.add_argument("--e2e-new-tokens", type=int, default=64, help="tokens generated per end-to-end call")
    parser.add_argument(
        "--decode-graph-only",
        action="store_true",
        help="RWKV decodes through a CUDA graph of the eager step (not `generate`'s default, the compiled step)",
    )
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (small sizes and contexts)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    bandwidth = copy_bandwidth(device) if cuda else None
    params = vars(args) | {
        "copy_bandwidth_Bps": bandwidth,
        "gpu_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
    }
    if cuda:
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows, out = [], results_dir() / "profile" / f"memory_profile{args.tag}.csv"
    compile_decode = False if args.decode_graph_only else None  # None: the decoder's default, as generate's

    def save():
        write_table(out, finish(pd.DataFrame(rows)), params, device=device)

    for size in args.sizes.split(","):
        for arch in ("rwkv", "transformer"):
            if arch == args.skip:
                continue
            free_memory(device)
            if arch == "rwkv":
                model = build_at_size(size, dtype, device)
                name = f"RWKV-4 {size}" + (" graph-only decode" if args.decode_graph_only else "")
                subject = rwkv_subject(model, name, compile=compile_decode)
            else:
                model = pythia_model(PYTHIA_FOR[size], dtype, device, max_positions=2**21)
                subject = transformer_subject(model, PYTHIA_FOR[size])
            B = args.batch
            rows += series(measure_prefill, subject, B, doubling(512, args.prefill_max))
            save()
            rows += generation_series(
                subject, B, doubling(1024, args.gen_max), args.decode_steps, max_seconds=args.series_seconds
            )
            save()
            rows += series(measure_end_to_end, subject, B, doubling(1024, args.e2e_max), new_tokens=args.e2e_new_tokens)
            save()
            if arch == "rwkv" and size in args.peers.split(","):
                try:
                    rows += peer_rows(model, size, args)
                except Exception as err:  # noqa: BLE001 - a peer that fails to build is a recorded outcome
                    rows.append({"model": f"peers {size}", "kind": "peer", "status": f"error: {err}"[:300]})
                    if is_oom(err):
                        free_memory(device)
                save()
            # training as the trainer runs it: fp32 weights under bf16 autocast, through its fast path
            model.float()
            subject.train_forward = fast_path(model)
            rows += series(measure_training, subject, B, doubling(512, args.train_max))
            del model, subject
            save()
            print(pd.DataFrame(rows).tail(12).to_string(), flush=True)


if __name__ == "__main__":
    main()
