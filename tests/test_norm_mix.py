"""The LayerNorm + token shift + mixes kernels (interpreted on the CPU in CI) against the float64 eager ops:
outputs, the last token's normalised x, and every gradient, the carried last_x's included.

The full-size check on a GPU is benchmarks/check_norm_mix.py; its output is results/training/norm_mix_check.csv.
"""

import pytest
import torch
from helpers import TOL, assert_rel_close

from rwkv_lab.ops.norm_mix import norm_shift_mix, norm_shift_mix_eager
from rwkv_lab.ops.norm_mix import triton_kernels as kernels


def make_case(B, T, C, M, seed, extreme=False):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    ln = torch.nn.LayerNorm(C, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(draw(C))
        ln.bias.copy_(draw(C))
    # extreme: rows far from zero with a wide spread (the statistics' cancellation), mixes at 0 and 1
    x = draw(B, T, C) * (30.0 if extreme else 1.0) + (1e3 if extreme else 0.5)
    mus = torch.rand(M, 1, 1, C, generator=gen, dtype=torch.float64)
    if extreme:
        mus[:, ..., ::3] = 0.0
        mus[:, ..., 1::3] = 1.0
    return ln, x, draw(B, C), list(mus), [draw(B, T, C) for _ in range(M)], draw(B, C)


def run(fn, dtype, ln, x, last, mus, g_mixed, g_last):
    """Outputs and gradients of fn, its inputs cast to dtype; last None: no carried state (zeros for the eager)."""
    leaves = [t.detach().clone().to(dtype).requires_grad_(True) for t in [x] + ([last] if last is not None else [])]
    mu_leaves = [m.detach().clone().to(dtype).requires_grad_(True) for m in mus]
    ln_cast = torch.nn.LayerNorm(ln.normalized_shape, eps=ln.eps, dtype=dtype)
    ln_cast.load_state_dict(ln.state_dict())
    carried = leaves[1] if last is not None else None
    if carried is None and fn is norm_shift_mix_eager:
        carried = torch.zeros(x.shape[0], x.shape[2], dtype=dtype)
    mixed, h_last = fn(leaves[0], ln_cast, carried, mu_leaves)
    loss = sum((m.double() * g).sum() for m, g in zip(mixed, g_mixed))
    if g_last is not None:
        loss = loss + (h_last.double() * g_last).sum()
    loss.backward()
    params = [ln_cast.weight, ln_cast.bias]
    grads = [t.grad for t in leaves + mu_leaves + params]
    return [m.detach() for m in mixed] + [h_last.detach()], grads


@pytest.fixture(params=[32, 4], ids=["rows32", "rows4"])
def rows(request, monkeypatch):
    """Tokens per backward program: the default, and few for many programs per sequence."""
    monkeypatch.setattr(kernels, "BWD_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("M", [3, 2], ids=["time-mix", "channel-mix"])
@pytest.mark.parametrize("T", [1, 5, 37])
@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
def test_kernels_match_the_float64_eager_ops(rows, M, T, extreme):
    # C = 45: a partial block of channels; T = 5, 37: partial blocks of rows
    ln, x, last, mus, g_mixed, g_last = make_case(2, T, 45, M, seed=T + M, extreme=extreme)
    ref_out, ref_grads = run(norm_shift_mix_eager, torch.float64, ln, x, last, mus, g_mixed, g_last)
    out, grads = run(norm_shift_mix, torch.float32, ln, x, last, mus, g_mixed, g_last)
    # extreme rows (mean 1e3) lose digits to fp32 on the way in
    tol = TOL["float32"] if extreme else TOL["float32 step"]
    names = [f"mixed {m}" for m in range(M)] + ["h_last"]
    for name, a, b in zip(names, out, ref_out):
        assert_rel_close(f"norm_mix {name}", a, b.float(), tol)
    names = ["x", "last_x"] + [f"mu {m}" for m in range(M)] + ["ln weight", "ln bias"]
    for name, a, b in zip(names, grads, ref_grads):
        assert_rel_close(f"norm_mix grad {name}", a, b.float(), tol)


@pytest.mark.parametrize("with_last", [True, False], ids=["last_x", "no last_x"])
def test_without_a_carried_state_or_the_last_tokens_gradient(with_last):
    ln, x, last, mus, g_mixed, _ = make_case(3, 11, 20, 3, seed=3)
    last = last if with_last else None
    ref_out, ref_grads = run(norm_shift_mix_eager, torch.float64, ln, x, last, mus, g_mixed, None)
    out, grads = run(norm_shift_mix, torch.float32, ln, x, last, mus, g_mixed, None)
    for a, b in zip(out + grads, ref_out + ref_grads):
        assert_rel_close("norm_mix without last_x or its gradient", a, b.float(), TOL["float32 step"])


def test_strided_inputs_and_the_autocast_dtype():
    """last_x as a slice of a (B, 5, C) state and x as a transposed view (what a block and a compiled graph pass);
    under autocast the mixes come in its dtype (the matmuls' input), h_last in fp32."""
    ln, x, last, mus, _, _ = make_case(2, 7, 16, 2, seed=9)
    ln = ln.float()
    state = torch.randn(2, 5, 16)
    state[:, 4] = last.float()
    x_view = x.float().transpose(0, 1).contiguous().transpose(0, 1)
    mus = [m.float() for m in mus]
    mixed, h_last = norm_shift_mix(x_view, ln, state[:, 4], mus)
    ref, ref_last = norm_shift_mix_eager(x.float(), ln, last.float(), mus)
    for a, b in zip(mixed + [h_last], ref + [ref_last]):
        assert_rel_close("norm_mix strided inputs", a, b, TOL["float32 step"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, h_last = norm_shift_mix(x.float(), ln, last.float(), mus)
    assert [m.dtype for m in mixed] == [torch.bfloat16] * 2 and h_last.dtype == torch.float32
    assert_rel_close("norm_mix under bf16 autocast", mixed[0].float(), ref[0], TOL["bfloat16"])


def test_float64_takes_the_eager_ops():
    ln, x, last, mus, _, _ = make_case(1, 3, 8, 2, seed=1)
    mixed, _ = norm_shift_mix(x, ln, last, mus)
    ref, _ = norm_shift_mix_eager(x, ln, last, mus)
    assert all(torch.equal(a, b) for a, b in zip(mixed, ref))  # the same ops: the kernels compute in fp32


def test_the_kernels_are_a_well_formed_torch_operator():
    """torch.library.opcheck: fake shapes match the kernels, the registered backward fits autograd, and
    torch.compile can place the op in a graph."""
    ln, x, last, mus, _, _ = make_case(2, 9, 20, 3, seed=5)
    mu = torch.cat([m.reshape(1, -1) for m in mus]).float().requires_grad_()
    weight, bias = ln.weight.detach().float().requires_grad_(), ln.bias.detach().float().requires_grad_()
    for carried in (last.float().requires_grad_(), None):
        args = (x.float().requires_grad_(), weight, bias, carried, mu, 1e-5, torch.float32)
        torch.library.opcheck(kernels._norm_mix_forward, args)


@pytest.mark.parametrize("M", [1, 6])
@pytest.mark.parametrize("T", [1, 13])
def test_the_stacked_inference_kernel_matches_float64(M, T):
    """norm_shift_mix_stacked (inference: any number of mixes, one stacked output), the kernel interpreted, in
    float32 and bfloat16, against the float64 eager ops, from a carried last_x and without one (zeros), with rows
    far off centre and mixes at 0 and 1; with grad mode on it is the eager ops."""
    from rwkv_lab.ops.norm_mix import norm_shift_mix_stacked

    ln, x, last, mus, _, _ = make_case(3, T, 40, M, seed=M + T, extreme=True)
    for dtype, tol in ((torch.float32, TOL["float32"]), (torch.bfloat16, TOL["bfloat16"])):
        cast = torch.nn.LayerNorm(40, eps=ln.eps, dtype=dtype)
        cast.load_state_dict(ln.state_dict())
        # the reference sees the same rounded inputs in float64: only the arithmetic differs
        rounded = torch.nn.LayerNorm(40, eps=ln.eps, dtype=torch.float64)
        rounded.load_state_dict({k: v.to(dtype).double() for k, v in ln.state_dict().items()})
        xr, lastr = x.to(dtype), last.to(dtype)
        ref, ref_last = norm_shift_mix_eager(xr.double(), rounded, lastr.double(), mus)
        ref_none, _ = norm_shift_mix_eager(xr.double(), rounded, torch.zeros_like(last), mus)
        with torch.no_grad():
            mixed, h_last = norm_shift_mix_stacked(xr, cast, lastr, [m.float() for m in mus])
            without, _ = norm_shift_mix_stacked(xr, cast, None, [m.float() for m in mus])
        assert mixed.shape == (M, 3, T, 40) and mixed.dtype == dtype and h_last.dtype == torch.float32
        assert_rel_close(f"stacked mixes M={M} T={T} {dtype}", mixed.double(), torch.stack(ref), tol)
        assert_rel_close(f"stacked h_last M={M} T={T} {dtype}", h_last.double(), ref_last, tol)
        assert_rel_close(f"stacked mixes, no last_x, M={M} {dtype}", without.double(), torch.stack(ref_none), tol)
    ref, _ = norm_shift_mix_eager(x, ln, last, mus)
    eager, _ = norm_shift_mix_stacked(x, ln, last, mus)  # grad mode on: the reference itself
    assert torch.equal(eager, torch.stack(ref))
