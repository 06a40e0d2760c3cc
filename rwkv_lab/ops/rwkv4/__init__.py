"""The WKV operator of RWKV-4 in several formulations behind one signature.

    y, new_state = wkv(w, u, k, v, state, backend=...)

    w      (C,)       decay rate, w = exp(time_decay) > 0
    u      (C,)       time_first, the bonus of the current token
    k, v   (B, T, C)  keys and values, any float dtype
    state  (B, 3, C)  (a, b, p) or None: the true running sums are a*e^p and b*e^p
    y      (B, T, C)  in the dtype of v
    new_state (B, 3, C) float32 (float64 when the inputs are float64)
    lengths (B,)      optional, integers in [1, T]: sequence b is right-padded after lengths[b] tokens, and its
                      state stops updating there (new_state is the state after its own last token; y past it is
                      read from that state, to be ignored). The decay is fixed per channel, so padding the inputs
                      could not stop it: the operator takes the lengths ('recurrent', 'chunked', 'triton').

    wkv_t = (sum_{i<t} e^{k_i-(t-1-i)w} v_i + e^{u+k_t} v_t + a e^{p-tw})
          / (sum_{i<t} e^{k_i-(t-1-i)w}     + e^{u+k_t}     + b e^{p-tw})

Every formulation keeps all exponents <= 0 by shifting with a running maximum, so no finite key overflows.
`wkv_recurrent` is the reference: the RNN form, one token at a time. `wkv_attention` is the transformer form:
a causal T x T softmax per channel. `wkv_chunked` splits T into chunks that run in parallel, joined by a scan
over their states: exact at any T with O(T C) work (the algorithm of the GPU kernel in triton_kernels.py).
"""

from __future__ import annotations

import torch

from .. import triton_available
from ..lengths import check_lengths
from .attention import attention_matrix, wkv_attention
from .chunked import chunk_size_for, wkv_chunked
from .common import P_EMPTY, compute_dtype, init_wkv_state
from .reference import wkv_recurrent, wkv_states


def wkv_triton(w, u, k, v, state=None, lengths=None):
    """The GPU kernel (triton_kernels.py): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    # imported on first use: Triton is optional on a CPU machine
    from .triton_kernels import wkv_triton as kernel

    return kernel(w, u, k, v, state, lengths)


BACKENDS = {
    "recurrent": wkv_recurrent,
    "attention": wkv_attention,
    "chunked": wkv_chunked,
    "triton": wkv_triton,
}
# the backends torch.compile meets as custom operators (opaque, forward and backward registered): a compiled training
# block takes them whole
COMPILED = ("triton",)
# the formulations that stop each sequence's state at its own length (a batch of prompts of different lengths)
TAKES_LENGTHS = ("recurrent", "chunked", "triton")


def resolve_backend(backend: str, k: torch.Tensor) -> str:
    """'auto': the Triton kernel on CUDA tensors, the chunked form elsewhere."""
    if backend == "auto":
        return "triton" if k.is_cuda and triton_available() else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown WKV backend {backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    return backend


def check_inputs(w, u, k, v, state, lengths=None):
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
    if lengths is not None:
        check_lengths(lengths, B, T, k.device)


def wkv(w, u, k, v, state=None, backend: str = "auto", check: bool = True, lengths=None):
    """Dispatch to one formulation; all share the signature (w, u, k, v, state) -> (y, new_state); those in
    TAKES_LENGTHS also take `lengths=`."""
    if check:
        check_inputs(w, u, k, v, state, lengths)
    name = resolve_backend(backend, k)
    if lengths is None:
        y, new_state = BACKENDS[name](w, u, k, v, state)
    elif name in TAKES_LENGTHS:
        y, new_state = BACKENDS[name](w, u, k, v, state, lengths=lengths)
    else:
        raise ValueError(f"WKV backend {name!r} takes no lengths; use one of {sorted(TAKES_LENGTHS)}")
    return y.to(v.dtype), new_state


__all__ = [
    "BACKENDS",
    "COMPILED",
    "P_EMPTY",
    "TAKES_LENGTHS",
    "attention_matrix",
    "check_inputs",
    "check_lengths",
    "chunk_size_for",
    "compute_dtype",
    "init_wkv_state",
    "resolve_backend",
    "triton_available",
    "wkv",
    "wkv_attention",
    "wkv_chunked",
    "wkv_recurrent",
    "wkv_states",
    "wkv_triton",
]
