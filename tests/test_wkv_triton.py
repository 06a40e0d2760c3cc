"""The Triton kernel (interpreted on the CPU in CI) against the float64 recurrence: outputs, state, gradients.

The full-size check on a GPU is benchmarks/bench_wkv.py; its output is results/wkv/wkv_kernel_check.json.
"""

import pytest
import torch
from helpers import TOL, assert_rel_close
from test_wkv import make_inputs

from rwkv_lab.ops.rwkv4 import resolve_backend, wkv, wkv_recurrent
from rwkv_lab.ops.rwkv4 import triton_kernels as wkv_triton


def run(fn, inputs, grads):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    y, state = fn(*leaves)
    gy, gs = grads
    ((y.double() * gy).sum() + (state.double() * gs).sum()).backward()
    return y.detach(), state.detach(), [x.grad for x in leaves]


@pytest.fixture(
    params=[(16, 16, 4, 0), (64, 64, 8, 16)],
    ids=["chunk16-block16-sub4-scan-kernel", "chunk64-block64-sub8-scan-in-program"],
)
def config(request, monkeypatch):
    """Two tilings, and the two ways chunks learn their entering state: the scan kernel (several scan blocks even
    at small T) and, with few chunks, each chunk's program scanning the chunks before it (up to 16 chunks)."""
    chunk, block_c, sub, scan_here_max = request.param
    monkeypatch.setattr(wkv_triton, "CHUNK", chunk)
    monkeypatch.setattr(wkv_triton, "BLOCK_C", block_c)
    monkeypatch.setattr(wkv_triton, "SUB", sub)
    monkeypatch.setattr(wkv_triton, "SCAN_BLOCK", 4)
    monkeypatch.setattr(wkv_triton, "SCAN_HERE_MAX_CHUNKS", scan_here_max)
    return request.param


@pytest.mark.parametrize("T", [1, 2, 15, 63, 100])
@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
def test_kernel_matches_float64_reference(config, T, extreme):
    # C = 20 leaves a partial channel block; T = 15, 63, 100 leave partial chunks and sub-blocks (100: 7 chunks of
    # 16, two scan blocks of 4)
    B, C = 2, 20
    inputs64 = make_inputs(B, T, C, seed=T, extreme=extreme)
    inputs32 = [x.float() for x in inputs64]
    gen = torch.Generator().manual_seed(7)
    grads = (
        torch.randn(B, T, C, generator=gen, dtype=torch.float64),
        torch.randn(B, 3, C, generator=gen, dtype=torch.float64),
    )
    # the reference sees the same fp32 inputs, so the check measures the kernel's arithmetic alone
    y_ref, s_ref, g_ref = run(wkv_recurrent, [x.double() for x in inputs32], grads)
    y, s, g = run(lambda *a: wkv(*a, backend="triton"), inputs32, grads)
    # fp32 arithmetic; with |k| ~ 80 the exponent p is rounded at ~5e-6 per step, as in the fp32 recurrence
    tol, gtol = (1e-5, 1e-5) if not extreme else (1e-4, 1e-3)
    assert_rel_close(f"triton T={T} y", y, y_ref, tol)
    assert_rel_close(f"triton T={T} state", s, s_ref, tol)
    for name, gx, gr in zip(["w", "u", "k", "v", "state"], g, g_ref):
        assert_rel_close(f"triton T={T} grad {name}", gx, gr, gtol)


def test_kernel_long_sequence_and_half_inputs(config):
    inputs64 = make_inputs(1, 1000, 4, seed=11)
    y_ref, s_ref = wkv_recurrent(*inputs64)
    y, s = wkv(*[x.float() for x in inputs64], backend="triton")
    assert_rel_close("triton T=1000 y", y, y_ref, TOL["float32"])
    assert_rel_close("triton T=1000 state", s, s_ref, TOL["float32"])
    w, u, k, v, st = make_inputs(1, 70, 20, seed=12, dtype=torch.bfloat16)
    y16, s16 = wkv(w.float(), u.float(), k, v, st, backend="triton")
    y_ref, _ = wkv_recurrent(w.double(), u.double(), k.double(), v.double(), st.double())
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert_rel_close("triton bf16 inputs y", y16, y_ref, TOL["bfloat16"])


def test_kernel_without_initial_state():
    w, u, k, v, _ = make_inputs(2, 40, 8, seed=13, state=False)
    y_ref, s_ref = wkv_recurrent(w, u, k, v)
    y, s = wkv(w.float(), u.float(), k.float(), v.float(), None, backend="triton")
    assert_rel_close("triton empty state y", y, y_ref, TOL["float32"])
    assert_rel_close("triton empty state state", s[:, :2], s_ref[:, :2], TOL["float32"])


@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "state"])
def test_gradients_when_the_final_state_is_not_used(config, with_state):
    """Training's case: only y carries a gradient (the kernel skips the final state's adjoint) and the initial
    state is absent (or present): every gradient still equals the float64 reference's."""
    B, T, C = 2, 37, 20
    w, u, k, v, st = [x.float() for x in make_inputs(B, T, C, seed=21, extreme=True)]
    inputs = [w, u, k, v] + ([st] if with_state else [])
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(fn, xs):
        leaves = [x.detach().clone().requires_grad_(True) for x in xs]
        y, _ = fn(*leaves, *([] if with_state else [None]))
        (y.double() * gy).sum().backward()
        return y.detach(), [x.grad for x in leaves]

    y_ref, g_ref = grads(wkv_recurrent, [x.double() for x in inputs])
    y, g = grads(lambda *a: wkv(*a, backend="triton"), inputs)
    assert_rel_close(f"triton y-only y (state={with_state})", y, y_ref, 1e-4)
    for name, gx, gr in zip(["w", "u", "k", "v", "state"], g, g_ref):
        assert_rel_close(f"triton y-only grad {name} (state={with_state})", gx, gr, 1e-3)


def test_the_kernel_takes_inputs_of_any_strides():
    """The operator given k, v as views with other strides (as a compiled graph may pass them) and a state sliced
    out of the model's (B, L, 5, C) state: the same outputs and gradients as from contiguous copies."""
    B, T, C = 2, 21, 20
    w, u, k, v, st = [x.float() for x in make_inputs(B, T, C, seed=9)]
    k_t, v_t = k.transpose(1, 2).contiguous().transpose(1, 2), torch.cat([v, v], dim=-1)[..., :C]
    big = torch.zeros(B, 2, 5, C)
    big[:, 1, 1:4] = st
    state_view = big[:, 1, 1:4]
    assert not (k_t.is_contiguous() or v_t.is_contiguous() or state_view.is_contiguous())
    leaves = [x.clone().requires_grad_(True) for x in (k, v)]
    y_ref, s_ref = wkv(w, u, *leaves, st, backend="triton")
    y_ref.sum().backward()
    strided = [k_t.detach().requires_grad_(True), v_t.detach().requires_grad_(True)]
    y, s = wkv_triton.wkv_forward(w, u, *strided, state_view)[:2]  # the operator itself, as a compiled graph calls it
    y.sum().backward()
    assert_rel_close("strided inputs y", y, y_ref, TOL["float32 step"])
    assert_rel_close("strided inputs state", s, s_ref, TOL["float32 step"])
    for name, g, g_ref in zip(("k", "v"), strided, leaves):
        assert_rel_close(f"strided inputs grad {name}", g.grad, g_ref.grad, TOL["float32 step"])


@pytest.mark.parametrize("used", ["y", "state", "both"])
@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "state"])
def test_the_eager_path_and_the_operator_give_the_same_numbers(used, with_state):
    """wkv_triton outside torch.compile (EagerWKV, the launches called directly) and the custom operator a compiled
    graph calls (with its registered backward): identical outputs and gradients, whichever outputs carry one."""
    B, T, C = 2, 19, 20
    w, u, k, v, st = [x.float() for x in make_inputs(B, T, C, seed=13)]
    gen = torch.Generator().manual_seed(4)
    gy, gs = torch.randn(B, T, C, generator=gen), torch.randn(B, 3, C, generator=gen)

    def grads(fn):
        leaves = [x.detach().clone().requires_grad_(True) for x in (w, u, k, v, st)]
        y, s = fn(*leaves[:4], leaves[4] if with_state else None)
        loss = {"y": (y * gy).sum(), "state": (s * gs).sum(), "both": (y * gy).sum() + (s * gs).sum()}[used]
        loss.backward()
        return [y, s] + [x.grad for x in leaves[: 5 if with_state else 4]]

    eager = grads(wkv_triton.wkv_triton)
    op = grads(lambda *a: wkv_triton.wkv_forward(*a)[:2])
    for name, a, b in zip(["y", "state", "dw", "du", "dk", "dv", "dstate"], eager, op):
        assert torch.equal(a, b), f"eager path vs operator: {name} differs (used={used}, state={with_state})"


def test_the_kernel_is_a_well_formed_torch_operator():
    """torch.library.opcheck: the fake (shape) functions match the kernels, the registered backward agrees with
    autograd's expectations, and torch.compile can place the op in a graph."""
    B, T, C = 2, 9, 20
    w, u, k, v, st = [x.float() for x in make_inputs(B, T, C, seed=5)]
    for state in (st, None):
        args = (w, u, k.requires_grad_(), v.requires_grad_(), state)
        torch.library.opcheck(wkv_triton.wkv_forward, args)


def test_auto_picks_the_kernel_on_cuda_only():
    assert resolve_backend("auto", torch.zeros(1, 1, 1)) == "chunked"
    assert resolve_backend("auto", torch.zeros(1, 1, 1, device="meta")) == "chunked"
