"""One-pass elementwise kernels of an inference pass (a prefill, scoring), shared by the generations (Triton).

    k = relu_square_(key_out, scale)          # in place: relu(k)^2 / scale, a channel mix's key (both generations)
    out = gated(r_pre, y, scale)              # sigmoid(r_pre) * y / scale: RWKV-4's time-mix and channel-mix gates

Eager (models/rwkv4/layers.py `TimeMix.from_mixed`, `ChannelMix.from_mixed`, models/rwkv7/model.py
`ChannelMix7.from_mixed`: the references), each is two or three launches over whole activations: the channel mix's
relu, square (and RWKV-4's fp16 rescaling) each pass over its (B, T, 4C) key, the largest activation of a block;
RWKV-4's gates a sigmoid and a product (and a division by the rescale) over (B, T, C). Here each is one pass: read
once, computed in fp32, written once in the activation's dtype (so the key's square is rounded once, after its
division by the rescale, where eager fp16 rounds it before). Forward only. Runs on CUDA tensors, and on CPU tensors
under TRITON_INTERPRET=1 (the tests). Launched through Triton's own launcher: the grid follows the pass's B T, new
at nearly every prefill (see ops/rwkv7/prefill_kernels.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # elements a program


@triton.jit
def _relu_square(x_ptr, n, inv_scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.maximum(tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32), 0.0)
    tl.store(x_ptr + offs, (x * x * inv_scale).to(x_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _gated(r_ptr, y_ptr, out_ptr, n, inv_scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    r = tl.load(r_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (tl.sigmoid(r) * y * inv_scale).to(out_ptr.dtype.element_ty), mask=inside)


def relu_square_(k: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """k <- relu(k)^2 / scale in place (k contiguous); returns k."""
    if not k.is_contiguous():
        raise ValueError("relu_square_ works in place on a contiguous tensor")
    n = k.numel()
    _relu_square[(triton.cdiv(n, BLOCK),)](k, n, 1.0 / scale, BLOCK=BLOCK)
    return k


def gated(r_pre: torch.Tensor, y: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """sigmoid(r_pre) * y / scale, r_pre and y of one shape, in r_pre's dtype."""
    if r_pre.shape != y.shape:
        raise ValueError(f"gated needs r_pre and y of one shape; got {tuple(r_pre.shape)} and {tuple(y.shape)}")
    r_pre, y = r_pre.contiguous(), y.contiguous()
    out = torch.empty_like(r_pre)
    n = out.numel()
    _gated[(triton.cdiv(n, BLOCK),)](r_pre, y, out, n, 1.0 / scale, BLOCK=BLOCK)
    return out
