"""The Triton kernels compile for an H100 (sm_90) on this machine without a GPU (tests/compile_for_hopper.py, in a
process of its own with the interpreter off and a fresh Triton cache): the paths that launch them on a GPU (each
generation's decode step kernels in fp16, fp32 and bf16, the grouped projections' other tilings and their LayerNorm
launch, the sampler's launches, RWKV-4's squared ReLU and gates and RWKV-7's time mix around the prefill operators,
those operators and RWKV-7's training operators both ways) reach Triton's NVIDIA code generator and ptxas, which the
CPU tests, interpreted, never do; and a step's kernels compiled side by side (triton_launch.compiling_in_parallel,
as the decoder's first step) are the ones the step then launches."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELS = (
    ("_grouped_gemv", "_layer_norm_rows", "_time_mix_step", "_wkv_gate_step", "_chunk_factors", "_chunk_scan")
    + ("_wkv7_fwd", "_wkv7_bwd", "_wkv7_bwd_carry", "_chunk_scan_bwd", "_chunk_factors_bwd")
    + ("_slice_max", "_slice_hist", "_compact", "_choose")
    + ("_norm_mix_fwd_stacked", "_time_mix_inputs", "_time_mix_output", "_relu_square", "_gated")
)


def test_the_kernels_compile_for_an_h100(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(HERE.parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, str(HERE / "compile_for_hopper.py")], env=env, capture_output=True, text=True, timeout=600
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    compiled = {line.split()[3] for line in done.stdout.splitlines() if line.startswith("compiled for sm_90:")}
    assert compiled == set(KERNELS), f"compiled {sorted(compiled)}; expected {sorted(KERNELS)}"
    assert "the step then found every one compiled" in done.stdout  # triton_launch.compiling_in_parallel
