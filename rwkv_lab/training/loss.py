"""The training loss of either architecture, in one place: next-token cross-entropy, bf16 autocast on a GPU.

On CUDA the cross-entropy is compiled (`fused_cross_entropy`): it reads the bf16 logits as they are, padded
vocabulary included, and keeps only each row's log-sum-exp for the backward, which writes the logits' gradient
once. The eager `cross_entropy` (the reference, and the CPU path) first copies the logits to fp32, and for
RWKV-4's padded head its slice's backward copies the gradient again: at 16k tokens and a 50k vocabulary those
copies and the eager softmax kernels are several milliseconds of a step (results/training_speed/training_kernels.csv).
Both architectures take the same loss.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..models import architecture_of

AUTOCAST_DTYPE = torch.bfloat16


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel or torch.compile wrappers."""
    inner = model
    while hasattr(inner, "module") or hasattr(inner, "_orig_mod"):
        inner = getattr(inner, "module", None) or inner._orig_mod
    return inner


def logits_of(model: torch.nn.Module, x: torch.Tensor, padded_vocab: bool = False) -> torch.Tensor:
    """Logits (B, T, V) of our RWKV or of a transformers causal LM for tokens x (B, T); either may be wrapped
    (DistributedDataParallel, torch.compile), and is then called through the wrapper. `padded_vocab`: RWKV's may
    keep its head's padding, (B, T, V_pad) (RWKV.forward)."""
    if architecture_of(unwrapped(model)).recurrent:
        return model(x, check=False, padded_vocab=padded_vocab)[0]
    return model(input_ids=x, use_cache=False).logits


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """Mean cross-entropy of targets (N,) over the first `vocab` columns of logits (N, >= vocab), in fp32 at least
    (bf16 logits are upcast, float64 ones stay)."""
    logits = logits[:, :vocab]  # (N, vocab)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """`cross_entropy` over the whole rows of padded logits (N, V_pad), the columns past `vocab` masked to -inf:
    the same loss and gradient (zero in the padding). Compiled, a kernel then walks aligned rows of V_pad; over
    the slice's rows of 50277 the loss's kernels took longer than Pythia's over its 50304-wide logits
    (results/training_speed/training_kernels.csv, the log_softmax kernels)."""
    if logits.shape[1] > vocab:
        padding = torch.arange(logits.shape[1], device=logits.device) >= vocab  # (V_pad,)
        logits = logits.masked_fill(padding, float("-inf"))
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


@functools.cache
def fused_cross_entropy():
    """`masked_cross_entropy` through torch.compile (made once, on first use): one kernel reads the logits for the
    loss and the log-sum-exp it keeps, one writes their gradient."""
    return torch.compile(masked_cross_entropy, dynamic=False)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of targets y (B, T) given inputs x (B, T); the logits in bf16 autocast on CUDA (fp32
    elsewhere), the loss itself in fp32, compiled on CUDA (fused_cross_entropy), eager elsewhere."""
    cuda = x.device.type == "cuda"
    with torch.autocast("cuda", dtype=AUTOCAST_DTYPE, enabled=cuda):
        logits = logits_of(model, x, padded_vocab=True)  # (B, T, V or V_pad)
    loss = fused_cross_entropy() if cuda else cross_entropy
    return loss(logits.flatten(0, 1), y.flatten(), unwrapped(model).config.vocab_size)
