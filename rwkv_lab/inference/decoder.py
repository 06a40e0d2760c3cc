"""The fast recurrent step that generation, lm-eval and the profiler share.

    decoder = decoder_for(model, batch=8)                      # cached per (model, batch, dtype, device)
    tokens, state = decoder.step(tokens, state, temperature, top_p, seeds, steps)   # (B,) -> (B,), next state

On CUDA, one token of every sequence (the model's `step` and the choice of the next token) is captured once in a
CUDA graph and replayed per token: one launch instead of hundreds, which is what bounds decoding at small batch.
Within it the model's step runs its step kernels (RecurrentLMBase.uses_step_kernels: a layer's projections grouped
into a few Triton launches), so the graph holds a few kernels a layer, not dozens, and the sampler is Triton
launches too (`sampling.sampler_for`: sampling_kernel.py, four launches where the torch sampler sorted the
vocabulary). What `torch.compile` covers (COMPILE_LEVELS) depends on that: with the step kernels, which are the
whole step in both generations, nothing (every op of the graph is already a kernel written for it, and compiling
cost seconds of the first call, the step's growing with depth); else the step with the sampler. Only the chosen
token ids leave the device. Elsewhere the same function runs eagerly, with the torch sampler. `model.step` with
its kernels off stays the readable reference; tests check that the captured step equals it.

A batch size is rounded up to a bucket (`bucket_for`: the next power of two) where the step is captured or
compiled: a decoder serves every batch up to its bucket, the rows past the real ones padded (copies of the last
real row, every op of the step being per row) and dropped, so a new batch size costs nothing within a bucket
already seen. The compiled function is one per model, with the batch dimension marked dynamic
(`DYNAMIC_BATCH`), so a new bucket costs a capture, not a compilation.
"""

from __future__ import annotations

import time
import warnings
import weakref

import torch

from .sampling import sample, sampler_for, vocab_keys

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {compile level: compiled function}
# what torch.compile covers: the step with the sampler, the step alone, the torch sampler alone (in place of the
# sampler's kernels), nothing. A level that fails falls back to the next one (each is exact, only slower).
COMPILE_LEVELS = ("step+sample", "step", "sample", False)
# the compiled step's batch dimension is symbolic (batches >= 2): every bucket but 1 reuses one compilation
DYNAMIC_BATCH = True


def bucket_for(batch: int) -> int:
    """The batch a captured / compiled decoder runs for `batch` sequences: the next power of two (1, 2, 4, 8, ...),
    so that log2 of the largest batch bounds the captures, and at most half of a bucket's rows are padding."""
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"batch must be an int >= 1; got {type(batch).__name__} {batch!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1; got {batch}")
    return 1 << (batch - 1).bit_length()


def _model_step(model, tokens, state):
    return model.step(tokens, state, check=False)


def _step_and_sample(model, step, sampler, tokens, state, temperature, top_p, seeds, steps, keys):
    logits, new_state = step(model, tokens, state)
    return sampler(logits, temperature, top_p, seeds, steps, keys), logits, new_state


_COMPILED_FN = {"step+sample": _step_and_sample, "step": _model_step, "sample": sample}


def _compiled(model, level):
    """The model's compiled step with sampler ("step+sample"), step ("step") or sampler ("sample"): one per model
    and level, shared by its decoders of every bucket."""
    per_model = _COMPILED.setdefault(model, {})
    if level not in per_model:
        fn = _COMPILED_FN[level]
        per_model[level] = torch.compile(fn, fullgraph=True, dynamic=None if DYNAMIC_BATCH else False)
    return per_model[level]


def default_compile_level(model):
    """What the decoder compiles by default (COMPILE_LEVELS): nothing off CUDA or without Triton, nor where the
    model's step runs its step kernels (see the module docstring); else the step with the sampler."""
    if not _compile_available(model.device) or runs_step_kernels(model):
        return False
    return "step+sample"


def runs_step_kernels(model) -> bool:
    """Whether the model's step, run without autograd as the decoder runs it, takes its Triton step kernels."""
    with torch.no_grad():
        probe = torch.empty(0, device=model.device)
        return bool(getattr(model, "uses_step_kernels", lambda x: False)(probe))


def _mark_batch_dynamic(*tensors) -> None:
    """The batch dimension symbolic, as a hint: `maybe_mark_dynamic`, not `mark_dynamic`, whose range is a contract
    that every guard must satisfy. The compiled step's guards bound the batch (Triton's 32-bit indexing adds
    `vocab * B <= 2**31 - 1` and the like; a hint lets them stand, where a declared range either lacked the upper
    end torch 2.13 asserts on, or was wider than those guards, and torch 2.11 raised ConstraintViolationError on
    the GPU: every batched step fell back to eager). Batches are buckets >= 2 (1 is compiled apart), so the symbol
    is never specialised to 0 or 1."""
    for t in tensors:
        if t.shape[0] >= 2:
            torch._dynamo.maybe_mark_dynamic(t, 0)


def _sampler_marked_dynamic(compiled):
    """The compiled sampler, its logits' batch marked dynamic as the step's inputs are (the logits come from the
    uncompiled step, so no mark reaches them otherwise, and each bucket would compile again)."""

    def sampler(logits, *args):
        if DYNAMIC_BATCH:
            _mark_batch_dynamic(logits, *args[2:4])  # the logits, seeds and steps
        return compiled(logits, *args)

    return sampler


def _compile_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401 - inductor's GPU code generator
    except ImportError:
        return False
    return True


class Decoder:
    """One recurrent step plus sampling for batches up to `batch` sequences, captured on CUDA (see the module
    docstring). `buckets` (default: where the step is captured or compiled) rounds `batch` up to its bucket and
    pads smaller batches to it; without, the decoder runs the batches it is given as they are (the CPU)."""

    def __init__(
        self, model, batch: int, compile: bool | None = None, graphs: bool | None = None, buckets: bool | None = None
    ):
        self.model = model
        self.device = model.device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if compile is None:
            compile = default_compile_level(model)
        self.compile = COMPILE_LEVELS[0] if compile is True else compile
        if self.compile not in COMPILE_LEVELS:
            raise ValueError(f"compile must be None, a bool or one of {COMPILE_LEVELS}; got {compile!r}")
        self.buckets = bool(self.graphs or self.compile) if buckets is None else buckets
        self.batch = bucket_for(batch) if self.buckets else batch
        self.warmup_seconds = 0.0  # capture and compilation, paid on the first call of each sampling setting
        self.fallbacks: list[str] = []  # why each compile level given up failed (its warning's text)
        if self.device.type == "cpu":
            model.store_projections_transposed()  # the layout CPU BLAS reads fastest for a vector (see there)
        self._captured: dict = {}

    def _eager(self, tokens, state, seeds, steps, temperature, top_p):
        """One step: the step, the sampler or both compiled, as `self.compile` says (COMPILE_LEVELS)."""
        step, sampler = _model_step, sampler_for(self.device)
        if self.compile == "step+sample":
            fn = _compiled(self.model, "step+sample")
        else:
            fn = _step_and_sample
            if self.compile == "step":
                step = _compiled(self.model, "step")
            elif self.compile == "sample":
                sampler = _sampler_marked_dynamic(_compiled(self.model, "sample"))
        if self.compile and DYNAMIC_BATCH:
            _mark_batch_dynamic(tokens, *state.tensors(), seeds, steps)
        keys = vocab_keys(self.model.config.vocab_size, self.device)
        return fn(self.model, step, sampler, tokens, state, temperature, top_p, seeds, steps, keys)

    def _capture(self, key, tokens, state, seeds, steps, temperature, top_p):
        t0 = time.perf_counter()
        static = [tokens.clone(), state.clone(), seeds.clone(), steps.clone()]
        if runs_step_kernels(self.model):
            # the step's and the sampler's kernels compiled side by side first (on a fresh machine most of a first
            # call is compiling them one after another); the warm-up then finds them compiled
            from ..triton_launch import compiling_in_parallel

            try:
                with compiling_in_parallel():
                    logits, _ = _model_step(self.model, static[0], static[1])
                    sampler_for(self.device)(logits, temperature, top_p, static[2], static[3])
            except Exception as err:  # noqa: BLE001 - only time is at stake: the kernels then compile one by one
                message = f"compiling the step kernels side by side failed ({type(err).__name__}: {str(err)[:300]})"
                self.fallbacks.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: allocator, first launches, compilation
                self._eager(*static, temperature, top_p)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._eager(*static, temperature, top_p)
        torch.cuda.synchronize(self.device)
        self.warmup_seconds += time.perf_counter() - t0
        self._captured[key] = (graph, static, out)

    def step(
        self,
        tokens,
        state,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seeds=None,
        steps=None,
        return_logits: bool = False,
    ):
        """tokens (B,), the model's state of B sequences -> next tokens (B,), the state after `tokens`[, logits (B, V)].

        seeds, steps (B,) int64 pick the random numbers of each sequence (sampling.uniform_noise); with
        temperature 0 they are unused. On CUDA the returned tensors are the graph's own buffers, valid until the
        next call: copy what must outlive it (generation passes the state straight back in).
        """
        while True:
            try:
                return self._run(tokens, state, temperature, top_p, seeds, steps, return_logits)
            except Exception as err:  # inductor raises many types; each fallback is exact, only slower
                if not self.compile:
                    raise
                fallback = COMPILE_LEVELS[COMPILE_LEVELS.index(self.compile) + 1]
                message = (
                    f"torch.compile of the decode step (level {self.compile!r}) failed "
                    f"({type(err).__name__}: {str(err)[:300]}); trying level {fallback!r}"
                )
                self.fallbacks.append(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.compile = fallback
                self._captured.clear()

    @torch.no_grad()
    def _run(self, tokens, state, temperature, top_p, seeds, steps, return_logits):
        B = tokens.shape[0]
        if B > self.batch or (B != self.batch and not self.buckets):
            most = f"at most {self.batch}" if self.buckets else f"exactly {self.batch}"
            raise ValueError(f"this decoder runs {most} sequences; got {B} (decoder_for(model, {B}) gives one)")
        if seeds is None:
            seeds = torch.zeros(B, dtype=torch.int64, device=self.device)
        if steps is None:
            steps = torch.zeros_like(seeds)
        inputs = (tokens, state, seeds, steps)
        if not self.graphs:
            out = self._eager(*_padded(inputs, self.batch), temperature, top_p)
        else:
            key = (temperature, top_p)
            if key not in self._captured:
                self._capture(key, *_padded(inputs, self.batch), temperature, top_p)
            graph, static, out = self._captured[key]
            for buffer, value in zip(static, inputs):
                # the real rows only: the padding rows keep what the capture put there (copies of a real row)
                buffer = buffer[:B] if B < self.batch else buffer
                if buffer is not value:
                    buffer.copy_(value)  # a state copies tensor by tensor, skipping those already in place
            graph.replay()
        next_tokens, logits, new_state = out
        if B < self.batch:
            next_tokens, logits, new_state = next_tokens[:B], logits[:B], new_state[:B]
        return (next_tokens, new_state, logits) if return_logits else (next_tokens, new_state)


def _padded(inputs, batch: int):
    """tokens, state, seeds, steps of B <= batch sequences padded to `batch` rows: copies of the last row (a valid
    state, whatever the model), dropped after the step."""
    B = inputs[0].shape[0]
    if B == batch:
        return inputs
    rows = torch.cat([torch.arange(B), torch.full((batch - B,), B - 1)]).to(inputs[0].device)
    return tuple(x[rows] for x in inputs)


def decoder_for(model, batch: int, compile: bool | None = None) -> Decoder:
    """The model's decoder for this batch size, built (and on CUDA captured) once and kept until `release_decoders`:
    where it captures or compiles, the one of the batch's bucket (`bucket_for`), which takes any smaller batch.

    The cache key includes the model's dtype and device, so moving the model gives a fresh decoder."""
    per_model = _DECODERS.setdefault(model, {})
    device = model.device
    # Decoder's defaults: graphs on CUDA, compile where available; buckets where either
    bucketed = device.type == "cuda" or bool(_compile_available(device) if compile is None else compile)
    key = (bucket_for(batch) if bucketed else batch, model.dtype, device, compile)
    if key not in per_model:
        per_model[key] = Decoder(model, key[0], compile=compile)
    return per_model[key]


def release_decoders(model) -> None:
    """Drop the model's decoders (their compiled steps and CUDA graphs' memory). A decoder holds its model, so
    the cache alone never lets a model go: call this when done with a model whose memory must come back (the
    profiler, before it builds the next one)."""
    _DECODERS.pop(model, None)
