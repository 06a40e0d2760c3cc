"""Text generation through the recurrent form: the prompts prefilled together in one parallel pass (right-padded,
each to its own length and state: `model.prefill(..., lengths=)`), then all sequences decoded together, one token
per step, through the fast decoder (decoder.py).

    text = generate(model, tokenizer, "def main():", max_new_tokens=100, temperature=0.8, top_p=0.9, seed=0)
    texts = generate(model, tokenizer, ["a", "much longer prompt b"], seed=[1, 2], stop=[["\\n"], ["."]])
    for index, piece in stream(model, tokenizer, ["a", "b"]): ...      # a str prompt yields plain str pieces

Sampling runs on the device with counter-based random numbers (sampling.py), so a sequence generates the same
text alone or in a batch, given its seed. Only token ids cross to the host, for detokenisation and stop strings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..loading.tokenizer import check_tokenizer, encode_batch
from .decoder import decoder_for
from .sampling import MAX_SEED, check_sampling, check_seed, sampler_for

# prompt tokens run per parallel call, per sequence and (PREFILL_TOKENS) over the batch: bound prefill memory at
# any prompt length and batch (exact: the state is carried between the pieces)
PREFILL_CHUNK = 4096
PREFILL_TOKENS = 32768


@dataclass
class _Sequence:
    """One sequence being generated: its ids, its text so far, what of it was emitted, its limits.

    The text grows by incremental detokenisation: only the ids since the last complete character are decoded
    again, so each token costs the same whatever the length (a split multi-byte character shows as U+FFFD until
    its last token arrives, and is held back until then)."""

    index: int
    max_new: int
    stop: list[str]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    prefix: int = 0  # ids[prefix:read] decode to the tail of `text` already taken
    read: int = 0
    emitted: int = 0
    done: bool = False

    def append(self, token: int, tokenizer) -> None:
        self.ids.append(token)
        before = tokenizer.decode(self.ids[self.prefix : self.read])
        now = tokenizer.decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += now[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)

    def pending_text(self, tokenizer) -> str:
        """The text with any incomplete character at the end decoded as it stands (for the final piece)."""
        before = tokenizer.decode(self.ids[self.prefix : self.read])
        return self.text + tokenizer.decode(self.ids[self.prefix :])[len(before) :]


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string, so not yet safe to emit."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


def _stops(stop) -> list[str]:
    """One stop string (str), a sequence of them, or None (no stop strings); the empty string would stop at once,
    so it is refused."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str):
            raise TypeError(f"stop strings must be str; got {type(s).__name__} {s!r}")
        if s == "":
            raise ValueError("an empty stop string would end generation before its first token; remove it")
    return stops


def _per_sequence(value, n: int, name: str, is_one) -> list:
    """`value` for each of n sequences: one value shared, or a list of n."""
    if is_one(value):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} prompts; give one value or one per prompt")
    return values


def _check_max_new(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_new_tokens must be an int >= 0; got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {value}")
    return value


def _prompts(prompt) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError(f"prompt must be a str or a non-empty list of str; got {type(prompt).__name__}")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"every prompt must be a str; got {type(p).__name__} {p!r}")
    return list(prompts)


@torch.no_grad()
def prefill_prompts(model, tokenizer, prompts: list[str], state=None, new_document: bool = False):
    """The prompts through the parallel form, each from its own state: (last logits (n, V), the n states as one
    batch). One pass for the batch: the prompts right-padded to the longest, each taken at its own length
    (`model.prefill(..., lengths=)`), in pieces of at most PREFILL_CHUNK tokens a prompt and PREFILL_TOKENS over the
    batch, cut at the prompts' lengths.

    An empty prompt starts a new document (end-of-text); so does every prompt with `new_document`. Only the last
    position goes through the head."""
    ids = [
        [tokenizer.eot_id] + encoded if new_document or not encoded else encoded
        for encoded in encode_batch(tokenizer, prompts)
    ]
    lengths = [len(x) for x in ids]
    T = max(lengths)
    tokens = torch.tensor([x + [tokenizer.eot_id] * (T - len(x)) for x in ids], device=model.device)  # (n, T)
    lengths = None if min(lengths) == T else torch.tensor(lengths, device=model.device)
    return model.prefill(tokens, state, chunk=PREFILL_CHUNK, batch_tokens=PREFILL_TOKENS, lengths=lengths)


@torch.no_grad()
def stream(
    model,
    tokenizer,
    prompt,
    max_new_tokens=100,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed=None,
    stop=(),
    state=None,
    compile: bool | None = None,
    stats: dict | None = None,
    new_document: bool = False,
) -> Iterator:
    """Yield the generated text piece by piece as tokens come.

    `prompt` a str: yields str pieces. A list of str: yields (index, piece), the prompts decoded as one batch.
    Each sequence ends at its `max_new_tokens`, end-of-text or a stop string (excluded from the text).
    `seed`, `max_new_tokens` and `stop` take one value for all or one per prompt (for `stop`, a list of lists;
    None: no stop strings). `state` (the model's state of a batch of n) starts each prompt from a given state.
    `new_document` reads each prompt as the start of a document: after end-of-text, as training saw every file's
    first bytes (without it, "def main():\n" reads as a piece from the middle of a file, whose next line is often
    indented deeper). `stats`, a dict, receives the timings: prefill_s, first_token_s, decode_s, warmup_s (capture
    and compilation in this call), generated tokens.
    """
    single = isinstance(prompt, str)
    prompts = _prompts(prompt)
    n = len(prompts)
    temperature, top_p = check_sampling(temperature, top_p)
    max_new = [
        _check_max_new(m)
        for m in _per_sequence(max_new_tokens, n, "max_new_tokens", lambda v: not isinstance(v, (list, tuple)))
    ]
    per_seq_stop = (
        not single and isinstance(stop, (list, tuple)) and stop and all(isinstance(s, (list, tuple)) for s in stop)
    )
    stops = [_stops(s) for s in stop] if per_seq_stop else [_stops(stop)] * n
    if len(stops) != n:
        raise ValueError(f"stop has {len(stops)} lists for {n} prompts; give one list per prompt")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))  # from torch's global generator: torch.manual_seed decides
    if isinstance(seed, (list, tuple)):
        seeds = [check_seed(s) for s in _per_sequence(seed, n, "seed", lambda v: False)]
    else:  # one seed for the batch: sequence i gets seed + i (a single prompt: the seed itself)
        seeds = [(check_seed(seed) + i) % (MAX_SEED + 1) for i in range(n)]
    check_tokenizer(tokenizer, model)
    if state is not None:
        model.check_state(state, n)

    pieces = _generate(
        model,
        tokenizer,
        prompts,
        max_new,
        stops,
        seeds,
        temperature,
        top_p,
        state,
        compile,
        stats if stats is not None else {},
        new_document,
    )
    for index, piece in pieces:
        yield piece if single else (index, piece)


def _generate(
    model, tokenizer, prompts, max_new, stops, seeds, temperature, top_p, state, compile, stats, new_document
):
    device = model.device
    # on a GPU the next step is launched before the host reads this step's tokens, so detokenisation and stop
    # strings overlap the device's work (one step is wasted at the end); on the CPU that would only cost a step
    run_ahead = device.type == "cuda"
    decoder_for(model, len(prompts), compile)  # built before the prefill: on the CPU it sets the weight layout
    t0 = time.perf_counter()
    logits, states = prefill_prompts(model, tokenizer, prompts, state, new_document)
    seqs = [_Sequence(i, m, s, done=m == 0) for i, (m, s) in enumerate(zip(max_new, stops))]
    seed_t = torch.tensor(seeds, dtype=torch.int64, device=device)
    step_t = torch.zeros(len(seqs), dtype=torch.int64, device=device)
    tokens = sampler_for(device)(logits, temperature, top_p, seed_t, step_t)
    stats.update(prefill_s=time.perf_counter() - t0, warmup_s=0.0, tokens=0)
    t_decode = time.perf_counter()
    rows = list(range(len(seqs)))  # the sequence each row of the decoded batch holds

    def launch(tokens, states, step_t):
        decoder = decoder_for(model, len(rows), compile)
        before = decoder.warmup_seconds
        out = decoder.step(tokens, states, temperature, top_p, seed_t, step_t)
        stats["warmup_s"] += decoder.warmup_seconds - before
        return out

    while True:
        host = tokens.to("cpu", non_blocking=run_ahead)
        done_event = torch.cuda.Event() if run_ahead else None
        if run_ahead:
            done_event.record()
            step_t = step_t + 1
            ahead = launch(tokens, states, step_t)
            done_event.synchronize()
        for row, token in enumerate(host.tolist()):
            seq = seqs[rows[row]]
            if seq.done:
                continue
            piece = _advance(seq, token, tokenizer)
            stats["tokens"] += 1
            stats.setdefault("first_token_s", time.perf_counter() - t0)
            if piece:
                yield seq.index, piece
        live = [row for row, i in enumerate(rows) if not seqs[i].done]
        if not live:
            break
        if run_ahead:
            tokens, states = ahead
        if len(live) <= len(rows) // 2:  # compact: finished sequences stop costing work
            keep = torch.tensor(live, device=device)
            tokens, states = tokens.index_select(0, keep), states[keep]
            seed_t, step_t = seed_t.index_select(0, keep), step_t.index_select(0, keep)
            rows = [rows[row] for row in live]
        if not run_ahead:
            step_t = step_t + 1
            tokens, states = launch(tokens, states, step_t)
    stats["decode_s"] = time.perf_counter() - t_decode


def _advance(seq: _Sequence, token: int, tokenizer) -> str:
    """Take one chosen token into `seq`; returns the text now safe to show (stops and split characters held)."""
    if token == tokenizer.eot_id:
        seq.done = True
        return _flush(seq, tokenizer)
    seq.append(token, tokenizer)
    text = seq.text
    hits = [h for h in (text.find(s, seq.emitted) for s in seq.stop) if h >= 0]
    if hits:
        seq.done = True
        cut = min(hits)
        piece, seq.emitted = text[seq.emitted : cut], len(text)
        return piece
    if len(seq.ids) >= seq.max_new:
        seq.done = True
        return _flush(seq, tokenizer)
    safe = len(text) - _held_back(text, seq.stop)
    piece = text[seq.emitted : safe] if safe > seq.emitted else ""
    seq.emitted = max(seq.emitted, safe)
    return piece


def _flush(seq: _Sequence, tokenizer) -> str:
    text = seq.pending_text(tokenizer)
    piece = text[seq.emitted :]
    seq.emitted = len(text)
    return piece


def generate(model, tokenizer, prompt, **kwargs):
    """The whole continuation of `prompt` (a str), or of each prompt of a list (list of str); arguments as `stream`."""
    if isinstance(prompt, str):
        return "".join(stream(model, tokenizer, prompt, **kwargs))
    texts = [""] * len(_prompts(prompt))
    for index, piece in stream(model, tokenizer, prompt, **kwargs):
        texts[index] += piece
    return texts
