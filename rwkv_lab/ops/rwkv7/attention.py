"""The explicit T x T form of the RWKV-7 state update: RWKV-7's implicit attention, for analysis (short texts).

With P(i+1..t) = A_{i+1} ... A_t the ordered product of the transitions A_s = diag(w_s) + a_s b_s^T,

    S_t = sum_{i<=t} v_i k_i^T P(i+1..t) + S_0 P(1..t)     so     y_t = sum_{i<=t} alpha[t, i] v_i + S_0 P(1..t) r_t

with alpha[t, i] = k_i^T P(i+1..t) r_t per head: unnormalised, possibly negative (the counterpart of RWKV-4's
softmax form, whose rows sum to one). Computed by carrying every query back through the transitions, one token at
a time from the last: O(T^2 N) per head.
"""

from __future__ import annotations

import torch

from .common import prepare


def _carry_back(queries, times, log_w, k, a, b):
    """For queries q (B, H, Q, N) asked at token times[q]: alpha[q, i] = k_i^T P(i+1..times[q]) q for i <= times[q]
    (zero after), and the queries carried to the start, P(1..times[q]) q. Inputs (B, T, H, N)."""
    B, T, H, N = k.shape
    w = torch.exp(log_w)
    z = torch.zeros_like(queries)  # (B, H, Q, N): each query carried back to token i, zero before it is asked
    columns = []
    for i in range(T - 1, -1, -1):
        z = torch.where((times == i)[:, None], queries, z)
        columns.append(z @ k[:, i, :, :, None])  # (B, H, Q, 1): alpha[:, i]
        # A_i z = w_i z + a_i (b_i . z)
        z = z * w[:, i, :, None, :] + (z @ b[:, i, :, :, None]) * a[:, i, :, None, :]
    return torch.cat(columns[::-1], -1), z


def attention_matrix(r, log_w, k, a, b):
    """RWKV-7's implicit attention alpha (B, H, T, T): y_t = sum_i alpha[t, i] v_i + (the initial state's part).

    alpha[t, i] = k_i^T (diag(w_{i+1}) + a_{i+1} b_{i+1}^T) ... (diag(w_t) + a_t b_t^T) r_t for i <= t, 0 above the
    diagonal. Inputs (B, T, H, N), computed in float32 at least (float64 stays float64).
    """
    _, (r, log_w, k, _, a, b), _ = prepare(r, log_w, k, k, a, b, None)
    T = k.shape[1]
    alpha, _ = _carry_back(r.transpose(1, 2), torch.arange(T, device=k.device), log_w, k, a, b)
    return alpha


def wkv7_attention(r, log_w, k, v, a, b, state=None):
    """The T x T form: y = alpha v + S_0 P(1..t) r_t; the final state from the unit vectors asked at the last token
    (S_T = sum_i v_i (P(i+1..T)^T k_i)^T + S_0 P(1..T)). Inputs (B, T, H, N); returns y and the final state."""
    cd, (r, log_w, k, v, a, b), S0 = prepare(r, log_w, k, v, a, b, state)
    B, T, H, N = k.shape
    eye = torch.eye(N, dtype=cd, device=k.device).expand(B, H, N, N)  # row j: e_j
    queries = torch.cat([r.transpose(1, 2), eye], 2)  # (B, H, T + N, N)
    times = torch.cat([torch.arange(T, device=k.device), torch.full((N,), T - 1, device=k.device)])
    alpha, carried = _carry_back(queries, times, log_w, k, a, b)  # (B, H, T + N, T), (B, H, T + N, N)
    vh = v.transpose(1, 2)  # (B, H, T, N)
    y = alpha[:, :, :T] @ vh + carried[:, :, :T] @ S0.transpose(-1, -2)  # (B, H, T, N)
    # row j of the unit queries: k_i^T P(i+1..T) e_j = column j of the final state's key side
    S = vh.transpose(-1, -2) @ alpha[:, :, T:].transpose(-1, -2) + S0 @ carried[:, :, T:].transpose(-1, -2)
    return y.transpose(1, 2), S
