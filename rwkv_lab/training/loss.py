"""The training loss of either architecture, in one place: next-token cross-entropy, bf16 autocast on a GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import RWKV

AUTOCAST_DTYPE = torch.bfloat16


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of our RWKV or of a transformers causal LM for tokens x (B, T); either may be wrapped
    (DistributedDataParallel, torch.compile), and is then called through the wrapper."""
    inner = model
    while hasattr(inner, "module") or hasattr(inner, "_orig_mod"):  # DistributedDataParallel, torch.compile
        inner = getattr(inner, "module", None) or inner._orig_mod
    if isinstance(inner, RWKV):
        return model(x, check=False)[0]
    return model(input_ids=x, use_cache=False).logits


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of targets y (B, T) given inputs x (B, T); the logits in bf16 autocast on CUDA (fp32
    elsewhere), the loss itself in fp32."""
    with torch.autocast("cuda", dtype=AUTOCAST_DTYPE, enabled=x.device.type == "cuda"):
        logits = logits_of(model, x)  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
