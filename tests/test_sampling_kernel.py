"""inference/sampling_kernel.py, the nucleus sampler in Triton launches (interpreted on the CPU in CI), against
sampling.sample, the torch sampler: the same tokens from the same seeds and steps."""

import pytest
import torch

from rwkv_lab.inference import sampling_kernel
from rwkv_lab.inference.sampling import nucleus_keeps, sample
from rwkv_lab.inference.sampling_kernel import sample_kernel


def rows(kind: str, B: int, V: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "peaked":  # a trained model's: a few tokens hold most of the mass
        return 8 * torch.randn(B, V, generator=gen)
    if kind == "flat":  # every token about as likely: the nucleus is most of the vocabulary
        return 0.05 * torch.randn(B, V, generator=gen)
    # ties: logits on a grid of four values, so that whole groups of equal probability straddle top_p
    return torch.randint(0, 4, (B, V), generator=gen).float()


@pytest.mark.parametrize("kind", ["peaked", "flat", "ties"])
def test_the_kernel_draws_the_torch_samplers_tokens(kind):
    """Over several slices of the vocabulary (V = 1,100 over three of 512, the last partial), temperatures and
    top_p (1 included: no nucleus), with each row's seed and step: every token equal to sampling.sample's."""
    B, V = 6, 1100
    logits = rows(kind, B, V, seed=1)
    seeds = torch.tensor([0, 1, 2**40 + 3, 7, 2**63 - 1, 12345], dtype=torch.int64)
    mismatches, draws = 0, 0
    for temperature in (0.7, 1.5):
        for top_p in (0.3, 0.9, 1.0):
            for step in range(2):
                steps = torch.full((B,), step, dtype=torch.int64)
                got = sample_kernel(logits, temperature, top_p, seeds, steps)
                want = sample(logits, temperature, top_p, seeds, steps)
                assert got.dtype == torch.int64 and got.shape == (B,)
                mismatches += int((got != want).sum())
                draws += B
    print(f"{kind}: {mismatches} of {draws} draws differ from sampling.sample")
    assert mismatches == 0


def test_ties_at_the_nucleus_boundary_are_kept_together():
    """Four tokens of equal probability where the mass crosses top_p: all four kept (the reference's rule, whatever
    a sort's order among them), so each is drawn; a fifth less probable token never is."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0, -3.0]])  # p ~ 0.24 four times, 0.012
    probs = torch.softmax(logits, dim=-1)
    assert nucleus_keeps(probs, 0.5).tolist() == [[True, True, True, True, False]]
    drawn = set()
    for step in range(64):
        steps = torch.tensor([step])
        token = sample_kernel(logits, 1.0, 0.5, torch.tensor([9]), steps)
        assert token == sample(logits, 1.0, 0.5, torch.tensor([9]), steps)
        drawn.add(int(token))
    assert drawn == {0, 1, 2, 3}


def test_greedy_is_the_argmax_and_bad_input_is_refused():
    logits = rows("peaked", 3, 300, seed=2)
    zeros = torch.zeros(3, dtype=torch.int64)
    assert torch.equal(sample_kernel(logits, 0.0, 0.9, zeros, zeros), logits.argmax(-1))
    with pytest.raises(ValueError, match=r"need logits \(B, V\) and seeds, steps \(B,\)"):
        sample_kernel(logits[0], 1.0, 0.9, zeros, zeros)
    with pytest.raises(TypeError, match="seeds and steps must be int64"):
        sample_kernel(logits, 1.0, 0.9, zeros.int(), zeros)


def test_a_nucleus_wider_than_a_chunk_of_candidates():
    """A flat row of 3,000 tokens at top_p 0.9: ~2,700 candidates, three of _choose's chunks a pass."""
    logits = rows("flat", 2, 3000, seed=3)
    seeds, steps = torch.tensor([5, 6]), torch.tensor([0, 1])
    assert sampling_kernel.CHUNK < 2700
    assert torch.equal(sample_kernel(logits, 1.0, 0.9, seeds, steps), sample(logits, 1.0, 0.9, seeds, steps))


def test_the_uniform_noise_never_reaches_zero_or_one():
    """sampling.uniform_from_bits at the extreme bit patterns: strictly inside (0, 1) in fp32, so -ln U is finite and
    positive (at 1.0 it was -0.0: a token of probability 0 became NaN in the race and argmax drew it)."""
    from rwkv_lab.inference.sampling import uniform_from_bits

    u = uniform_from_bits(torch.tensor([0, 1, 511, 512, 2**32 - 512, 2**32 - 1], dtype=torch.int64))
    assert u.dtype == torch.float32 and bool((u > 0).all()) and bool((u < 1).all()), u
    assert bool((-torch.log(u) > 0).all())
    assert u[0] == u[2] and u[-1] == u[-2] and u[3] > u[2]  # the top 23 bits decide
