"""The LayerNorm + token shift + mixes kernels (rwkv_lab.ops.norm_mix) at training shapes on the GPU: the full-size
counterpart of tests/test_norm_mix.py, and their time against what they replace.

    python benchmarks/check_norm_mix.py [--shapes 16x1024x768,16x1024x2048,2x8192x2048] [--bwd-rows 8,16,32]

Per shape (B x T x C) and half (time-mix: 3 mixes, channel-mix: 2): the kernels' outputs and every gradient
against the eager ops in float64 (from a random carried last_x, with the last token's gradient), and the forward +
backward time, as training calls it (fp32 x, bf16 autocast), of the kernels and of the eager ops compiled by
torch.compile (inductor's fusion, the fused blocks' path before the kernels): the device time of their kernels in
one call (torch.profiler), the part a training step's CUDA graph replays. The kernels' time is also split into the
forward kernel's, the backward kernel's and the rest (the partial sums added up), beside the time each kernel would
take at the device's copy bandwidth for the bytes it must move; `--bwd-rows` times the backward at several
BWD_ROWS (tokens per program; the default's row is the one checked for errors). Writes
results/training/norm_mix_check.csv with its provenance.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.timing import copy_bandwidth, cuda_kernels, time_fn
from rwkv_lab.ops.norm_mix import norm_shift_mix, norm_shift_mix_eager
from rwkv_lab.ops.norm_mix import triton_kernels as kernels
from rwkv_lab.results import results_dir, write_table

HALVES = {"time-mix": 3, "channel-mix": 2}


def inputs(B, T, C, M, device, dtype):
    gen = torch.Generator(device=device).manual_seed(C + M)
    draw = lambda *shape: torch.randn(*shape, generator=gen, device=device, dtype=dtype)  # noqa: E731
    ln = torch.nn.LayerNorm(C, device=device, dtype=dtype)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * draw(C))
        ln.bias.copy_(0.3 * draw(C))
    x = (draw(B, T, C) * 2 + 0.5).requires_grad_()
    last = draw(B, C).requires_grad_()
    mus = [torch.rand(1, 1, C, generator=gen, device=device, dtype=dtype).requires_grad_() for _ in range(M)]
    return ln, x, last, mus


def forward_backward(fn, ln, x, last, mus, g, g_last):
    """fn's outputs and the gradients of x, last_x, the mixes and the LayerNorm's weight and bias."""
    mixed, h_last = fn(x, ln, last, mus)
    leaves = [x, last, *mus, ln.weight, ln.bias]
    grads = torch.autograd.grad([*mixed, h_last], leaves, [*[gm.to(m.dtype) for gm, m in zip(g, mixed)], g_last])
    return [*mixed, h_last], list(grads)


def bytes_moved(B, T, C, M) -> dict:
    """What each kernel must read and write at training dtypes (fp32 x and dx, bf16 mixes and their gradients)."""
    rows = B * T * C
    return {"fwd": rows * (4 + 2 * M), "bwd": rows * (4 + 2 * M + 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x1024x768,16x1024x2048,2x8192x2048")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run, under TRITON_INTERPRET=1")
    parser.add_argument("--bwd-rows", default=str(kernels.BWD_ROWS), help="BWD_ROWS values to time, comma-separated")
    args = parser.parse_args()
    device = torch.device(args.device)
    compiled = torch.compile(norm_shift_mix_eager)

    default_rows = kernels.BWD_ROWS
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None

    def device_ms(step) -> dict:
        """The device time of one call, in all and by kernel: torch.profiler's on CUDA; the wall clock on the CPU."""
        if device.type != "cuda":
            return {"all": time_fn(step, device) * 1e3}  # a smoke run (TRITON_INTERPRET=1)
        events = cuda_kernels(step, device)
        by = lambda name: sum(e.device_time_total for e in events if name in e.key) / 1e3  # noqa: E731
        total = sum(e.device_time_total for e in events) / 1e3
        return {"all": total, "fwd": by("_norm_mix_fwd"), "bwd": by("_norm_mix_bwd")}

    rows = []
    for shape in args.shapes.split(","):
        B, T, C = (int(n) for n in shape.split("x"))
        for half, M in HALVES.items():
            row = {"B": B, "T": T, "C": C, "half": half, "mixes": M}
            ln64, x64, last64, mus64 = inputs(B, T, C, M, device, torch.float64)
            g = list(torch.randn(M, B, T, C, device=device, dtype=torch.float64).unbind(0))  # one per mix
            g_last = torch.randn(B, C, device=device, dtype=torch.float64)
            ref_out, ref_grads = forward_backward(norm_shift_mix_eager, ln64, x64, last64, mus64, g, g_last)
            ln, x, last, mus = (
                ln64.float(),
                x64.detach().float().requires_grad_(),
                last64.detach().float().requires_grad_(),
                [m.detach().float().requires_grad_() for m in mus64],
            )
            # checked at the second call: the first's launches go through Triton's launcher, every later call's
            # through CachedLauncher's cache
            for _ in range(2):
                out, grads = forward_backward(
                    norm_shift_mix, ln, x, last, mus, [gm.float() for gm in g], g_last.float()
                )
            row["rel_err_worst_output"] = max(rel_error(a, b) for a, b in zip(out, ref_out))
            names = ["x", "last_x"] + [f"mu{m}" for m in range(M)] + ["ln_weight", "ln_bias"]
            row |= {f"rel_err_grad_{n}": rel_error(a, b) for n, a, b in zip(names, grads, ref_grads)}
            g_bf16 = [gm.to(torch.bfloat16) for gm in g]

            def step(fn):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return forward_backward(fn, ln, x, last, mus, g_bf16, g_last.float())

            row["inductor_device_ms"] = device_ms(lambda: step(compiled))["all"]
            if bandwidth is not None:
                row |= {f"{k}_bound_ms": n / bandwidth * 1e3 for k, n in bytes_moved(B, T, C, M).items()}
            for n_rows in sorted({int(r) for r in args.bwd_rows.split(",")} | {default_rows}):
                kernels.BWD_ROWS = n_rows
                times = device_ms(lambda: step(norm_shift_mix))
                kernels.BWD_ROWS = default_rows
                timed = dict(row, bwd_rows=n_rows, kernels_device_ms=times["all"])
                timed |= {f"kernel_{k}_ms": v for k, v in times.items() if k != "all"}
                timed["speedup_vs_inductor"] = timed["inductor_device_ms"] / timed["kernels_device_ms"]
                if n_rows != default_rows:  # errors are checked at the default only
                    timed = {k: v for k, v in timed.items() if not k.startswith("rel_err")}
                rows.append(timed)
                print(timed, flush=True)
    frame = pd.DataFrame(rows)
    path = write_table(
        results_dir() / "training" / "norm_mix_check.csv",
        frame,
        vars(args) | {"copy_GBps": bandwidth and bandwidth / 1e9},
        device=device,
    )
    print(frame.to_string(float_format=lambda v: f"{v:.3g}"), "\n->", path)


if __name__ == "__main__":
    main()
