"""Compile the project's Triton kernels for an H100 (sm_90) on a machine without a GPU, through the paths that launch
them: run by tests/test_compile_for_hopper.py in a process of its own (Triton's interpreter off).

CI has no GPU, and Triton's interpreter, which runs the kernels there, is not its GPU compiler: a kernel can pass
every CPU test and still fail to compile for a GPU (an op the interpreter accepts and the code generator does not,
a layout, a dtype). Triton's NVIDIA backend compiles to PTX and a cubin without a device (ptxas ships with it). So
here a stand-in driver names an sm_90 target, and every launch is turned into a warm-up: it specialises and
compiles the kernel for the arguments the real path gives it, and launches nothing. The torch ops around the
launches run on the CPU on whatever the unlaunched kernels left in their outputs, which nothing here reads.

Prints one line per compiled kernel and its specialisations, and exits non-zero on the first failure.
"""

from __future__ import annotations

import collections
import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without Triton's interpreter: this compiles for the GPU"

import torch  # noqa: E402
from triton.runtime import driver  # noqa: E402

H100_SHARED_MEMORY = 232_448  # bytes a block may use (227 KiB), what Triton checks when it loads a kernel


def cached_kernels(*jits) -> int:
    """How many compiled specialisations the kernels hold (device 0's cache)."""
    return sum(len(jit.device_caches[0][0]) for jit in jits)


def main() -> None:
    from rwkv_lab.triton_launch import CachedLauncher, HopperWithoutDevice, launches_compile_only

    driver.set_active(HopperWithoutDevice())
    CachedLauncher.enabled = False  # every launch through Triton's launcher, which launches_compile_only intercepts
    launched: list = []  # what each launch compiled or found (under compiling_in_parallel, a future of it)
    with launches_compile_only(launched.append):
        compile_every_path()
    counts = collections.Counter(kernel.metadata.name for kernel in launched)
    for kernel, count in sorted(counts.items()):
        print(f"compiled for sm_90: {kernel} ({count} launches)")
    # a kernel whose pipeline's buffers exceed a block's shared memory compiles and fails only when loaded onto
    # the device (OutOfResources): check what each compiled specialisation asks for against an H100's limit
    compiled = [k.result() if hasattr(k, "result") else k for k in launched]
    over = {(k.metadata.name, k.metadata.shared) for k in compiled if k.metadata.shared > H100_SHARED_MEMORY}
    for name, shared in sorted(over):
        print(f"over an H100's shared memory: {name} asks for {shared:,} bytes of {H100_SHARED_MEMORY:,}")
    assert not over, f"{len(over)} specialisations need more shared memory than an H100 block has"


def compile_every_path() -> None:
    from rwkv_lab.inference.sampling_kernel import sample_kernel
    from rwkv_lab.models import architecture
    from rwkv_lab.ops.gemv import Norm, Projection, Tiling, grouped_gemv
    from rwkv_lab.ops.rwkv7 import wkv7
    from rwkv_lab.triton_launch import compiling_in_parallel

    torch.manual_seed(0)
    # compiled side by side (ptxas on every core), as the decoder compiles a step's kernels: each compilation is
    # waited for on leaving, and main() reads each one's result, so a failure still fails here
    with torch.no_grad(), compiling_in_parallel():
        # each generation's decode step through its step kernels, in the dtypes the GPU runs: fp16 (generation;
        # RWKV-4's with its rescaling), fp32 (the decoder check), bf16 (RWKV-7's World models)
        every = (torch.float16, torch.float32, torch.bfloat16)
        for name, dtypes in (("rwkv7", every), ("rwkv4", every[:2])):
            arch = architecture(name)
            for dtype in dtypes:
                # batches of 3 (a batch block of 16 rows) and, in fp16 at a width of two K blocks of 256 (one is not
                # multi-buffered), of 40 (64 rows, each pipeline stage the largest: ops/gemv.py `_default_tiling`)
                for width, batch in ((128, 3),) + ((512, 40),) * (dtype == torch.float16):
                    model = arch.build(arch.get_config(f"byte-2x{width}")).to(dtype).eval()
                    model.configure(step_kernels=True, **({"rescale_every": 1} if name == "rwkv4" else {}))
                    model.step(torch.arange(1, batch + 1), model.init_state(batch), check=False)
                print(f"{name} {dtype} step: compiled", flush=True)
        # the grouped projections at the other tilings bench_gemv times, split K's atomics and barrier among them
        SPLIT = Tiling(16, 16, 256, split_k=4)
        x, W = torch.randn(2, 256, dtype=torch.float16), torch.randn(256, 512, dtype=torch.float16)
        others = (Tiling(16, 64, 64, num_warps=8, num_stages=2), Tiling(16, 32, 256, num_warps=8), SPLIT)
        defaults_at_2048 = (Tiling(16, 64, 64, num_stages=4), Tiling(16, 16, 256, num_stages=4))  # K >= 2,048
        # batches of 17 and more: wide launches, and beyond 64 rows the split K and the narrow outputs
        big_batch = (Tiling(64, 64, 64, num_stages=4), Tiling(64, 64, 64, num_stages=4, split_k=2), Tiling(64, 32, 128))
        for tiling in others + defaults_at_2048 + big_batch:
            grouped_gemv(x, [Projection(W)], tiling=tiling)
        # the overlapped launches (programmatic dependent launch, triton_launch.overlap_options; CUDA devices only, so
        # forced here): both generations' steps, the weights' prefetch for both layouts, F.linear's (N, K) and a
        # LoRA's (K, N), with a LayerNorm and split K
        from rwkv_lab.ops import gemv
        from rwkv_lab.ops.rwkv4 import step_kernel as step4
        from rwkv_lab.ops.rwkv7 import step_kernel as step7

        launching = [(module, module.overlap_options) for module in (gemv, step4, step7)]
        for module, _ in launching:
            module.overlap_options = lambda device, overlap: (overlap, {"launch_pdl": True} if overlap else {})
        try:
            for name in ("rwkv7", "rwkv4"):
                arch = architecture(name)
                model = arch.build(arch.get_config("byte-2x128")).half().eval()
                model.configure(step_kernels=True, overlapped_launches=True)
                model.step(torch.arange(1, 4), model.init_state(3), check=False)
            norm = Norm(torch.ones(256, dtype=torch.float16), torch.zeros(256, dtype=torch.float16), 1e-5)
            grouped_gemv(x, [Projection(W), Projection(W.t().contiguous().t())], last=x, norm=norm, overlap=True)
            grouped_gemv(x, [Projection(W)], tiling=SPLIT, overlap=True)
        finally:
            for module, options in launching:
                module.overlap_options = options
        print("overlapped launches: compiled", flush=True)
        # the LayerNorm in a launch of its own (wider than gemv.norm_in_prologue takes): at 2,048 and 5,120 (14B)
        for width in (2048, 5120):
            norm = Norm(torch.ones(width, dtype=torch.float16), torch.zeros(width, dtype=torch.float16), 1e-5)
            W = torch.randn(width, 64, dtype=torch.float16)
            grouped_gemv(torch.randn(1, width, dtype=torch.float16), [Projection(W)], norm=norm)
        # the sampler's launches at a real vocabulary's size, with a nucleus and without
        seeds = torch.zeros(2, dtype=torch.int64)
        for top_p in (0.9, 1.0):
            sample_kernel(torch.randn(2, 50277, dtype=torch.float16), 1.0, top_p, seeds, seeds)
        # the inference blocks' LayerNorm, shift and mixes (both generations' prefill): RWKV-7's six and one stacked
        from rwkv_lab.ops.norm_mix.triton_kernels import norm_shift_mix_stacked_triton

        h = torch.randn(2, 5, 768, dtype=torch.float16)
        for mixes in (6, 1):
            ln_w, ln_b = torch.ones(768, dtype=torch.float16), torch.zeros(768, dtype=torch.float16)
            norm_shift_mix_stacked_triton(h, ln_w, ln_b, torch.randn(2, 768), torch.rand(mixes, 768), 1e-5)
        # RWKV-4's squared ReLU and gates in a prefill, in the dtypes it runs (fp16 rescaled, fp32, bf16)
        from rwkv_lab.ops.pointwise import gated, relu_square_

        for dtype in (torch.float16, torch.float32, torch.bfloat16):
            t = torch.randn(3, 5, 768, dtype=dtype)
            relu_square_(t.clone(), 2)
            gated(t, t, 1)
        # RWKV-7's time mix around its operator in a prefill, at 12 heads of 64 (a masked head tile): the first
        # layer and a later one, a padded batch and one length, in the two half types
        from rwkv_lab.ops.rwkv7.prefill_kernels import TimeMixParams, time_mix_inputs, time_mix_output

        for dtype in (torch.float16, torch.bfloat16):
            vec = torch.randn(1, 1, 768, dtype=dtype)
            ln = torch.ones(768, dtype=dtype)
            params = TimeMixParams(vec, vec, vec, vec, vec, torch.randn(12, 64, dtype=dtype), ln, ln, 0.6, 64e-5)
            t = torch.randn(2, 5, 768, dtype=dtype)
            for v_first, lengths in ((None, None), (t, torch.tensor([5, 2]))):
                log_w, k, v, a, b = time_mix_inputs(t, t, t, t, v_first, v_first, params, lengths)
                time_mix_output(t.view(2, 5, 12, 64), t, k, v, t, params)
        # RWKV-7's prefill operators, forward: the chunked kernels ('auto' with grad mode off) and the per-token one
        r, log_w, k, v, a, b = (torch.randn(1, 40, 2, 64, dtype=torch.float16) for _ in range(6))
        for backend in ("triton_chunked", "triton"):
            wkv7(r, -log_w.abs() * 0.1, k, v, a, b, torch.zeros(1, 2, 64, 64), backend=backend, check=False)
        # RWKV-7's training operators in bf16, forward and backward: the per-token kernel's stretches stepped back one
        # after another (the default) and in parallel after the carrying pass, and the chunked kernels
        from rwkv_lab.ops.rwkv7.triton_kernels import Tiling as WKV7Tiling
        from rwkv_lab.ops.rwkv7.triton_kernels import wkv7_triton

        with torch.enable_grad():
            for parallel in (False, True):
                xs = [x.bfloat16().requires_grad_() for x in (r, -log_w.abs() * 0.1, k, v, a, b)]
                y, _ = wkv7_triton(*xs, torch.zeros(1, 2, 64, 64), tiling=WKV7Tiling(parallel=parallel))
                y.float().sum().backward()
            # and the chunked kernels' training pass: the scan keeping each chunk's state, then the backward's three
            xs = [x.bfloat16().requires_grad_() for x in (r, -log_w.abs() * 0.1, k, v, a, b)]
            y, _ = wkv7(*xs, torch.zeros(1, 2, 64, 64), backend="triton_chunked", check=False)
            y.float().sum().backward()
    # a step's kernels compiled side by side (what the decoder does before its first step), then the step itself
    # finds every one of them compiled
    from rwkv_lab.ops.gemv import _grouped_gemv
    from rwkv_lab.ops.rwkv7.step_kernel import _time_mix_step

    with torch.no_grad():
        model = architecture("rwkv7").build(architecture("rwkv7").get_config("byte-2x256")).half().eval()
        model.configure(step_kernels=True)
        state, before = model.init_state(2), cached_kernels(_grouped_gemv, _time_mix_step)
        with compiling_in_parallel(2):
            model.step(torch.tensor([1, 2]), state, check=False)
        compiled = cached_kernels(_grouped_gemv, _time_mix_step)
        model.step(torch.tensor([1, 2]), state, check=False)
        assert compiled > before and cached_kernels(_grouped_gemv, _time_mix_step) == compiled
        print(f"compiled in parallel: {compiled - before} kernels; the step then found every one compiled")


if __name__ == "__main__":
    try:
        main()
    except Exception as err:  # noqa: BLE001 - the failure's one line, then the traceback
        print(f"FAILED to compile for sm_90: {type(err).__name__}: {err}", flush=True)
        raise
    sys.exit(0)
