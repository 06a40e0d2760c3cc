"""What feeds each half of an RWKV-4 block's projections: a LayerNorm, the token shift and the mixes.

    mixed, h_last = norm_shift_mix(x, ln, last_x, mus)

    x       (B, T, C)  the residual stream entering the half
    ln      the half's nn.LayerNorm (ln1 before the time-mix, ln2 before the channel-mix)
    last_x  (B, C)     the previous token's normalised x (the state's att_x or ffn_x)
    mus     M mix parameters, each (1, 1, C) or (C,): time_mix_k, _v, _r (M = 3), or the channel-mix's k, r (2)
    mixed   M tensors (B, T, C): h * mu + h_{t-1} * (1 - mu) with h = ln(x); in the autocast dtype under autocast
    h_last  (B, C)     h at the last token, the state's new att_x or ffn_x

`norm_shift_mix_eager` is the reference, the eager block's own ops. `norm_shift_mix` runs the Triton kernels
(triton_kernels.py: one launch forward, one backward, each row of x read once) where they run, and the reference
elsewhere; the fused training blocks (models/rwkv4/fast_path.py: block_with_fused_mixes) call it.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn


def token_shift(x: torch.Tensor, last_x: torch.Tensor) -> torch.Tensor:
    """x_{t-1} for every t: the carried last_x (B, C) before the first token, then x shifted by one."""
    return torch.cat([last_x[:, None].to(x.dtype), x[:, :-1]], dim=1)  # (B, T, C)


def mix(x, prev, mu):
    return x * mu + prev * (1 - mu)


def norm_shift_mix_eager(x, ln: nn.LayerNorm, last_x, mus) -> tuple[list[torch.Tensor], torch.Tensor]:
    h = ln(x)  # (B, T, C)
    prev = token_shift(h, last_x)
    return [mix(h, prev, mu) for mu in mus], h[:, -1]


def kernels_run_on(x: torch.Tensor) -> bool:
    """Whether the Triton kernels take x: CUDA float tensors, or CPU ones under TRITON_INTERPRET=1 (the tests);
    never float64, which they would compute in fp32."""
    if x.dtype == torch.float64:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def norm_shift_mix(x, ln: nn.LayerNorm, last_x, mus) -> tuple[list[torch.Tensor], torch.Tensor]:
    if not kernels_run_on(x):
        return norm_shift_mix_eager(x, ln, last_x, mus)
    from .triton_kernels import norm_shift_mix_triton  # noqa: PLC0415 - Triton is optional on a CPU machine

    out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    mu = torch.cat([m.reshape(1, -1) for m in mus])  # (M, C)
    return norm_shift_mix_triton(x, ln.weight, ln.bias, last_x, mu, ln.eps, out_dtype)


def norm_shift_mix_stacked(x, ln: nn.LayerNorm, last_x, mus) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: as `norm_shift_mix`, any number M of mixes, stacked: (M, B, T, C) in x's dtype and h_last (B, C)
    (fp32 from the kernel, x's dtype from the reference). The Triton kernel (one launch,
    `norm_shift_mix_stacked_triton`) where it runs and grad mode is off, else the eager ops."""
    if torch.is_grad_enabled() or not kernels_run_on(x):  # the kernel has no backward
        mixed, h_last = norm_shift_mix_eager(x, ln, last_x, mus)
        return torch.stack(mixed), h_last
    from .triton_kernels import norm_shift_mix_stacked_triton  # noqa: PLC0415 - Triton is optional on a CPU machine

    mu = torch.cat([m.reshape(1, -1) for m in mus])  # (M, C)
    return norm_shift_mix_stacked_triton(x, ln.weight, ln.bias, last_x, mu, ln.eps)
