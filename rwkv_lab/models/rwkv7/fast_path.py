"""How RWKV-7's parallel form runs fast on CUDA, kept beside the network (model.py) rather than inside it: each
block's forward through torch.compile around the Triton operator (`fused_block_forward`). Which blocks a model runs
is its `RunConfig.fused_blocks` (rwkv_lab/models/run_config.py; `RecurrentLMBase.uses_fused_blocks`); the compiled
blocks compute the eager blocks' numbers (tests/test_rwkv7_fast_path.py)."""

from __future__ import annotations

import functools

from ..run_config import compile_options


@functools.cache
def fused_block_forward():
    """`Block7.forward` through torch.compile: the fast path of the parallel form when training on CUDA.

    Eager, a block is dozens of small kernels around the operator: the six mixes, four LoRAs with their tanh and
    sigmoids, the decay's exponent, the value residual, the removal key's normalisation, the group norm, the bonus,
    the gate, the channel mix's squared ReLU, two LayerNorms and the residual adds. Inductor fuses the elementwise
    ones into a few kernels between the matmuls. The state update stays the Triton kernel, a custom operator
    (ops/rwkv7/triton_kernels.py: rwkv_lab::wkv7_forward / wkv7_backward) the compiler treats as opaque; the other
    forms of the operator run outside the graph (ops.rwkv7.OUTSIDE_GRAPH).

    One function for every block of every model: the block's parameters are graph inputs, so one compilation
    serves all layers of a shape (the first block, with ln0 and no value residual, gets its own). What the backward
    keeps is the min-cut partitioner's choice: RunConfig.saved_activations and activation_memory_budget are
    RWKV-4's (rwkv4/fast_path.py) and change nothing here."""
    import torch._functorch.config  # noqa: PLC0415 - loaded with the compiler, not with the model
    from torch._inductor.compile_fx import compile_fx  # noqa: PLC0415

    options = compile_options()

    def inductor_without_view_replay(graph, example_inputs):
        # A graph whose outputs are views of its intermediates (the part of a block before a graph break: the
        # chunked operator, outside the graph) came back from AOTAutograd's on-disk cache with garbage view
        # shapes ("invalid shape dimension -2958381704771370142", torch 2.13: functionalization's view replay,
        # which torch's own config notes is incompatible with that cache). The autograd engine's replay instead.
        with torch._functorch.config.patch(view_replay_for_aliased_outputs=False):
            return compile_fx(graph, example_inputs, config_patches=options)

    return torch.compile(block_forward, backend=inductor_without_view_replay)


def block_forward(block, x, v_first, shift, wkv_state, backend: str):
    """A Block7 (model.py) on x (B, T, C), v_first, its layer's token shifts (B, 2, C) and S (B, H, N, N): what
    `Block7.forward` returns."""
    return block(x, v_first, shift, wkv_state, backend)
