"""RWKV-7 on the CPU: our one-token step loop and prefill beside the `rwkv` package's RWKV_x070 on the same weights.

    python benchmarks/bench_rwkv7_cpu.py                       # 0.1B shape (L12, C768), fp32, 2 threads

Weights are random at the official scales (speed does not depend on them). Decode: `--new-tokens` one-token calls
after three warm-up calls, our `model.step(token, state)` (projections stored transposed, as the package stores
them) and the package's `forward([token], state)` alternating token by token; prefill: `--prompt` tokens in one
call, our `model.prefill` and the package's `forward(tokens, None)` alternating, `--repeats` times; generate:
`rwkv_lab.generate` (greedy, its decode phase per token: the decoder, sampling and detokenising) against the
package's loop of `forward([token], state)` and argmax over as many tokens, taking turns. Alternating
makes a shared machine's changing load hit both alike; the table holds the medians per call and the speedups
(the package's time over ours), the provenance the load average. Writes results/rwkv7/rwkv7_cpu_speed.csv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.inference.generation import generate
from rwkv_lab.loading.tokenizer import load_tokenizer
from rwkv_lab.models.rwkv7 import RWKV7, RWKV7Config, init_weights
from rwkv_lab.models.rwkv7.peer import rwkv_package_x070
from rwkv_lab.ops import rwkv7 as ops_rwkv7
from rwkv_lab.results import results_dir, write_table

NEOX_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizer" / "20B_tokenizer.json"
WARMUP = 3  # calls before timing, for both (TorchScript profiles the package's first calls, then optimises)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_times(model, peer, tokens: list[int]) -> tuple[list[float], list[float]]:
    """Seconds per one-token call, ours and the package's alternating token by token (after WARMUP calls each)."""
    ours, theirs = [], []
    state, peer_state = model.init_state(1), None
    for i, token in enumerate(tokens):
        ids = torch.tensor([token])
        start = time.perf_counter()
        _, state = model.step(ids, state, check=False)
        middle = time.perf_counter()
        _, peer_state = peer.forward([token], peer_state)
        end = time.perf_counter()
        if i >= WARMUP:
            ours.append(middle - start)
            theirs.append(end - middle)
    return ours, theirs


def generate_times(model, peer, tokenizer, new_tokens: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per generated token: `rwkv_lab.generate` (greedy, a short prompt: its decode phase, through the
    decoder, with sampling and detokenising as a user gets them) and the package's forward loop over as many
    tokens, taking turns `repeats` times."""
    ours, theirs = [], []
    for _ in range(repeats):
        stats: dict = {}
        generate(model, tokenizer, "The", max_new_tokens=new_tokens, temperature=0, stats=stats)
        ours.append(stats["decode_s"] / max(1, stats["tokens"] - 1))  # the first token comes from the prefill
        state, token, start = None, 0, time.perf_counter()
        for _ in range(new_tokens):
            logits, state = peer.forward([token], state)
            token = int(logits.argmax())
        theirs.append((time.perf_counter() - start) / new_tokens)
    return ours, theirs


def measure(model, peer, tokenizer, decode_tokens, prompt, repeats: int, threads: int) -> list[dict]:
    """One row per phase: medians per call, ours and the package's, and the speedup."""
    with torch.inference_mode():
        decode_ours, decode_package = decode_times(model, peer, decode_tokens)
        generate_ours, generate_package = generate_times(model, peer, tokenizer, len(decode_tokens), repeats)
        prefill = {
            "ours": lambda: model.prefill(torch.tensor([prompt]), check=False),
            "package": lambda: peer.forward(prompt, None),
        }
        for _ in range(WARMUP - 1):  # the package's TorchScript optimises after its first calls
            for run in prefill.values():
                run()
        prefill_times = {"ours": [], "package": []}
        for _ in range(repeats):
            for who, run in prefill.items():
                prefill_times[who].append(timed(run))
    rows = []
    measured = {
        "decode": (1, decode_ours, decode_package),
        "generate (decode phase)": (1, generate_ours, generate_package),
        "prefill": (len(prompt), prefill_times["ours"], prefill_times["package"]),
    }
    for phase, (tokens, ours_times, package_times) in measured.items():
        ours, package = statistics.median(ours_times), statistics.median(package_times)
        rows.append(
            {
                "threads": threads,
                "phase": phase,
                "tokens_per_call": tokens,
                "calls": len(ours_times),
                "ours_tokens_per_s": tokens / ours,
                "package_tokens_per_s": tokens / package,
                "speedup": package / ours,
                "ours_median_s": ours,
                "package_median_s": package,
            }
        )
    print(pd.DataFrame(rows).to_string(index=False), f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="CPU threads; several: one run each")
    parser.add_argument("--new-tokens", type=int, default=64, help="timed one-token calls of each")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=results_dir() / "rwkv7" / "rwkv7_cpu_speed.csv")
    parser.add_argument("--tokenizer", type=Path, default=NEOX_TOKENIZER, help="GPT-NeoX-20B's tokenizer.json")
    args = parser.parse_args(argv)
    config = RWKV7Config(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, name="0.1B-shape")
    model = init_weights(RWKV7(config), seed=0, zero_projections=False, orthogonal_matrices=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "x070.pth")
        peer = rwkv_package_x070()(model=str(Path(tmp) / "x070"), strategy="cpu fp32")
    model.store_projections_transposed()
    tokenizer = load_tokenizer(str(args.tokenizer))
    gen = torch.Generator().manual_seed(0)
    decode_tokens = torch.randint(0, args.vocab, (args.new_tokens + WARMUP,), generator=gen).tolist()
    prompt = torch.randint(0, args.vocab, (args.prompt,), generator=gen).tolist()

    rows, loads = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows += measure(model, peer, tokenizer, decode_tokens, prompt, args.repeats, threads)
        loads.append(os.getloadavg()[0])
    frame = pd.DataFrame(rows)
    params = {**vars(args), "out": str(args.out), "config": config.to_dict(), "dtype": "float32"}
    params["load_average_1min"] = dict(zip(args.threads, loads))
    # which WKV-7 forms were installed (prefill runs 'auto'; the step 'recurrent')
    params["wkv7_module"] = {"file": Path(ops_rwkv7.__file__).name, "backends": sorted(ops_rwkv7.BACKENDS)}
    write_table(args.out, frame, params)


if __name__ == "__main__":
    main()
