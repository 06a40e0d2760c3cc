"""CachedLauncher: its key tells apart every call Triton would compile differently, and it calls Triton's
launcher once per key, then the compiled kernel's launch with every parameter in order."""

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

from rwkv_lab import triton_launch
from rwkv_lab.triton_launch import CachedLauncher, specialization_key


def key(*args, grid=(4, 1), **constexprs):
    return specialization_key(grid, args, constexprs, device=0)


def test_the_key_separates_what_triton_specializes_on():
    x = torch.zeros(64)
    same = key(x, 32, None, BLOCK=16)
    assert key(torch.ones(64), 48, None, BLOCK=16) == same  # aligned fp32, both multiples of 16, not 1
    assert key(x[1:], 32, None, BLOCK=16) != same  # an address 4 bytes past 16-byte alignment
    assert key(x.half(), 32, None, BLOCK=16) != same
    assert key(x, 33, None, BLOCK=16) != same  # 16 no longer divides it
    assert key(x, 1, None, BLOCK=16) != key(x, 3, None, BLOCK=16)  # 1 is specialized as a constant
    assert key(x, 2**31 + 16, None, BLOCK=16) != same  # no longer an int32
    assert key(x, 32, x, BLOCK=16) != same  # None is a constant
    assert key(x, 32, None, BLOCK=32) != same
    assert key(x, 32, None, BLOCK=16, num_warps=4) != same
    assert key(x, 32, None, BLOCK=16, grid=(8, 1)) != same
    with pytest.raises(TypeError, match="unsupported kernel argument of type str"):
        key(x, "32")


class StubCompiled:
    """What Triton's launch returns: the compiled kernel. Its launch (`run`) is recorded; `[grid]` (its runner,
    whose first step loads the function handle) and `launch_metadata` are what a launch may use besides."""

    def __init__(self, runs):
        self.runs, self.function, self.packed_metadata = runs, None, "packed"

    def __getitem__(self, grid):
        self.function = "function"
        return None

    def launch_metadata(self, grid, stream, *args):
        return ("metadata", grid, stream, args)

    def run(self, *args):
        self.runs.append(args)


class StubKernel:
    """Stands in for a JITFunction: kernel[grid](...) is Triton's launch, recorded."""

    def __init__(self):
        self.launches, self.runs = [], []

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            self.launches.append((grid, args, constexprs))
            return StubCompiled(self.runs)

        return launch


def kernel(x_ptr, n, BLOCK: tl.constexpr, FLAG: tl.constexpr):
    pass


def stubbed_launcher(monkeypatch, device: int):
    """A CachedLauncher over `kernel` with Triton's launch stubbed, on `device` with stream 1000 + device, and no
    launch hooks set (None: some Triton versions keep empty hook chains instead)."""
    launcher = CachedLauncher(triton.runtime.JITFunction(kernel))
    stub = launcher.kernel = StubKernel()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: device)
    monkeypatch.setattr(triton_launch, "current_stream", lambda device: 1000 + device)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", None)
    monkeypatch.setattr(knobs.runtime, "launch_exit_hook", None)
    return launcher, stub


def test_triton_launches_once_per_key_then_the_compiled_kernel_is_called(monkeypatch):
    launcher, stub = stubbed_launcher(monkeypatch, device=0)
    assert launcher.compiled and launcher.constexpr_names == ["BLOCK", "FLAG"]
    x = torch.zeros(64)
    launcher[(4,)](x, 32, BLOCK=16, FLAG=True, num_warps=2)
    assert len(stub.launches) == 1 and not stub.runs
    launcher[(4,)](torch.ones(64), 48, BLOCK=16, FLAG=True, num_warps=2)
    assert len(stub.launches) == 1
    # the runner's launch: a grid of three dimensions, the stream, the handle and packed metadata, no launch
    # metadata or hooks; then every parameter in the kernel's order, the constexprs last; no options
    ((*head, x_arg, n_arg, block, flag),) = stub.runs
    assert head == [4, 1, 1, 1000, "function", "packed", None, None, None] and (n_arg, block, flag) == (48, 16, True)
    launcher[(4,)](x[1:], 32, BLOCK=16, FLAG=True, num_warps=2)  # a new key: Triton's launcher again
    assert len(stub.launches) == 2 and len(stub.runs) == 1
    with pytest.raises(TypeError, match="takes 2 runtime arguments; got 1"):
        launcher[(2,)](x, BLOCK=16, FLAG=True)


def test_launch_hooks_set_later_are_called_as_tritons_runner_calls_them(monkeypatch):
    """A profiler (proton) may set Triton's launch hooks after the kernel was first launched: the bound launch reads
    them on every call and then passes the launch metadata, as the compiled kernel's runner does."""
    launcher, stub = stubbed_launcher(monkeypatch, device=1)
    x = torch.zeros(64)
    launcher[(2, 3)](x, 32, BLOCK=16, FLAG=False)
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", "enter")
    monkeypatch.setattr(knobs.runtime, "launch_exit_hook", "exit")
    launcher[(2, 3)](x, 32, BLOCK=16, FLAG=False)
    ((*head, meta, enter, leave, _, n_arg, block, flag),) = stub.runs
    assert head == [2, 3, 1, 1001, "function", "packed"] and (enter, leave) == ("enter", "exit")
    assert meta == ("metadata", (2, 3, 1), 1001, (x, 32, 16, False)) and (n_arg, block, flag) == (32, 16, False)


def test_the_constexprs_must_come_last():
    def kernel(x_ptr, BLOCK: tl.constexpr, n):
        pass

    with pytest.raises(ValueError, match="constexprs must be its last parameters"):
        CachedLauncher(triton.runtime.JITFunction(kernel))


def test_a_launch_overlaps_only_where_asked_and_never_on_the_cpu():
    """overlap_options: no OVERLAP and no launch option unless asked, and on the CPU (Triton's interpreter, which has
    no gdc_wait) never (the GPU's overlapped decode step against its reference: test_gpu.py's decoder check)."""
    from rwkv_lab.triton_launch import overlap_options

    assert overlap_options(torch.device("cpu"), True) == (False, {})
    assert overlap_options(torch.device("cpu"), False) == (False, {})
