"""What every RWKV-7 form shares: the dtype it computes in and the empty state."""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32: the state always accumulates in at least fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def prepare(r, log_w, k, v, a, b, state):
    """The six (B, T, H, N) inputs and the (B, H, N, N) state in the compute dtype; None becomes the zero state."""
    cd = compute_dtype(r, log_w, k, v, a, b, state)
    B, _, H, N = k.shape
    if state is None:
        state = torch.zeros(B, H, N, N, dtype=cd, device=k.device)
    return cd, [x.to(cd) for x in (r, log_w, k, v, a, b)], state.to(cd)
