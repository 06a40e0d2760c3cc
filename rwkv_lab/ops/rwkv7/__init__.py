"""The RWKV-7 state update ("wkv7") in several forms behind one signature.

    y, new_state = wkv7(r, log_w, k, v, a, b, state=None, *, backend="auto")

    r, log_w, k, v, a, b  (B, T, H, N)  any float dtype; computed in float32 at least (float64 stays float64)
    log_w                 <= 0, the log of the per-channel decay w = exp(log_w) in (0, 1]
    state                 (B, H, N, N)  S[i, j]: i the value index, j the key index; None = zeros
    y                     (B, T, H, N)  in the dtype of v
    new_state             (B, H, N, N)  the state after the last token, float32 (float64 for float64 inputs)

per head and token:

    S_t = S_{t-1} (diag(exp(log_w_t)) + a_t b_t^T) + v_t k_t^T        y_t = S_t r_t

RWKV-7's model passes log_w = -exp(-0.5) sigmoid(z), a = -kappa and b = kappa * iclr (kappa the unit-norm removal
key, iclr the in-context learning rate): a diagonal-plus-rank-one transition, then a rank-one write. This is fla's
`chunk_rwkv7(r, w, k, v, a, b)` with w the log decay.

`wkv7_recurrent` (reference.py) is the reference: one token at a time. `wkv7_chunked` (chunked.py) runs chunks of
tokens in parallel through the WY/UT form of the generalised delta rule, joined by passing S: O(T C N) per head,
exact at any T and any log_w <= 0, the default. `wkv7_attention` (attention.py) is the explicit T x T form, with
`attention_matrix` RWKV-7's implicit attention alpha (B, H, T, T), for analysis of short texts. `wkv7_triton`
(triton_kernels.py) is the GPU kernel, forward and backward (RWKV-LM's x070 CUDA kernel's design: the recurrence
with the state in registers, stepped back in the backward), for RWKV-7's decays (log_w >= -e^-0.5).
`wkv7_triton_chunked` (triton_chunked.py, backend "triton_chunked") is the chunked form as GPU kernels, forward
and backward: chunks of 16 tokens with tl.dot, S passed between chunks; for RWKV-7's decays too. `auto` picks on
CUDA the chunked kernels with grad mode off at a few sequences (a prefill), else the per-token kernel, and the
chunked form elsewhere; training stays on the per-token kernel until benchmarks/bench_wkv7.py has timed the
chunked backward against it on a GPU.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import triton_available
from .attention import attention_matrix, wkv7_attention
from .chunked import DEFAULT_CHUNK, chunk_size_for, wkv7_chunked
from .common import compute_dtype
from .reference import wkv7_recurrent, wkv7_states, wkv7_step


def wkv7_triton(r, log_w, k, v, a, b, state=None, tiling=None):
    """The GPU kernel (triton_kernels.py): CUDA tensors, or CPU tensors under TRITON_INTERPRET=1. `tiling`: a
    triton_kernels.Tiling, None for its DEFAULT."""
    # imported on first use: Triton is optional on a CPU machine
    from .triton_kernels import DEFAULT
    from .triton_kernels import wkv7_triton as kernel

    return kernel(r, log_w, k, v, a, b, state, DEFAULT if tiling is None else tiling)


def wkv7_triton_chunked(r, log_w, k, v, a, b, state=None):
    """The chunked GPU kernels, forward and backward (triton_chunked.py): CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1."""
    from .triton_chunked import wkv7_triton_chunked as kernel  # on first use, as wkv7_triton

    return kernel(r, log_w, k, v, a, b, state)


BACKENDS = {
    "recurrent": wkv7_recurrent,
    "chunked": wkv7_chunked,
    "attention": wkv7_attention,
    "triton": wkv7_triton,
    "triton_chunked": wkv7_triton_chunked,
}

# the Triton backends that torch.compile meets as custom operators (opaque, forward and backward registered): a
# compiled training block takes them whole
COMPILED = ("triton", "triton_chunked")


# Disabled on first use, not at import: torch.compiler.disable imports torch._dynamo, about 1 s of every process's
# start (a command line that refuses its arguments, a worker) that never compiles (as torch's own _disable_dynamo).
def outside_graph(form):
    def run(*args):
        disabled = getattr(form, "_outside_graph", None)
        if disabled is None:
            disabled = form._outside_graph = torch.compiler.disable(form)
        return disabled(*args)

    return functools.wraps(form)(run)


# The other forms as torch.compile meets them inside a compiled caller (RWKV-7's fused blocks with fused_blocks=True
# off CUDA, as the CPU tests run them): run as they are, outside the graph, as the Triton kernels are (opaque custom
# ops there). The chunked form's data-dependent choice of its decay path breaks the graph anyway, and inductor
# compiling its dozens of ops for each shape took 3x the compile time of a tiny model's blocks for nothing faster.
OUTSIDE_GRAPH = {name: outside_graph(form) for name, form in BACKENDS.items() if name not in COMPILED}

NAMES = ("r", "log_w", "k", "v", "a", "b")


# the state rows (B H N) up to which 'auto' prefers the chunked kernels without grad: at few rows the per-token
# kernel's B H N/rows programs leave the GPU idle for T dependent steps, at many it has parallelism enough and the
# chunked kernels' extra work costs more (H100, fp16, T = 4096, results/wkv7/wkv7_prefill_backends.csv: chunked
# 2.8x and 2.3x faster at 768 and 2,048 rows, 0.74x and 0.61x at 24,576 and 65,536; between, unmeasured). With grad
# the per-token kernel: the chunked kernels' forward + backward ran at 0.66x and 0.65x its speed at (B, T, C) =
# (8, 1024, 2048) and (16, 4096, 2048), bf16 (H100, results/wkv7/wkv7_gpu_benchmark.csv), their dots then in tf32x3;
# in tf32, as a bf16 training pass now runs them (triton_chunked's docstring), not yet timed.
CHUNKED_MAX_ROWS = 8192


def resolve_backend(backend: str, k: torch.Tensor) -> str:
    """'auto': on CUDA tensors the Triton kernels, the chunked ones (T/16 dependent steps) with grad mode off and
    at most CHUNKED_MAX_ROWS state rows (a prefill of a few sequences), else the per-token kernel (forward and
    backward); the chunked form elsewhere. k: (B, T, H, N), or a model's (B, T, C) input."""
    if backend == "auto":
        if not (isinstance(k, torch.Tensor) and k.is_cuda and triton_available()):
            return "chunked"
        # grad mode, not k.requires_grad: a model resolves once for all its layers from its embeddings, which may
        # be frozen while the layers train
        rows = k.shape[0] * math.prod(k.shape[2:])  # B H N (B C for a model's input)
        return "triton_chunked" if not torch.is_grad_enabled() and rows <= CHUNKED_MAX_ROWS else "triton"
    if backend not in BACKENDS:
        raise ValueError(f"unknown wkv7 backend {backend!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    return backend


def check_inputs(r, log_w, k, v, a, b, state, backend: str = "chunked"):
    """One-line errors for inputs no form can use: shapes, dtypes, devices, the state, decays above 1; and for the
    Triton kernels (`backend` as resolved: "triton", "triton_chunked") a head size they do not take, decays below
    their bound."""
    inputs = dict(zip(NAMES, (r, log_w, k, v, a, b)))
    for name, x in inputs.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv7: {name} must be a tensor (B, T, H, N); got {type(x).__name__}")
    if k.dim() != 4:
        raise ValueError(f"wkv7: k must be (B, T, H, N); got shape {tuple(k.shape)}")
    for name, x in inputs.items():
        if x.shape != k.shape:
            raise ValueError(
                f"wkv7: {name} has shape {tuple(x.shape)}; every input must be (B, T, H, N) = {tuple(k.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"wkv7: {name} must be a floating-point tensor; got {x.dtype}")
        if x.device != k.device:
            raise ValueError(f"wkv7: {name} is on {x.device} but k is on {k.device}")
    B, T, H, N = k.shape
    if T == 0:
        raise ValueError("wkv7 needs at least one token (T >= 1); got T = 0")
    if log_w.device.type != "meta" and bool((log_w > 0).any()):
        raise ValueError(f"wkv7: log_w must be <= 0 (a decay in (0, 1]); its largest value is {log_w.max().item():.3g}")
    if state is not None:
        if not isinstance(state, torch.Tensor) or state.shape != (B, H, N, N):
            got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"wkv7: state must be (B, H, N, N) = ({B}, {H}, {N}, {N}); got {got}")
        if state.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"wkv7: state must be float32 or float64 (it accumulates); got {state.dtype}")
        if state.device != k.device:
            raise ValueError(f"wkv7: state is on {state.device} but the inputs are on {k.device}")
    if backend in ("triton", "triton_chunked"):
        if backend == "triton":
            from .triton_kernels import check_head_size, log_w_bound_error
        else:
            from .triton_chunked import check_head_size, log_w_bound_error

        check_head_size(N)
        if log_w.device.type != "meta" and (error := log_w_bound_error(log_w)) is not None:
            raise ValueError(error)


def wkv7(r, log_w, k, v, a, b, state=None, *, backend: str = "auto", check: bool = True):
    """Dispatch to one form; all share (r, log_w, k, v, a, b, state) -> (y in v's dtype, final state)."""
    backend = resolve_backend(backend, k)
    if check:
        check_inputs(r, log_w, k, v, a, b, state, backend)
    # every form computes in its own dtype (fp32 at least, common.compute_dtype), never autocast's: under bf16
    # autocast the chunked form's matmuls would round to bf16 and its triangular solve has no bf16 kernel on the CPU
    with torch.autocast(k.device.type, enabled=False):
        form = OUTSIDE_GRAPH.get(backend, BACKENDS[backend]) if torch.compiler.is_compiling() else BACKENDS[backend]
        y, new_state = form(r, log_w, k, v, a, b, state)
    return y.to(v.dtype), new_state


__all__ = [
    "BACKENDS",
    "COMPILED",
    "DEFAULT_CHUNK",
    "attention_matrix",
    "check_inputs",
    "chunk_size_for",
    "compute_dtype",
    "resolve_backend",
    "triton_available",
    "wkv7",
    "wkv7_attention",
    "wkv7_chunked",
    "wkv7_recurrent",
    "wkv7_states",
    "wkv7_step",
    "wkv7_triton",
    "wkv7_triton_chunked",
]
