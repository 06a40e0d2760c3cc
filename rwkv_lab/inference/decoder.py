"""The fast recurrent step that generation, lm-eval and the profiler share.

    decoder = decoder_for(model, batch=8)                      # cached per (model, batch, dtype, device)
    tokens, state = decoder.step(tokens, state, temperature, top_p, seeds, steps)   # (B,) -> (B,), next state

On CUDA, one token of every sequence (the model's `step` and the choice of the next token) is captured once in a
CUDA graph, its elementwise work fused by `torch.compile` where Triton is present, and replayed per token: one
launch instead of hundreds, which is what bounds decoding at small batch. Only the chosen token ids leave the
device. Elsewhere the same function runs eagerly. `model.step` stays the readable reference; tests check that
the captured step equals it.
"""

from __future__ import annotations

import time
import warnings
import weakref

import torch

from .sampling import sample, vocab_keys

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# what torch.compile covers, tried in this order: the step with the sampler, the step alone, nothing
COMPILE_LEVELS = ("step+sample", "step", False)


def _compile_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401 - inductor's GPU code generator
    except ImportError:
        return False
    return True


class Decoder:
    """One recurrent step plus sampling for a fixed batch size, captured on CUDA (see the module docstring)."""

    def __init__(self, model, batch: int, compile: bool | None = None, graphs: bool | None = None):
        self.model, self.batch = model, batch
        self.device = model.device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if compile is None:
            compile = _compile_available(self.device)
        self.compile = COMPILE_LEVELS[0] if compile is True else compile
        if self.compile not in COMPILE_LEVELS:
            raise ValueError(f"compile must be None, a bool or one of {COMPILE_LEVELS}; got {compile!r}")
        self.warmup_seconds = 0.0  # capture and compilation, paid on the first call of each sampling setting
        if self.device.type == "cpu":
            model.store_projections_transposed()  # the layout CPU BLAS reads fastest for a vector (see there)
        self._captured: dict = {}

    def _step_and_sample(self, tokens, state, temperature, top_p, seeds, steps, keys):
        logits, new_state = self._step(tokens, state)
        return sample(logits, temperature, top_p, seeds, steps, keys), logits, new_state

    def _model_step(self, tokens, state):
        return self.model.step(tokens, state, check=False)

    def _eager(self, tokens, state, temperature, top_p, seeds, steps):
        """One step: compiled as a whole where that works (the step's and the sampler's elementwise work fuse),
        else the model's step alone (COMPILE_LEVELS)."""
        if "_fn" not in self.__dict__:
            self._step = self._model_step
            self._fn = self._step_and_sample
            if self.compile == "step":
                self._step = torch.compile(self._model_step, fullgraph=True, dynamic=False)
            elif self.compile:
                self._fn = torch.compile(self._step_and_sample, fullgraph=True, dynamic=False)
        keys = vocab_keys(self.model.config.vocab_size, self.device)
        return self._fn(tokens, state, temperature, top_p, seeds, steps, keys)

    def _capture(self, key, tokens, state, temperature, top_p, seeds, steps):
        t0 = time.perf_counter()
        static = [tokens.clone(), state.clone(), seeds.clone(), steps.clone()]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the graph: allocator, first launches, compilation
                self._eager(static[0], static[1], temperature, top_p, static[2], static[3])
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._eager(static[0], static[1], temperature, top_p, static[2], static[3])
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
                warnings.warn(
                    f"torch.compile of the decode step (level {self.compile!r}) failed "
                    f"({type(err).__name__}: {str(err)[:300]}); trying level {fallback!r}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compile = fallback
                self._captured.clear()
                self.__dict__.pop("_fn", None)

    @torch.no_grad()
    def _run(self, tokens, state, temperature, top_p, seeds, steps, return_logits):
        if seeds is None:
            seeds = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        if steps is None:
            steps = torch.zeros_like(seeds)
        if not self.graphs:
            out = self._eager(tokens, state, temperature, top_p, seeds, steps)
        else:
            key = (temperature, top_p)
            if key not in self._captured:
                self._capture(key, tokens, state, temperature, top_p, seeds, steps)
            graph, static, out = self._captured[key]
            for buffer, value in zip(static, (tokens, state, seeds, steps)):
                if buffer is not value:
                    buffer.copy_(value)  # a state copies tensor by tensor, skipping those already in place
            graph.replay()
        next_tokens, logits, new_state = out
        return (next_tokens, new_state, logits) if return_logits else (next_tokens, new_state)


def decoder_for(model, batch: int, compile: bool | None = None) -> Decoder:
    """The model's decoder for this batch size, built (and on CUDA captured) once and kept until `release_decoders`.

    The cache key includes the model's dtype and device, so moving the model gives a fresh decoder."""
    per_model = _DECODERS.setdefault(model, {})
    key = (batch, model.dtype, model.device, compile)
    if key not in per_model:
        per_model[key] = Decoder(model, batch, compile=compile)
    return per_model[key]


def release_decoders(model) -> None:
    """Drop the model's decoders (their compiled steps and CUDA graphs' memory). A decoder holds its model, so
    the cache alone never lets a model go: call this when done with a model whose memory must come back (the
    profiler, before it builds the next one)."""
    _DECODERS.pop(model, None)
