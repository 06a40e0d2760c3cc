"""The reference WKV: the stable recurrence of the RNN form, one token at a time (float64-capable).

Every other formulation is tested against `wkv_recurrent`. The two updates below are the only home of the stable
step; the chunked form and the state trajectories of the analysis layer call them.
"""

from __future__ import annotations

import torch

from .common import prepare


def output_step(a, b, p, u, kt, vt, exp=torch.exp):
    """wkv_t from the state before token t (B, C) each: the current token gets the bonus u."""
    q = torch.maximum(p, u + kt)
    e1, e2 = exp(p - q), exp(u + kt - q)
    return (e1 * a + e2 * vt) / (e1 * b + e2)


def state_step(a, b, p, w, kt, vt, exp=torch.exp):
    """The state after token t: decay the past by w, add the current token without bonus; every exponent <= 0."""
    q = torch.maximum(p - w, kt)
    e1, e2 = exp(p - w - q), exp(kt - q)
    return e1 * a + e2 * vt, e1 * b + e2, q


def wkv_recurrent(w, u, k, v, state=None, lengths=None):
    """The reference: the stable recurrence of the RNN form, sequential over T. `lengths` (B,): sequence b's state
    stops updating after its lengths[b] tokens (right padding); its outputs there are read from that state."""
    cd, w, u, k, v, state = prepare(w, u, k, v, state)
    a, b, p = state.unbind(1)  # (B, C) each
    ys = []
    for t in range(k.shape[1]):
        ys.append(output_step(a, b, p, u, k[:, t], v[:, t]))
        stepped = state_step(a, b, p, w, k[:, t], v[:, t])
        if lengths is None:
            a, b, p = stepped
        else:
            real = (t < lengths)[:, None]  # (B, 1)
            a, b, p = (torch.where(real, new, old) for new, old in zip(stepped, (a, b, p)))
    y = torch.stack(ys, dim=1)  # (B, T, C)
    return y, torch.stack([a, b, p], dim=1)


def wkv_states(w, k, v, state):
    """The state (a, b, p) after every token, (B, T, 3, C): the recurrence of `wkv_recurrent`, kept per step."""
    cd, w, _, k, v, state = prepare(w, w, k, v, state)
    a, b, p = state.unbind(1)
    states = []
    for t in range(k.shape[1]):
        a, b, p = state_step(a, b, p, w, k[:, t], v[:, t])
        states.append(torch.stack([a, b, p], dim=1))
    return torch.stack(states, dim=1)
