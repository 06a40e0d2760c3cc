"""Memory and speed of the recurrent generations (RWKV-4, RWKV-7) against a transformer across context lengths,
measured beside an analytic model. Any generation of the registry is taken the same way, by a spec
'<generation>:<size>' (`model_at`), e.g. the Pile shapes side by side (`PILE_SIZES`):

    frame = sweep(PILE_SIZES["169M"], prefill_contexts=[512, 1024], generation_contexts=[1024, 2**20],
                  dtype=torch.bfloat16, device="cuda", seconds=300)

Three measurements per context T (rows of a tidy DataFrame, `kind` = prefill | generation | training):
- prefill: one parallel forward over T tokens, no grad, only the last position's logits (as a server prefills):
  time, tokens/s, peak memory;
- generation after a context of T tokens: the memory held (weights + recurrent state, or weights + KV cache) and
  the per-token latency of decoding from there, through the library's decoder (what `generate` calls) for a
  recurrent model. The context is built incrementally, in chunks, so a 1M-token sweep costs one pass over 1M
  tokens;
- training: forward + backward under bf16 autocast (fp32 on the CPU) with fp32 weights, through the trainer's
  fast path (`rwkv_lab.training.trainer.fast_path`: a recurrent model's fused blocks, a transformer compiled);
- end-to-end generation (`measure_end_to_end`): a prompt of T tokens prefilled from an empty cache, then new
  tokens decoded, timed together, as one call of a generator: its tokens/s beside decode-only's.
Each row carries `predicted_bytes` from `analytic_memory` and `measured/predicted`. Out-of-memory is a row
(status 'oom'); a series stops at its first OOM, since longer contexts only need more. A time budget shares the
wall clock out among models and series; what it left unmeasured is a row too (status 'skipped (time)'), and so
is what a sweep stopped by SIGTERM (`timeout`'s signal: a hard limit on the command) had not measured. On the
CPU, memory is the process's resident set (peak: VmHWM, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import threading
import time
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..inference.decoder import decoder_for, release_decoders
from ..models import architecture, architecture_of
from ..models.transformer.model import PYTHIA_FOR, kv_cache_bytes_per_token, pythia_configs, pythia_model
from ..training.loss import lm_loss
from ..training.trainer import fast_path
from .memory import analytic_memory, free_memory, memory_now, memory_peak, reset_peak
from .timing import OOM, or_oom, time_fn

# ---- every generation behind one interface ---------------------------------------------------------------------


@dataclass
class Subject:
    """A model with prefill / extend / decode over its own cache (a recurrent state or transformers' KV cache).
    What a sequence costs in memory comes from the model: `state_bytes`, constant (a recurrent model's state), and
    `cache_bytes_per_token`, growing with the context (a transformer's KV cache)."""

    name: str
    arch: str  # the generation (rwkv_lab.models): 'rwkv4', 'rwkv7' or 'transformer'
    model: torch.nn.Module
    d_model: int
    vocab: int
    state_bytes: int = 0  # per sequence, whatever the context
    cache_bytes_per_token: int = 0  # per sequence and token of context
    compile: bool | None = None  # a recurrent model's decoding: the library's decoder (None: its default)
    train_forward: torch.nn.Module | None = None  # what the training loss calls (None: the model itself)

    @property
    def recurrent(self) -> bool:
        return architecture(self.arch).recurrent

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
            self.n_params,
            self.dtype.itemsize,
            self.d_model,
            self.vocab,
            batch,
            context,
            self.state_bytes,
            self.cache_bytes_per_token,
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
    """A recurrent model of any generation (its name: the generation and the config's, e.g. 'RWKV-7 pile-168M')."""
    cfg = model.config
    arch = architecture_of(model)
    label = f"RWKV-{arch.name.removeprefix('rwkv')} {cfg.name}"
    return Subject(
        name or label,
        arch.name,
        model.eval(),
        cfg.n_embd,
        cfg.vocab_size,
        state_bytes=model.state_bytes,
        compile=compile,
    )


def transformer_subject(model, name: str | None = None) -> Subject:
    cfg = model.config
    dtype = next(model.parameters()).dtype
    return Subject(
        name or cfg.name_or_path or f"GPT-NeoX {cfg.num_hidden_layers}x{cfg.hidden_size}",
        "transformer",
        model.eval(),
        cfg.hidden_size,
        cfg.vocab_size,
        cache_bytes_per_token=kv_cache_bytes_per_token(cfg, dtype),
    )


def subject_for(model, name: str | None = None, compile: bool | None = None) -> Subject:
    """The subject of a model of any generation (the registry says whether it is recurrent)."""
    if architecture_of(model).recurrent:
        return rwkv_subject(model, name, compile)
    return transformer_subject(model, name)


MAX_CONTEXT = 2**21  # the transformer's rotary positions reach this far (a generation sweep goes to 1M)

# The released Pile shapes side by side, keyed by the RWKV-4 size: RWKV-4 Pile, RWKV-7 Pile (BlinkDL's x070 Pile
# models: the same layers and width) and the Pythia model the RWKV-4 paper sets beside each.
PILE_SIZES = {
    size: (f"rwkv4:{size}", f"rwkv7:{rwkv7}", f"transformer:{PYTHIA_FOR[size]}")
    for size, rwkv7 in (("169M", "pile-168M"), ("430M", "pile-421M"), ("1.5B", "pile-1.47B"))
}


def model_at(spec: str, dtype=torch.bfloat16, device="cpu", seed: int = 0):
    """The model of `spec`, '<generation>:<size>' with any generation of the registry and one of its sizes
    ('rwkv4:169M', 'rwkv7:pile-168M', 'transformer:byte-6x256': the GPT-NeoX matched to that RWKV-4 shape), or a
    Pythia shape ('transformer:pythia-160m'), in `dtype` on `device`. Random weights at the official scale (the
    generation's initialisation with Gaussian draws for orthogonal ones, every projection drawn: speed and
    memory do not depend on the values); on device 'meta' the shapes alone, nothing drawn."""
    arch_name, sep, size = spec.partition(":")
    if not sep or not size:
        raise ValueError(f"a model spec is '<generation>:<size>', e.g. 'rwkv7:pile-168M'; got {spec!r}")
    arch = architecture(arch_name)
    if size in pythia_configs():
        return pythia_model(size, dtype, device, max_positions=MAX_CONTEXT)
    config = arch.get_config(size)
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            model = arch.model_class(config) if arch.model_class else arch.build(config, context=MAX_CONTEXT)
        return model.to(dtype).eval()
    # initialised on the CPU in fp32 (the generations' init draws there), then moved
    model = arch.build(config, seed=seed, context=MAX_CONTEXT, zero_projections=False, orthogonal_matrices=False)
    return model.to(device=device, dtype=dtype).eval()


def sequence_memory(specs) -> pd.DataFrame:
    """What one sequence costs each model of `specs` (model_at's specs), from its shapes: a recurrent model's
    state in bytes (the model's `state_bytes`) beside the bytes of the state object `init_state(1)` allocates,
    a transformer's KV cache bytes per token of context (bf16), the parameters, and the context at which the
    transformer's KV cache (of the transformer among `specs`, if one) outgrows each recurrent state."""
    rows = []
    for spec in specs:
        model = model_at(spec, torch.bfloat16, "meta")
        subject = subject_for(model)
        row = {
            "model": subject.name,
            "arch": subject.arch,
            "params": subject.n_params,
            "state_bytes": subject.state_bytes,
            "state_object_bytes": sum(t.nbytes for t in model.init_state(1).tensors()) if subject.recurrent else 0,
            "cache_bytes_per_token": subject.cache_bytes_per_token,
        }
        rows.append(row)
    frame = pd.DataFrame(rows)
    per_token = frame["cache_bytes_per_token"].max()
    frame["kv_cache_outgrows_state_at"] = [
        int(s // per_token + 1) if s and per_token else None for s in frame["state_bytes"]
    ]
    return frame


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
        "state_bytes": subject.state_bytes,
        "cache_bytes_per_token": subject.cache_bytes_per_token,
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


SKIPPED = "skipped (time)"  # the status of a context the time budget left unmeasured


def _out_of_time(deadline: float | None, predicted_seconds: float = 0.0) -> bool:
    return deadline is not None and time.perf_counter() + predicted_seconds >= deadline


def generation_series(
    subject: Subject,
    batch: int,
    contexts,
    decode_steps: int = 16,
    chunk: int = 16384,
    progress: bool = True,
    max_seconds: float | None = None,
    deadline: float | None = None,
) -> list[dict]:
    """Build the context up incrementally through `contexts` (sorted) and, at each, measure the memory held and
    the latency of decoding `decode_steps` tokens. Stops at the first OOM (recorded). Time: a context is not
    started (recorded as 'skipped (time)') once the series has run `max_seconds` after its first context, or when
    building it would pass `deadline` (a time.perf_counter() value): its build is predicted from the last one,
    scaled by the new tokens and by the context's growth (a transformer's per-token cost grows with its cache).
    The first context is measured unless the deadline has passed already; `max_seconds` counts from after it
    because it carries the decoder's compilation and CUDA-graph capture, which took the whole of a 20 s budget
    on an H200 at 169M."""
    rows, cache, built, t0, last_build = [], None, 0, None, None
    stream = _tokens(subject, batch, max(contexts), seed=1)
    free_memory(subject.device)
    # held = weights + what building the context added (on the CPU the resident set also holds the interpreter)
    before = memory_now(subject.device)
    for T in tqdm(sorted(contexts), desc=f"generation {subject.name} B={batch}", disable=not progress):
        row = _row(subject, "generation", batch, T)
        predicted = 0.0
        if last_build is not None:
            seconds, tokens, previous = last_build
            predicted = seconds * (T - built) / max(tokens, 1) * T / max(previous, 1)
        if (t0 is not None and max_seconds is not None and time.perf_counter() - t0 > max_seconds) or _out_of_time(
            deadline, predicted
        ):
            rows.append(row | {"status": SKIPPED})
            continue

        def measure():
            nonlocal cache, built, last_build
            start = time.perf_counter()
            logits, cache = subject.extend(stream[:, built:T], cache, chunk=max(1, chunk // batch))
            token = logits.argmax(-1)
            token.cpu()  # the build has run (the device synchronised)
            last_build = (time.perf_counter() - start, T - built, T)
            built = T

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


def series(
    measure, subject: Subject, batch: int, contexts, progress: bool = True, deadline: float | None = None, **kwargs
) -> list[dict]:
    """measure(subject, batch, T) for each T, stopping at the first OOM (recorded as a row); a context not
    started by `deadline` (a time.perf_counter() value) is recorded as 'skipped (time)'."""
    rows, kind = [], measure.__name__.removeprefix("measure_")
    kind = {"end_to_end": "generation end-to-end"}.get(kind, kind)
    for T in tqdm(sorted(contexts), desc=f"{kind} {subject.name} B={batch}", disable=not progress):
        if _out_of_time(deadline):
            rows.append(_row(subject, kind, batch, T) | {"status": SKIPPED})
            continue
        result = or_oom(lambda: measure(subject, batch, T, **kwargs), subject.device)
        if result is OOM:
            rows.append(_row(subject, kind, batch, T) | {"status": "oom"})
            break
        rows.append(result)
    return rows


def for_training(subject: Subject) -> Subject:
    """The subject as the trainer runs it: fp32 weights (bf16 autocast on a GPU) through its fast path."""
    subject.model.float()
    subject.train_forward = fast_path(subject.model)
    return subject


# Shares of a model's time by series (what one leaves unused goes to the next): generation builds the longest
# contexts and carries the decoder's compilation; training compiles per shape
SERIES_SHARES = {"prefill": 1, "generation": 4, "generation end-to-end": 1, "training": 3}


def profile(
    subject: Subject,
    batch: int = 1,
    prefill_contexts=(),
    generation_contexts=(),
    end_to_end_contexts=(),
    training_contexts=(),
    decode_steps: int = 16,
    new_tokens: int = 64,
    deadline: float | None = None,
    progress: bool = True,
    on_series=None,
) -> list[dict]:
    """Every series of one subject, in order: prefill, generation, end-to-end generation, then training (the
    subject moves to fp32 weights for it). `deadline` (a time.perf_counter() value) is shared out among the
    series by SERIES_SHARES; `on_series(rows so far)` is called after each (to save them)."""
    plan = [
        ("prefill", prefill_contexts),
        ("generation", generation_contexts),
        ("generation end-to-end", end_to_end_contexts),
        ("training", training_contexts),
    ]
    plan = [(kind, contexts) for kind, contexts in plan if len(contexts)]
    rows = []
    for i, (kind, contexts) in enumerate(plan):
        share = None
        if deadline is not None:
            left = sum(SERIES_SHARES[k] for k, _ in plan[i:])
            share = time.perf_counter() + max(0.0, deadline - time.perf_counter()) * SERIES_SHARES[kind] / left
        if kind == "prefill":
            rows += series(measure_prefill, subject, batch, contexts, progress, share)
        elif kind == "generation":
            rows += generation_series(subject, batch, contexts, decode_steps, progress=progress, deadline=share)
        elif kind == "generation end-to-end":
            rows += series(measure_end_to_end, subject, batch, contexts, progress, share, new_tokens=new_tokens)
        else:
            rows += series(measure_training, for_training(subject), batch, contexts, progress, share)
        if on_series is not None:
            on_series(rows)
    return rows


def release(subject: Subject) -> None:
    """Let a subject's model go and its memory come back (its decoders, compiled code and cached blocks), so the
    next model is measured on the card as it was."""
    device = subject.device
    release_decoders(subject.model)
    subject.model = subject.train_forward = None
    if device.type == "cuda":
        torch._dynamo.reset()  # compiled graphs keep what they were compiled for
    free_memory(device)


class Stopped(Exception):
    """SIGTERM arrived during a sweep (`stopped_by_sigterm`)."""


@contextlib.contextmanager
def stopped_by_sigterm():
    """Within (in the main thread): SIGTERM raises Stopped where the sweep is, so that it records what it had not
    measured and returns, rather than dying with its last series unwritten; the handler before, after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def sweep(
    subjects,
    batch: int = 1,
    prefill_contexts=(),
    generation_contexts=(),
    training_contexts=(),
    end_to_end_contexts=(),
    decode_steps: int = 16,
    new_tokens: int = 64,
    dtype=torch.bfloat16,
    device="cpu",
    compile: bool | None = None,
    seconds: float | None = None,
    progress: bool = True,
    on_rows=None,
) -> pd.DataFrame:
    """`profile` each of `subjects`, in turn: Subjects, or specs ('rwkv7:pile-168M', see model_at) built in
    `dtype` on `device` when their turn comes and released after, so each is measured on a card without the
    others. `seconds`: a time budget, shared equally among the subjects (what one leaves unused goes to the
    next); a subject whose turn comes with no time left is recorded as skipped, unbuilt. `on_rows(frame)` after
    each series (to save what was measured so far). Stopped by SIGTERM (in the main thread), it records every
    context it had not measured as skipped and returns what it has."""
    rows, subjects = [], list(subjects)
    end = None if seconds is None else time.perf_counter() + seconds
    plan = {
        "prefill_contexts": prefill_contexts,
        "generation_contexts": generation_contexts,
        "end_to_end_contexts": end_to_end_contexts,
        "training_contexts": training_contexts,
    }
    i, subject = 0, None
    try:
        with stopped_by_sigterm():
            for i, subject in enumerate(subjects):
                deadline = None
                if end is not None:
                    deadline = time.perf_counter() + max(0.0, end - time.perf_counter()) / (len(subjects) - i)
                built = isinstance(subject, str)
                if built:
                    spec = subject
                    if _out_of_time(end):  # unbuilt: its rows from its shapes
                        subject = subject_for(model_at(spec, dtype, "meta"))
                        rows += _skipped_rows(subject, batch, plan)
                        if on_rows is not None:
                            on_rows(finish(pd.DataFrame(rows)))
                        continue
                    free_memory(device)
                    subject = subject_for(model_at(spec, dtype, device), compile=compile)
                done = list(rows)

                def measured(new, done=done):
                    rows[:] = done + new  # kept as each series ends: what a stop leaves measured
                    if on_rows is not None:
                        on_rows(finish(pd.DataFrame(rows)))

                profile(
                    subject,
                    batch,
                    **plan,
                    decode_steps=decode_steps,
                    new_tokens=new_tokens,
                    deadline=deadline,
                    progress=progress,
                    on_series=measured,
                )
                if built:
                    release(subject)
    except Stopped:
        current = None if isinstance(subject, str) else subject  # None: stopped while building it
        for j, left in enumerate(subjects[i:]):
            if isinstance(left, str):  # the one being measured as built; the rest from their shapes
                left = current if j == 0 and current is not None else subject_for(model_at(left, dtype, "meta"))
            seen = {(r["kind"], r["context"]) for r in rows if r["model"] == left.name}
            rows += [r for r in _skipped_rows(left, batch, plan) if (r["kind"], r["context"]) not in seen]
        if current is not None and isinstance(subjects[i], str):
            release(current)
    return finish(pd.DataFrame(rows))


def _skipped_rows(subject: Subject, batch: int, plan: dict) -> list[dict]:
    kinds = {
        "prefill_contexts": "prefill",
        "generation_contexts": "generation",
        "end_to_end_contexts": "generation end-to-end",
        "training_contexts": "training",
    }
    return [
        _row(subject, kinds[key], batch, T) | {"status": SKIPPED} for key, contexts in plan.items() for T in contexts
    ]


def finish(frame: pd.DataFrame) -> pd.DataFrame:
    """Add GiB and measured/predicted columns."""
    for col in ("seconds", "tokens_per_s", "memory_bytes", "predicted_bytes"):
        if col not in frame:
            frame[col] = math.nan
    frame["memory_GiB"] = frame["memory_bytes"] / 2**30
    frame["measured_over_predicted"] = frame["memory_bytes"] / frame["predicted_bytes"]
    return frame
