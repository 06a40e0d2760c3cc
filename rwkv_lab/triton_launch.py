"""Launching our Triton kernels with less host time than Triton's JIT launcher.

On every call, `kernel[grid](...)` binds the arguments, specializes each one, hashes the specialization and the
options into a cache key, looks the compiled kernel up and checks the globals it read, before the launch itself.
A WKV forward + backward is five launches (seven beyond 16 chunks), and at the benchmark's small shapes its host
part takes longer than its kernels (`results/wkv/wkv_host_profile.csv` has both, and one launch each way).

`@CachedLauncher` over `@triton.jit` keeps what Triton compiled for each specialization and calls its launch
directly: the body of the compiled kernel's runner, with the device, the grid and the constexprs bound once per
key instead of looked up on every call. Call sites keep the `kernel[grid](...)` form. Its key is finer than
Triton's specialization for NVIDIA targets: each tensor's dtype and whether its address is 16-byte aligned, each
integer's width, whether it is 1 and whether 16 divides it, None as None, every constexpr and option by value, and
the grid. Two calls with one key would be given the same compiled kernel; a new key goes through Triton's launcher
once (compiling or finding the kernel there). Under the interpreter (TRITON_INTERPRET=1, CPU tensors) nothing is
compiled, and every call is Triton's.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
from triton import knobs

try:  # programmatic dependent launch, a recent Triton's (the overlapped launches below)
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _PDL = "launch_pdl" in CUDAOptions.__dataclass_fields__
except ImportError:  # an older Triton: overlap_options says no, the kernels' OVERLAP branches never compiled
    gdc_launch_dependents = gdc_wait = None
    _PDL = False


def _spec(arg):
    """All that Triton's specialization can read from one runtime argument, and a little more."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if arg is None or isinstance(arg, bool):
        return arg
    if isinstance(arg, int):
        return int, -(2**31) <= arg < 2**31, arg == 1, arg % 16 == 0
    if isinstance(arg, float):
        return float
    raise TypeError(f"CachedLauncher: unsupported kernel argument of type {type(arg).__name__}")


def specialization_key(grid: tuple, args: tuple, constexprs: dict, device: int) -> tuple:
    return device, grid, tuple(map(_spec, args)), tuple(constexprs.items())


def current_stream(device: int) -> int:
    """The raw CUDA stream kernels launch on: torch's current stream, as Triton's driver reads it."""
    return torch._C._cuda_getCurrentRawStream(device)


def bound_launch(compiled, grid: tuple, device: int, constexpr_values: tuple):
    """fn(*runtime_args): what the compiled kernel's runner (`compiled[grid](*args)`) does, with its per-call
    lookups of the device and the launch's fixed arguments done once. The stream and Triton's launch hooks are
    still read per call (a profiler may set the hooks at any time)."""
    grid = tuple(grid) + (1,) * (3 - len(grid))  # the launch reads three grid dimensions
    compiled[grid]  # loads the module and the function handle on first use (the runner's own first step)
    gx, gy, gz = grid
    run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    hooks = knobs.runtime

    def launch(*args):
        stream = current_stream(device)
        enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook
        # the compiled kernel takes every parameter in order, the constexprs too (its launcher skips them)
        args = args + constexpr_values
        meta = None if enter is None else compiled.launch_metadata(grid, stream, *args)
        run(gx, gy, gz, stream, function, packed, meta, enter, leave, *args)

    return launch


class CachedLauncher:
    """`kernel[grid](*runtime_args, **constexprs_and_options)` as for a `triton.jit` kernel: the runtime
    arguments positional, in the kernel's order, its constexprs (the kernel's last parameters) by name."""

    # False: every launch through Triton's own launcher (profile_wkv_host.py measures the two side by side)
    enabled = True

    def __init__(self, kernel):
        self.kernel = kernel
        functools.update_wrapper(self, kernel.fn if hasattr(kernel, "fn") else kernel)
        # an interpreted kernel (TRITON_INTERPRET=1) is no JITFunction and leaves nothing compiled to call
        self.compiled = isinstance(kernel, triton.runtime.JITFunction)
        if self.compiled:
            names, constexprs = kernel.arg_names, kernel.constexprs
            if constexprs != list(range(len(names) - len(constexprs), len(names))):
                raise ValueError(f"CachedLauncher: {self.__name__}'s constexprs must be its last parameters")
            self.n_runtime = len(names) - len(constexprs)
            self.constexpr_names = [names[i] for i in constexprs]
        self.launches = {}  # specialization key -> bound_launch of its compiled kernel

    def __getitem__(self, grid: tuple):
        return functools.partial(self.launch, grid)

    def launch(self, grid: tuple, *args, **constexprs):
        if not (self.enabled and self.compiled):
            return self.kernel[grid](*args, **constexprs)
        device = torch.cuda.current_device()
        key = specialization_key(grid, args, constexprs, device)
        launch = self.launches.get(key)
        if launch is None:
            if len(args) != self.n_runtime:
                raise TypeError(f"{self.__name__} takes {self.n_runtime} runtime arguments; got {len(args)}")
            compiled = self.kernel[grid](*args, **constexprs)  # Triton's launch: compiles on a miss
            values = tuple(constexprs[n] for n in self.constexpr_names)
            self.launches[key] = bound_launch(compiled, grid, device, values)
            return
        launch(*args)


def overlap_options(device: torch.device, overlap: bool) -> tuple[bool, dict]:
    """(whether a decode-step kernel launched now on `device` overlaps the launch before it, as its OVERLAP
    constexpr; the launch options that make it so): asked for (`overlap`, RunConfig.overlapped_launches), possible
    with this Triton, and a Hopper or later GPU (the hardware of programmatic dependent launch) outside Triton's
    interpreter, which has no `gdc_wait`.

    A decode step at B = 1 is a chain of small launches, each waiting for the one before: its launch, then a chain
    of dependent loads, each a trip to memory, the card's bandwidth mostly idle. Launched as a programmatic
    dependent launch, a kernel may start while the one before it still runs (once every program of that one has
    called `gdc_launch_dependents`, or has ended). Each such kernel first reads what nothing recent writes (a grouped
    projection prefetches its weights into L2; a step kernel loads its layer's state and parameters), then
    `gdc_wait`s, which returns once the kernel before has ended with its writes visible, then lets the next one
    start, and only then reads its inputs and writes anything. So the launch before a kernel's wait is the only one
    that may still run: every earlier one ended before that one's wait returned."""
    on = overlap and _PDL and device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"
    on = on and torch.cuda.get_device_capability(device)[0] >= 9
    return on, ({"launch_pdl": True} if on else {})


@contextlib.contextmanager
def compiling_in_parallel(workers: int | None = None):
    """Within: every launch of a `triton.jit` kernel only compiles it, on a pool of `workers` threads (default: the
    CPU count), and launches nothing; on leaving, every compilation is waited for and cached where Triton's own
    launches find them. Run a computation through it once (its torch ops run on whatever the unlaunched kernels
    left in their outputs; nothing may read them) and then for real: its kernels compile side by side instead of
    one after another, as a first call meets them. Triton's compiler releases the GIL for much of its work (its
    C++ passes, ptxas): on a 2-core CPU the RWKV-7 168M step's kernels compile for an H100 in 8.1 s on 2 threads
    against 14.2 s one by one, RWKV-4 169M's in 2.9 s against 5.3 (results/inference/step_kernel_compile.csv).
    With a Triton that lacks asynchronous compilation, the launches inside run as usual (compiling one by one)."""
    from concurrent.futures import ThreadPoolExecutor

    try:  # Triton's asynchronous compilation, a private module of recent versions
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # an older Triton: the launches run as usual
        yield
        return
    with launches_compile_only(), ThreadPoolExecutor(workers or os.cpu_count()) as pool, AsyncCompileMode(pool):
        yield


@contextlib.contextmanager
def launches_compile_only(on_launch=None):
    """Within: every launch of a `triton.jit` kernel specialises and compiles it (or finds it compiled) and launches
    nothing; `on_launch(kernel)` sees what each launch compiled (under compiling_in_parallel, a future of it). The
    computation's torch ops run on whatever the unlaunched kernels left in their outputs: nothing may read them."""
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        if on_launch is not None:
            on_launch(kernel)
        return kernel

    JITFunction.run = compile_only
    try:
        yield
    finally:
        JITFunction.run = run


class HopperWithoutDevice:
    """A stand-in for Triton's CUDA driver naming an H100's target (sm_90, warps of 32) on a machine without a GPU:
    set active (`triton.runtime.driver.set_active`), a launch specialises and compiles for that target (ptxas ships
    with Triton) as far as launching. tests/compile_for_hopper.py and benchmarks/compile_step_kernels.py use it."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def is_active(self):
        return True
