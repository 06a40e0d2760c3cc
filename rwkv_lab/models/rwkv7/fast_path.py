"""How RWKV-7's parallel form runs fast on CUDA, kept beside the network (model.py) rather than inside it: each
block's forward through torch.compile around the Triton operator (`fused_block_forward`), and what its backward
keeps (`KEPT_OPS`). Which blocks a model runs and what they keep is its `RunConfig` (rwkv_lab/models/run_config.py:
fused_blocks, saved_activations, activation_memory_budget; `RecurrentLMBase.uses_fused_blocks`); the compiled blocks
compute the eager blocks' numbers (tests/test_rwkv7_fast_path.py)."""

from __future__ import annotations

import functools

from ..run_config import compiled_block

# the ops whose outputs "matmuls" keeps (run_config.keeping_outputs_of): the matmuls (the receptance, key, value and
# output projections, the LoRAs' two halves, the channel mix's key and value) each cost a GEMM to recompute, and
# the operator's outputs (y, the final state, and the per-token sa and stretch-end states its backward reads) a
# scan; the mixes, LoRAs' tanh and sigmoids, decay, normalisations, group norm, bonus, gate and squared ReLU between
# them are recomputed in the backward. The LayerNorms' outputs, mixed into six inputs, are recomputed too.
KEPT_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "rwkv_lab::wkv7_forward"})


@functools.cache
def fused_block_forward(saved_activations: str = "matmuls", memory_budget: float = 1.0):
    """`Block7.forward` through torch.compile: the fast path of the parallel form when training on CUDA.

    Eager, a block is dozens of small kernels around the operator: the six mixes, four LoRAs with their tanh and
    sigmoids, the decay's exponent, the value residual, the removal key's normalisation, the group norm, the bonus,
    the gate, the channel mix's squared ReLU, two LayerNorms and the residual adds. Inductor fuses the elementwise
    ones into a few kernels between the matmuls. The state update stays the Triton kernel, a custom operator
    (ops/rwkv7/triton_kernels.py: rwkv_lab::wkv7_forward / wkv7_backward) the compiler treats as opaque; the other
    forms of the operator run outside the graph (ops.rwkv7.OUTSIDE_GRAPH).

    What the backward gets (RunConfig.saved_activations, run_config.compiled_block, as RWKV-4's): "matmuls" (the
    default) keeps the block's inputs and the outputs of KEPT_OPS and recomputes the elementwise work;
    "partitioner" leaves the choice to the min-cut partitioner, of which `memory_budget` below 1 keeps at most
    that share. "matmuls" needs the operator inside the graph (the Triton one): with the forms run outside it the
    model asks for "partitioner" (RWKV7.blocks_with_state). Per layer and token on the CPU:
    benchmarks/saved_activations.py.

    One function for every block of every model: the block's parameters are graph inputs, so one compilation
    serves all layers of a shape (the first block, with ln0 and no value residual, gets its own)."""
    # A graph whose outputs are views of its intermediates (the part of a block before a graph break: the chunked
    # operator, outside the graph) came back from AOTAutograd's on-disk cache with garbage view shapes ("invalid
    # shape dimension -2958381704771370142", torch 2.13: functionalization's view replay, which torch's own config
    # notes is incompatible with that cache). The autograd engine's replay instead, set while each graph compiles.
    return compiled_block(
        block_forward, KEPT_OPS, saved_activations, memory_budget, view_replay_for_aliased_outputs=False
    )


def block_forward(block, x, v_first, shift, wkv_state, backend: str):
    """A Block7 (model.py) on x (B, T, C), v_first, its layer's token shifts (B, 2, C) and S (B, H, N, N): what
    `Block7.forward` returns."""
    return block(x, v_first, shift, wkv_state, backend)
