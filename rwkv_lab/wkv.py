"""The WKV operator of RWKV-4 in several formulations behind one signature.

    y, new_state = wkv(w, u, k, v, state, backend=...)

    w      (C,)       decay rate, w = exp(time_decay) > 0
    u      (C,)       time_first, the bonus of the current token
    k, v   (B, T, C)  keys and values, any float dtype
    state  (B, 3, C)  (a, b, p) or None: the true running sums are a*e^p and b*e^p
    y      (B, T, C)  in the dtype of v
    new_state (B, 3, C) float32 (float64 when the inputs are float64)

    wkv_t = (sum_{i<t} e^{k_i-(t-1-i)w} v_i + e^{u+k_t} v_t + a e^{p-tw})
          / (sum_{i<t} e^{k_i-(t-1-i)w}     + e^{u+k_t}     + b e^{p-tw})

Every formulation keeps all exponents <= 0 by shifting with a running maximum, so no finite key overflows.
`wkv_recurrent` is the reference: the RNN form, one token at a time. `wkv_attention` is the transformer form:
a causal T x T softmax per channel. `wkv_chunked` splits T into chunks that run in parallel, joined by a scan
over their states: exact at any T with O(T C) work (the algorithm of the GPU kernel in wkv_triton.py).
"""

from __future__ import annotations

import math

import torch

# Start value of the exponent p: exp(P_EMPTY - anything finite) == 0. The peers use -1e38 (rwkv) and -1e30
# (transformers); a finite value keeps inf - inf out of every formulation.
P_EMPTY = -1e38


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32: WKV always accumulates in at least fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def init_wkv_state(batch: int, channels: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The empty state: a = b = 0 and p = P_EMPTY, shape (B, 3, C)."""
    state = torch.zeros(batch, 3, channels, dtype=dtype, device=device)
    state[:, 2] = P_EMPTY
    return state


def _prepare(w, u, k, v, state):
    cd = compute_dtype(k, v, state)
    if state is None:
        state = init_wkv_state(k.shape[0], k.shape[2], cd, k.device)
    return cd, w.to(cd), u.to(cd), k.to(cd), v.to(cd), state.to(cd)


def wkv_recurrent(w, u, k, v, state=None):
    """The reference: the stable recurrence of the RNN form, sequential over T."""
    cd, w, u, k, v, state = _prepare(w, u, k, v, state)
    a, b, p = state.unbind(1)  # (B, C) each
    ys = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        # output: the current token gets the bonus u
        q = torch.maximum(p, u + kt)
        e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
        ys.append((e1 * a + e2 * vt) / (e1 * b + e2))
        # state: decay the past by w, add the current token without bonus
        q = torch.maximum(p - w, kt)
        e1, e2 = torch.exp(p - w - q), torch.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    y = torch.stack(ys, dim=1)  # (B, T, C)
    return y, torch.stack([a, b, p], dim=1)


def _attention_terms(w, u, k, state):
    """Scores of the T x T form and the state's score, all in one max-shifted frame."""
    B, T, C = k.shape
    t = torch.arange(T, device=k.device, dtype=k.dtype)
    dist = t[:, None] - 1 - t[None, :]  # (T, T): steps of decay between token i and output t
    scores = k[:, None, :, :] - dist[None, :, :, None] * w  # (B, T, T, C)
    diag = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    future = torch.ones(T, T, dtype=torch.bool, device=k.device).triu(1)[None, :, :, None]
    scores = torch.where(diag, (u + k)[:, None, :, :], scores)
    scores = scores.masked_fill(future, float("-inf"))
    state_score = state[:, 2][:, None, :] - t[None, :, None] * w  # (B, T, C): p - t w
    shift = torch.maximum(scores.amax(dim=2), state_score)  # (B, T, C)
    return scores, state_score, shift


def attention_matrix(w, u, k, state=None):
    """The implicit attention weights of the transformer form, (B, T, T, C), rows summing to 1 with the state.

    Column i of row t is how much v_i contributes to wkv_t; the remainder, 1 - row sum, is the state's share.
    """
    cd, w, u, k, _, state = _prepare(w, u, k, k, state)
    scores, state_score, shift = _attention_terms(w, u, k, state)
    weights = torch.exp(scores - shift[:, :, None, :])
    state_weight = state[:, 1][:, None, :] * torch.exp(state_score - shift)
    return weights / (weights.sum(dim=2) + state_weight)[:, :, None, :]


def wkv_attention(w, u, k, v, state=None):
    """The transformer form: per channel, a causal softmax over distance-decayed keys. O(T^2 C) memory."""
    cd, w, u, k, v, state = _prepare(w, u, k, v, state)
    a0, b0, p0 = state.unbind(1)  # (B, C) each
    T = k.shape[1]
    scores, state_score, shift = _attention_terms(w, u, k, state)
    weights = torch.exp(scores - shift[:, :, None, :])  # (B, T, T, C), zero above the diagonal
    carried = torch.exp(state_score - shift)  # (B, T, C)
    num = torch.einsum("btic,bic->btc", weights, v) + a0[:, None] * carried
    den = weights.sum(dim=2) + b0[:, None] * carried
    y = num / den

    # The state after the last token: token i has decayed T-1-i times, the incoming state T times.
    t = torch.arange(T, device=k.device, dtype=cd)
    token_exp = k - (T - 1 - t)[None, :, None] * w  # (B, T, C)
    state_exp = p0 - T * w  # (B, C)
    p = torch.maximum(token_exp.amax(dim=1), state_exp)
    e_tok, e_state = torch.exp(token_exp - p[:, None]), torch.exp(state_exp - p)
    a = (e_tok * v).sum(dim=1) + a0 * e_state
    b = e_tok.sum(dim=1) + b0 * e_state
    return y, torch.stack([a, b, p], dim=1)


def _exp_normal(x):
    """exp, with arguments below the dtype's normal range clamped to its edge: the result then differs from
    exp(x) by less than 1e-37 (fp32) of the largest term (which is 1), but CPUs compute denormal results
    20x slower, and the chunked form makes many of them."""
    return torch.exp(x.clamp(min=-87.0 if x.dtype == torch.float32 else -708.0))


def _merge(s1, s2):
    """Two partial sums in (a, b, p) form added: e^p1 (a1, b1) + e^p2 (a2, b2), shifted by the larger exponent."""
    (a1, b1, p1), (a2, b2, p2) = s1, s2
    p = torch.maximum(p1, p2)
    e1, e2 = torch.exp(p1 - p), torch.exp(p2 - p)
    return e1 * a1 + e2 * a2, e1 * b1 + e2 * b2, p


def chunk_size_for(T: int) -> int:
    """sqrt(T) balances the two loops of the chunked form (T/c chunk steps, c token steps)."""
    return math.isqrt(T - 1) + 1 if T > 1 else 1


def wkv_chunked(w, u, k, v, state=None, chunk_size: int | None = None):
    """Chunks of c tokens, parallel over chunks; the same three phases as the GPU kernel.

    A. every chunk's own contribution to the state, in closed form (all chunks at once);
    B. a scan over chunks: the state entering each chunk (T/c sequential steps on (B, C));
    C. the recurrence inside every chunk from its entering state (c sequential steps on (B * T/c, C)).
    O(T C) work and memory, exact at any T, differentiable; c defaults to sqrt(T).
    """
    cd, w, u, k, v, state = _prepare(w, u, k, v, state)
    B, T, C = k.shape
    c = chunk_size or chunk_size_for(T)
    N = -(-T // c)
    pad = N * c - T
    if pad:
        # padded tokens have weight e^{P_EMPTY} = 0 and are dropped from the output
        k = torch.cat([k, k.new_full((B, pad, C), P_EMPTY)], dim=1)
        v = torch.cat([v, v.new_zeros(B, pad, C)], dim=1)
    kc, vc = k.view(B, N, c, C), v.view(B, N, c, C)
    lengths = torch.full((N,), c, dtype=cd, device=k.device)
    lengths[-1] = c - pad
    j = torch.arange(c, dtype=cd, device=k.device)

    # A: token j of a chunk of length L has decayed L-1-j times by the chunk's end
    exps = kc - (lengths[:, None] - 1 - j)[None, :, :, None] * w  # (B, N, c, C)
    p_chunk = exps.amax(dim=2)  # (B, N, C)
    weights = _exp_normal(exps - p_chunk[:, :, None])
    a_chunk, b_chunk = (weights * vc).sum(dim=2), weights.sum(dim=2)

    # B: entering state of each chunk; the carried state decays L times across a chunk
    a, b, p = state.unbind(1)
    entering = []
    for n in range(N):
        entering.append(torch.stack([a, b, p], dim=1))
        a, b, p = _merge((a, b, p - lengths[n] * w), (a_chunk[:, n], b_chunk[:, n], p_chunk[:, n]))
    final_state = torch.stack([a, b, p], dim=1)

    # C: the stable recurrence inside all chunks at once
    a, b, p = torch.stack(entering, dim=1).flatten(0, 1).unbind(1)  # (B * N, C) each
    kf, vf = kc.flatten(0, 1), vc.flatten(0, 1)  # (B * N, c, C)
    ys = []
    for t in range(c):
        kt, vt = kf[:, t], vf[:, t]
        q = torch.maximum(p, u + kt)
        e1, e2 = _exp_normal(p - q), _exp_normal(u + kt - q)
        ys.append((e1 * a + e2 * vt) / (e1 * b + e2))
        if t + 1 < c:
            q = torch.maximum(p - w, kt)
            e1, e2 = _exp_normal(p - w - q), _exp_normal(kt - q)
            a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    y = torch.stack(ys, dim=1).view(B, N * c, C)[:, :T]
    return y, final_state


def wkv_triton(w, u, k, v, state=None):
    """The GPU kernel (wkv_triton.py): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    from .wkv_triton import wkv_triton as kernel

    return kernel(w, u, k, v, state)


BACKENDS = {
    "recurrent": wkv_recurrent,
    "attention": wkv_attention,
    "chunked": wkv_chunked,
    "triton": wkv_triton,
}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, k: torch.Tensor) -> str:
    """'auto': the Triton kernel on CUDA tensors, the chunked form elsewhere."""
    if backend == "auto":
        return "triton" if k.is_cuda and triton_available() else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown WKV backend {backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    return backend


def check_inputs(w, u, k, v, state):
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"k and v must both be (B, T, C); got k {tuple(k.shape)} and v {tuple(v.shape)}")
    B, T, C = k.shape
    if T == 0:
        raise ValueError("WKV needs at least one token (T >= 1); got T = 0")
    for name, x in (("w", w), ("u", u)):
        if x.shape != (C,):
            raise ValueError(f"{name} must have shape (C,) = ({C},); got {tuple(x.shape)}")
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")
    if state is not None:
        if state.shape != (B, 3, C):
            raise ValueError(f"WKV state must be (B, 3, C) = ({B}, 3, {C}) holding (a, b, p); got {tuple(state.shape)}")
        if state.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"WKV state must be float32 or float64 (it accumulates sums); got {state.dtype}")
        if state.device != k.device:
            raise ValueError(f"WKV state is on {state.device} but the inputs are on {k.device}")


def wkv(w, u, k, v, state=None, backend: str = "auto", check: bool = True):
    """Dispatch to one formulation; all share the signature (w, u, k, v, state) -> (y, new_state)."""
    if check:
        check_inputs(w, u, k, v, state)
    y, new_state = BACKENDS[resolve_backend(backend, k)](w, u, k, v, state)
    return y.to(v.dtype), new_state
