"""The reference RWKV-7 state update: the recurrence one token at a time (float64-capable, differentiable).

Every other form is tested against `wkv7_recurrent`; `wkv7_step` is the one home of the per-token update;
`wkv7_states` keeps the state after every token (analysis).
"""

from __future__ import annotations

import torch

from .common import prepare


def wkv7_step(S, r, w, k, v, a, b, out: torch.Tensor | None = None):
    """One token for every head: S (B, H, N, N) [value index, key index]; r, w, k, v, a, b (B, H, N), w = exp(log_w).

    S' = S (diag(w) + a b^T) + v k^T ;  y = S' r.  Returns (y (B, H, N), S'). `out` (B, H, N, N), when given,
    receives S' (the one-token step passes its next state's slice, saving a copy; no autograd through it).
    TorchScript compiles this function too (the model's one-token step calls it).
    """
    removed = S @ a[..., None]  # (B, H, N, 1): S a, what the transition takes out before writing b
    decayed = S * w[:, :, None, :] if out is None else torch.mul(S, w[:, :, None, :], out=out)
    # the two rank-one terms added in place: no (B, H, N, N) temporaries beyond S' itself
    S = decayed.addcmul_(removed, b[:, :, None, :]).addcmul_(v[..., None], k[:, :, None, :])
    return (S @ r[..., None])[..., 0], S


def wkv7_recurrent(r, log_w, k, v, a, b, state=None):
    """The reference: `wkv7_step` over T. Inputs (B, T, H, N); returns y (B, T, H, N) and the final state."""
    cd, (r, log_w, k, v, a, b), S = prepare(r, log_w, k, v, a, b, state)
    w = torch.exp(log_w)
    ys = []
    for t in range(k.shape[1]):
        y, S = wkv7_step(S, r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
        ys.append(y)
    return torch.stack(ys, dim=1), S


def wkv7_states(r, log_w, k, v, a, b, state=None):
    """The state after every token, (B, T, H, N, N): the recurrence of `wkv7_recurrent`, kept per step (for
    analysis of short texts: T H N^2 numbers)."""
    cd, (r, log_w, k, v, a, b), S = prepare(r, log_w, k, v, a, b, state)
    w = torch.exp(log_w)
    states = []
    for t in range(k.shape[1]):
        _, S = wkv7_step(S, r[:, t], w[:, t], k[:, t], v[:, t], a[:, t], b[:, t])
        states.append(S)
    return torch.stack(states, dim=1)
