"""Throughput of the rwkv_lab lm-eval backend against lm-eval's `hf` backend (transformers RwkvForCausalLM) on the
same random weights, on real task data (offline files).

    python benchmarks/bench_lm_eval.py --layers 4 --width 256 --tasks piqa                 # CPU, full PIQA
    python benchmarks/bench_lm_eval.py --preset 1.5B --device cuda --dtype float16 --hf-limit 50

Writes results/lm_eval/throughput<tag>.csv (+ .meta.json): docs/s and requests/s per backend and task, and the
largest difference between the two backends' log-likelihoods on the documents both scored.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.evaluation.backend import RWKVLM
from rwkv_lab.evaluation.tasks import task_manager
from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.models.rwkv4.config import NEOX_VOCAB, RWKVConfig, get_config
from rwkv_lab.models.rwkv4.model import RWKV, init_weights
from rwkv_lab.results import results_dir, write_table

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tasks", default="piqa")
    parser.add_argument("--limit", type=int, default=None, help="documents per task for our backend (None: all)")
    parser.add_argument("--hf-limit", type=int, default=None, help="documents per task for the hf backend")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "lm_eval"))
    parser.add_argument("--tokenizer", default=str(SHARED / "data" / "tokenizer" / "20B_tokenizer.json"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    import lm_eval

    config = get_config(args.preset) if args.preset else RWKVConfig(args.layers, args.width, NEOX_VOCAB, name="bench")
    with torch.device(args.device):
        model = RWKV(config)
    init_weights(model, zero_projections=False, orthogonal_matrices=False)
    model = model.to(getattr(torch, args.dtype)).eval()
    tasks = args.tasks.split(",")
    _, manager = task_manager(args.data_dir)
    rows, samples = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        save_model(model, folder, format="transformers", tokenizer_file=args.tokenizer)
        backends = {
            "rwkv_lab": (
                lambda: RWKVLM(model=model, tokenizer=args.tokenizer, device=args.device, batch_size=args.batch_size),
                args.limit,
            ),
            "hf": (lambda: "hf", args.hf_limit),
        }
        for name, (make, limit) in backends.items():
            for task in tasks:
                kw = (
                    {}
                    if name == "rwkv_lab"
                    else {
                        "model_args": f"pretrained={folder},dtype={args.dtype}",
                        "device": args.device,
                        "batch_size": args.batch_size,
                    }
                )
                t0 = time.perf_counter()
                out = lm_eval.simple_evaluate(
                    model=make(),
                    tasks=[task],
                    task_manager=manager,
                    limit=limit,
                    log_samples=True,
                    bootstrap_iters=0,
                    **kw,
                )
                seconds = time.perf_counter() - t0
                docs = out["samples"][task]
                n_req = sum(len(d["resps"]) for d in docs)
                samples[(name, task)] = {d["doc_id"]: [r[0][0] for r in d["resps"]] for d in docs}
                rows.append(
                    {
                        "backend": name,
                        "task": task,
                        "docs": len(docs),
                        "requests": n_req,
                        "seconds": seconds,
                        "docs_per_s": len(docs) / seconds,
                        "requests_per_s": n_req / seconds,
                        "params": model.num_params(),
                        "dtype": args.dtype,
                    }
                )
                print(rows[-1], flush=True)
    for task in tasks:
        ours, ref = samples[("rwkv_lab", task)], samples[("hf", task)]
        common = set(ours) & set(ref)
        worst = max(abs(a - b) / max(1.0, abs(b)) for d in common for a, b in zip(ours[d], ref[d]))
        for r in rows:
            if r["task"] == task:
                r["max_rel_diff_vs_hf"] = worst
                r["hf_note"] = "transformers RWKV: " + ("CUDA kernel" if _hf_kernel() else "Python loop (no kernel)")
    frame = pd.DataFrame(rows)
    write_table(results_dir() / "lm_eval" / f"throughput{args.tag}.csv", frame, vars(args), device=args.device)
    print(frame.to_string())


def _hf_kernel() -> bool:
    from transformers.models.rwkv import modeling_rwkv

    return getattr(modeling_rwkv, "rwkv_cuda_kernel", None) is not None


if __name__ == "__main__":
    main()
