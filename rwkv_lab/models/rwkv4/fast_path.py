"""How RWKV-4's parallel form runs fast on CUDA, kept beside the network (model.py) rather than inside it: the
blocks through torch.compile with the LayerNorm + token shift + mixes kernels (`block_with_fused_mixes`), what
the backward keeps (`KEPT_OPS`), and the head padded to aligned rows (`padded_head`). Which of these
a model uses is its `RunConfig` (rwkv_lab/models/run_config.py); every path computes the eager blocks' numbers."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ...ops.lengths import last_positions
from ...ops.norm_mix import norm_shift_mix, norm_shift_mix_eager
from ...ops.rwkv4 import resolve_backend
from ..run_config import compiled_block
from .layers import ATT_A, ATT_P, ATT_X, FFN_X, Block, new_layer_state


def block_with_fused_mixes(block: Block, x, state, backend, scale: int = 1, lengths=None, kernels=False):
    """`Block.forward` with each half's LayerNorm, token shift and mixes as one op (`norm_mix.norm_shift_mix`:
    Triton kernels, one launch forward and one backward, beside the WKV's), the rest of the halves as the eager
    block runs them. The fused blocks' default on CUDA (RWKV.norm_mix_kernels), and uncompiled the blocks of a
    prefill there (`uses_inference_mix_kernels`); with another WKV backend than the Triton kernel the op is the
    eager LayerNorm and mixes (float64 on the CPU; and the CPU tests of the chunked path, which would otherwise run
    the kernels in Triton's interpreter, minutes of CI). `lengths` (B,): a right-padded batch (as `Block.forward`),
    whose token shifts are each sequence's LayerNorm output at its own last token (the kernels give the last
    position's: the few rows are normalised again). `kernels` (the uncompiled blocks of an inference pass): the
    halves' gates and the channel mix's squared ReLU in ops/pointwise.py's launches too."""
    norm_mix = norm_shift_mix if resolve_backend(backend, x) == "triton" else norm_shift_mix_eager
    if block.ln0 is not None:
        x = block.ln0(x)
    (xk, xv, xr), att_x = norm_mix(x, block.ln1, state[:, ATT_X], block.att.mixes())
    wkv_state = state[:, ATT_A : ATT_P + 1]
    att, wkv_state = block.att.from_mixed(xk, xv, xr, wkv_state, backend, scale, lengths=lengths, kernels=kernels)
    if lengths is not None:
        att_x = block.ln1(last_positions(x, lengths))
    x = x + att
    (xk, xr), ffn_x = norm_mix(x, block.ln2, state[:, FFN_X], block.ffn.mixes())
    if lengths is not None:
        ffn_x = block.ln2(last_positions(x, lengths))
    x = x + block.ffn.from_mixed(xk, xr, scale, kernels=kernels)
    return x, new_layer_state(att_x, wkv_state, ffn_x, state.dtype)


HEAD_PAD = 64


def padded_head(
    hidden: torch.Tensor, weight: torch.Tensor, multiple: int = HEAD_PAD, keep_padding: bool = False
) -> torch.Tensor:
    """hidden (..., C) @ weight (V, C)^T with the vocabulary padded to a multiple of `multiple`: the same logits
    (..., V), a view whose rows are `multiple`-aligned; `keep_padding`: the whole padded logits (..., V_pad), whose
    columns past V are zeros (a loss that reads the first V of them, as lm_loss's compiled cross-entropy does, then
    gives its gradient at full width, without the copy that a view's backward makes).

    The released RWKV-4 vocabulary, 50277, is odd: logits with rows of 50277 elements leave cuBLAS only unaligned
    kernels (on the H200 an sm75 'align1' GEMM in the head's three matmuls, the largest kernels of a training step:
    results/history/training_speed/before_head_pad/). Pythia pads to 50304 in the checkpoint; RWKV-4's
    checkpoints keep 50277 rows, so the padding is made here, per step (a copy of the head, small beside the
    logits). Training on CUDA uses it (RunConfig.padded_head 'auto')."""
    V = weight.shape[0]
    pad = -V % multiple
    if pad == 0:
        return nn.functional.linear(hidden, weight)
    logits = nn.functional.linear(hidden, nn.functional.pad(weight, (0, 0, 0, pad)))  # (..., V_pad)
    return logits if keep_padding else logits[..., :V]


# the ops whose outputs "matmuls" keeps (run_config.keeping_outputs_of): each costs a GEMM (or the WKV's scan) to
# recompute, or, for the LayerNorm and mix kernels, is the matmuls' input (kept, their backward needs no second
# forward launch). With them the backward gets the block's input, the outputs of its seven matmuls and of the WKV,
# with block_with_fused_mixes also the five mixes the kernels write, and recomputes everything else elementwise
# (with Block.forward the LayerNorms, token shifts and mixes too; the gates, squared ReLU, the residual between the
# two halves). No matmul runs twice. What that is per layer and token, beside the partitioner's choice and the
# GPT-NeoX layer, is counted on the CPU by benchmarks/saved_activations.py
# (results/training/saved_activations_by_kind.csv).
KEPT_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "rwkv_lab::wkv_forward", "rwkv_lab::norm_mix_forward"})


@functools.cache
def fused_block_forward(saved_activations: str = "matmuls", memory_budget: float = 1.0, norm_mix_kernels=True):
    """A block's forward through torch.compile: the fast path of the parallel form on CUDA (training, prefill).

    `norm_mix_kernels` (RWKV.norm_mix_kernels, the default): the block is `block_with_fused_mixes`, each half's
    LayerNorm, token shift and mixes in the Triton kernels of `norm_mix`; otherwise `Block.forward`, whose
    LayerNorms and mixes inductor fuses itself. Around them inductor fuses the gates, the squared ReLU and the
    residual adds into a few kernels between the matmuls. The WKV stays the Triton kernel. Both are custom ops
    the compiler treats as opaque. One function for every block of every model: the block's parameters are graph
    inputs, so one compilation serves all layers of a shape (the first block, with ln0, gets its own).

    What the backward gets (RWKV.saved_activations, run_config.compiled_block): "matmuls" (the default) keeps the
    outputs of the matmuls and of the WKV (and the LayerNorm and mix kernels' mixes, the matmuls' inputs:
    KEPT_OPS) and recomputes the other elementwise results in the backward; "partitioner" leaves the choice to
    torch._functorch's min-cut partitioner, which at `memory_budget` 1 keeps more per token than the matched
    GPT-NeoX layer (results/training/saved_activations.csv) and below 1 keeps at most that share of it,
    recomputing the rest, matmuls included (`activation_memory_budget`). What each costs in speed is measured on
    the GPU (benchmarks/bench_training.py --saved-activations, --memory-budget, --norm-mix-kernels)."""
    forward = block_with_fused_mixes if norm_mix_kernels else Block.forward
    return compiled_block(forward, KEPT_OPS, saved_activations, memory_budget)
