"""Every RWKV-7 state-update form against the float64 recurrence: outputs, final state and every gradient."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, assert_rel_close

from rwkv_lab.ops.rwkv7 import (
    BACKENDS,
    attention_matrix,
    chunked,
    wkv7,
    wkv7_chunked,
    wkv7_recurrent,
    wkv7_states,
)

# What the inputs stress: RWKV-7's own decay range; decays at both ends (near 1, near e^-20, and the two mixed per
# channel and token, so a chunk holds long stretches of both); in-context learning rates near 0 and 1; large keys.
CASES = ["rwkv", "decay_near_1", "decay_near_e-20", "decay_mixed", "iclr_near_0", "iclr_near_1", "large_keys"]
# (B, H, N) per length: head counts 1 to 3, head sizes 4 to 64
SHAPES = {1: (2, 3, 16), 2: (1, 2, 64), 63: (2, 3, 8), 64: (1, 1, 64), 65: (2, 2, 16), 1000: (1, 2, 4)}


def make_inputs(B, T, H, N, case="rwkv", seed=0, dtype=torch.float64):
    """(r, log_w, k, v, a, b, state) as RWKV-7 forms them (a = -kappa, b = kappa iclr), a random non-zero state."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda: torch.rand(B, T, H, N, generator=gen, dtype=torch.float64)  # noqa: E731
    randn = lambda *s: torch.randn(*(s or (B, T, H, N)), generator=gen, dtype=torch.float64)  # noqa: E731
    r, k, v = randn(), randn(), randn()
    log_w = -math.exp(-0.5) * torch.sigmoid(randn())
    iclr = rand()
    if case == "decay_near_1":
        log_w = -1e-4 * rand()
    elif case == "decay_near_e-20":
        log_w = -20 + 0.5 * rand()
    elif case == "decay_mixed":
        log_w = torch.where(rand() < 0.7, -1e-3 * rand(), -20 + rand())
    elif case == "iclr_near_0":
        iclr = torch.full_like(iclr, 1e-4)
    elif case == "iclr_near_1":
        iclr = torch.full_like(iclr, 1 - 1e-4)
    elif case == "large_keys":
        k = 30 * k
    kappa = F.normalize(randn(), dim=-1)
    state = randn(B, H, N, N)
    return [x.to(dtype) for x in (r, log_w, k, v, -kappa, kappa * iclr)] + [state.to(dtype)]


def run(fn, inputs, seed=1):
    """fn's output and final state, and the gradients of a random projection of both w.r.t. every input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    y, state = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(state.shape, generator=gen, dtype=torch.float64).to(state.dtype)
    grads = torch.autograd.grad((y * gy).sum() + (state * gs).sum(), leaves)
    return [y.detach(), state.detach(), *grads]


@functools.cache  # every form is checked against the same references: each computed once (a few MB in all)
def reference(T, case, dtype=torch.float64):
    """The float64 recurrence on the inputs of (T, case), cast to `dtype` first (so only arithmetic differs)."""
    inputs = [x.to(dtype).double() for x in make_inputs(*SHAPES[T][:1], T, *SHAPES[T][1:], case=case, seed=T)]
    return run(wkv7_recurrent, inputs)


FORMS = {
    "chunked": wkv7_chunked,
    "chunked-4": functools.partial(wkv7_chunked, chunk_size=4),  # many chunks at every length
    "attention": BACKENDS["attention"],
}
OUTPUTS = ["y", "state", "grad r", "grad log_w", "grad k", "grad v", "grad a", "grad b", "grad state"]


def check_against_reference(name, got, ref, tol):
    for what, x, x_ref in zip(OUTPUTS, got, ref):
        assert_rel_close(f"{name} {what}", x, x_ref, tol)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("T", sorted(SHAPES))
@pytest.mark.parametrize("form", FORMS)
def test_forms_match_the_float64_reference(form, T, case):
    if form != "chunked" and case not in ("rwkv", "decay_mixed", "iclr_near_1"):
        pytest.skip("the default chunked form runs every case; the others the three that differ most (time)")
    B, H, N = SHAPES[T]
    inputs = make_inputs(B, T, H, N, case=case, seed=T)
    check_against_reference(f"{form} T={T} {case}", run(FORMS[form], inputs), reference(T, case), TOL["float64 model"])


@pytest.mark.parametrize("case", ["rwkv", "decay_mixed", "iclr_near_1", "large_keys"])
@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_float32_matches_the_float64_reference(form, case):
    """fp32 inputs and arithmetic against the float64 recurrence on the same (fp32-rounded) inputs."""
    T = 1000
    B, H, N = SHAPES[T]
    inputs = make_inputs(B, T, H, N, case=case, seed=T, dtype=torch.float32)
    got = run(BACKENDS[form], inputs)
    assert got[0].dtype == got[1].dtype == torch.float32
    check_against_reference(f"{form} fp32 {case}", got, reference(T, case, torch.float32), TOL["float32"])


def test_float32_at_rwkv7_shape():
    """One head of 64 channels over 256 tokens (8 chunks), fp32, RWKV-7-like inputs and the extreme decays."""
    for case in ("rwkv", "decay_mixed"):
        inputs = make_inputs(1, 256, 1, 64, case=case, seed=5, dtype=torch.float32)
        ref = run(wkv7_recurrent, [x.double() for x in inputs])
        check_against_reference(f"chunked fp32 N=64 {case}", run(wkv7_chunked, inputs), ref, TOL["float32"])


@pytest.mark.parametrize("side", ["above", "at", "below"])
@pytest.mark.parametrize("chunk", [4, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_path_at_its_bound(dtype, chunk, side, monkeypatch):
    """Decays whose minimum is just above, exactly at and just below `fast_path_bound` (the chunked form takes the
    fast path for the first two, the stable one for the third) against the float64 recurrence: both sides exact."""
    bound = chunked.fast_path_bound(chunk, dtype)
    r, log_w, k, v, a, b, s = make_inputs(1, 100, 2, 16, seed=7, dtype=dtype)
    u = torch.rand(log_w.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    u.view(-1)[13] = 1.0  # the minimum, exactly `bound` * scale
    log_w = (bound * {"above": 0.99, "at": 1.0, "below": 1.01}[side] * u).to(dtype)
    assert (log_w.min() == torch.tensor(bound, dtype=dtype)) == (side == "at")
    calls = []
    fast = chunked._fast_decays_and_scores
    monkeypatch.setattr(chunked, "_fast_decays_and_scores", lambda *x: calls.append(1) or fast(*x))
    inputs = [r, log_w, k, v, a, b, s]
    got = run(functools.partial(wkv7_chunked, chunk_size=chunk), inputs)
    assert bool(calls) == (side != "below"), f"fast path taken: {bool(calls)}"
    ref = run(wkv7_recurrent, [x.double() for x in inputs])
    tol = TOL["float64 model"] if dtype == torch.float64 else TOL["float32"]
    check_against_reference(f"chunked-{chunk} {dtype} log_w {side} the bound {bound:.3g}", got, ref, tol)


def test_chunked_in_spans(monkeypatch):
    """Spans of two chunks (the last shorter than one chunk), S passed between them, against the float64 recurrence:
    outputs, state and every gradient, on the fast path (rwkv) and the stable one (decay_mixed)."""
    B, H, N, C = 2, 3, 8, 4
    monkeypatch.setattr(chunked, "SPAN_ELEMENTS", 2 * B * C * H * N)
    for case in ("rwkv", "decay_mixed"):
        inputs = make_inputs(B, 37, H, N, case=case, seed=9)
        got = run(functools.partial(wkv7_chunked, chunk_size=C), inputs)
        ref = run(wkv7_recurrent, inputs)
        check_against_reference(f"chunked-4 spans of 8 tokens {case}", got, ref, TOL["float64 model"])


def test_chunked_in_pieces_equals_one_call():
    r, log_w, k, v, a, b, s = make_inputs(2, 100, 2, 8, case="decay_mixed", seed=3)
    y_all, s_all = wkv7(r, log_w, k, v, a, b, s)
    ys, state = [], s
    for lo, hi in [(0, 37), (37, 38), (38, 100)]:
        y, state = wkv7(r[:, lo:hi], log_w[:, lo:hi], k[:, lo:hi], v[:, lo:hi], a[:, lo:hi], b[:, lo:hi], state)
        ys.append(y)
    assert_rel_close("pieces y", torch.cat(ys, 1), y_all, TOL["float64 algebra"])
    assert_rel_close("pieces state", state, s_all, TOL["float64 algebra"])
    y0, s0 = wkv7(r, log_w, k, v, a, b)  # None is the zero state
    y1, s1 = wkv7(r, log_w, k, v, a, b, torch.zeros_like(s))
    assert torch.equal(y0, y1) and torch.equal(s0, s1)


def brute_force_alpha(r, log_w, k, a, b):
    """alpha[t, i] = k_i^T A_{i+1} ... A_t r_t from the N x N transitions themselves (B = 1, one head)."""
    T, N = k.shape[1], k.shape[3]
    A = [torch.diag(torch.exp(log_w[0, t, 0])) + torch.outer(a[0, t, 0], b[0, t, 0]) for t in range(T)]
    alpha = torch.zeros(T, T, dtype=k.dtype)
    for t in range(T):
        P = torch.eye(N, dtype=k.dtype)
        for i in range(t, -1, -1):  # P = A_{i+1} ... A_t
            alpha[t, i] = k[0, i, 0] @ P @ r[0, t, 0]
            P = A[i] @ P
    return alpha


def test_implicit_attention_reproduces_y_and_the_transitions():
    r, log_w, k, v, a, b, s = make_inputs(2, 30, 3, 8, seed=2)
    alpha = attention_matrix(r, log_w, k, a, b)  # (B, H, T, T)
    assert alpha.shape == (2, 3, 30, 30)
    assert torch.all(alpha.triu(1) == 0), "a future token got weight"
    y, _ = wkv7_recurrent(r, log_w, k, v, a, b)  # no initial state: y is alpha v alone
    assert_rel_close("alpha v", (alpha @ v.transpose(1, 2)).transpose(1, 2), y, TOL["float64 algebra"])
    one = [x[:1, :, :1] for x in (r, log_w, k, a, b)]
    assert_rel_close("alpha vs products of transitions", alpha[0, 0], brute_force_alpha(*one), TOL["float64 algebra"])
    assert (alpha < 0).any(), "RWKV-7's implicit attention has negative weights"


def test_states_are_the_transitions_applied_per_token():
    """wkv7_states: S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T with the N x N matrices formed explicitly,
    from a random state, at an odd length; its last is wkv7_recurrent's final state and S_t r_t its y."""
    r, log_w, k, v, a, b, s = make_inputs(2, 17, 3, 8, seed=3)
    states = wkv7_states(r, log_w, k, v, a, b, s)  # (B, T, H, N, N)
    assert states.shape == (2, 17, 3, 8, 8)
    S = s.clone()
    for t in range(17):
        A = torch.diag_embed(torch.exp(log_w[:, t])) + a[:, t, ..., None] * b[:, t, :, None, :]  # (B, H, N, N)
        S = S @ A + v[:, t, ..., None] * k[:, t, :, None, :]
        assert_rel_close(f"S after token {t}", states[:, t], S, TOL["float64 algebra"])
    y, final = wkv7_recurrent(r, log_w, k, v, a, b, s)
    assert_rel_close("last state == the recurrence's final", states[:, -1], final, TOL["float64 algebra"])
    assert_rel_close("S_t r_t == y", (states @ r[..., None])[..., 0], y, TOL["float64 algebra"])
    assert wkv7_states(*[x.float() for x in (r, log_w, k, v, a, b)]).dtype == torch.float32


def test_gradcheck_chunked_on_tiny_shapes():
    inputs = [x.requires_grad_(True) for x in make_inputs(1, 7, 1, 3, case="decay_mixed", seed=4)]
    assert torch.autograd.gradcheck(lambda *x: wkv7_chunked(*x, chunk_size=2), inputs)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_dtypes_in_and_out(backend):
    N = 16 if backend == "triton_chunked" else 4  # its smallest head size (tl.dot's)
    inputs = make_inputs(1, 9, 2, N, seed=6, dtype=torch.bfloat16)[:6]
    y, s = wkv7(*inputs, backend=backend)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32 and torch.isfinite(y).all()
    y, s = wkv7(*[x.double() for x in inputs], backend=backend)
    assert y.dtype == s.dtype == torch.float64


def test_bad_inputs_get_one_line_errors():
    r, log_w, k, v, a, b, s = make_inputs(2, 5, 2, 4, seed=0)
    cases = [
        ((r, log_w, k, v[:, :3], a, b, s), {}, ValueError, r"v has shape \(2, 3, 2, 4\); every input must be"),
        ((r, log_w, k[0], v, a, b, s), {}, ValueError, r"k must be \(B, T, H, N\)"),
        ((r, log_w, k, v, a, b.long(), s), {}, TypeError, "b must be a floating-point tensor"),
        ((r, log_w, k, v, a, b.to("meta"), s), {}, ValueError, "b is on meta but k is on cpu"),
        ((r, log_w, k, v, a, None, s), {}, TypeError, "b must be a tensor"),
        (tuple(x[:, :0] for x in (r, log_w, k, v, a, b)) + (s,), {}, ValueError, "at least one token"),
        ((r, -log_w, k, v, a, b, s), {}, ValueError, "log_w must be <= 0"),
        ((r, log_w, k, v, a, b, s[:, :1]), {}, ValueError, r"state must be \(B, H, N, N\) = \(2, 2, 4, 4\)"),
        ((r, log_w, k, v, a, b, s.half()), {}, TypeError, "state must be float32 or float64"),
        ((r, log_w, k, v, a, b, s.to("meta")), {}, ValueError, "state is on meta"),
        ((r, log_w, k, v, a, b, s), {"backend": "cuda-magic"}, ValueError, "unknown wkv7 backend 'cuda-magic'"),
    ]
    for args, kwargs, error, match in cases:
        with pytest.raises(error, match=match) as info:
            wkv7(*args, **kwargs)
        assert "\n" not in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="power of two"):
        wkv7_chunked(r, log_w, k, v, a, b, chunk_size=12)
