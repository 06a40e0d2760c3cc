"""What every WKV formulation shares: the empty state and the dtype it accumulates in."""

from __future__ import annotations

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


def prepare(w, u, k, v, state):
    cd = compute_dtype(k, v, state)
    if state is None:
        state = init_wkv_state(k.shape[0], k.shape[2], cd, k.device)
    return cd, w.to(cd), u.to(cd), k.to(cd), v.to(cd), state.to(cd)
