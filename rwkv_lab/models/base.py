"""What every generation's config and recurrent network share, written once: a config's serialisation, and the
network's device and dtype, parameter count, run configuration, checks at its boundary and the CPU decoding
layout. The equations stay in each generation's package."""

from __future__ import annotations

import dataclasses
import json
import warnings

import torch
import torch.nn as nn

from ..ops import triton_available
from ..ops.lengths import check_lengths, last_positions, prefill_pieces
from ..ops.norm_mix import kernels_run_on
from .checks import check_tokens
from .run_config import OVERLAP_MAX_BATCH, OVERLAP_MAX_WEIGHT_BYTES, RunConfig


class ModelConfig:
    """Mixin of the generations' frozen config dataclasses: to_dict / to_json / from_dict (unknown fields refused)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**d)


class RecurrentLMBase(nn.Module):
    """Base of the recurrent networks: `hidden` and `prefill` written once over what each generation provides,
    its `emb`, `ln_out` and `head`, `init_state`, `check_state` and `blocks_with_state(x, state, backend, trace)`
    (the embeddings (B, T, C) through every block: the last block's output and the new state); and the choice
    between its compiled blocks and its eager ones (`uses_fused_blocks`, `fused_or_eager`), over its operator
    package's `resolve_backend`, and between its one-token step's kernels and its reference (`uses_step_kernels`)."""

    resolve_backend = None  # the generation's operator package's: (backend, x) -> the form 'auto' picks
    compiled_backends = ()  # its package's COMPILED: the backends a compiled block takes as one opaque operator

    def __init__(self):
        super().__init__()
        self.run = RunConfig()  # how the parallel form runs (RunConfig); never what it computes

    def uses_fused_blocks(self, x: torch.Tensor, backend: str, trace) -> bool:
        """Whether the blocks take the compiled path (`run.fused_blocks`): never with a trace (recorded in Python) or
        the token-by-token recurrent operator; with 'auto', when training (autograd recording) on CUDA with a Triton
        operator registered for the compiler (`compiled_backends`). Inference (prefill, lm-eval) keeps the eager blocks
        around the Triton operator under 'auto': that is the path whose speed and first-call latency were measured on
        the GPU (results/inference/), where a compiled prefill would add compilations to a first call and to new prompt
        lengths (until the compiler makes the length dynamic), unmeasured so far; set True to take the compiled path
        there too."""
        if self.run.fused_blocks is False or trace is not None or backend == "recurrent":
            return False
        if self.run.fused_blocks == "auto":
            return torch.is_grad_enabled() and x.is_cuda and self.resolve_backend(backend, x) in self.compiled_backends
        return True

    def uses_inference_mix_kernels(self, x: torch.Tensor, backend: str, trace) -> bool:
        """Whether the uncompiled blocks of an inference pass (a prefill, lm-eval's scoring: no autograd) run each
        half's LayerNorm, token shift and mixes in one launch of norm_mix's kernels rather than a dozen elementwise
        ones (RWKV-4's `block_with_fused_mixes`, RWKV-7's `Block7.forward_with_mix_kernels`): with a Triton
        operator where those kernels run (RunConfig.norm_mix_kernels), never with a trace or inside a compiled
        caller. Eager, the LayerNorms, the shifts' cats and the mixes' products were the largest part of a batched
        prefill's elementwise work (benchmarks/bench_generation.py --profile-sizes profiles a batch of mixed
        prompts' prefill).
        """
        if torch.is_grad_enabled() or trace is not None or not self.run.norm_mix_kernels:
            return False
        if torch.compiler.is_compiling() or not kernels_run_on(x):
            return False
        return self.resolve_backend(backend, x).startswith("triton")

    def uses_step_kernels(self, x: torch.Tensor) -> bool:
        """Whether `step` runs the generation's Triton step kernels (a few launches a layer, ops/gemv.py's grouped
        projections at their core) rather than its PyTorch reference: `run.step_kernels` "auto" on CUDA without
        autograd for fp32 / bf16 / fp16 models, True wherever Triton runs (the CPU under its interpreter, the
        tests); never with autograd (the reference keeps the graph) or for float64 (the reference is exact)."""
        choice = self.run.step_kernels
        if choice is False or torch.is_grad_enabled() or self.dtype == torch.float64:
            return False
        return triton_available() and (choice is True or x.is_cuda)

    def overlaps_launches(self, batch: int) -> bool:
        """Whether the step kernels of a batch of `batch` sequences are programmatic dependent launches
        (RunConfig.overlapped_launches; where the GPU takes none, the launches are plain whatever this says):
        "auto" for weights of at most OVERLAP_MAX_WEIGHT_BYTES and batches of at most OVERLAP_MAX_BATCH, the small
        models whose step is a chain of latency-bound launches, as measured."""
        choice = self.run.overlapped_launches
        if choice != "auto":
            return choice
        small = sum(p.numel() * p.element_size() for p in self.parameters()) <= OVERLAP_MAX_WEIGHT_BYTES
        return small and batch <= OVERLAP_MAX_BATCH

    def fused_or_eager(self, fused: bool, fused_call, eager_call):
        """One block: `fused_call()` (through the compiled blocks) when `fused`, else `eager_call()`. Returns (its
        outputs, whether the next block is still fused): a compiler failure costs speed, never the result, so it
        warns once, turns `run.fused_blocks` off and runs the eager block."""
        if fused:
            try:
                return fused_call(), True
            except torch._dynamo.exc.TorchDynamoException as err:
                message = f"fused blocks unavailable, running the eager blocks ({type(err).__name__}: {err})"
                warnings.warn(message, stacklevel=3)
                self.configure(fused_blocks=False)
        return eager_call(), False

    def configure(self, **changes):
        """Change how the model runs (RunConfig's fields, checked), e.g. `model.configure(backend="recurrent")`."""
        self.run = self.run.replace(**changes)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.emb.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def state_bytes(self) -> int:
        """Bytes of one sequence's recurrent state: the config's `state_numbers` (RWKV-4's 5·C·L, RWKV-7's
        L·(2C + H·N·N)) in the state's dtype, whatever the context (what `init_state(1)` allocates)."""
        return self.config.state_numbers * torch.empty((), dtype=self.state_dtype).element_size()

    def check_tokens(self, tokens: torch.Tensor, ndim: int) -> None:
        check_tokens(tokens, ndim, self.config.vocab_size, self.device)

    def checked_state(self, tokens: torch.Tensor, state, check: bool):
        """Validate tokens (B, T) and the state (when `check`); an absent state becomes the empty one."""
        if check:
            self.check_tokens(tokens, ndim=2)
        if state is None:
            return self.init_state(tokens.shape[0])
        if check:
            self.check_state(state, tokens.shape[0])
        return state

    def hidden(self, tokens: torch.Tensor, state=None, *, backend: str | None = None, check: bool = True, trace=None):
        """The last hidden states (B, T, C), after ln_out, and the new state: `forward` without the head, so a
        caller can apply `head` to the positions it needs. `trace`: see the generation's `forward`."""
        state = self.checked_state(tokens, state, check)
        x, state = self.blocks_with_state(self.emb(tokens), state, backend or self.run.backend, trace=trace)
        return self.ln_out(x), state

    @torch.no_grad()
    def prefill(
        self,
        tokens: torch.Tensor,
        state=None,
        *,
        chunk: int | None = None,
        backend=None,
        check: bool = True,
        lengths: torch.Tensor | None = None,
        batch_tokens: int | None = None,
    ):
        """Parallel form for a prompt: tokens (B, T) -> logits of the last token (B, V) and the state. Inference:
        no autograd whatever the caller's grad mode, so it runs the forward-only paths (`forward` is for training).

        Only the last position goes through the head, and `chunk` bounds the memory: T is run in pieces of at most
        `chunk` tokens a sequence (and, with `batch_tokens`, of max(64, batch_tokens // B) at most) with the state
        carried between them, which gives the same result as one call.

        `lengths` (B,) ints in [1, T]: prompts of different lengths in one pass (as cu_seqlens in fla and
        flash-attention), right-padded to T (any ids after a prompt's end). Sequence b's logits are those of its
        token lengths[b] - 1 and its state the one after it: what prefilling tokens[b, :lengths[b]] alone gives.
        The pieces are cut at the prompts' lengths (`prefill_pieces`: padding traded against passes), each run over
        the sequences that reach into it only; the plan is made on the host from one read of `lengths`, so the
        passes queue without waiting on the GPU.
        """
        for name, value in (("chunk", chunk), ("batch_tokens", batch_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive number of tokens or None (no bound); got {value!r}")
        state = self.checked_state(tokens, state, check)
        B, T = tokens.shape
        if lengths is not None:
            if check:
                check_lengths(lengths, B, T, tokens.device)
            lengths = lengths.tolist()
            if min(lengths) == T:
                lengths = None  # no padding: the plain pass
        backend = backend or self.run.backend
        if lengths is None:  # every sequence T long: the pieces of one span, bounded as prefill_pieces bounds them
            for start, end in prefill_pieces([T] * B, chunk, batch_tokens):
                x, state = self.blocks_with_state(self.emb(tokens[:, start:end]), state, backend)
            return self.head(self.ln_out(x[:, -1])), state
        pieces = prefill_pieces(lengths, chunk, batch_tokens)
        # every piece's rows and their real tokens in it, sent to the device at once: (rows, ends) per piece
        plan = [[b for b, n in enumerate(lengths) if n > start] for start, _ in pieces]
        ends = [[min(lengths[b], end) - start for b in rows] for rows, (start, end) in zip(plan, pieces)]
        sent = torch.tensor([i for rows, e in zip(plan, ends) for i in rows + e], device=tokens.device).split(
            [2 * len(rows) for rows in plan]
        )
        last = None  # (B, C): each sequence's hidden state at its last token, filled by the piece it ends in
        for (start, end), rows_here, ends_here, both in zip(pieces, plan, ends, sent):
            rows, real = both.split(len(rows_here))  # (R,) each
            everyone = len(rows_here) == B
            partial = None if min(ends_here) == end - start else real
            inputs = tokens[:, start:end] if everyone else tokens[rows, start:end]
            x, new = self.blocks_with_state(
                self.emb(inputs), state if everyone else state[rows], backend, lengths=partial
            )
            state = (
                new
                if everyone
                else type(state)(*(t.index_copy(0, rows, n) for t, n in zip(state.tensors(), new.tensors())))
            )
            x = last_positions(x, real)  # (R, C)
            last = x.new_zeros(B, x.shape[-1]) if last is None else last
            last = last.index_copy(0, rows, x)  # rows ending in a later piece are overwritten there
        return self.head(self.ln_out(last)), state

    @torch.no_grad()
    def store_projections_transposed(self):
        """Keep every projection matrix transposed in memory (same values, same shape, column-major strides).

        A one-token step multiplies a vector by each matrix; on the CPU, BLAS streams a column-major matrix from
        memory markedly faster for that (RWKV-4 169M fp32 on 2 cores: +10% decode tokens/s, +4% prefill; the
        `rwkv` package stores its weights this way too). Results are equal up to the order of float additions.
        Idempotent; the CPU decoder calls it.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
        return self
