"""RWKV-7's state update on the GPU: check the Triton kernel against float64, then time it beside fla's chunk_rwkv7.

    python benchmarks/bench_wkv7.py                # check + benchmark -> results/wkv7/wkv7_kernel_check.json,
                                                   #   results/wkv7/wkv7_variants_check.json,
                                                   #   results/wkv7/wkv7_gpu_benchmark.csv
    python benchmarks/bench_wkv7.py --skip-check   # the benchmark alone
    python benchmarks/bench_wkv7.py --check-only --quick
    python benchmarks/bench_wkv7.py --quick --rounds 3 --fla-shapes 8x1024x2048   # the tilings compared, ~8 min
    python benchmarks/bench_wkv7.py --quick --variant "bwd stretches in parallel"  # the default beside one tiling
    python benchmarks/bench_wkv7.py --skip-check --fla-shapes "" --variant ours --profile  # where the time goes

Check: ours (`wkv7(..., backend=)` for each of the Triton backends in KERNELS: the per-token kernel "triton" and the
chunked kernels "triton_chunked") against float64 forms computed on the GPU, on RWKV-7-like inputs
(log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr ~ U(0, 1), a random non-zero state) and with every decay at
RWKV-7's bound: outputs, final state and every gradient against the float64 recurrence up to T = 4096, against the
float64 chunked form (exact at any T, tested equal to the recurrence in CI) beyond; the forward alone at T = 2^20.
Then every tiling in VARIANTS against the float64 recurrence at (B, T, H) = (2, 1000, 4) (VARIANT_CHECK).

Benchmark: at (B, T, C) = (8, 1024, 2048) and (16, 4096, 2048), N = 64, bf16 inputs, fp32 initial state, forward and
forward + backward (torch.autograd.grad of y and the final state, every input and the state requiring gradients): ours
at each tiling in VARIANTS (triton_kernels.Tiling, passed to each call: a forward's backward runs at its tiling) and the
chunked kernels (CHUNKED), then, at the shapes in --fla-shapes (fla's autotuning takes minutes on its first call),
fla-core's `chunk_rwkv7` (imported if installed) with and without `lower_bound=-e^-0.5`, mapped as ours: w = log_w, a, b
as given, scale 1, its state (B, H, K, V) = ours transposed. Each time is the median of ROUNDS rounds of one candidate
(each round time_fn's median of 10 calls, CUDA events, forward then forward + backward); peak memory is the allocator's
peak during one call beyond what was allocated before it (the inputs). Every candidate against ours at the default
tiling on the same inputs (every output and gradient) is kept in the table. The table is rewritten after each candidate
(its parameters say whether the run completed): a run cut short keeps what it measured. A candidate that fails (a
compilation, out of memory) gets a row with its error. `--profile` adds results/wkv7/wkv7_kernels.csv: for each
candidate at each shape, the CUDA kernels of one forward + backward call by device time (torch.profiler), so the
difference between two candidates reads as kernels.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.timing import kernel_shares, peak_memory, time_fn
from rwkv_lab.ops.rwkv7 import wkv7, wkv7_chunked, wkv7_recurrent
from rwkv_lab.ops.rwkv7.triton_kernels import DEFAULT, Tiling, wkv7_triton
from rwkv_lab.results import results_dir, write_json, write_table

SHAPES = [(8, 1024, 2048), (16, 4096, 2048)]  # (B, T, C)
N = 64
ROUNDS = 5
LOWER_BOUND = -math.exp(-0.5)
# ours at these tilings, the default first (the others' errors are measured against it). Fields: stretch, rows /
# warps per forward program, rows_bwd / warps_bwd per backward program, partials (key-side sums stored per row
# block and added by torch instead of fp32 atomics), parallel (the backward's stretches at once after a pass carrying
# the state's gradient). A name says how it differs from the default.
VARIANTS = {
    "ours": DEFAULT,
    "x070 (bwd rows64 w4, fwd rows16)": Tiling(rows=16, rows_bwd=64, warps_bwd=4),
    "bwd rows64 w8": Tiling(rows_bwd=64, warps_bwd=8),
    "bwd rows32 w1": Tiling(rows_bwd=32, warps_bwd=1),
    "bwd rows16 w2": Tiling(rows_bwd=16, warps_bwd=2),
    "bwd rows16 w1 partials": Tiling(partials=True),
    "bwd rows8 w1": Tiling(rows_bwd=8, warps_bwd=1),
    "stretch8": Tiling(stretch=8),
    "bwd stretches in parallel": Tiling(parallel=True),
    "fwd rows64 w4": Tiling(rows=64, warps=4),
    "fwd rows64 w8": Tiling(rows=64, warps=8),
    "fwd rows16 w1": Tiling(rows=16, warps=1),
    "fwd rows8 w1": Tiling(rows=8, warps=1),
}
# the Triton backends the float64 check runs; the chunked kernels are also timed beside the tilings under this name
KERNELS = ("triton", "triton_chunked")
CHUNKED = "chunked kernels (triton_chunked)"
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


def check_kernel(device, cases=None, backends=KERNELS) -> list[dict]:
    """Each backend vs float64 on the GPU: one row per case and backend with each output's relative error."""
    references = {"recurrent": wkv7_recurrent, "chunked": wkv7_chunked}
    rows = []
    for B, T, H, case, dtype, reference, grads in cases or CHECK_CASES:
        inputs = rwkv7_inputs(B, T, H, N, dtype, device, seed=T, case=case)
        gen = torch.Generator(device=device).manual_seed(1)
        gy = torch.randn(B, T, H, N, generator=gen, device=device, dtype=torch.float64)
        gs = torch.randn(B, H, N, N, generator=gen, device=device, dtype=torch.float64)
        # the reference sees the same (rounded) inputs in float64: only arithmetic differs
        ref = outputs_and_grads(references[reference], [x.double() for x in inputs], gy, gs, grads)
        for backend in backends:
            got = outputs_and_grads(lambda *x: wkv7(*x, backend=backend), inputs, gy, gs, grads)
            row = {"backend": backend, "B": B, "T": T, "H": H, "N": N, "case": case,
                   "dtype": str(dtype).removeprefix("torch."), "reference": f"{reference} float64",
                   "tiling": str(DEFAULT) if backend == "triton" else None}  # fmt: skip
            row["finite"] = all(bool(torch.isfinite(x).all()) for x in got)
            for what, x, x_ref in zip(OUTPUTS, got, ref):
                row[f"rel_err_{what.replace(' ', '_')}"] = rel_error(x, x_ref)
            print(", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            rows.append(row)
            del got
        del inputs, ref
        torch.cuda.empty_cache()
    return rows


# (B, T, H): every tiling in VARIANTS against the float64 recurrence, fp32 RWKV-7-like inputs
VARIANT_CHECK = (2, 1000, 4)


def ours(tiling: Tiling):
    """Our kernel at `tiling` (forward and backward), the benchmark's inputs taken as they are (no bound check)."""
    return lambda *x: wkv7_triton(*x, tiling=tiling)


def check_variants(device, shape=VARIANT_CHECK, variants=None) -> list[dict]:
    """Every tiling vs the float64 recurrence on the same inputs: one row per tiling, each output's relative error
    (or the error that stopped it)."""
    B, T, H = shape
    inputs = rwkv7_inputs(B, T, H, N, torch.float32, device, seed=T)
    gen = torch.Generator(device=device).manual_seed(1)
    gy = torch.randn(B, T, H, N, generator=gen, device=device, dtype=torch.float64)
    gs = torch.randn(B, H, N, N, generator=gen, device=device, dtype=torch.float64)
    ref = outputs_and_grads(wkv7_recurrent, [x.double() for x in inputs], gy, gs)
    rows = []
    for name, tiling in (variants or VARIANTS).items():
        row = {"variant": name, "tiling": str(tiling), "B": B, "T": T, "H": H, "N": N, "error": None}
        try:
            got = outputs_and_grads(ours(tiling), inputs, gy, gs)
        except Exception as err:  # a tiling that fails to compile or run is a result: the others still run
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            got = None
        if got is not None:
            row["finite"] = all(bool(torch.isfinite(x).all()) for x in got)
            for what, x, x_ref in zip(OUTPUTS, got, ref):
                row[f"rel_err_{what.replace(' ', '_')}"] = rel_error(x, x_ref)
        errors = [v for k, v in row.items() if k.startswith("rel_err")]
        summary = row["error"] or f"largest rel err vs float64 {max(errors):.2e}"
        print(f"variant check {name}: {summary}", flush=True)
        rows.append(row)
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


def fla_candidates(device) -> dict:
    fla = peer_fla(device)
    if fla is None:
        return {}
    # lower_bound first: the one the summary compares with, kept if a run is cut short during the other
    return {"fla chunk_rwkv7 lower_bound": lambda *x: fla(*x, lower_bound=LOWER_BOUND), "fla chunk_rwkv7": fla}


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    try:
        shapes = [tuple(int(n) for n in s.split("x")) for s in text.split(",") if s]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 or s[2] % N for s in shapes):
        raise SystemExit(f"bench_wkv7: shapes must be BxTxC,... with C a multiple of N = {N}; got {text!r}")
    return shapes


def fwd_bwd(fn, inputs, gy):
    """A candidate's call as training makes it: y carries the gradient, the final state is returned."""

    def call():
        y, _ = fn(*inputs)
        return torch.autograd.grad(y, inputs, gy)

    return call


def measure(name, fn, inputs, gy, reference, rounds, device, shape) -> tuple[dict, list | None]:
    """One candidate at one shape: a row of times, peaks and errors against `reference` (None: this is the
    reference), and its outputs and gradients (None if it failed)."""
    B, T, C = shape
    row = {"candidate": name, "B": B, "T": T, "C": C, "N": N, "dtype": "bf16", "rounds": rounds, "error": None}

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    forward_backward = fwd_bwd(fn, inputs, gy)
    try:
        got = outputs_and_grads(fn, inputs, gy.double(), 0.0, True)
        times = {"fwd": [], "fwd_bwd": []}
        for _ in range(rounds):
            times["fwd"].append(time_fn(forward, device))
            times["fwd_bwd"].append(time_fn(forward_backward, device))
        for kind, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
            row[f"{kind}_ms"] = statistics.median(times[kind]) * 1e3
            peak = peak_memory(call, device)
            row[f"{kind}_peak_MiB"] = None if peak is None else peak / 2**20
    except Exception as err:  # a failing candidate is a result: the others still run
        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        got = None
        torch.cuda.empty_cache()
    if got is not None and reference is not None:
        for what, x, x_ref in zip(OUTPUTS, got, reference):
            row[f"rel_err_vs_ours_{what.replace(' ', '_')}"] = rel_error(x, x_ref)
    return row, got


def describe(row) -> str:
    B, T, C = row["B"], row["T"], row["C"]
    if row["error"]:
        return f"({B}, {T}, {C}) {row['candidate']}: failed: {row['error']}"
    errors = [v for k, v in row.items() if k.startswith("rel_err_vs_ours")]
    largest = f"; largest rel err vs ours {max(errors):.2e}" if errors else ""
    return (
        f"({B}, {T}, {C}) {row['candidate']}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms, "
        f"peak {row['fwd_bwd_peak_MiB']} MiB{largest}"
    )


def benchmark(device, shapes, rounds, fla_shapes, write=lambda rows: None, variants=None, profile=None) -> list[dict]:
    """Ours at every tiling and the chunked kernels at every shape, then fla at `fla_shapes`; `write(rows)` after
    each candidate; `profile(rows)`, if given, with every candidate's kernels (kernel_shares) after each one."""
    variants = variants or VARIANTS
    fla = fla_candidates(device) if fla_shapes else {}
    chunked = {CHUNKED: lambda *x: wkv7(*x, backend="triton_chunked", check=False)}
    plan = [(shape, {name: ours(t) for name, t in variants.items()} | chunked) for shape in shapes]
    plan += [(shape, fla) for shape in fla_shapes if fla]
    rows, kernels = [], []
    start = time.perf_counter()
    for shape, calls in plan:
        B, T, C = shape
        H = C // N
        inputs = [x.requires_grad_() for x in rwkv7_inputs(B, T, H, N, torch.bfloat16, device)]
        gy = torch.randn(B, T, H, N, device=device, dtype=torch.bfloat16)
        # every candidate's outputs and gradients against ours at the default tiling, on the same inputs
        reference = outputs_and_grads(ours(DEFAULT), inputs, gy.double(), 0.0, True)
        for name, fn in calls.items():
            print(f"[{time.perf_counter() - start:.0f} s] {shape} {name} ...", flush=True)
            row, _ = measure(name, fn, inputs, gy, reference, rounds, device, shape)
            rows.append(row)
            print(describe(row), flush=True)
            write(rows)
            if profile is not None and not row["error"]:
                at = {"candidate": name, "B": B, "T": T, "C": C}
                kernels += [at | r for r in kernel_shares(fwd_bwd(fn, inputs, gy), device)]
                profile(kernels)
        del inputs, reference
        torch.cuda.empty_cache()
    for shape in fla_shapes:
        at = [r for r in rows if (r["B"], r["T"], r["C"]) == shape and not r["error"]]
        peer = next((r for r in at if r["candidate"] == "fla chunk_rwkv7 lower_bound"), None)
        for row in at if peer else []:
            speed = peer["fwd_bwd_ms"] / row["fwd_bwd_ms"]
            print(f"{shape} {row['candidate']}: fwd+bwd {speed:.2f}x fla lower_bound's speed", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--quick", action="store_true", help="the check's cases up to T = 1000, and T = 2^20")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES), help="BxTxC,...")
    parser.add_argument(
        "--fla-shapes",
        default="x".join(map(str, SHAPES[0])),
        help="BxTxC,... at which fla is timed, after all of ours ('' for none; its autotuning takes minutes)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=list(VARIANTS),
        help="a tiling of VARIANTS to check and time (repeat it; default: all); 'ours', the default, always runs",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--profile", action="store_true", help="also each candidate's kernels: wkv7_kernels.csv")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.profile and device.type != "cuda":
        raise SystemExit("bench_wkv7: --profile reads CUDA kernels (torch.profiler); it needs --device cuda")
    shapes = parse_shapes(args.shapes)
    fla_shapes = parse_shapes(args.fla_shapes) if args.fla_shapes else []
    folder = results_dir() / "wkv7"
    chosen = {"ours"} | set(args.variant or VARIANTS)
    variants = {name: tiling for name, tiling in VARIANTS.items() if name in chosen}  # the default first
    if not args.skip_check:
        cases = QUICK_CASES if args.quick else CHECK_CASES
        rows = check_kernel(device, cases)
        params = {"cases": [list(map(str, c)) for c in cases], "backends": list(KERNELS)}
        params["description"] = "wkv7 Triton kernels (per-token and chunked) vs float64 (GPU)"
        print("wrote", write_json(folder / "wkv7_kernel_check.json", rows, params), flush=True)
        rows = check_variants(device, variants=variants)
        params = {
            "shape": VARIANT_CHECK,
            "variants": {name: str(t) for name, t in variants.items()},
            "description": "wkv7 Triton kernel at every benchmarked tiling vs the float64 recurrence (GPU)",
        }
        print("wrote", write_json(folder / "wkv7_variants_check.json", rows, params), flush=True)
    if not args.check_only:
        path = folder / "wkv7_gpu_benchmark.csv"
        params = {
            "shapes": shapes,
            "fla_shapes": fla_shapes,
            "rounds": args.rounds,
            "variants": {name: str(t) for name, t in variants.items()},
            "inputs": "bf16, RWKV-7-like: log_w = -e^-0.5 sigmoid(randn), unit-norm kappa, iclr ~ U(0, 1), fp32 state",
            "description": "RWKV-7 state update forward / forward+backward on the GPU: our Triton kernel vs fla",
        }
        volatile = ["fwd_ms", "fwd_bwd_ms", "fwd_peak_MiB", "fwd_bwd_peak_MiB"]

        def write(rows, complete=False):
            write_table(path, pd.DataFrame(rows), params | {"complete": complete}, volatile=volatile)

        profile = None
        if args.profile:
            kernels_path = folder / "wkv7_kernels.csv"
            kernel_params = params | {"description": "RWKV-7 state update: the CUDA kernels of one fwd+bwd call"}

            def profile(rows):
                write_table(kernels_path, pd.DataFrame(rows), kernel_params, volatile=["ms", "share", "device_ms"])

        rows = benchmark(device, shapes, args.rounds, fla_shapes, write, variants, profile)
        write(rows, complete=True)
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
