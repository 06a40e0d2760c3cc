"""RWKV-7's state update on the GPU: check the Triton kernel against float64, then time it beside fla's chunk_rwkv7.

    python benchmarks/bench_wkv7.py                # check + benchmark -> results/wkv7/wkv7_kernel_check.json,
                                                   #                      results/wkv7/wkv7_gpu_benchmark.csv
    python benchmarks/bench_wkv7.py --skip-check   # the benchmark alone
    python benchmarks/bench_wkv7.py --check-only --quick

Check: ours (`wkv7(..., backend="triton")`) against float64 forms computed on the GPU, on RWKV-7-like inputs
(log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr ~ U(0, 1), a random non-zero state) and with every decay at
RWKV-7's bound: outputs, final state and every gradient against the float64 recurrence up to T = 4096, against the
float64 chunked form (exact at any T, tested equal to the recurrence in CI) beyond; the forward alone at T = 2^20.

Benchmark: at (B, T, C) = (8, 1024, 2048) and (16, 4096, 2048), N = 64, bf16 inputs, fp32 initial state, forward
and forward + backward (torch.autograd.grad of y and the final state, every input and the state requiring
gradients): ours at each tiling in VARIANTS, and fla-core's `chunk_rwkv7` (imported if installed) without and with
`lower_bound=-e^-0.5`, mapped as ours: w = log_w, a, b as given, scale 1, its state (B, H, K, V) = ours transposed.
Each time is the median of ROUNDS rounds taking turns (each round time_fn's median of 10 calls, CUDA events);
peak memory is the allocator's peak during one call beyond what was allocated before it (the inputs). ours vs fla
on the same inputs (every output and gradient) is printed and kept in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics

import pandas as pd
import torch
import torch.nn.functional as F

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.timing import peak_memory, time_fn
from rwkv_lab.ops.rwkv7 import triton_kernels, wkv7, wkv7_chunked, wkv7_recurrent
from rwkv_lab.results import results_dir, write_json, write_table

SHAPES = [(8, 1024, 2048), (16, 4096, 2048)]  # (B, T, C)
N = 64
ROUNDS = 5
LOWER_BOUND = -math.exp(-0.5)
# ours at these tilings (triton_kernels' module constants): the default first
VARIANTS = {
    "ours": {},
    "ours stretch8": {"STRETCH": 8},
    "ours bwd-rows32": {"BV_BWD": 32},
    "ours fwd-rows32": {"BV": 32},
}
OUTPUTS = ["y", "state", "grad r", "grad log_w", "grad k", "grad v", "grad a", "grad b", "grad state"]


def rwkv7_inputs(B, T, H, N, dtype, device, seed=0, case="rwkv"):
    """(r, log_w, k, v, a, b) in `dtype` and a random fp32 state, as RWKV-7 forms them; case 'decay_at_bound': every
    log_w = -e^-0.5 (the backward's worst case)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    randn = lambda *s: torch.randn(*(s or (B, T, H, N)), generator=gen, device=device)  # noqa: E731
    r, k, v = randn(), randn(), randn()
    log_w = LOWER_BOUND * (torch.sigmoid(randn()) if case == "rwkv" else torch.ones(B, T, H, N, device=device))
    kappa = F.normalize(randn(), dim=-1)
    iclr = torch.rand(B, T, H, N, generator=gen, device=device)
    return [x.to(dtype) for x in (r, log_w, k, v, -kappa, kappa * iclr)] + [randn(B, H, N, N)]


@contextlib.contextmanager
def tiling(**constants):
    old = {name: getattr(triton_kernels, name) for name in constants}
    for name, value in constants.items():
        setattr(triton_kernels, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(triton_kernels, name, value)


def outputs_and_grads(fn, inputs, gy, gs, grad: bool = True):
    """fn's y and final state, and with `grad` the gradients of <y, gy> + <state, gs> w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_(grad) for x in inputs]
    with torch.set_grad_enabled(grad):
        y, s = fn(*leaves)
        if not grad:
            return [y, s]
        grads = torch.autograd.grad((y.double() * gy).sum() + (s.double() * gs).sum(), leaves)
    return [y.detach(), s.detach(), *grads]


# (B, T, H, case, dtype, reference, gradients)
CHECK_CASES = [
    (2, 1, 4, "rwkv", torch.float32, "recurrent", True),
    (2, 17, 4, "rwkv", torch.float32, "recurrent", True),
    (2, 1000, 4, "rwkv", torch.float32, "recurrent", True),
    (2, 1000, 4, "decay_at_bound", torch.float32, "recurrent", True),
    (2, 1000, 4, "rwkv", torch.bfloat16, "recurrent", True),
    (1, 4096, 2, "rwkv", torch.float32, "recurrent", True),
    (1, 65537, 2, "rwkv", torch.float32, "chunked", True),
    (1, 1 << 20, 1, "rwkv", torch.float32, "chunked", False),
]
QUICK_CASES = [c for c in CHECK_CASES if c[1] <= 1000 or c[1] == 1 << 20]


def check_kernel(device, cases=None) -> list[dict]:
    """Ours vs float64 on the GPU: one row per case with each output's relative error."""
    references = {"recurrent": wkv7_recurrent, "chunked": wkv7_chunked}
    rows = []
    for B, T, H, case, dtype, reference, grads in cases or CHECK_CASES:
        inputs = rwkv7_inputs(B, T, H, N, dtype, device, seed=T, case=case)
        gen = torch.Generator(device=device).manual_seed(1)
        gy = torch.randn(B, T, H, N, generator=gen, device=device, dtype=torch.float64)
        gs = torch.randn(B, H, N, N, generator=gen, device=device, dtype=torch.float64)
        got = outputs_and_grads(lambda *x: wkv7(*x, backend="triton"), inputs, gy, gs, grads)
        # the reference sees the same (rounded) inputs in float64: only arithmetic differs
        ref = outputs_and_grads(references[reference], [x.double() for x in inputs], gy, gs, grads)
        row = {"B": B, "T": T, "H": H, "N": N, "case": case, "dtype": str(dtype).removeprefix("torch."),
               "reference": f"{reference} float64", "stretch": triton_kernels.STRETCH}  # fmt: skip
        row["finite"] = all(bool(torch.isfinite(x).all()) for x in got)
        for what, x, x_ref in zip(OUTPUTS, got, ref):
            row[f"rel_err_{what.replace(' ', '_')}"] = rel_error(x, x_ref)
        print(", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        rows.append(row)
        del inputs, got, ref
        torch.cuda.empty_cache()
    return rows


def peer_fla(device):
    if device.type != "cuda":
        return None  # fla's kernels run on a GPU only (the interpreter does not run them)
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError as err:
        print("fla unavailable:", err)
        return None

    def call(r, log_w, k, v, a, b, state, lower_bound=None):
        # fla's state is (B, H, K, V): ours (B, H, V, K) transposed
        y, s = chunk_rwkv7(
            r, log_w, k, v, a, b, scale=1.0, initial_state=state.transpose(-1, -2).contiguous(),
            output_final_state=True, lower_bound=lower_bound,
        )  # fmt: skip
        return y, s.transpose(-1, -2)

    return call


def candidates(device):
    calls = {}
    for name, constants in VARIANTS.items():

        def ours(*x, constants=constants):
            with tiling(**constants):
                return wkv7(*x, backend="triton", check=False)

        calls[name] = ours
    fla = peer_fla(device)
    if fla is not None:
        calls["fla chunk_rwkv7"] = fla
        calls["fla chunk_rwkv7 lower_bound"] = lambda *x: fla(*x, lower_bound=LOWER_BOUND)
    return calls


def benchmark(device, shapes, rounds) -> list[dict]:
    calls = candidates(device)
    rows = []
    for B, T, C in shapes:
        H = C // N
        inputs = [x.requires_grad_() for x in rwkv7_inputs(B, T, H, N, torch.bfloat16, device)]
        gy = torch.randn(B, T, H, N, device=device, dtype=torch.bfloat16)

        def forward(fn, inputs=inputs):
            with torch.no_grad():
                return fn(*inputs)

        def forward_backward(fn, inputs=inputs):  # training's case: y carries the gradient, the final state is returned
            y, _ = fn(*inputs)
            return torch.autograd.grad(y, inputs, gy)

        got = {name: outputs_and_grads(fn, inputs, gy.double(), 0.0, True) for name, fn in calls.items()}
        timings = {(name, kind): [] for name in calls for kind in ("fwd", "fwd_bwd")}
        for _ in range(rounds):
            for name, fn in calls.items():
                timings[name, "fwd"].append(time_fn(lambda fn=fn: forward(fn), device))
                timings[name, "fwd_bwd"].append(time_fn(lambda fn=fn: forward_backward(fn), device))
        for name, fn in calls.items():
            row = {"candidate": name, "B": B, "T": T, "C": C, "N": N, "dtype": "bf16", "rounds": rounds}
            for kind, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
                row[f"{kind}_ms"] = statistics.median(timings[name, kind]) * 1e3
                peak = peak_memory(lambda fn=fn, call=call: call(fn), device)
                row[f"{kind}_peak_MiB"] = None if peak is None else peak / 2**20
            # every candidate against ours (the default tiling), the same inputs
            for what, x, x_ref in zip(OUTPUTS, got[name], got["ours"]):
                row[f"rel_err_vs_ours_{what.replace(' ', '_')}"] = rel_error(x, x_ref)
            rows.append(row)
        for row in rows[-len(calls) :]:
            fla = next((r for r in rows[-len(calls) :] if r["candidate"] == "fla chunk_rwkv7 lower_bound"), None)
            speed = f", {fla['fwd_bwd_ms'] / row['fwd_bwd_ms']:.2f}x fla lower_bound" if fla else ""
            errors = max(v for k, v in row.items() if k.startswith("rel_err_vs_ours"))
            print(
                f"({B}, {T}, {C}) {row['candidate']}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms"
                f"{speed}, peak {row['fwd_bwd_peak_MiB']} MiB; largest rel err vs ours {errors:.2e}"
            )
        del inputs, got
        torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the check's cases up to T = 1000, and T = 2^20")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES), help="BxTxC,...")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    device = torch.device(args.device)
    folder = results_dir() / "wkv7"
    if not args.skip_check:
        cases = QUICK_CASES if args.quick else CHECK_CASES
        rows = check_kernel(device, cases)
        params = {"cases": [list(map(str, c)) for c in cases], "description": "wkv7 Triton kernel vs float64 (GPU)"}
        print("wrote", write_json(folder / "wkv7_kernel_check.json", rows, params))
    if not args.check_only:
        shapes = [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]
        table = pd.DataFrame(benchmark(device, shapes, args.rounds))
        params = {
            "shapes": shapes,
            "rounds": args.rounds,
            "variants": VARIANTS,
            "inputs": "bf16, RWKV-7-like: log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr ~ U(0, 1), fp32 state",
            "description": "RWKV-7 state update forward / forward+backward on the GPU: our Triton kernel vs fla",
        }
        volatile = [c for c in table.columns if c.endswith("_ms") or c.endswith("_MiB")]
        path = write_table(folder / "wkv7_gpu_benchmark.csv", table, params, volatile=volatile)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print("wrote", path)


if __name__ == "__main__":
    main()
