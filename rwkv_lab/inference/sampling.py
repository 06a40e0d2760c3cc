"""Choosing the next token on the device: greedy, temperature and top-p, with a counter-based random number per
(seed, step, vocabulary entry).

The noise is a hash of (seed, step, token id), not a stateful generator, so that
- a sequence samples the same tokens whether it is generated alone or in a batch (its seed and step decide);
- the whole choice runs inside a captured CUDA graph (integer arithmetic only, no generator state to advance);
- the CPU and the GPU draw the same numbers.
A token is drawn from p by the exponential race: argmax_i p_i / E_i with E_i = -ln U_i exponential, which picks i
with probability p_i (Gumbel-max in another form).

`sample` is the reference, in torch ops; `sampler_for` gives the one a device runs: on CUDA the same choice in
Triton launches (sampling_kernel.py), which finds the nucleus without sorting the vocabulary.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
MAX_SEED = 2**63 - 1


def check_sampling(temperature: float, top_p: float) -> tuple[float, float]:
    """Validated (temperature, top_p): numbers, temperature >= 0 finite, 0 < top_p <= 1."""
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {value}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1; got temperature={temperature}, top_p={top_p}")
    return float(temperature), float(top_p)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63 - 1]; got {seed}")
    return seed


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (x of int64 holding values < 2**32); products stay below 2**63."""
    x = (x ^ (x >> 16)) * 0x45D9F3B & MASK32
    x = (x ^ (x >> 16)) * 0x45D9F3B & MASK32
    return x ^ (x >> 16)


_VOCAB_KEYS: dict = {}


def vocab_keys(vocab: int, device) -> torch.Tensor:
    """The hash of every token id (V,) int64, computed once per vocabulary and device (kept as data, so that a
    compiled sampler loads it rather than deriving it from an index in 32-bit arithmetic)."""
    key = (vocab, str(device))
    if key not in _VOCAB_KEYS:
        ids = torch.arange(vocab, device=device, dtype=torch.int64)
        _VOCAB_KEYS[key] = _mix32(_mix32(ids) ^ 0x5BD1E995)
    return _VOCAB_KEYS[key]


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """U(0, 1) per (sequence, token id), (B, V) float32, from int64 seeds (B,), steps (B,) and vocab_keys (V,)."""
    key = _mix32(_mix32(seeds & MASK32) ^ (seeds >> 32) & MASK32)
    key = _mix32(key ^ _mix32(steps & MASK32))  # (B,)
    return uniform_from_bits(_mix32(key[:, None] ^ keys[None, :]))  # (B, V)


def uniform_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """32 random bits -> U in (0, 1) float32, both ends excluded: the top 23 bits m as (m + 0.5) / 2^23, each exact
    in fp32 (from 2^-24 to 1 - 2^-24). With 24 bits, (2^24 - 0.5) / 2^24 rounded to 1.0, whose -ln U = -0.0 made
    a token of probability 0 (outside the nucleus) NaN in the race, which argmax takes, once in 2^24 draws: a
    dropped token drawn at ~0.3% of the steps at a 50k vocabulary (and +inf where the GPU kernel's negation gave
    +0.0)."""
    return ((bits >> 9).to(torch.float32) + 0.5) / 2**23


def sampler_for(device):
    """The sampler of `sample`'s signature that runs on `device`: sampling_kernel.sample_kernel on CUDA where Triton
    is installed, `sample` elsewhere."""
    if torch.device(device).type == "cuda":
        try:
            from .sampling_kernel import sample_kernel  # imports Triton
        except ImportError:
            return sample
        return sample_kernel
    return sample


def nucleus_keeps(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens of probs (B, V) the nucleus at top_p keeps, (B, V) bool: those whose strictly more probable
    tokens weigh less than top_p, the smallest set of the most probable tokens whose mass reaches top_p, with
    tokens of equal probability kept or dropped together (a sort's order among them decides nothing)."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # the mass sorted before each token
    # the mass strictly above each token: the mass before the first of its ties (the first position of its value)
    descending = sorted_probs.neg().contiguous()  # ascending, as searchsorted needs
    first = torch.searchsorted(descending, descending, side="left")
    keep_sorted = before.gather(-1, first) < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token ids (B,) from logits (B, V): argmax when temperature == 0, else nucleus sampling at `top_p`.
    `keys`: vocab_keys(V, device), computed here when absent."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        probs = probs.masked_fill(~nucleus_keeps(probs, top_p), 0.0)
    if keys is None:
        keys = vocab_keys(logits.shape[-1], logits.device)
    exponential = -torch.log(uniform_noise(seeds, steps, keys))
    return (probs / exponential).argmax(dim=-1)
