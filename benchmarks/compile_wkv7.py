"""What the GPU compiler makes of RWKV-7's Triton kernels at each tiling in bench_wkv7's VARIANTS, and of the chunked
kernels (backend "triton_chunked", forward and backward), without a GPU.

    python benchmarks/compile_wkv7.py   # -> results/wkv7/wkv7_compiled.csv

Each variant's forward and backward are compiled for an H100 (sm_90a, N = 64, bf16 inputs as bench_wkv7 times
them) by Triton and its bundled ptxas, and read back: registers per thread, spilled bytes, the kernel's instructions,
and in the token loop's machine code (the longest backward branch) the instructions per warp, shuffles and barriers.
Instructions per token and head = loop instructions x warps x programs per head: the work the GPU issues per token
step, where the token loop (one program's chain of dependent steps) is what the kernels' time is made of. Registers
bound how many programs an SM holds at once (65536 per SM): programs beyond that wait for a second wave.

The chunked kernels' rows (variant "chunked kernels"): the two scans loop over chunks of CHUNK tokens (their loop
instructions x warps x programs per head / CHUNK per token and head, on the dependent chain as the per-token loop
is); the factor kernels run one program per chunk and head in parallel, off that chain (all their instructions x
warps / CHUNK). A training step runs factors, scan, factors again, scan_bwd and factors_bwd.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rwkv_lab.ops.rwkv7 import triton_chunked as chunked
from rwkv_lab.ops.rwkv7 import triton_kernels as kernels
from rwkv_lab.results import results_dir, write_table

N = 64
TARGET = GPUTarget("cuda", 90, 32)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# the pointers in fp32 (the compute dtype's buffers); the others hold bf16 inputs or outputs
FP32 = {"sa_ptr", "keep_ptr", "gkeep_ptr", "s0_ptr", "final_ptr", "dstate_ptr"}
KEY_GRADS = {"dr_ptr", "dw_ptr", "dk_ptr", "da_ptr", "db_ptr"}  # fp32 when the backward adds parts


def compile_kernel(jit, constexprs: dict, warps: int, fp32=frozenset()):
    """jit's kernel for TARGET: every `*_ptr` a bf16 pointer unless in FP32 | fp32, None pointers constexpr."""
    signature = {}
    for name in jit.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32 | fp32 else "*bf16"
        else:
            signature[name] = "i32"
    values = {(jit.arg_names.index(k),): v for k, v in constexprs.items()}
    return triton.compile(ASTSource(fn=jit, signature=signature, constexprs=values), target=TARGET,
                          options={"num_warps": warps})  # fmt: skip


def read_back(compiled) -> dict:
    """ptxas's registers and spills, and the token loop's instruction, shuffle and barrier counts."""
    with tempfile.TemporaryDirectory() as scratch:
        ptx, cubin = Path(scratch) / "k.ptx", Path(scratch) / "k.cubin"
        ptx.write_text(compiled.asm["ptx"])
        ptxas = BIN / "ptxas-blackwell" if (BIN / "ptxas-blackwell").exists() else BIN / "ptxas"
        log = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx, "-o", cubin], capture_output=True, text=True)
        if log.returncode:
            raise RuntimeError(f"ptxas failed: {log.stderr.strip().splitlines()[-1]}")
        sass = subprocess.run([BIN / "nvdisasm", "-c", cubin], capture_output=True, text=True, check=True)
    lines = sass.stdout.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    loop = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            body = [x for x in lines[labels[m.group(1)] : i] if re.match(r"\s*/\*[0-9a-f]+\*/", x)]
            loop = max(loop, body, key=len)
    return {
        "registers": int(re.search(r"Used (\d+) registers", log.stderr).group(1)),
        "spill_bytes": int(re.search(r"(\d+) bytes spill stores", log.stderr).group(1)),
        "instructions": sum(bool(re.match(r"\s*/\*[0-9a-f]+\*/", x)) for x in lines),
        "loop_instructions": len(loop),
        "loop_shuffles": sum("SHFL" in x for x in loop),
        "loop_barriers": sum("BAR" in x for x in loop),
    }


def kernels_of(tiling) -> list[tuple[str, object, int, int]]:
    """(pass, compiled kernel, warps, programs per head) for one tiling at N = 64."""
    fwd_rows, bwd_rows = min(tiling.rows, N), min(tiling.rows_bwd, N)
    sums = kernels.STORE if bwd_rows == N else kernels.PARTIAL if tiling.partials else kernels.ATOMIC
    fwd = compile_kernel(
        kernels._wkv7_fwd.kernel,
        {"N": N, "BV": fwd_rows, "STRETCH": tiling.stretch, "HAS_STATE": True, "SAVE": True, "DT": tl.float32},
        tiling.warps,
    )
    bwd = compile_kernel(
        kernels._wkv7_bwd.kernel,
        {
            "gstate_ptr": None,
            **({} if tiling.parallel else {"gkeep_ptr": None}),  # the carried gradients: Tiling.parallel's
            "N": N,
            "BV": bwd_rows,
            "STRETCH": tiling.stretch,
            "HAS_GSTATE": False,
            "SUMS": sums,
            "DT": tl.float32,
            "PARALLEL": tiling.parallel,
        },  # fmt: skip
        tiling.warps_bwd,
        frozenset() if sums == kernels.STORE else KEY_GRADS,
    )
    return [("fwd", fwd, tiling.warps, N // fwd_rows), ("bwd", bwd, tiling.warps_bwd, N // bwd_rows)]


# the chunked kernels' fp32 buffers: their factors, the kept states and the state's gradients
CHUNKED_FP32 = frozenset(
    {"reff_ptr", "y0_ptr", "wm_ptr", "u0_ptr", "bend_ptr", "kend_ptr", "decay_ptr", "states_ptr", "greff_ptr",
     "gv_scan_ptr", "gwm_ptr", "gu0_ptr", "gbend_ptr", "gkend_ptr", "gdecay_ptr", "gfinal_ptr", "gstate_ptr"}
)  # fmt: skip


def chunked_kernels() -> list[tuple[str, object, int, int, bool]]:
    """(pass, compiled kernel, warps, programs per head, on the dependent chain) for the chunked kernels at N = 64,
    with the launch settings of triton_chunked's _forward and _backward (training's: the scan keeps the states)."""
    common = {
        "N": N,
        "C": chunked.CHUNK,
        "DT": tl.float32,
        "PREC": chunked._precision(torch.float32, torch.bfloat16, training=True),
    }
    rows = min(chunked.ROWS, N)
    plan = [
        ("factors", chunked._chunk_factors, {}, 4, 1, False),
        ("scan", chunked._chunk_scan, {"BV": rows, "HAS_STATE": True, "KEEP": True}, 4, N // rows, True),
        ("scan_bwd", chunked._chunk_scan_bwd, {"HAS_GFINAL": True}, chunked.scan_bwd_warps(N), 1, True),
        ("factors_bwd", chunked._chunk_factors_bwd, {}, chunked.FACTORS_BWD_WARPS, 1, False),
    ]
    return [
        (kind, compile_kernel(launcher.kernel, common | extra, warps, CHUNKED_FP32), warps, programs, chain)
        for kind, launcher, extra, warps, programs, chain in plan
    ]


def main():
    spec = importlib.util.spec_from_file_location("bench_wkv7", Path(__file__).parent / "bench_wkv7.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = []
    for name, tiling in bench.VARIANTS.items():
        for kind, compiled, warps, programs in kernels_of(tiling):
            row = {"variant": name, "pass": kind, "warps": warps, "programs_per_head": programs}
            row |= read_back(compiled)
            row["instructions_per_token_and_head"] = row["loop_instructions"] * warps * programs
            row["programs_per_sm"] = 65536 // (max(row["registers"], 1) * 32 * warps)
            row["on_the_dependent_chain"] = True
            print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            rows.append(row)
    for kind, compiled, warps, programs, chain in chunked_kernels():
        row = {"variant": "chunked kernels", "pass": kind, "warps": warps, "programs_per_head": programs}
        row |= read_back(compiled)
        issued = row["loop_instructions"] if chain else row["instructions"]
        row["instructions_per_token_and_head"] = issued * warps * programs / chunked.CHUNK
        row["programs_per_sm"] = 65536 // (max(row["registers"], 1) * 32 * warps)
        row["on_the_dependent_chain"] = chain
        print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    params = {
        "target": "sm_90a",
        "N": N,
        "inputs": "bf16",
        "triton": triton.__version__,
        "variants": {name: str(t) for name, t in bench.VARIANTS.items()},
        "chunk": chunked.CHUNK,
        "description": "wkv7 Triton kernels as compiled for an H100 at each benchmarked tiling and the chunked kernels "
        "(no GPU needed)",
    }
    print("wrote", write_table(results_dir() / "wkv7" / "wkv7_compiled.csv", pd.DataFrame(rows), params))


if __name__ == "__main__":
    main()
