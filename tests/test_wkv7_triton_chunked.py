"""RWKV-7's chunked Triton kernels (backend "triton_chunked"; interpreted on the CPU in CI: TRITON_INTERPRET=1 from
conftest.py) against the float64 recurrence: y and the final state, and through the backward every gradient (the
initial state's included); random non-zero initial states and none, whole and partial chunks of 16 tokens,
RWKV-7-like and extreme inputs, bf16 / fp16 / fp64.
"""

import math

import pytest
import torch
from helpers import TOL, assert_rel_close
from test_rwkv7_ops import OUTPUTS, make_inputs, run

from rwkv_lab.ops.rwkv7 import triton_chunked as kernels
from rwkv_lab.ops.rwkv7 import wkv7, wkv7_recurrent
from rwkv_lab.ops.rwkv7.triton_chunked import CHUNK, wkv7_triton_chunked


def inputs_for(case, B, T, H, N, seed, dtype=torch.float32):
    """test_rwkv7_ops's inputs (log_w = -e^-0.5 sigmoid(randn), a = -kappa, b = kappa iclr, a random state), and
    'decay_at_bound': every log_w = -e^-0.5 (the decay factors' widest range within a chunk, e^{16 e^-0.5})."""
    inputs = make_inputs(B, T, H, N, case="rwkv" if case == "decay_at_bound" else case, seed=seed, dtype=dtype)
    if case == "decay_at_bound":
        inputs[1] = torch.full_like(inputs[1], -math.exp(-0.5))
    return inputs


def check(name, inputs, tol, state_tol=None):
    """The kernels (through wkv7's dispatch and its checks) against the float64 recurrence on the same inputs (so
    only arithmetic differs): y and the final state, with their dtypes."""
    y, s = wkv7(*inputs, backend="triton_chunked")
    exact = [None if x is None else x.double() for x in inputs]
    y_ref, s_ref = wkv7_recurrent(*exact)
    assert y.shape == inputs[3].shape and y.dtype == inputs[3].dtype
    assert s.dtype == (torch.float64 if inputs[3].dtype == torch.float64 else torch.float32)
    assert_rel_close(f"{name} y", y, y_ref, tol)
    assert_rel_close(f"{name} state", s, s_ref, tol if state_tol is None else state_tol)


# (B, T, H, N, initial state): T within one chunk (1, 2, 15), whole chunks (16, 64), a partial last chunk (17, 33,
# 100); N = 16 and the models' 64; H = 1 and 3; B = 2 twice; a random non-zero initial state and None
SHAPES = [
    (2, 1, 3, 16, True),
    (1, 2, 1, 64, False),
    (1, 15, 3, 16, False),
    (1, 16, 1, 64, True),
    (2, 17, 3, 16, True),
    (1, 33, 1, 64, True),
    (1, 64, 3, 16, True),
    (1, 100, 1, 64, False),
]


@pytest.mark.parametrize("B, T, H, N, with_state", SHAPES, ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-N{s[3]}" for s in SHAPES])
def test_matches_float64_reference(B, T, H, N, with_state):
    *xs, st = inputs_for("rwkv", B, T, H, N, seed=T)
    check(
        f"triton_chunked fp32 T={T} H={H} N={N} state={with_state}", [*xs, st if with_state else None], TOL["float32"]
    )


@pytest.mark.parametrize("case", ["decay_at_bound", "decay_near_1", "iclr_near_0", "iclr_near_1"])
def test_extreme_inputs(case):
    """At the bound every e^{-g} reaches e^{16 e^-0.5} ~ 1.6e4 within a chunk (still fp32's 1e-5); near 1 nothing
    decays; iclr near 0 leaves I - L_ab ~ I, near 1 makes each transition nearly a projection."""
    check(f"triton_chunked fp32 {case}", inputs_for(case, 1, 40, 2, 16, seed=3), TOL["float32"])


def test_float64_inputs_check_the_algorithm_itself():
    """In fp64 only the algorithm can differ from the recurrence."""
    check("triton_chunked fp64", inputs_for("rwkv", 1, 37, 2, 16, seed=4, dtype=torch.float64), TOL["float64 algebra"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(dtype):
    """16-bit inputs, computed in fp32 with an fp32 state: y comes back rounded to 16 bits (bf16: ~2e-3 relative,
    hence the bfloat16 tolerance), the state, never rounded, to fp32's."""
    inputs = inputs_for("rwkv", 2, 21, 2, 16, seed=6, dtype=dtype)
    inputs[-1] = inputs[-1].float()  # the state is fp32
    check(f"triton_chunked {dtype} inputs", inputs, TOL["bfloat16"], state_tol=TOL["float32"])


def test_inference_mode_and_the_direct_entry_agree():
    """wkv7_triton_chunked directly and through wkv7 give identical numbers, with a gradient to take (the states at
    the chunks' starts kept) and without (inputs that require grad under torch.no_grad: no graph to build)."""
    inputs = inputs_for("rwkv", 1, 2 * CHUNK + 3, 1, 16, seed=7)
    y, s = wkv7_triton_chunked(*inputs)
    with torch.no_grad():
        y2, s2 = wkv7(*(x.clone().requires_grad_() for x in inputs), backend="triton_chunked")
    y3, s3 = wkv7(*(x.clone().requires_grad_() for x in inputs), backend="triton_chunked")
    assert y3.requires_grad and s3.requires_grad
    assert torch.equal(y, y2) and torch.equal(s, s2) and torch.equal(y, y3) and torch.equal(s, s3)


def check_gradients(name, inputs, tol, grad_tol=None):
    """Outputs and every gradient (of a random projection of y and the final state) against the float64
    recurrence on the same inputs."""
    got = run(lambda *x: wkv7(*x, backend="triton_chunked"), inputs)
    ref = run(wkv7_recurrent, [None if x is None else x.double() for x in inputs])
    for i, (what, x, x_ref) in enumerate(zip(OUTPUTS, got, ref)):
        assert x.dtype == (inputs[i - 2].dtype if 2 <= i < 8 else x.dtype), f"{name} {what}: dtype {x.dtype}"
        assert_rel_close(f"{name} {what}", x, x_ref, tol if i < 2 or grad_tol is None else grad_tol)


# (B, T, H, N): within one chunk, whole chunks, partial last chunks; N = 16 and 32; B and H of 2
GRAD_SHAPES = [(2, 5, 1, 16), (1, 32, 2, 16), (1, 37, 1, 32), (2, 20, 2, 16)]


@pytest.mark.parametrize("B, T, H, N", GRAD_SHAPES, ids=[f"B{s[0]}-T{s[1]}-H{s[2]}-N{s[3]}" for s in GRAD_SHAPES])
def test_backward_matches_float64_reference(B, T, H, N):
    check_gradients(f"triton_chunked fp32 grads T={T} N={N}", inputs_for("rwkv", B, T, H, N, seed=T), TOL["float32"])


def test_backward_in_float64_checks_the_algorithm_itself():
    inputs = inputs_for("rwkv", 1, 37, 2, 16, seed=8, dtype=torch.float64)
    check_gradients("triton_chunked fp64 grads", inputs, TOL["float64 algebra"])


@pytest.mark.parametrize("case", ["decay_at_bound", "decay_near_1", "iclr_near_1", "large_keys"])
def test_backward_extreme_inputs(case):
    """The decay factors' widest range (every e^{-g} up to 1.6e4, their products with the small e^{g} in the
    gradients of log_w), no decay, transitions near projections, keys 30x RWKV-7's."""
    check_gradients(f"triton_chunked fp32 grads {case}", inputs_for(case, 1, 35, 1, 16, seed=9), TOL["float32"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_backward_half_precision_inputs(dtype):
    """16-bit inputs get 16-bit gradients (rounded: the bfloat16 tolerance), the fp32 state an fp32 gradient."""
    inputs = inputs_for("rwkv", 1, 19, 2, 16, seed=10, dtype=dtype)
    inputs[-1] = inputs[-1].float()
    check_gradients(f"triton_chunked {dtype} grads", inputs, TOL["bfloat16"])


def test_backward_without_an_initial_state_or_either_outputs_gradient():
    """No initial state (no gradient for it); a loss of y alone (no final-state gradient) and of the state alone (no
    gradient for y): each against the float64 recurrence's (the state's loss: r's gradient exactly zero)."""
    *xs, _ = inputs_for("rwkv", 1, 21, 1, 16, seed=12)
    for which in ("y", "state"):
        grads = []
        for fn, dtype in ((lambda *x: wkv7(*x, backend="triton_chunked"), torch.float32), (wkv7_recurrent, None)):
            leaves = [x.detach().clone().to(dtype or torch.float64).requires_grad_() for x in xs]
            y, s = fn(*leaves, None)
            # r does not reach the state: the reference has no gradient for it there (zeros, as ours)
            got = torch.autograd.grad((y if which == "y" else s).pow(2).sum(), leaves, allow_unused=True)
            grads.append([torch.zeros_like(x) if g is None else g for g, x in zip(got, leaves)])
        for what, g, g_ref in zip(OUTPUTS[2:8], *grads):
            assert_rel_close(f"triton_chunked loss of {which} alone, {what}", g, g_ref, TOL["float32"])


def test_the_eager_path_and_the_operator_give_the_same_numbers():
    """Outside torch.compile (ChunkedWKV7) and the custom operator a compiled graph calls (with its registered
    backward): identical outputs and gradients."""
    inputs = inputs_for("rwkv", 1, 20, 2, 16, seed=13)
    eager = run(wkv7_triton_chunked, inputs)
    op = run(lambda *x: kernels.chunked_forward(*x, True)[:2], inputs)
    for what, a, b in zip(OUTPUTS, eager, op):
        assert torch.equal(a, b), f"eager path vs operator: {what} differs"


def test_the_kernels_are_a_well_formed_torch_operator():
    """torch.library.opcheck: the fake (shape) functions match the kernels (the kept states and without them), the
    registered backward agrees with autograd's expectations, and torch.compile can place the op in a graph."""
    *xs, st = inputs_for("rwkv", 1, 18, 1, 16, seed=14)
    for state, keep in ((st, True), (None, True), (st, False)):
        torch.library.opcheck(kernels.chunked_forward, (*(x.requires_grad_(keep) for x in xs), state, keep))


def test_inputs_it_cannot_take_get_one_line_errors():
    r, log_w, k, v, a, b, s = inputs_for("rwkv", 1, 3, 1, 16, seed=11)
    cases = [
        ((r, log_w - 1, k, v, a, b, s), ValueError, r"triton_chunked' takes log_w >= -0.62.*backend='chunked'"),
        ([x[..., :12] for x in (r, log_w, k, v, a, b)] + [s[..., :12, :12]], ValueError, "power of two in 16..128"),
        ([x[..., :8] for x in (r, log_w, k, v, a, b)] + [s[..., :8, :8]], ValueError, "got N = 8"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match) as info:
            wkv7(*args, backend="triton_chunked")
        assert "\n" not in str(info.value), str(info.value)


def test_the_dots_precision_follows_the_inputs_and_the_pass(monkeypatch):
    """tf32 (one product) only in a bf16 training pass; a prefill and fp32 / fp16 inputs keep tf32x3, fp64 and the
    interpreter ieee (the module docstring says why)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    f32, bf16, f16, f64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
    assert kernels._precision(f32, bf16, training=True) == "tf32"
    assert kernels._precision(f32, bf16, training=False) == "tf32x3"
    for dtype in (f16, f32):
        assert kernels._precision(f32, dtype, training=True) == "tf32x3"
    assert kernels._precision(f64, f64, training=True) == "ieee"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels._precision(f32, bf16, training=True) == "ieee"
