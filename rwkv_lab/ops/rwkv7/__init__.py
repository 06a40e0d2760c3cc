"""RWKV-7's WKV operator (placeholder: the recurrence only; the ops7 branch's package replaces this file).

y, S_T = wkv7(r, log_w, k, v, a, b, state=None, *, backend="auto", check=True)

r, log_w, k, v, a, b  (B, T, H, N); log_w = log of the decay (<= 0)
state                 (B, H, N, N) float32 (float64 for float64 inputs), None = zeros
S_t = S_{t-1} (diag(exp(log_w_t)) + a_t b_t^T) + v_t k_t^T ;  y_t = S_t r_t
y (B, T, H, N) in r's dtype, S_T (B, H, N, N); `check` is accepted (the full package validates inputs with it)
"""

from __future__ import annotations

import torch

BACKENDS = ("recurrent", "chunked", "attention", "auto")


def wkv7(r, log_w, k, v, a, b, state=None, *, backend: str = "auto", check: bool = True):
    if backend not in BACKENDS:
        raise ValueError(f"unknown WKV-7 backend {backend!r}; expected one of {BACKENDS}")
    B, T, H, N = r.shape
    out_dtype = r.dtype
    dtype = torch.float64 if r.dtype == torch.float64 else torch.float32
    S = torch.zeros(B, H, N, N, dtype=dtype, device=r.device) if state is None else state.to(dtype)
    r, w, k, v, a, b = (t.to(dtype) for t in (r, torch.exp(log_w.to(dtype)), k, v, a, b))
    ys = []
    for t in range(T):
        sa = S @ a[:, t, :, :, None]  # (B, H, N, 1)
        S = S * w[:, t, :, None, :] + sa * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    return torch.stack(ys, dim=1).to(out_dtype), S
