"""Every WKV formulation against the float64 recurrence: outputs, final state and gradients."""

import math

import pytest
import torch
from helpers import TOL, assert_rel_close

from rwkv_lab.ops.rwkv4 import BACKENDS, P_EMPTY, attention_matrix, init_wkv_state, wkv, wkv_chunked, wkv_recurrent

LENGTHS = [1, 2, 15, 63, 1000]


def make_inputs(B, T, C, seed, dtype=torch.float64, extreme=False, state=True):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    if extreme:
        # keys up to +-80, decays from 1e-4 to 1e3: exp(k) alone would overflow fp32 and fp16
        w = torch.exp(math.log(1e-4) + rand(C) * math.log(1e7))
        u = 160 * rand(C) - 80
        k = 160 * rand(B, T, C) - 80
    else:
        w, u, k = torch.exp(randn(C)), randn(C), 2 * randn(B, T, C)
    v = randn(B, T, C)
    s = None
    if state:
        s = torch.stack([randn(B, C), rand(B, C) + 0.5, 5 * randn(B, C)], dim=1)
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return cast(w), cast(u), cast(k), cast(v), s if s is None or dtype == torch.float64 else s.float()


def naive_wkv(w, u, k, v, state):
    """The defining sums computed directly, unstabilised (float64, moderate inputs only): an independent check."""
    B, T, C = k.shape
    a0, b0, p0 = state.unbind(1)
    ys = []
    for t in range(T):
        i = torch.arange(t, dtype=k.dtype)
        past = torch.exp(k[:, :t] - (t - 1 - i)[None, :, None] * w)  # (B, t, C)
        cur = torch.exp(u + k[:, t])
        carried = torch.exp(p0 - t * w)
        num = (past * v[:, :t]).sum(1) + cur * v[:, t] + a0 * carried
        den = past.sum(1) + cur + b0 * carried
        ys.append(num / den)
    i = torch.arange(T, dtype=k.dtype)
    decayed = torch.exp(k - (T - 1 - i)[None, :, None] * w)
    A = (decayed * v).sum(1) + a0 * torch.exp(p0 - T * w)
    Bsum = decayed.sum(1) + b0 * torch.exp(p0 - T * w)
    return torch.stack(ys, 1), A, Bsum


def test_reference_matches_the_defining_sums():
    w, u, k, v, s = make_inputs(2, 15, 6, seed=0)
    y_ref, A, Bsum = naive_wkv(w, u, k, v, s)
    y, state = wkv_recurrent(w, u, k, v, s)
    a, b, p = state.unbind(1)
    assert_rel_close("y vs defining sums", y, y_ref, TOL["float64 algebra"])
    assert_rel_close("a e^p vs sum", a * torch.exp(p), A, TOL["float64 algebra"])
    assert_rel_close("b e^p vs sum", b * torch.exp(p), Bsum, TOL["float64 algebra"])


def _run(fn, inputs, grads):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    y, state = fn(*leaves)
    gy, gs = grads
    ((y * gy).sum() + (state * gs).sum()).backward()
    return y.detach(), state.detach(), [x.grad for x in leaves]


FORMS = {
    "attention": BACKENDS["attention"],
    "chunked": BACKENDS["chunked"],
    "chunked-7": lambda *a: wkv_chunked(*a, chunk_size=7),
}


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
def test_formulations_match_float64_reference(form, T, extreme):
    B, C = (1, 4) if T == 1000 else (2, 8)
    inputs = make_inputs(B, T, C, seed=T, extreme=extreme)
    gen = torch.Generator().manual_seed(99)
    grads = (
        torch.randn(B, T, C, generator=gen, dtype=torch.float64),
        torch.randn(B, 3, C, generator=gen, dtype=torch.float64),
    )
    y_ref, s_ref, g_ref = _run(wkv_recurrent, inputs, grads)
    y, s, g = _run(FORMS[form], inputs, grads)
    assert_rel_close(f"{form} T={T} y", y, y_ref, TOL["float64 model"])
    assert_rel_close(f"{form} T={T} state", s, s_ref, TOL["float64 model"])
    for name, gx, gr in zip(["w", "u", "k", "v", "state"], g, g_ref):
        assert_rel_close(f"{form} T={T} grad {name}", gx, gr, TOL["float64 long sequence"])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("extreme", [False, True], ids=["normal", "extreme"])
def test_float32_and_half_inputs_are_accurate_and_finite(backend, extreme):
    inputs32 = make_inputs(2, 63, 16, seed=5, dtype=torch.float32, extreme=extreme)
    # the reference sees the same fp32-rounded inputs, so only arithmetic error is measured
    y_ref, s_ref = wkv_recurrent(*[x.double() for x in inputs32])
    y32, s32 = wkv(*inputs32, backend=backend)
    assert y32.dtype == torch.float32 and s32.dtype == torch.float32
    # With |k| ~ 80 and w ~ 1e-4 the recurrence rounds p - w at |p| ~ 80 every step (4.8e-6 each), and the
    # rounding of the exponent accumulates over T: the fp32 recurrence itself is only good to ~1e-4 there.
    tol = 1e-4 if extreme else 1e-5
    assert_rel_close(f"{backend} fp32 y", y32, y_ref, tol)
    assert_rel_close(f"{backend} fp32 state a,b", s32[:, :2], s_ref[:, :2], tol)
    for half in (torch.bfloat16, torch.float16):
        w, u, k, v, s = make_inputs(2, 63, 16, seed=5, dtype=half, extreme=extreme)
        y, s_new = wkv(w.float(), u.float(), k, v, s, backend=backend)
        assert y.dtype == half and torch.isfinite(y).all() and torch.isfinite(s_new).all()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_extreme_inputs_give_finite_gradients_in_float32(backend):
    w, u, k, v, s = [x.float().requires_grad_(True) for x in make_inputs(2, 200, 8, seed=3, extreme=True)]
    y, state = wkv(w, u, k, v, s, backend=backend)
    (y.sum() + state[:, :2].sum()).backward()
    for name, x in zip("wukvs", (w, u, k, v, s)):
        assert torch.isfinite(x.grad).all(), f"{backend}: non-finite gradient for {name}"


def test_empty_state_equals_no_state_and_chunks_compose():
    w, u, k, v, _ = make_inputs(2, 40, 8, seed=1, state=False)
    y0, s0 = wkv_recurrent(w, u, k, v)
    y1, s1 = wkv_recurrent(w, u, k, v, init_wkv_state(2, 8, torch.float64))
    assert torch.equal(y0, y1) and torch.equal(s0, s1)
    assert (s0[:, 2] > P_EMPTY / 2).all()
    # two calls with the state carried == one call
    ya, sa = wkv(w, u, k[:, :17], v[:, :17], None, backend="attention")
    yb, sb = wkv(w, u, k[:, 17:], v[:, 17:], sa, backend="attention")
    assert_rel_close("split y", torch.cat([ya, yb], 1), y0, TOL["float64 algebra"])
    assert_rel_close("split state", sb, s0, TOL["float64 algebra"])


def test_implicit_attention_rows_sum_to_one_and_reproduce_wkv():
    w, u, k, v, s = make_inputs(2, 30, 8, seed=2)
    weights = attention_matrix(w, u, k, s)  # (B, T, T, C)
    assert torch.all(weights.permute(0, 3, 1, 2).triu(1) == 0), "a future token got weight"
    state_share = 1 - weights.sum(dim=2)  # (B, T, C)
    assert (state_share >= -1e-12).all()
    y, _ = wkv_recurrent(w, u, k, v, s)
    a0, b0 = s[:, 0], s[:, 1]
    # the state's share carries a0/b0 as its value
    y_from_weights = torch.einsum("btic,bic->btc", weights, v) + state_share * (a0 / b0)[:, None]
    assert_rel_close("attention weights . v", y_from_weights, y, TOL["float64 algebra"])
    no_state = attention_matrix(w, u, k)
    assert_rel_close(
        "rows sum to 1 without a state",
        no_state.sum(dim=2),
        torch.ones(2, 30, 8, dtype=torch.float64),
        TOL["float64 algebra"],
    )


def test_bad_inputs_get_clear_errors():
    w, u, k, v, s = make_inputs(2, 5, 4, seed=0)
    with pytest.raises(ValueError, match=r"state must be \(B, 3, C\)"):
        wkv(w, u, k, v, s[:, :2])
    with pytest.raises(TypeError, match="float32 or float64"):
        wkv(w, u, k, v, s.half())
    with pytest.raises(ValueError, match="at least one token"):
        wkv(w, u, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match="k and v must both be"):
        wkv(w, u, k, v[:, :3])
    with pytest.raises(ValueError, match=r"w must have shape \(C,\)"):
        wkv(w[:3], u, k, v)
    with pytest.raises(TypeError, match="floating-point"):
        wkv(w, u, k.long(), v)
    with pytest.raises(ValueError, match="state is on meta"):
        wkv(w, u, k, v, s.to("meta"))
    with pytest.raises(ValueError, match="unknown WKV backend"):
        wkv(w, u, k, v, backend="cuda-magic")
