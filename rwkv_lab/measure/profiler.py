"""Memory and speed of RWKV-4 against a transformer across context lengths, measured beside an analytic model.

    rwkv = rwkv_subject(model)                       # our RWKV (CUDA graphs for decoding on a GPU)
    gpt = transformer_subject(pythia_model("pythia-1.4b", "bfloat16", "cuda"))
    frame = sweep([rwkv, gpt], prefill_contexts=[512, 1024], generation_contexts=[1024, 2**20], batch=1)

Three measurements per context T (rows of a tidy DataFrame, `kind` = prefill | generation | training):
- prefill: one parallel forward over T tokens, no grad, only the last position's logits (as a server prefills):
  time, tokens/s, peak memory;
- generation after a context of T tokens: the memory held (weights + RWKV state, or weights + KV cache) and the
  per-token latency of decoding from there. The context is built incrementally, in chunks, so a 1M-token sweep
  costs one pass over 1M tokens;
- training: forward + backward under bf16 autocast (fp32 on the CPU): peak memory and tokens/s, through
  `Subject.train_forward` where set (the trainer's fast path: `rwkv_lab.training.trainer.fast_path`);
- end-to-end generation (`measure_end_to_end`): a prompt of T tokens prefilled from an empty cache, then new
  tokens decoded, timed together, as one call of a generator: its tokens/s beside decode-only's.
Each row carries `predicted_bytes` from `analytic_memory` and `measured/predicted`. Out-of-memory is a row
(status 'oom'); a series stops at its first OOM, since longer contexts only need more. On the CPU, memory is the
process's resident set (peak: VmHWM, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..inference.decoder import decoder_for
from ..models import architecture_of
from ..models.rwkv4.model import build_at_size
from ..models.transformer.model import PYTHIA_FOR, pythia_model
from ..training.loss import lm_loss
from .memory import analytic_memory, free_memory, memory_now, memory_peak, reset_peak
from .timing import OOM, or_oom, time_fn

# ---- the two kinds of model behind one interface ---------------------------------------------------------------


@dataclass
class Subject:
    """A model with prefill / extend / decode over its own cache (RWKV state or transformers KV cache)."""

    name: str
    arch: str  # the generation (rwkv_lab.models): 'rwkv4', 'rwkv7' or 'transformer'
    model: torch.nn.Module
    n_layer: int
    d_model: int
    vocab: int
    compile: bool | None = None  # RWKV decoding: the library's decoder (None: its default, compiled on CUDA)
    state_numbers: int | None = None  # a recurrent model's state per sequence; None: a transformer's KV cache

    @property
    def recurrent(self) -> bool:
        return self.state_numbers is not None

    train_forward: torch.nn.Module | None = None  # what the training loss calls (None: the model itself)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def predicted(self, batch: int, context: int) -> dict:
        return analytic_memory(
            self.state_numbers,
            self.n_params,
            self.n_layer,
            self.d_model,
            self.vocab,
            batch,
            context,
            self.dtype.itemsize,
        )

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, cache=None, chunk: int | None = None):
        """Run a context (B, T) from `cache` (None: empty); returns (last logits (B, V), cache)."""
        if self.recurrent:
            return self.model.prefill(tokens, cache, chunk=chunk, check=False)
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache()
        start, T = 0, tokens.shape[1]
        while start < T:
            # as a server would: the chunk shrinks as the cache grows, so that its attention (a mask and scores
            # of chunk x cached positions per head) fits in a share of the memory left; the KV cache bounds the
            # context, not the prefill's transients
            step = attention_chunk(
                chunk or T, cache.get_seq_length(), self.model.config.num_attention_heads, self.dtype, self.device
            )
            out, cache = _hf(
                self.model, cache, input_ids=tokens[:, start : start + step], use_cache=True, logits_to_keep=1
            )
            start += step
        return out.logits[:, -1], cache

    @torch.no_grad()
    def decode(self, token: torch.Tensor, cache):
        """One greedily generated token per sequence, token (B,) -> (next token (B,), cache): RWKV through the
        library's decoder (what `generate` uses), the transformer through its KV cache."""
        if self.recurrent:
            return decoder_for(self.model, token.shape[0], self.compile).step(token, cache)
        out, cache = _hf(self.model, cache, input_ids=token[:, None], use_cache=True)
        return out.logits[:, -1].argmax(-1), cache

    def crop(self, cache, context: int):
        """The cache as it was after `context` tokens (transformer; an RWKV state is returned as is)."""
        if not self.recurrent and cache.get_seq_length() > context:
            cache.crop(context - cache.get_seq_length())  # negative: remove that many (transformers 4.x and 5.x)
        return cache

    def training_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        forward = self.model if self.train_forward is None else self.train_forward  # a compiled module has no bool()
        return lm_loss(forward, tokens[:, :-1], tokens[:, 1:])


ATTENTION_SHARE = 0.25  # of the free device memory, for one prefill chunk's attention transients


def attention_chunk(requested: int, cached: int, heads: int, dtype, device, free_bytes: int | None = None) -> int:
    """Tokens per transformer prefill chunk after `cached` positions: at most `requested`, and few enough that a
    (heads, chunk, cached + chunk) attention tensor in `dtype` takes at most ATTENTION_SHARE of the free memory
    (on CUDA; elsewhere `requested`, unless `free_bytes` is given). At least 16 tokens. A first chunk (nothing
    cached) is not limited: SDPA runs it causally (flash attention), with neither mask nor scores in memory."""
    if cached == 0:
        return requested
    if free_bytes is None:
        if torch.device(device).type != "cuda":
            return requested
        free_bytes = torch.cuda.mem_get_info(device)[0]
    budget = ATTENTION_SHARE * free_bytes / (heads * torch.empty((), dtype=dtype).element_size())
    # largest c with c * (cached + c) <= budget
    c = int((-cached + math.sqrt(cached * cached + 4 * budget)) / 2)
    return max(16, min(requested, c))


def _hf(model, cache, **kwargs):
    """The transformer's forward from its KV cache: (output, the cache after it). transformers 5.2x renamed
    past_key_values to cache, and the old name, in the call or read from the output, logs a deprecation warning
    into what a notebook saves; so each version gets the name it has."""
    forward = getattr(model, "_orig_mod", model).forward  # a compiled module: the forward it compiled
    name = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    out = model(**kwargs, **{name: cache})
    return out, getattr(out, name)


def rwkv_subject(model, name: str | None = None, compile: bool | None = None) -> Subject:
    """A recurrent model of any generation (its name: the generation and the config's, e.g. 'RWKV-4 169M')."""
    cfg = model.config
    arch = architecture_of(model)
    label = f"RWKV-{arch.name.removeprefix('rwkv')} {cfg.name}"
    return Subject(
        name or label,
        arch.name,
        model.eval(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.vocab_size,
        compile=compile,
        state_numbers=cfg.state_numbers,
    )


def transformer_subject(model, name: str | None = None) -> Subject:
    cfg = model.config
    return Subject(
        name or f"GPT-NeoX {cfg.num_hidden_layers}x{cfg.hidden_size}",
        "transformer",
        model.eval(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
    )


def pair_subjects(size: str, dtype=torch.bfloat16, device="cuda", compile: bool | None = None):
    """RWKV-4 `size`, then its Pythia match, built one after the other (each freed before the next is built)."""
    model = build_at_size(size, dtype, device)
    yield rwkv_subject(
        model, f"RWKV-4 {size}" + {True: " compiled", False: " uncompiled", None: ""}[compile], compile=compile
    )
    del model
    free_memory(device)
    yield transformer_subject(pythia_model(PYTHIA_FOR[size], dtype, device, max_positions=2**21), PYTHIA_FOR[size])


# ---- measuring -------------------------------------------------------------------------------------------------


def _tokens(subject: Subject, batch: int, T: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, min(subject.vocab, 50277), (batch, T), generator=gen).to(subject.device)


def _row(subject: Subject, kind: str, batch: int, T: int) -> dict:
    return {
        "model": subject.name,
        "arch": subject.arch,
        "params": subject.n_params,
        "dtype": str(subject.dtype)[6:],
        "kind": kind,
        "batch": batch,
        "context": T,
    }


def measure_prefill(subject: Subject, batch: int, T: int, repeat: int = 3) -> dict:
    row = _row(subject, "prefill", batch, T)
    tokens = _tokens(subject, batch, T, seed=T)
    predicted = subject.predicted(batch, T)["prefill_peak_bytes"]
    free_memory(subject.device)
    before = memory_now(subject.device)
    reset_peak(subject.device)
    seconds = time_fn(lambda: subject.extend(tokens), subject.device, warmup=1, repeat=repeat)
    peak = _weight_bytes(subject) + memory_peak(subject.device) - before  # weights + what the call added
    return row | {
        "status": "ok",
        "seconds": seconds,
        "tokens_per_s": batch * T / seconds,
        "memory_bytes": peak,
        "predicted_bytes": predicted,
    }


def measure_training(subject: Subject, batch: int, T: int, repeat: int = 3) -> dict:
    row = _row(subject, "training", batch, T)
    tokens = _tokens(subject, batch, T + 1, seed=T)
    subject.model.train()

    def step():
        subject.training_loss(tokens).backward()
        for p in subject.model.parameters():
            p.grad = None

    try:
        free_memory(subject.device)
        before = memory_now(subject.device)
        reset_peak(subject.device)
        seconds = time_fn(step, subject.device, warmup=1, repeat=repeat)
        peak = _weight_bytes(subject) + memory_peak(subject.device) - before
    finally:
        subject.model.eval()
    return row | {"status": "ok", "seconds": seconds, "tokens_per_s": batch * T / seconds, "memory_bytes": peak}


def measure_end_to_end(subject: Subject, batch: int, T: int, new_tokens: int = 64, repeat: int = 3) -> dict:
    """One generator call from a prompt of T tokens: the prefill from an empty cache (first token from its
    logits), then `new_tokens - 1` greedy decode steps, timed together: tokens/s = batch x new_tokens / seconds,
    the rate a caller sees, beside the decode-only rate of `generation_series` at the same context."""
    row = _row(subject, "generation end-to-end", batch, T)
    prompt = _tokens(subject, batch, T, seed=T + 1)

    def run():
        logits, cache = subject.extend(prompt)
        token = logits.argmax(-1)
        for _ in range(new_tokens - 1):
            token, cache = subject.decode(token, cache)

    free_memory(subject.device)
    seconds = time_fn(run, subject.device, warmup=1, repeat=repeat)
    return row | {"status": "ok", "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds}


def generation_series(
    subject: Subject,
    batch: int,
    contexts,
    decode_steps: int = 16,
    chunk: int = 16384,
    progress: bool = True,
    max_seconds: float | None = None,
) -> list[dict]:
    """Build the context up incrementally through `contexts` (sorted) and, at each, measure the memory held and
    the latency of decoding `decode_steps` tokens. Stops at the first OOM (recorded), or once the series has run
    `max_seconds` after its first context (at least one context is measured; the rest are recorded as 'skipped
    (time)'). The clock starts after the first context because that one carries the decoder's compilation and
    CUDA-graph capture, which took the whole of a 20 s budget on an H200 at 169M."""
    rows, cache, built, t0 = [], None, 0, None
    stream = _tokens(subject, batch, max(contexts), seed=1)
    free_memory(subject.device)
    # held = weights + what building the context added (on the CPU the resident set also holds the interpreter)
    before = memory_now(subject.device)
    for T in tqdm(sorted(contexts), desc=f"generation {subject.name} B={batch}", disable=not progress):
        row = _row(subject, "generation", batch, T)
        if t0 is not None and max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            rows.append(row | {"status": "skipped (time)"})
            continue

        def measure():
            nonlocal cache, built
            logits, cache = subject.extend(stream[:, built:T], cache, chunk=max(1, chunk // batch))
            built = T
            token = logits.argmax(-1)

            def run():
                c, tok = cache, token
                for _ in range(decode_steps):
                    tok, c = subject.decode(tok, c)
                subject.crop(c, T)  # a transformer's cache grew in place

            seconds = time_fn(run, subject.device, warmup=1, repeat=3) / decode_steps
            free_memory(subject.device)
            # after decoding: a CUDA graph's pool counts as held. On the CPU the resident set can end below where
            # it began (the allocator hands back pages freed by earlier work), so growth is floored at zero.
            held = _weight_bytes(subject) + max(0, memory_now(subject.device) - before)
            return row | {
                "status": "ok",
                "seconds": seconds,
                "tokens_per_s": batch / seconds,
                "memory_bytes": held,
                "predicted_bytes": subject.predicted(batch, T)["held_bytes"],
            }

        result = or_oom(measure, subject.device)
        rows.append(row | {"status": "oom"} if result is OOM else result)
        if result is OOM:
            break
        t0 = t0 or time.perf_counter()
    del cache
    free_memory(subject.device)
    return rows


def _weight_bytes(subject: Subject) -> int:
    return sum(p.numel() * p.element_size() for p in subject.model.parameters())


def series(measure, subject: Subject, batch: int, contexts, progress: bool = True, **kwargs) -> list[dict]:
    """measure(subject, batch, T) for each T, stopping at the first OOM (recorded as a row)."""
    rows = []
    for T in tqdm(
        sorted(contexts),
        desc=f"{measure.__name__.removeprefix('measure_')} {subject.name} B={batch}",
        disable=not progress,
    ):
        result = or_oom(lambda: measure(subject, batch, T, **kwargs), subject.device)
        if result is OOM:
            rows.append(_row(subject, measure.__name__.removeprefix("measure_"), batch, T) | {"status": "oom"})
            break
        rows.append(result)
    return rows


def sweep(
    subjects,
    batch: int = 1,
    prefill_contexts=(),
    generation_contexts=(),
    training_contexts=(),
    decode_steps: int = 16,
    progress: bool = True,
) -> pd.DataFrame:
    rows = []
    for subject in subjects:
        rows += series(measure_prefill, subject, batch, prefill_contexts, progress)
        rows += (
            generation_series(subject, batch, generation_contexts, decode_steps, progress=progress)
            if generation_contexts
            else []
        )
        rows += series(measure_training, subject, batch, training_contexts, progress)
    return finish(pd.DataFrame(rows))


def finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Add GiB and measured/predicted columns."""
    for col in ("seconds", "tokens_per_s", "memory_bytes", "predicted_bytes"):
        if col not in frame:
            frame[col] = math.nan
    frame["memory_GiB"] = frame["memory_bytes"] / 2**30
    frame["measured_over_predicted"] = frame["memory_bytes"] / frame["predicted_bytes"]
    return frame
