"""WKV: check the Triton kernel against the float64 reference, then time every backend and two peers.

    python benchmarks/bench_wkv.py                 # GPU: check + full benchmark -> results/wkv_*.{json,csv}
    python benchmarks/bench_wkv.py --quick         # a few cases, to try a change
    python benchmarks/bench_wkv.py --skip-check --backends triton --shapes 8x1024x768,8x1024x2048,16x4096x2048 \
        --tag _targets                             # the issue's shapes, ours and fla's -> wkv_benchmark_targets.csv
    python benchmarks/bench_wkv.py --device cpu    # CPU: chunked vs recurrent at (1, 4096, 768) fp32

Peers, measured in the same run when importable: fla-core's `fused_recurrent_rwkv4` (forward and backward) and the
`rwkv` package's CUDA `wkv_forward` (forward, B = 1; compiled at import with RWKV_CUDA_ON=1; fp16/fp32 only, so its
bf16 rows run fp16). Bandwidth counts the fewest bytes the operation must move: forward reads k, v and writes y;
forward+backward also reads k, v, dy and writes dk, dv.

Each call is timed three ways: as a program calls it, kernel by kernel (`*_ms`: CUDA events around the call, so the
larger of the host's launches and the device's work; for ours and fla's, the median of ROUNDS rounds taking turns,
`alternate`); the host's part alone (`*_host_ms`: issuing the call with the device idle); and the device's part
alone (`*_graphed_ms`: the call captured in a CUDA graph and replayed, as a training step replays it,
rwkv_lab.training.cuda_graph). The backward is `torch.autograd.grad` (no accumulation into .grad) for every
candidate.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.analysis.wkv_error import study_inputs
from rwkv_lab.measure.timing import copy_bandwidth, graphed_seconds, host_seconds, measure, time_fn
from rwkv_lab.ops.rwkv4 import BACKENDS, wkv, wkv_chunked, wkv_recurrent
from rwkv_lab.ops.rwkv4 import triton_kernels as wkv_triton
from rwkv_lab.results import results_dir, write_json, write_table

SHAPES = [(8, 1024, 768), (8, 1024, 2048), (16, 4096, 2048), (1, 4096, 2048), (1, 16384, 2048), (1, 65536, 4096)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FLA = "fla fused_recurrent_rwkv4"
ROUNDS = 5  # rounds of the compared calls' kernel-by-kernel timing (alternate)


def official_inputs(B, T, C, dtype, device, seed=0, extreme=False, state=True):
    """numerics.study_inputs (official-init decays or extreme ones), batch B, and a random non-empty state."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w, u, k, v = study_inputs(T, C, "extreme" if extreme else "official", batch=B, generator=gen)
    s = None
    if state:
        s = torch.stack(
            [
                torch.randn(B, C, generator=gen, dtype=torch.float64),
                torch.rand(B, C, generator=gen, dtype=torch.float64) + 0.5,
                3 * torch.randn(B, C, generator=gen, dtype=torch.float64),
            ],
            dim=1,
        ).float()
    to = lambda x, dt: x.to(device=device, dtype=dt)  # noqa: E731
    return to(w, torch.float32), to(u, torch.float32), to(k, dtype), to(v, dtype), None if s is None else s.to(device)


CHECK_CASES = [(2, 1, 64), (2, 2, 64), (2, 15, 96), (2, 63, 200), (1, 1000, 64), (4, 4096, 256)]  # (B, T, C)
CHECK_CASES_LONG = [(1, 16384, 512), (1, 65537, 128), (1, 1 << 20, 64)]  # beyond --quick


def check_kernel(device, quick: bool, cases: list[tuple[int, int, int]] | None = None) -> list[dict]:
    """Triton vs the float64 reference (recurrent up to T = 4096, chunked beyond: tested equal in CI), at `cases`
    (default: CHECK_CASES, and CHECK_CASES_LONG unless `quick`)."""
    cases = cases or CHECK_CASES + ([] if quick else CHECK_CASES_LONG)
    rows = []
    for B, T, C in tqdm(cases, desc="kernel check"):
        for extreme in (False, True):
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
                if (extreme or T > 100_000) and dtype != torch.float32:
                    continue  # |k| = 80 is beyond fp16; extreme keys and 1M tokens are fp32 checks
                inputs = official_inputs(B, T, C, dtype, device, seed=T, extreme=extreme)
                gy = torch.randn(B, T, C, device=device)
                gs = torch.randn(B, 3, C, device=device)

                def triton_grads():
                    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
                    y, s = wkv(*leaves, backend="triton")
                    ((y.float() * gy).sum() + (s * gs).sum()).backward()
                    return leaves, y, s

                # the first call's launches go through Triton's launcher (and compile); the checked second call's
                # through CachedLauncher's cache, the path every later call takes
                triton_grads()
                leaves, y, s = triton_grads()
                ref_leaves = [x.detach().double().requires_grad_(True) for x in inputs]
                ref = wkv_recurrent if T <= 4096 else wkv_chunked
                y_ref, s_ref = ref(*ref_leaves)
                ((y_ref * gy.double()).sum() + (s_ref * gs.double()).sum()).backward()
                row = {
                    "B": B,
                    "T": T,
                    "C": C,
                    "dtype": name,
                    "inputs": "extreme" if extreme else "official-init",
                    "reference": ref.__name__ + " fp64",
                    "rel_err_y": rel_error(y, y_ref),
                    "rel_err_state": rel_error(s, s_ref),
                }
                for n, a, r in zip(["w", "u", "k", "v", "state"], leaves, ref_leaves):
                    row[f"rel_err_d{n}"] = rel_error(a.grad, r.grad)
                row["finite"] = all(torch.isfinite(t).all().item() for t in [y, s] + [a.grad for a in leaves])
                rows.append(row)
    return rows


def peer_fla():
    try:
        from fla.ops.rwkv4 import fused_recurrent_rwkv4
    except Exception as err:  # noqa: BLE001
        print("fla unavailable:", err)
        return None

    def run(w, u, k, v, s, backward):
        # fla takes the raw time_decay and a (B, 3, 1, C) state
        td = torch.log(w).detach().requires_grad_(backward)
        state = s[:, :, None, :].contiguous()
        y, s_out = fused_recurrent_rwkv4(td, u, k, v, state)
        return y, s_out

    return run


def peer_rwkv_cuda():
    os.environ["RWKV_CUDA_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    try:
        import rwkv.model  # noqa: F401  (compiles the CUDA kernels)
    except Exception as err:  # noqa: BLE001
        print("rwkv CUDA kernel unavailable:", err)
        return None

    def run(w, u, k, v, s):
        T, C = k.shape[1], k.shape[2]
        y = torch.empty((T, C), device=k.device, dtype=k.dtype)
        aa, bb, pp = (x.clone() for x in s[0])
        torch.ops.rwkv.wkv_forward(1, T, C, -w, u, k[0], v[0], y, aa, bb, pp)
        return y

    return run


def bench(device, shapes: list[tuple[int, int, int]], backends: list[str]) -> list[dict]:
    fla = peer_fla()
    rwkv_cuda = peer_rwkv_cuda()
    rows = []
    jobs = [(shape, dn) for shape in shapes for dn in DTYPES]
    for (B, T, C), dname in tqdm(jobs, desc="benchmark"):
        dtype = DTYPES[dname]
        elem = torch.finfo(dtype).bits // 8
        fwd_bytes, fb_bytes = 3 * B * T * C * elem, 8 * B * T * C * elem
        inputs = official_inputs(B, T, C, dtype, device)
        candidates = {}
        for name in backends:
            if name == "recurrent" and T > 4096:
                continue  # a Python loop of T GPU steps: minutes per call at these lengths
            candidates[name] = (lambda n: lambda *a: wkv(*a, backend=n))(name)
        if fla is not None:
            candidates[FLA] = lambda w, u, k, v, s: fla(w, u, k, v, s, backward=k.requires_grad)
        measured, compared = {}, {}
        for name, fn in candidates.items():
            w, u, k, v, s = inputs
            parts = name in ("triton", FLA)  # the comparison of the issue; the others are slow to repeat
            forward = (lambda f: lambda: f(w, u, k, v, s))(fn)
            fwd = timed(forward, device, parts)
            leaves = [x.detach().clone().requires_grad_(True) for x in (u, k, v)]
            gy = torch.randn_like(v)

            def fwd_bwd(fn=fn, leaves=leaves, gy=gy):
                y, _ = fn(w, leaves[0], leaves[1], leaves[2], s)
                return torch.autograd.grad(y, leaves, gy)

            fb = timed(fwd_bwd, device, parts)
            measured[name] = (fwd, fb)
            if parts:
                compared |= {(name, "fwd"): (forward, fwd), (name, "fwd_bwd"): (fwd_bwd, fb)}
        # the compared calls' kernel-by-kernel times: the median of ROUNDS rounds that take turns (see alternate)
        ok = {key: fn for key, (fn, m) in compared.items() if m["status"] == "ok"}
        for key, seconds in alternate(ok, device, ROUNDS).items():
            compared[key][1]["seconds"] = seconds
        for name, (fwd, fb) in measured.items():
            rows.append(row(name, B, T, C, dname, fwd, fb, fwd_bytes, fb_bytes))
        if rwkv_cuda is not None and B == 1:
            w, u, k, v, s = inputs
            kk, vv = (k, v) if dtype == torch.float32 else (k.half(), v.half())
            fwd = timed(lambda: rwkv_cuda(w, u, kk, vv, s), device)
            name = "rwkv cuda_wkv" + (" (fp16)" if dtype != torch.float32 else "")
            rows.append(
                row(
                    name,
                    B,
                    T,
                    C,
                    dname,
                    fwd,
                    {"status": "n/a", "seconds": None, "peak_bytes": None},
                    fwd_bytes,
                    fb_bytes,
                )
            )
        del inputs
        torch.cuda.empty_cache()
    return rows


def alternate(calls: dict, device, rounds: int) -> dict:
    """key -> the median over `rounds` rounds of time_fn's seconds, every call timed once per round, in turn. A
    host-bound call's time moves with the state of the machine (other processes, clocks): taking turns exposes the
    candidates to it alike, and the median of the rounds sets a passing disturbance aside."""
    times = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            times[key].append(time_fn(fn, device))
    return {key: statistics.median(t) for key, t in times.items()}


def timed(fn, device, parts: bool = True) -> dict:
    """measure()'s {'status', 'seconds', 'peak_bytes'} of a call kernel by kernel, and with `parts` the host's part
    and the device's part (a CUDA graph's replay) beside it."""
    m = measure(fn, device)
    if parts and m["status"] == "ok":
        m["host_seconds"] = host_seconds(fn, device)
        m["graphed_seconds"] = graphed_seconds(fn, device)
    return m


def row(name, B, T, C, dname, fwd, fb, fwd_bytes, fb_bytes):
    out = {"backend": name, "B": B, "T": T, "C": C, "dtype": dname}
    for tag, m, nbytes in (("fwd", fwd, fwd_bytes), ("fwd_bwd", fb, fb_bytes)):
        ok = m["status"] == "ok"
        out[f"{tag}_status"] = m["status"]
        out[f"{tag}_ms"] = m["seconds"] * 1e3 if ok else None
        out[f"{tag}_tokens_per_s"] = B * T / m["seconds"] if ok else None
        out[f"{tag}_GBps"] = nbytes / m["seconds"] / 1e9 if ok else None
        out[f"{tag}_peak_MiB"] = m["peak_bytes"] / 2**20 if ok and m["peak_bytes"] is not None else None
        out[f"{tag}_host_ms"] = m["host_seconds"] * 1e3 if ok and "host_seconds" in m else None
        out[f"{tag}_graphed_ms"] = m["graphed_seconds"] * 1e3 if ok and "graphed_seconds" in m else None
    return out


def cpu_speed(out_dir: Path):
    torch.manual_seed(0)
    shape = (1, 4096, 768)
    w, u, k, v, s = official_inputs(*shape, torch.float32, "cpu")
    rows = []
    with torch.no_grad():
        for name in ("recurrent", "chunked"):
            m = measure(lambda: BACKENDS[name](w, u, k, v, s), "cpu", warmup=1, repeat=7)
            rows.append(
                {
                    "backend": name,
                    "B": shape[0],
                    "T": shape[1],
                    "C": shape[2],
                    "dtype": "fp32",
                    "fwd_ms": m["seconds"] * 1e3,
                    "threads": torch.get_num_threads(),
                }
            )
    rows.append({"backend": "speedup chunked/recurrent", "fwd_ms": rows[0]["fwd_ms"] / rows[1]["fwd_ms"]})
    path = write_table(out_dir / "wkv_cpu_speed.csv", pd.DataFrame(rows), {"shape": shape}, device="cpu")
    print(pd.DataFrame(rows).to_string(), "\n->", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shapes", default="", help="BxTxC,... instead of the default shapes")
    parser.add_argument("--tag", default="", help="suffix of the benchmark's output file")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/)")
    parser.add_argument("--backends", default="triton,chunked,recurrent,attention")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args()
    shapes = SHAPES[:2] + SHAPES[4:5] if args.quick else SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
        except ValueError:
            parser.error(f"--shapes takes BxTxC,... (e.g. 8x1024x768); got {args.shapes!r}")
        if any(len(shape) != 3 or min(shape) < 1 for shape in shapes):
            parser.error(f"--shapes takes BxTxC,... with three positive sizes each; got {args.shapes!r}")
    out_dir = args.out or results_dir()
    if args.device == "cpu":
        return cpu_speed(out_dir)
    device = torch.device(args.device)
    params = {
        "quick": args.quick,
        "chunk": wkv_triton.CHUNK,
        "block_c": wkv_triton.BLOCK_C,
        "scan_block": wkv_triton.SCAN_BLOCK,
        "rounds": ROUNDS,
        "scan_here_max_chunks": wkv_triton.SCAN_HERE_MAX_CHUNKS,
    }
    if not args.skip_check:
        checks = check_kernel(device, args.quick)
        write_json(out_dir / "wkv_kernel_check.json", checks, params, device=device)
        worst = max(max(r[k] for k in r if k.startswith("rel_err")) for r in checks if r["dtype"] == "fp32")
        print(
            pd.DataFrame(checks)[
                ["B", "T", "C", "dtype", "inputs", "rel_err_y", "rel_err_state", "rel_err_dk", "rel_err_dw", "finite"]
            ].to_string()
        )
        print(f"worst fp32 relative error: {worst:.2e}")
    if args.check_only:
        return
    bandwidth = copy_bandwidth(device)
    rows = bench(device, shapes, args.backends.split(","))
    frame = pd.DataFrame(rows)
    frame["copy_GBps"] = bandwidth / 1e9
    frame["fwd_pct_copy_bw"] = 100 * frame["fwd_GBps"] / (bandwidth / 1e9)
    params |= {"shapes": shapes, "backends": args.backends, "copy_GBps": bandwidth / 1e9}
    path = write_table(out_dir / f"wkv_benchmark{args.tag}.csv", frame, params, device=device)
    cols = ["backend", "B", "T", "C", "dtype", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_host_ms", "fwd_bwd_graphed_ms"]
    print(frame[cols].to_string(float_format=lambda x: f"{x:.3g}"))
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s -> {path}")


if __name__ == "__main__":
    main()
