"""RWKV-7's Triton kernel (interpreted on the CPU in CI) against the float64 recurrence: outputs, final state and
every gradient (the initial state's included), random non-zero initial states; at every tiling bench_wkv7 times.

The full-size check on a GPU is tests/test_gpu.py's test_wkv7_triton_kernel_matches_float64 (benchmarks/bench_wkv7.py).
"""

import importlib.util
import math

import pytest
import torch
from helpers import REPO, TOL, assert_rel_close
from test_rwkv7_ops import OUTPUTS, make_inputs, run

from rwkv_lab.ops.rwkv7 import resolve_backend, wkv7, wkv7_recurrent
from rwkv_lab.ops.rwkv7 import triton_kernels as kernels
from rwkv_lab.ops.rwkv7.triton_kernels import DEFAULT, Tiling


def triton(*inputs):
    return wkv7(*inputs, backend="triton")


def bench_variants() -> dict:
    """benchmarks/bench_wkv7.py's VARIANTS (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("bench_wkv7", REPO / "benchmarks" / "bench_wkv7.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


def inputs_for(case, B, T, H, N, seed, dtype):
    """test_rwkv7_ops's cases, and every decay at RWKV-7's bound log_w = -e^-0.5 (the backward's worst case)."""
    inputs = make_inputs(B, T, H, N, case="rwkv" if case == "decay_at_bound" else case, seed=seed, dtype=dtype)
    if case == "decay_at_bound":
        inputs[1] = torch.full_like(inputs[1], -math.exp(-0.5))
    return inputs


def check(name, inputs, tol, grad_tol=None, tiling=DEFAULT):
    """The kernel at `tiling` and the float64 recurrence on the same inputs (so only arithmetic differs), every
    output."""
    got = run(lambda *x: kernels.wkv7_triton(*x, tiling=tiling), inputs)
    ref = run(wkv7_recurrent, [x.double() for x in inputs])
    for i, (what, x, x_ref) in enumerate(zip(OUTPUTS, got, ref)):
        assert_rel_close(f"{name} {what}", x, x_ref, tol if i < 2 or grad_tol is None else grad_tol)


# At N = 16: RWKV-LM's stretch of 16 tokens with one program per head both ways (its key-side gradients stored
# whole); stretches of 4 (several within a short T) with the backward's rows split over programs, their key-side
# parts added by atomics, and stored per row block and added by torch (partials); and the stretches stepped back in
# parallel from the carried gradient (parallel: at T = 17 and 40 a last stretch shorter than the others).
TILINGS = {
    "stretch16-rows16-bwd-whole-head": Tiling(stretch=16, rows=16, rows_bwd=16, warps_bwd=4),
    "stretch4-rows8-bwd-rows8-atomic": Tiling(stretch=4, rows=8, rows_bwd=8),
    "stretch4-rows8-bwd-rows8-partials": Tiling(stretch=4, rows=8, rows_bwd=8, partials=True),
    "stretch4-rows8-bwd-rows8-parallel": Tiling(stretch=4, rows=8, rows_bwd=8, parallel=True),
    "stretch16-rows16-bwd-whole-head-parallel": Tiling(stretch=16, rows=16, rows_bwd=16, warps_bwd=4, parallel=True),
}


@pytest.mark.parametrize("tiling", TILINGS.values(), ids=TILINGS.keys())
@pytest.mark.parametrize("T", [1, 5, 16, 17, 40])
def test_kernel_matches_float64_reference(tiling, T):
    # T = 5, 17, 40 leave a partial stretch at the end; 16 ends on a stretch; N = 16 keeps the interpreter fast
    inputs = inputs_for("rwkv", 2, T, 2, 16, seed=T, dtype=torch.float32)
    check(f"triton fp32 T={T}", inputs, TOL["float32"], tiling=tiling)


def test_every_benchmarked_tiling_matches_float64_reference():
    """Each tiling bench_wkv7 times, at the benchmark's head size N = 64 (so each splits a head as it does there),
    T = 21 (not a multiple of any stretch), fp32 inputs (bf16's rounding of the gradients would hide 1e-3 errors;
    the bf16 path is test_head_size_64_and_half_precision_inputs's) and a random non-zero state: every output and
    gradient against float64; each tiling's forward and backward run at that tiling."""
    inputs = inputs_for("rwkv", 1, 21, 1, 64, seed=12, dtype=torch.float32)
    for name, tiling in bench_variants().items():
        assert 21 % tiling.stretch, f"{name}: T = 21 is a multiple of its stretch {tiling.stretch}"
        check(f"triton fp32 {name}", inputs, TOL["float32"], tiling=tiling)


def test_a_backward_refuses_kept_states_of_another_stretch():
    *xs, st = inputs_for("rwkv", 1, 9, 1, 4, seed=13, dtype=torch.float32)
    y, final, sa, kept = kernels._forward(*xs, st, Tiling(stretch=4))
    with pytest.raises(ValueError, match="3 kept states for T = 9 do not match the tiling's stretch 8"):
        kernels._backward(torch.ones_like(y), None, *xs, st, sa, kept, Tiling(stretch=8))
    with pytest.raises(ValueError, match="Tiling.rows_bwd must be a power of two >= 1; got 12"):
        Tiling(rows_bwd=12)
    with pytest.raises(TypeError, match="tiling must be a triton_kernels.Tiling; got dict"):
        kernels.wkv7_triton(*xs, st, tiling={"stretch": 8})


# stepping back through a stretch divides the rounding of S by w per token: at RWKV-7's strongest decay over a whole
# stretch of 16, by up to e^{15 e^-0.5} ~ 9e3 (measured 2e-4 on the gradients through S_{t-1}: r, log_w, a)
EXTREME_TOL = {"decay_at_bound": 1e-3, "decay_near_1": TOL["float32"], "iclr_near_0": TOL["float32"]}


@pytest.mark.parametrize("case", ["decay_at_bound", "decay_near_1", "iclr_near_0", "iclr_near_1"])
def test_kernel_at_extreme_inputs(case):
    inputs = inputs_for(case, 2, 40, 2, 16, seed=3, dtype=torch.float32)
    check(f"triton fp32 {case}", inputs, TOL["float32"], EXTREME_TOL.get(case, TOL["float32"]))


@pytest.mark.parametrize("case", ["rwkv", "decay_at_bound"])
def test_float64_inputs_check_the_algorithm_itself(case):
    """In float64 only the algorithm can differ from the recurrence: stepping back costs ~1e-12 even at the bound."""
    check(f"triton fp64 {case}", inputs_for(case, 2, 33, 2, 8, seed=4, dtype=torch.float64), TOL["float64 model"])


def test_head_size_64_and_half_precision_inputs():
    check("triton fp32 N=64", inputs_for("rwkv", 1, 19, 2, 64, seed=5, dtype=torch.float32), TOL["float32"])
    for dtype in (torch.bfloat16, torch.float16):
        inputs = inputs_for("rwkv", 2, 21, 2, 16, seed=6, dtype=dtype)
        inputs[-1] = inputs[-1].float()  # the state is fp32
        y, s = triton(*inputs)
        assert y.dtype == dtype and s.dtype == torch.float32
        # the reference sees the same rounded inputs: what differs is y's rounding to 16 bits and fp32 arithmetic
        check(f"triton {dtype} inputs", inputs, TOL["bfloat16"])


@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "state"])
def test_gradients_when_the_final_state_is_not_used(with_state):
    """Training's case: only y carries a gradient (the backward starts from no final-state gradient), with or without
    an initial state: every gradient still equals the float64 reference's."""
    *xs, st = inputs_for("rwkv", 2, 23, 2, 16, seed=7, dtype=torch.float32)
    gy = torch.randn(2, 23, 2, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(fn, inputs):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        y, _ = fn(*leaves[:6], leaves[6] if with_state else None)
        return [y.detach(), *torch.autograd.grad((y.double() * gy).sum(), leaves)]

    inputs = xs + ([st] if with_state else [])
    got, ref = grads(triton, inputs), grads(wkv7_recurrent, [x.double() for x in inputs])
    for what, x, x_ref in zip(["y", *(o for o in OUTPUTS[2:])], got, ref):
        assert_rel_close(f"triton y-only {what} (state={with_state})", x, x_ref, TOL["float32"])


def test_without_a_gradient_nothing_is_kept_and_the_numbers_are_the_same():
    inputs = inputs_for("rwkv", 2, 18, 2, 16, seed=8, dtype=torch.float32)
    with torch.no_grad():
        y, s = triton(*inputs)
    y_grad, s_grad = kernels.EagerWKV7.apply(*inputs, DEFAULT)
    assert torch.equal(y, y_grad) and torch.equal(s, s_grad)


def test_the_eager_path_and_the_operator_give_the_same_numbers():
    """wkv7_triton outside torch.compile (EagerWKV7) and the custom operator a compiled graph calls (with its
    registered backward): identical outputs and gradients."""
    inputs = inputs_for("rwkv", 2, 9, 2, 8, seed=9, dtype=torch.float32)
    eager = run(kernels.wkv7_triton, inputs)
    op = run(lambda *x: kernels.wkv7_forward(*x, DEFAULT.as_list())[:2], inputs)
    for what, a, b in zip(OUTPUTS, eager, op):
        assert torch.equal(a, b), f"eager path vs operator: {what} differs"


def test_the_kernel_is_a_well_formed_torch_operator():
    """torch.library.opcheck: the fake (shape) functions match the kernels, the registered backward agrees with
    autograd's expectations, and torch.compile can place the op in a graph."""
    *xs, st = inputs_for("rwkv", 2, 6, 2, 4, seed=10, dtype=torch.float32)
    for state in (st, None):
        for tiling in (DEFAULT, Tiling(stretch=4, rows_bwd=2, partials=True)):
            torch.library.opcheck(kernels.wkv7_forward, (*(x.requires_grad_() for x in xs), state, tiling.as_list()))


def test_inputs_the_kernel_cannot_take_get_one_line_errors():
    r, log_w, k, v, a, b, s = inputs_for("rwkv", 1, 3, 1, 4, seed=11, dtype=torch.float32)
    with pytest.raises(ValueError, match="log_w >= -0.62.*backend='chunked'"):
        triton(r, log_w - 1, k, v, a, b, s)
    odd = [x[..., :3] for x in (r, log_w, k, v, a, b)]
    with pytest.raises(ValueError, match="power of two"):
        triton(*odd, s[..., :3, :3])


def test_auto_picks_the_kernel_on_cuda_only(monkeypatch):
    """On CUDA the per-token kernel with grad mode on (it trains) or many state rows, the chunked kernels with it off
    at a few sequences (a prefill); the chunked form elsewhere. (A CUDA tensor faked for the check: `is_cuda` is
    all it reads.)"""

    class OnCuda(torch.Tensor):
        is_cuda = True

    on_cuda = torch.zeros(1, 1, 1, 1).as_subclass(OnCuda)
    many = torch.zeros(2, 1, 64, 64).as_subclass(OnCuda)  # 8,192 state rows: still chunked
    too_many = torch.zeros(3, 1, 64, 64).as_subclass(OnCuda)
    monkeypatch.setattr("rwkv_lab.ops.rwkv7.triton_available", lambda: True)
    assert resolve_backend("auto", on_cuda) == "triton"
    with torch.no_grad():
        assert resolve_backend("auto", on_cuda) == "triton_chunked"
        assert resolve_backend("auto", many) == "triton_chunked"
        assert resolve_backend("auto", too_many) == "triton"
        assert resolve_backend("auto", torch.zeros(1, 1, 8193).as_subclass(OnCuda)) == "triton"  # a model's x
        assert resolve_backend("auto", torch.zeros(1, 1, 1, 1)) == "chunked"
    assert resolve_backend("auto", torch.zeros(1, 1, 1, 1)) == "chunked"
    assert resolve_backend("auto", torch.zeros(1, 1, 1, 1, device="meta")) == "chunked"
    with pytest.raises(ValueError, match="unknown wkv7 backend"):
        resolve_backend("cuda", torch.zeros(1, 1, 1, 1))
