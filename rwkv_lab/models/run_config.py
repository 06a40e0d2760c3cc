"""How a network runs, never what it computes: the fast-path policy a model carries as `model.run`.

    model.configure(fused_blocks=False)     # the eager blocks, the reference
    model.configure(backend="recurrent")    # the operator's backend for the parallel form

Every choice here gives the same numbers up to float rounding (tests compare each against the eager reference);
what differs is speed and memory. A generation reads the fields that apply to it: both read backend,
fused_blocks, saved_activations, activation_memory_budget and step_kernels (RWKV-7's blocks through torch.compile:
models/rwkv7/fast_path.py); norm_mix_kernels, padded_head and rescale_every are RWKV-4's. What the fused blocks keep
for the backward is decided here for both (`compiled_block`, `keeping_outputs_of`), each generation naming its ops.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

# What the fused blocks keep for the backward: the matmuls' and the operator's outputs ("matmuls"), or what the
# compiler's min-cut partitioner chooses ("partitioner"), of which `activation_memory_budget` keeps a share
SAVED_ACTIVATIONS = ("matmuls", "partitioner")
FUSED_BLOCKS = (True, False, "auto")
STEP_KERNELS = (True, False, "auto")
PADDED_HEAD = (True, False, "auto")
OVERLAPPED_LAUNCHES = (True, False, "auto")
# "auto" overlaps the decode step's launches up to this many bytes of weights: measured faster for RWKV-4 169M and
# RWKV-7 168M in fp16 (0.34 GB), slower for 1.5B and 1.47B (3 GB), whose launches stream more than L2 holds; and
# up to this batch, the grouped projections' 16-row blocks (ops/gemv.py `_default_tiling`), as at B = 1 where it
# was measured (larger batches run other tilings, unmeasured)
OVERLAP_MAX_WEIGHT_BYTES = 512 * 2**20
OVERLAP_MAX_BATCH = 16


@dataclass(frozen=True)
class RunConfig:
    """backend: the operator's backend for the parallel form ("auto": the fastest exact one on the device).
    fused_blocks: the parallel form's blocks through torch.compile ("auto": when training on CUDA with the Triton
    operator; True everywhere; False never: the eager blocks, the reference).
    saved_activations, activation_memory_budget: what the fused blocks keep for the backward (above; both
    generations, `compiled_block`).
    norm_mix_kernels: each half's LayerNorm, token shift and mixes in norm_mix's Triton kernels: in RWKV-4's fused
    blocks (else inductor), and in both generations' uncompiled blocks of an inference pass (prefill, scoring: see
    RecurrentLMBase.uses_inference_mix_kernels; else a dozen elementwise launches), where the rest of the halves'
    elementwise work runs in kernels too: the channel mixes' squared ReLU and RWKV-4's gates (ops/pointwise.py),
    RWKV-7's time mix around its operator in two launches (ops/rwkv7/prefill_kernels.py).
    padded_head: RWKV-4's head's matmul over a vocabulary padded to aligned rows ("auto": when training on CUDA; the
    logits are the same, the padding sliced off unless the loss asks for it; RWKV-7's vocabularies are aligned).
    rescale_every: fp16 only: halve the residual stream every this many layers (0: never); the rwkv package's and
    transformers' default for RWKV-4, whose larger models' residuals outgrow fp16 (exact up to LayerNorm's eps).
    step_kernels: the one-token step (`step`, what the decoder runs) in Triton kernels, a few launches a layer
    ("auto": on CUDA without autograd; True also on the CPU under TRITON_INTERPRET=1, the tests; False: the
    PyTorch reference; see RecurrentLMBase.uses_step_kernels).
    overlapped_launches: the step kernels as programmatic dependent launches on Hopper and later, each prefetching
    what it can before the launch before it ends (triton_launch.overlap_options); "auto": for models of at most
    OVERLAP_MAX_WEIGHT_BYTES of weights at batches of at most OVERLAP_MAX_BATCH (RecurrentLMBase.overlaps_launches).
    H200, the decoder at B = 1 with them off / on (results/inference/generation_overlap.csv,
    generation_rwkv7_overlap.csv): RWKV-4 169M 2,019 / 2,121 tokens/s, RWKV-7 168M 1,759 / 1,831; 1.5B 578 / 467,
    1.47B 556 / 457."""

    backend: str = "auto"
    fused_blocks: bool | str = "auto"
    saved_activations: str = "matmuls"
    activation_memory_budget: float = 1.0
    norm_mix_kernels: bool = True
    padded_head: bool | str = "auto"
    rescale_every: int = 6
    step_kernels: bool | str = "auto"
    overlapped_launches: bool | str = "auto"

    def __post_init__(self):
        if self.fused_blocks not in FUSED_BLOCKS or not isinstance(self.fused_blocks, (bool, str)):
            raise ValueError(f"RunConfig.fused_blocks must be one of {FUSED_BLOCKS}; got {self.fused_blocks!r}")
        if self.step_kernels not in STEP_KERNELS or not isinstance(self.step_kernels, (bool, str)):
            raise ValueError(f"RunConfig.step_kernels must be one of {STEP_KERNELS}; got {self.step_kernels!r}")
        if self.overlapped_launches not in OVERLAPPED_LAUNCHES or not isinstance(self.overlapped_launches, (bool, str)):
            raise ValueError(
                f"RunConfig.overlapped_launches must be one of {OVERLAPPED_LAUNCHES}; got {self.overlapped_launches!r}"
            )
        if self.padded_head not in PADDED_HEAD or not isinstance(self.padded_head, (bool, str)):
            raise ValueError(f"RunConfig.padded_head must be one of {PADDED_HEAD}; got {self.padded_head!r}")
        if not isinstance(self.norm_mix_kernels, bool):
            raise ValueError(f"RunConfig.norm_mix_kernels must be a bool; got {self.norm_mix_kernels!r}")
        if isinstance(self.rescale_every, bool) or not isinstance(self.rescale_every, int) or self.rescale_every < 0:
            raise ValueError(f"RunConfig.rescale_every must be an int >= 0 (0: never); got {self.rescale_every!r}")
        if not isinstance(self.backend, str):
            raise ValueError(f"RunConfig.backend must be a backend's name; got {self.backend!r}")
        check_saved_activations(self.saved_activations, self.activation_memory_budget, owner="RunConfig")

    def replace(self, **changes) -> RunConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = [f.name for f in dataclasses.fields(self)]
            raise ValueError(f"unknown run settings {sorted(unknown)}; expected some of {known}")
        return dataclasses.replace(self, **changes)


def check_saved_activations(saved: str, budget: float, owner: str = "RunConfig") -> None:
    """What the fused blocks keep (`saved`) and the partitioner's share (`budget`), checked where they are set."""
    if saved not in SAVED_ACTIVATIONS:
        raise ValueError(f"{owner}.saved_activations must be one of {SAVED_ACTIVATIONS}; got {saved!r}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"{owner}.activation_memory_budget must be in [0, 1] (1: all it chooses); got {budget}")
    if budget != 1.0 and saved != "partitioner":
        raise ValueError(
            f"{owner}.activation_memory_budget {budget} needs saved_activations='partitioner' (got {saved!r}, "
            "which decides what is kept itself)"
        )


def compile_options() -> dict:
    """The inductor options of every generation's fused blocks, and dynamo's recompile limit raised for them.

    Each model width, the first block and each new sequence shape add a compilation; past dynamo's default limit
    of 8 it silently runs the function eager, which a benchmark of several sizes reaches: raised to 64.
    Inductor's "mix-order reduction" (torch 2.10-2.11, CUDA) returns the (1, 1, C) mix parameters' gradients as
    (C,), which autograd refuses ("CompiledFunctionBackward returned an invalid gradient ... got [C] but expected
    shape compatible with [1, 1, C]", pytorch/pytorch#178080): that one fusion is turned off."""
    import torch  # noqa: PLC0415 - the compiler's settings, loaded with the fused blocks, not with RunConfig
    import torch._inductor.config  # noqa: PLC0415

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    options = {}
    if hasattr(torch._inductor.config.triton, "mix_order_reduction"):
        options["triton.mix_order_reduction"] = False
    return options


def keeping_outputs_of(kept_ops: frozenset[str], forward, *args):
    """`forward(*args)` under selective activation checkpointing: the backward gets the inputs and the outputs of
    the ops named in `kept_ops` (their schema names: 'aten::mm', 'rwkv_lab::wkv7_forward'), and recomputes
    everything else. Each generation names its matmuls and operator (fast_path.KEPT_OPS): what costs a GEMM or a
    scan to recompute is kept, the elementwise work between them, cheap to redo and most of the bytes, is not."""
    from torch.utils.checkpoint import (  # noqa: PLC0415 - loaded with the compiler, not with RunConfig
        CheckpointPolicy,
        checkpoint,
        create_selective_checkpoint_contexts,
    )

    def policy(ctx, op, *args, **kwargs):
        name = op.name() if hasattr(op, "name") else str(op)
        return CheckpointPolicy.MUST_SAVE if name in kept_ops else CheckpointPolicy.PREFER_RECOMPUTE

    contexts = functools.partial(create_selective_checkpoint_contexts, policy)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts)


def compiled_block(forward, kept_ops: frozenset[str], saved_activations: str, memory_budget: float, **functorch):
    """A block's `forward` through torch.compile (inductor, `compile_options`), keeping for the backward what
    `saved_activations` says: "matmuls", the outputs of `kept_ops` (`keeping_outputs_of`); "partitioner", what
    torch._functorch's min-cut partitioner chooses, of which `memory_budget` below 1 keeps at most that share
    (recomputing the rest, matmuls included). `functorch`: more torch._functorch.config settings while a graph
    compiles (RWKV-7's view replay). Every generation's fused blocks are this, so the policy has one home."""
    import torch  # noqa: PLC0415 - loaded with the compiler, not with RunConfig
    import torch._functorch.config  # noqa: PLC0415
    from torch._inductor.compile_fx import compile_fx  # noqa: PLC0415

    check_saved_activations(saved_activations, memory_budget)
    options = compile_options()

    def keeping_kept_ops(*args):
        return keeping_outputs_of(kept_ops, forward, *args)

    compiled = keeping_kept_ops if saved_activations == "matmuls" else forward
    if memory_budget != 1.0:  # "partitioner" only (checked above)
        functorch = functorch | {"activation_memory_budget": memory_budget}
    if not functorch:
        return torch.compile(compiled, options=options)

    def inductor_patched(graph, example_inputs):
        # the partitioner reads these while this compiles the graph. A backend of its own, not a patch around the
        # call: dynamo reuses a compiled graph for any backend equal to its own, and torch.compile's inductor
        # backends with equal options are equal, whatever the settings were
        with torch._functorch.config.patch(**functorch):
            return compile_fx(graph, example_inputs, config_patches=options)

    return torch.compile(compiled, backend=inductor_patched)
