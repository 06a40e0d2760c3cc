"""The LayerNorm + token shift + mixes kernels (rwkv_lab.norm_mix) at training shapes on the GPU: the full-size
counterpart of tests/test_norm_mix.py, and their time against what they replace.

    python benchmarks/check_norm_mix.py [--shapes 16x1024x768,16x1024x2048,2x8192x2048]

Per shape (B x T x C) and half (time-mix: 3 mixes, channel-mix: 2): the kernels' outputs and every gradient
against the eager ops in float64 (from a random carried last_x, with the last token's gradient), and the forward +
backward time, as training calls it (fp32 x, bf16 autocast), of the kernels and of the eager ops compiled by
torch.compile (inductor's fusion, the fused blocks' path before the kernels): the device time of their kernels in
one call (torch.profiler), the part a training step's CUDA graph replays. Writes results/training/norm_mix_check.csv
with its provenance.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.timing import cuda_kernels, time_fn
from rwkv_lab.norm_mix import norm_shift_mix, norm_shift_mix_eager
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="16x1024x768,16x1024x2048,2x8192x2048")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run, under TRITON_INTERPRET=1")
    args = parser.parse_args()
    device = torch.device(args.device)
    compiled = torch.compile(norm_shift_mix_eager)

    def device_ms(step) -> float:
        """The device time of one call: its kernels' (torch.profiler) on CUDA; the wall clock on the CPU."""
        if device.type != "cuda":
            return time_fn(step, device) * 1e3  # a smoke run (TRITON_INTERPRET=1)
        return sum(e.device_time_total for e in cuda_kernels(step, device)) / 1e3

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
            out, grads = forward_backward(norm_shift_mix, ln, x, last, mus, [gm.float() for gm in g], g_last.float())
            row["rel_err_worst_output"] = max(rel_error(a, b) for a, b in zip(out, ref_out))
            names = ["x", "last_x"] + [f"mu{m}" for m in range(M)] + ["ln_weight", "ln_bias"]
            row |= {f"rel_err_grad_{n}": rel_error(a, b) for n, a, b in zip(names, grads, ref_grads)}
            g_bf16 = [gm.to(torch.bfloat16) for gm in g]
            for name, fn in (("kernels", norm_shift_mix), ("inductor", compiled)):

                def step(fn=fn):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        return forward_backward(fn, ln, x, last, mus, g_bf16, g_last.float())

                row[f"{name}_device_ms"] = device_ms(step)
            row["speedup_vs_inductor"] = row["inductor_device_ms"] / row["kernels_device_ms"]
            rows.append(row)
            print(row, flush=True)
    frame = pd.DataFrame(rows)
    path = write_table(results_dir() / "training" / "norm_mix_check.csv", frame, vars(args), device=device)
    print(frame.to_string(float_format=lambda v: f"{v:.3g}"), "\n->", path)


if __name__ == "__main__":
    main()
