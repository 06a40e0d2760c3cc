"""RWKV-7's time-mix kernels of an inference pass (ops/rwkv7/prefill_kernels.py, interpreted here) against the eager
time mix they replace (TimeMix7.from_mixed with kernels off, its reference) in float64: the output at every real
token, v_first and the state, in the first layer (no value residual) and a later one, with and without a padded
batch's lengths, at three heads (a head tile with a masked row), with tokens whose projections saturate."""

import copy
import dataclasses

import pytest
import torch
from helpers import assert_like_eager, random_model

from rwkv_lab.models.rwkv7 import get_config
from rwkv_lab.ops.lengths import padding_mask


@pytest.mark.parametrize("padded", [False, True], ids=["one length", "padded"])
@pytest.mark.parametrize("layer", [0, 1], ids=["first layer", "value residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_time_mix_kernels_match_the_eager_time_mix_in_float64(dtype, layer, padded):
    """float32: within TOL of float64. The half types round the model's activations either way: there the kernels'
    error from float64 is at most the eager block's own in that dtype (times 1.5, plus 1e-3), and within 5e-2."""
    config = dataclasses.replace(get_config("tiny"), n_embd=24)  # three heads of 8: BLOCK_H 4, one row masked
    model = random_model(config, seed=3, dtype=torch.float64)
    att = model.blocks[layer].att
    B, T, C, H, N = 3, 7, config.n_embd, config.n_head, config.head_size
    gen = torch.Generator().manual_seed(11 + layer)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    mixed = 2 * draw(6, B, T, C)
    # a token whose LoRAs saturate the sigmoids and whose removal key is long (less in fp16, whose range it leaves)
    mixed[:, 0, 2] *= 8 if dtype == torch.float16 else 30
    v_first = None if layer == 0 else draw(B, T, C)
    state = 0.5 * draw(B, H, N, N)
    lengths = torch.tensor([T, 1, 4]) if padded else None
    same = copy.deepcopy(att).to(dtype)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    with torch.no_grad():
        ref = att.from_mixed(mixed, v_first, state, "chunked", lengths=lengths)
        got = same.from_mixed(cast(mixed), cast(v_first), state.float(), "chunked", lengths=lengths, kernels=True)
        eager = same.from_mixed(cast(mixed), cast(v_first), state.float(), "chunked", lengths=lengths)
    real = ~padding_mask(lengths, T) if padded else torch.ones(B, T, dtype=torch.bool)  # padding's output: unread
    tag = f"time-mix kernels, {dtype}, layer {layer}{', padded' if padded else ''}"
    for name, i in (("output", 0), ("v_first", 1), ("state", 2)):
        pick = (lambda t: t[real]) if i == 0 else (lambda t: t)  # noqa: E731
        assert_like_eager(f"{tag}: {name}", pick(got[i]), pick(eager[i]), pick(ref[i]), dtype)


def test_time_mix_kernels_refuse_a_head_size_they_cannot_tile():
    from rwkv_lab.ops.rwkv7.prefill_kernels import TimeMixParams, time_mix_output

    one = torch.ones(24)
    params = TimeMixParams(*[one] * 5, torch.ones(2, 12), one, one, 0.6, 1e-5)  # heads of 12: no power of two
    x = torch.ones(1, 2, 24)
    with pytest.raises(ValueError, match="power-of-two head size dividing C; got N = 12, C = 24"):
        time_mix_output(x, x, x, x, x, params)
