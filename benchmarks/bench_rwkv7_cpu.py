"""RWKV-7 on the CPU: our one-token step loop and prefill beside the `rwkv` package's RWKV_x070 on the same weights.

    python benchmarks/bench_rwkv7_cpu.py                       # 0.1B shape (L12, C768), fp32, 2 threads

Weights are random at the official scales (speed does not depend on them). Decode: `--new-tokens` one-token calls
after three warm-up calls, our `model.step(token, state)` (projections stored transposed, as the package stores
them) vs the package's `forward([token], state)`; prefill: `--prompt` tokens in one call, our `model.prefill`
vs the package's `forward(tokens, None)`. Each measurement is repeated `--repeats` times, ours and the package's
alternating (the machine's load hits both alike); the table holds the medians and the speedups. Writes
results/rwkv7/rwkv7_cpu_speed.csv.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.models.rwkv7 import RWKV7, RWKV7Config, init_weights
from rwkv_lab.models.rwkv7.peer import rwkv_package_x070
from rwkv_lab.results import results_dir, write_table

WARMUP = 3  # calls before timing, for both (TorchScript profiles the package's first calls, then optimises)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_ours(model, tokens: list[int]):
    state = model.init_state(1)
    for token in tokens[:WARMUP]:
        _, state = model.step(torch.tensor([token]), state, check=False)
    ids = [torch.tensor([t]) for t in tokens[WARMUP:]]
    return lambda: _steps(model, ids, state)


def _steps(model, ids, state):
    for token in ids:
        _, state = model.step(token, state, check=False)


def decode_peer(peer, tokens: list[int]):
    state = None
    for token in tokens[:WARMUP]:  # TorchScript profiles its first calls, then optimises
        _, state = peer.forward([token], state)

    def run():
        s = [t.clone() for t in state]
        for token in tokens[WARMUP:]:
            _, s = peer.forward([token], s)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50277)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=results_dir() / "rwkv7" / "rwkv7_cpu_speed.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = RWKV7Config(n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, name="0.1B-shape")
    model = init_weights(RWKV7(config), seed=0, zero_projections=False, orthogonal_matrices=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "x070.pth")
        peer = rwkv_package_x070()(model=str(Path(tmp) / "x070"), strategy="cpu fp32")
    model.store_projections_transposed()
    gen = torch.Generator().manual_seed(0)
    decode_tokens = torch.randint(0, args.vocab, (args.new_tokens + WARMUP,), generator=gen).tolist()
    prompt = torch.randint(0, args.vocab, (args.prompt,), generator=gen).tolist()
    prompt_tensor = torch.tensor([prompt])

    times = {key: [] for key in ("decode ours", "decode package", "prefill ours", "prefill package")}
    with torch.inference_mode():
        runs = {
            "decode ours": decode_ours(model, decode_tokens),
            "decode package": decode_peer(peer, decode_tokens),
            "prefill ours": lambda: model.prefill(prompt_tensor, check=False),
            "prefill package": lambda: peer.forward(prompt, None),
        }
        for _ in range(WARMUP - 1):  # warm-up: the package's TorchScript optimises after its first calls
            runs["prefill ours"]()
            runs["prefill package"]()
        for _ in range(args.repeats):
            for key, run in runs.items():
                times[key].append(timed(run))
                print(f"{key}: {times[key][-1]:.3f} s", flush=True)

    rows = []
    for phase, tokens in (("decode", args.new_tokens), ("prefill", args.prompt)):
        ours, package = (statistics.median(times[f"{phase} {who}"]) for who in ("ours", "package"))
        rows.append(
            {
                "phase": phase,
                "tokens": tokens,
                "ours_tokens_per_s": tokens / ours,
                "package_tokens_per_s": tokens / package,
                "speedup": package / ours,
                "ours_s": ours,
                "package_s": package,
                "repeats": args.repeats,
            }
        )
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    params = {**vars(args), "out": str(args.out), "config": config.to_dict(), "dtype": "float32"}
    params["generate_path"] = "not measured: rwkv_lab.generate does not run RWKV-7 models yet"
    write_table(args.out, frame, params)


if __name__ == "__main__":
    main()
