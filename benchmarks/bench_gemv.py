"""The decode step's grouped projections (ops/gemv.py) at the models' shapes: which tiling streams the weights
fastest, against cuBLAS and the copy bandwidth.

    python benchmarks/bench_gemv.py                         # -> results/inference/gemv_tiling.csv
    python benchmarks/bench_gemv.py --sizes pile-1.47B --batches 1,32

Per model size (`--arch`'s presets, fp16 weights) and batch, each launch of one layer's step kernels as the model
makes it (RWKV-7: r/k/v with the four LoRAs' first matrices; the LoRAs' second; the output; the channel mix's key;
its value. RWKV-4: k/v/r; the output; the channel mix's key and receptance; its value), timed at the default
tiling and at each of `--tilings`, and cuBLAS's F.linear over the same matrices one by one (what the PyTorch step
launches, without the mixes). Each time is a CUDA graph's replay of `--calls` launches divided by them (the
launches' own cost, as the decoder's captured step pays it), cycling through copies of the weights that exceed
the L2 cache, so every launch reads its weights from memory. Reports microseconds a launch, the weights' bytes
per second and their share of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools

import pandas as pd
import torch
import torch.nn.functional as F

from rwkv_lab.measure.timing import copy_bandwidth, graphed_seconds
from rwkv_lab.models import ARCHITECTURES
from rwkv_lab.ops.gemv import Norm, Projection, Tiling, grouped_gemv
from rwkv_lab.results import results_dir, write_table

L2_BYTES = 60 << 20  # more than an H100's (50 MiB) or H200's L2; the copies of the weights exceed 4x this
TILINGS = ",".join(
    ["16x16x256w4s3", "16x32x128w4s3", "16x16x128w4s4", "16x64x64w8s3", "16x16x512w4s2", "16x32x256w8s3"]
    + ["16x16x256w4s3k2", "16x16x256w4s3k4", "16x32x128w4s3k2", "16x32x128w4s3k4", "16x16x128w4s4k4"]  # split K
)


def parse_tiling(text: str) -> Tiling:
    """'16x32x128w4s3' -> Tiling(block_b=16, block_n=32, block_k=128, num_warps=4, num_stages=3); a suffix 'k4'
    splits K four ways (split_k=4)."""
    blocks, rest = text.split("w")
    warps, stages = rest.split("s")
    stages, _, split_k = stages.partition("k")
    return Tiling(*map(int, blocks.split("x")), int(warps), int(stages), int(split_k or 1))


def rwkv7_launches(config, B: int, device) -> dict:
    """name -> (x, projections, keyword arguments) of one RWKV-7 layer's step launches (value residual on)."""
    C, F_ = config.n_embd, config.ffn_dim
    loras = (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora)
    h = lambda *s: torch.randn(*s, device=device, dtype=torch.float16)  # noqa: E731
    mix = lambda: torch.rand(C, device=device, dtype=torch.float16)  # noqa: E731
    first = [Projection(h(C, C).t(), mix=mix()) for _ in range(3)] + [Projection(h(C, d), mix=mix()) for d in loras]
    second, col = [], 3 * C
    for d, act in zip(loras, ("tanh", None, None, "sigmoid")):
        second.append(Projection(h(d, C), x_col=col, act=act))
        col += d
    norm = lambda: Norm(h(C), h(C), 1e-5)  # noqa: E731 - the block's LayerNorm, in the launch's prologue
    return {
        "r,k,v + LoRA first": (h(B, C), first, {"last": h(B, C), "norm": norm()}),
        "LoRA second": (h(B, 3 * C + sum(loras)), second, {}),
        "output + residual": (h(B, C), [Projection(h(C, C).t())], {"residual": h(B, C)}),
        "ffn key (relu^2)": (
            h(B, C), [Projection(h(F_, C).t(), mix=mix(), out_act="relu2")], {"last": h(B, C), "norm": norm()}
        ),
        "ffn value + residual": (h(B, F_), [Projection(h(C, F_).t())], {"residual": h(B, C)}),
    }  # fmt: skip


def rwkv4_launches(config, B: int, device) -> dict:
    """name -> (x, projections, keyword arguments) of one RWKV-4 layer's step launches."""
    C, F_ = config.n_embd, config.dim_ffn
    h = lambda *s: torch.randn(*s, device=device, dtype=torch.float16)  # noqa: E731
    mixed = lambda n, k, **kw: Projection(  # noqa: E731
        h(n, k).t(), mix=torch.rand(k, device=device, dtype=torch.float16), mix_weighs="x", **kw
    )
    norm = lambda: Norm(h(C), h(C), 1e-5)  # noqa: E731 - the block's LayerNorm, in the launch's prologue
    return {
        "k,v,r": (h(B, C), [mixed(C, C) for _ in range(3)], {"last": h(B, C), "norm": norm()}),
        "output + residual": (h(B, C), [Projection(h(C, C).t())], {"residual": h(B, C)}),
        "ffn key, receptance": (
            h(B, C), [mixed(F_, C, out_act="relu2"), mixed(C, C, out_act="sigmoid")], {"last": h(B, C), "norm": norm()}
        ),
        "ffn value, gated + residual": (
            h(B, F_ + C), [Projection(h(C, F_).t())], {"residual": h(B, C), "gate": h(B, C)}
        ),
    }  # fmt: skip


def without_norm(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "norm"}


def torch_launches(x, projections, norm):
    """The launch's products as the PyTorch step makes them: F.layer_norm (where it has a norm), then one F.linear
    (cuBLAS) per matrix, without the mixes and activations (elementwise launches of their own there, not timed)."""
    if norm is not None:
        x = F.layer_norm(x, x.shape[1:], norm.weight, norm.bias, norm.eps)
    return [F.linear(x[:, q.x_col : q.x_col + q.weight.shape[0]], q.weight.t()) for q in projections]


def copies_of(launch, n: int):
    """n launches with their own weights (the same shapes, other storage): cycling them defeats the L2 cache."""
    x, projections, kw = launch
    out = [launch]
    for _ in range(n - 1):
        fresh = [dataclasses.replace(p, weight=same_layout_copy(p.weight)) for p in projections]
        out.append((x, fresh, kw))
    return out


def same_layout_copy(w: torch.Tensor) -> torch.Tensor:
    """A copy with w's strides (a transposed view stays one), so the kernel reads it as it reads w."""
    return torch.empty_strided(w.shape, w.stride(), dtype=w.dtype, device=w.device).copy_(w)


def weight_bytes(projections) -> int:
    return sum(p.weight.numel() * p.weight.element_size() for p in projections)


def timing(calls, *, nbytes: int, device, n: int, bandwidth: float) -> dict:
    """A row's timing columns: microseconds per launch, and the weights' bytes per second against the copy bandwidth."""
    seconds = per_launch_seconds(calls, device, n)
    return {"us": 1e6 * seconds, "share_of_copy_bandwidth": nbytes / seconds / bandwidth}


def per_launch_seconds(calls, device, n: int) -> float:
    """One graph of `n` calls cycling through `calls`; its replay's median seconds / n."""
    return graphed_seconds(lambda: [calls[i % len(calls)]() for i in range(n)], device) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="rwkv7", choices=("rwkv7", "rwkv4"))
    parser.add_argument("--sizes", default=None, help="the arch's presets (default: RWKV-7 168M and 1.47B)")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--tilings", default=TILINGS, help="BxNxKwWsS[kS], comma-separated (see parse_tiling)")
    parser.add_argument("--calls", type=int, default=48, help="launches per timed graph")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    arch = ARCHITECTURES[args.arch]
    sizes = args.sizes or ("pile-168M,pile-1.47B" if args.arch == "rwkv7" else "169M,1.5B")
    bandwidth = copy_bandwidth(device)
    tilings = [None] + [parse_tiling(t) for t in args.tilings.split(",") if t]
    launches_of = rwkv7_launches if args.arch == "rwkv7" else rwkv4_launches
    params = vars(args) | {"copy_bandwidth_Bps": bandwidth, "dtype": "float16", "L2_bytes_exceeded": L2_BYTES}
    rows = []
    for size, B in itertools.product(sizes.split(","), map(int, args.batches.split(","))):
        config = arch.get_config(size)
        for name, launch in launches_of(config, B, device).items():
            nbytes = weight_bytes(launch[1])
            group = copies_of(launch, max(2, -(-4 * L2_BYTES // nbytes)))
            base = {"arch": args.arch, "size": size, "batch": B, "launch": name, "weight_bytes": nbytes}
            timed = functools.partial(timing, nbytes=nbytes, device=device, n=args.calls, bandwidth=bandwidth)
            for tiling in tilings:
                calls = [lambda x=x, p=p, kw=kw, t=tiling: grouped_gemv(x, p, tiling=t, **kw) for x, p, kw in group]
                row = base | {"path": "grouped_gemv", "tiling": "default" if tiling is None else str(tiling)}
                try:
                    row |= timed(calls)
                except Exception as err:  # noqa: BLE001 - a tiling that does not compile or fit is a data point
                    row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
                rows.append(row)
                print(row, flush=True)
            if "norm" in launch[2]:  # what the LayerNorm in the prologue costs: the same launch without it
                calls = [lambda x=x, p=p, kw=kw: grouped_gemv(x, p, **without_norm(kw)) for x, p, kw in group]
                rows.append(base | {"path": "grouped_gemv without its LayerNorm", "tiling": "default"} | timed(calls))
                print(rows[-1], flush=True)
            # cuBLAS, one F.linear per matrix (F.linear's (N, K) weight is the projection's weight transposed), after
            # F.layer_norm where the launch has a LayerNorm: the PyTorch step's launches
            calls = [lambda x=x, p=p, kw=kw: torch_launches(x, p, kw.get("norm")) for x, p, kw in group]
            rows.append(base | {"path": "F.linear per matrix (cuBLAS)", "tiling": ""} | timed(calls))
            print(rows[-1], flush=True)
            del group
        write_table(results_dir() / "inference" / f"gemv_tiling{args.tag}.csv", pd.DataFrame(rows), params,
                    device=device)  # fmt: skip
    frame = pd.DataFrame(rows)
    if "us" in frame:
        best = frame.loc[frame.groupby(["size", "batch", "launch"])["us"].idxmin()]
        print(best[["size", "batch", "launch", "path", "tiling", "us", "share_of_copy_bandwidth"]].to_string())


if __name__ == "__main__":
    main()
