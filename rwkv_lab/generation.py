"""Text generation through the recurrent form: prefill the prompt in parallel, then one token at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .tokenizer import check_tokenizer


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """One token from logits (V,): greedy when temperature == 0, else nucleus sampling at `top_p`."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got temperature={temperature}, top_p={top_p}")
    logits = logits.float()
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p: a token stays if the mass before it is < top_p
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string, so not yet safe to emit."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)


@torch.no_grad()
def stream(model, tokenizer, prompt: str, max_new_tokens: int = 100, temperature: float = 1.0,
           top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (), state=None) -> Iterator[str]:
    """Yield the generated text piece by piece as tokens come; stops at `max_new_tokens`, end-of-text or a stop string.

    The pieces concatenate to the same text `generate` returns (which excludes the stop string).
    """
    check_tokenizer(tokenizer, model)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        prompt_ids = [tokenizer.eot_id]  # an empty prompt starts a new document
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens = torch.tensor([prompt_ids], device=model.device)
    logits, state = model(tokens, state)
    logits = logits[0, -1]
    ids: list[int] = []
    emitted = 0
    for _ in range(max_new_tokens):
        token = sample_token(logits, temperature, top_p, generator)
        if token == tokenizer.eot_id:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        hits = [text.find(s, emitted) for s in stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            yield text[emitted:min(hits)]
            return
        # a multi-byte character split across tokens decodes to U+FFFD until its last token arrives
        safe = len(text) - _held_back(text, stop)
        while safe > emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
        logits, state = model.step(torch.tensor([token], device=model.device), state)
        logits = logits[0]
    text = tokenizer.decode(ids)
    if len(text) > emitted:
        yield text[emitted:]


def generate(model, tokenizer, prompt: str, **kwargs) -> str:
    """The whole continuation of `prompt` as one string (arguments as `stream`)."""
    return "".join(stream(model, tokenizer, prompt, **kwargs))
