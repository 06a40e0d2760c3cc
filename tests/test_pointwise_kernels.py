"""The one-pass elementwise kernels of an inference pass (ops/pointwise.py, interpreted here): each against its
formula in float64, odd sizes and saturating inputs; and RWKV-4's block they serve (block_with_fused_mixes with
`kernels`) against the eager block (its reference, kernels off) in float64, a padded batch's lengths and fp16's
rescaling included (RWKV-7's blocks with them: tests/test_prefill_lengths.py, the mix kernels' test)."""

import copy

import pytest
import torch
from helpers import TOL, assert_like_eager, assert_rel_close, random_model, random_state

from rwkv_lab.models.rwkv4.config import get_config
from rwkv_lab.models.rwkv4.fast_path import block_with_fused_mixes
from rwkv_lab.ops.lengths import padding_mask
from rwkv_lab.ops.pointwise import gated, relu_square_

ROUNDING = {torch.float32: TOL["float32 step"], torch.float16: 1e-3, torch.bfloat16: 8e-3}  # one rounding each


@pytest.mark.parametrize("dtype", list(ROUNDING), ids=str)
@pytest.mark.parametrize("scale", [1, 4])
def test_relu_square_and_the_gate_match_their_formulas(dtype, scale):
    gen = torch.Generator().manual_seed(scale)
    n = 2048 * 3 + 17  # three full blocks and a masked one
    k = 30 * torch.randn(n, generator=gen, dtype=torch.float64)
    k[:5] = torch.tensor([0.0, -0.0, 1e-8, -500.0, 100.0], dtype=torch.float64)  # zeros, a tiny one, far from zero
    r, y = 20 * torch.randn(2, n, generator=gen, dtype=torch.float64)
    got = relu_square_(k.to(dtype), scale)
    assert_rel_close(f"relu_square_ {dtype} / {scale}", got.double(), k.relu().square() / scale, ROUNDING[dtype])
    got = gated(r.to(dtype), y.to(dtype), scale)
    ref = torch.sigmoid(r.to(dtype).double()) * y.to(dtype).double() / scale  # from the rounded inputs
    assert_rel_close(f"gated {dtype} / {scale}", got.double(), ref, ROUNDING[dtype])
    with pytest.raises(ValueError, match="in place on a contiguous tensor"):
        relu_square_(torch.ones(4, 4).t())
    with pytest.raises(ValueError, match=r"r_pre and y of one shape; got \(3,\) and \(4,\)"):
        gated(torch.ones(3), torch.ones(4))


@pytest.mark.parametrize("padded", [False, True], ids=["one length", "padded"])
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1), (torch.float16, 2)], ids=["float32", "float16 rescaled"])
def test_block_with_the_kernels_matches_the_eager_block_in_float64(dtype, scale, padded):
    """float32: within TOL of float64. fp16 rounds the activations either way: the kernels' error from float64 is
    at most the eager block's own in fp16 (times 1.5, plus 1e-3)."""
    model = random_model(get_config("tiny"), seed=5, dtype=torch.float64)
    block = model.blocks[1]
    B, T, C = 3, 9, model.config.n_embd
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    state = random_state(model, B, seed=9).packed[:, 1]  # (B, 5, C)
    lengths = torch.tensor([T, 2, 5]) if padded else None
    same = copy.deepcopy(block).to(dtype)
    with torch.no_grad():
        ref = block_with_fused_mixes(block, x, state, "chunked", scale, lengths)
        args = (same, x.to(dtype), state.float(), "triton", scale, lengths)
        got = block_with_fused_mixes(*args, kernels=True)
        eager = block_with_fused_mixes(*args)
    real = ~padding_mask(lengths, T) if padded else torch.ones(B, T, dtype=torch.bool)  # padding's output: unread
    tag = f"RWKV-4 block with the kernels, {dtype}, scale {scale}{', padded' if padded else ''}"
    for name, i in (("output", 0), ("state", 1)):
        pick = (lambda t: t[real]) if i == 0 else (lambda t: t)  # noqa: E731
        assert_like_eager(f"{tag}: {name}", pick(got[i]), pick(eager[i]), pick(ref[i]), dtype)
