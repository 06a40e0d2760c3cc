"""A batch of prompts of different lengths prefilled in one call (`model.prefill(tokens, lengths=)`, what
`generate` runs for a batch): where it is cut into pieces, and the one-launch LayerNorm + shift + mixes.

    python benchmarks/bench_prefill_pieces.py                  # H100 / H200 -> results/inference/prefill_pieces.csv
    python benchmarks/bench_prefill_pieces.py --device cpu --sizes tiny --batches 4 --lengths 2,13   # a smoke run

Per generation and size (random weights at the released shapes, fp16 on a GPU) and batch (prompt lengths drawn
from --lengths with the batch as seed, as bench_generation.py's mixed batches; random ids), the prefill's time as
`generate` calls it (pieces of at most PREFILL_CHUNK tokens a prompt and PREFILL_TOKENS over the batch) with the
pieces cut
- at fixed lengths (the pass cost PASS_TOKENS set beyond any padding: one span, cut every max(64, PREFILL_TOKENS /
  B) tokens; what generate did before the plan);
- at the prompts' lengths, `ops.lengths.prefill_pieces`, at each pass cost of --pass-tokens (its default,
  PASS_TOKENS, among them);
and at the default pass cost with the blocks' LayerNorms, shifts and mixes, and the rest of their elementwise work
(ops/pointwise.py, ops/rwkv7/prefill_kernels.py), as eager ops (RunConfig.norm_mix_kernels off). Each row: the
passes, the tokens run (padding included) over the prompts' tokens, the median milliseconds of --repeat calls
(after one) and the prompts' tokens per second.
"""

from __future__ import annotations

import argparse
import contextlib

import pandas as pd
import torch
from bench_generation import build_at_size

from rwkv_lab.inference.generation import PREFILL_CHUNK, PREFILL_TOKENS
from rwkv_lab.measure.timing import time_fn
from rwkv_lab.ops import lengths as lengths_module
from rwkv_lab.results import results_dir, write_table

SIZES = {"rwkv7": "pile-168M,pile-1.47B", "rwkv4": "169M,1.5B"}


@contextlib.contextmanager
def pass_tokens(value: int):
    """Within: ops.lengths.PASS_TOKENS (the plan's cost of a pass, in tokens) set to `value`, restored after."""
    before = lengths_module.PASS_TOKENS
    lengths_module.PASS_TOKENS = value
    try:
        yield
    finally:
        lengths_module.PASS_TOKENS = before


def measure(model, tokens, lengths, cost: int, mix_kernels: bool, device, repeat: int) -> dict:
    listed = lengths.tolist()
    with pass_tokens(cost):
        pieces = lengths_module.prefill_pieces(listed, PREFILL_CHUNK, PREFILL_TOKENS)
        model.configure(norm_mix_kernels=mix_kernels)
        try:
            seconds = time_fn(
                lambda: model.prefill(tokens, chunk=PREFILL_CHUNK, batch_tokens=PREFILL_TOKENS, lengths=lengths),
                device,
                warmup=1,
                repeat=repeat,
            )
        finally:
            model.configure(norm_mix_kernels=True)
    return {
        "passes": len(pieces),
        "tokens_run_over_prompts": lengths_module.tokens_run(listed, pieces) / sum(listed),
        "ms": 1e3 * seconds,
        "tokens_per_s": sum(listed) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="rwkv4,rwkv7", help="generations, comma-separated")
    parser.add_argument("--sizes", default=None, help="sizes for every arch given (default: per arch, SIZES)")
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--lengths", default="16,1024", help="shortest,longest prompt in tokens")
    parser.add_argument("--pass-tokens", default="256,1024,4096", help="pass costs to plan at, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    shortest, longest = map(int, args.lengths.split(","))
    costs = sorted(set(map(int, args.pass_tokens.split(","))) | {lengths_module.PASS_TOKENS})
    params = vars(args) | {"dtype": str(dtype), "PASS_TOKENS": lengths_module.PASS_TOKENS}
    params |= {"PREFILL_CHUNK": PREFILL_CHUNK, "PREFILL_TOKENS": PREFILL_TOKENS}
    path = results_dir() / "inference" / f"prefill_pieces{args.tag}.csv"
    rows = []
    for arch in args.arch.split(","):
        for size in (args.sizes or SIZES[arch]).split(","):
            model = build_at_size(arch, size, dtype, device)
            for batch in map(int, args.batches.split(",")):
                gen = torch.Generator().manual_seed(batch)
                lengths = torch.randint(shortest, longest + 1, (batch,), generator=gen)
                tokens = torch.randint(
                    0, min(20000, model.config.vocab_size), (batch, int(lengths.max())), generator=gen
                )
                tokens, lengths = tokens.to(device), lengths.to(device)
                base = {"arch": arch, "size": size, "batch": batch, "prompt_tokens": int(lengths.sum())}
                plans = [("fixed pieces (before)", 10**12, True)]
                plans += [(f"cut at the lengths, pass {c} tokens", c, True) for c in costs]
                plans += [
                    (
                        f"cut at the lengths, pass {lengths_module.PASS_TOKENS} tokens, eager mixes and elementwise",
                        lengths_module.PASS_TOKENS,
                        False,
                    )
                ]
                for name, cost, kernels in plans:
                    rows.append(
                        base | {"pieces": name} | measure(model, tokens, lengths, cost, kernels, device, args.repeat)
                    )
                    print(rows[-1], flush=True)
                    write_table(path, pd.DataFrame(rows), params, device=device)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(pd.DataFrame(rows).to_string(float_format=lambda v: f"{v:.4g}"))
    print("wrote", path)


if __name__ == "__main__":
    main()
