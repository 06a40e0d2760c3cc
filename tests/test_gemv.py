"""ops/gemv.py's grouped projections, the decode steps' matrix products (interpreted on the CPU in CI:
TRITON_INTERPRET=1 from conftest.py), against their torch reference, and their errors on bad input."""

import dataclasses

import pytest
import torch
from helpers import TOL, assert_rel_close, rel_error

from rwkv_lab.ops import gemv
from rwkv_lab.ops.gemv import Norm, Projection, Tiling, grouped_gemv, grouped_gemv_reference


def draw(*shape, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 3, 70])
def test_grouped_projections_match_their_reference(B, dtype):
    """Every prologue (mix from a strided `last` in both forms, tanh, sigmoid, the fp16 rescaling's division, columns
    read from an offset), the LayerNorm before them (its normalised x returned) and epilogue (relu^2, sigmoid, the
    gate, the residual) against torch: B = 70 spans two of the
    kernel's batch blocks; K = 40 and N = 17, 24 partial blocks; weights read as F.linear's (N, K) transposed and as
    a LoRA's (K, N)."""
    tol = TOL["float32 step"] if dtype == torch.float32 else TOL["bfloat16"]
    x, last = draw(B, 40, dtype=dtype, seed=1), draw(B, 2, 40, dtype=dtype, seed=2)[:, 1]  # last: a strided view
    W, lora = draw(40, 40, dtype=dtype, seed=3, scale=0.2), draw(40, 24, dtype=dtype, seed=4, scale=0.2)
    mixes = torch.rand(3, 1, 1, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
    first = [
        Projection(W.t(), mix=mixes[0]),
        Projection(lora, mix=mixes[2], act="tanh"),
        Projection(W.t()[:, :17], mix=mixes[1], act="sigmoid", mix_weighs="x"),  # RWKV-4's form
        Projection(lora),  # no mix: x itself
    ]
    out = grouped_gemv(x, first, last=last)
    assert out.shape == (B, 40 + 24 + 17 + 24) and out.dtype == dtype
    assert_rel_close(f"mixed projections B={B} {dtype}", out, grouped_gemv_reference(x, first, last=last), tol)
    # the LayerNorm (in the prologue up to 16 rows; from 17 on a launch of its own, `_layer_norm_rows`): x off-centre
    # and scaled, as a residual stream is
    norm = Norm(draw(40, dtype=dtype, seed=9), draw(40, dtype=dtype, seed=10), 1e-5)
    shifted = (3 + 5 * x.double()).to(dtype)
    out, h = grouped_gemv(shifted, first[:2] + first[3:], last=last, norm=norm)
    ref, ref_h = grouped_gemv_reference(shifted, first[:2] + first[3:], last=last, norm=norm)
    assert h.dtype == torch.float32 and h.shape == (B, 40)
    assert_rel_close(f"normalised x, B={B} {dtype}", h, ref_h, TOL["float32 step"])
    assert_rel_close(f"projections of the normalised x, B={B} {dtype}", out, ref, tol)
    wide = draw(B, 64, dtype=dtype, seed=6)
    res = draw(B, 64, dtype=dtype, seed=7)
    r = draw(B, 2, 64, dtype=dtype, seed=8)[:, 0]  # the gate: a strided view, as RWKV-4's r beside its k
    for out_act, residual, gate in (("relu2", res, r), ("sigmoid", None, r), (None, None, None)):
        second = [
            Projection(lora[:24].t(), x_col=0, act="tanh", out_act=out_act, scale=4.0),
            Projection(W[:20], x_col=30, out_act="relu2"),
        ]
        out = grouped_gemv(wide, second, residual=residual, gate=gate)
        ref = grouped_gemv_reference(wide, second, residual=residual, gate=gate)
        name = f"offset columns, out_act {out_act}, residual {residual is not None}, gate {gate is not None}, B={B}"
        assert_rel_close(name, out, ref, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_rows_and_wide_outputs_take_several_blocks(dtype):
    """The sizes the models' steps reach: K = 600 (three K blocks of 256, the last partial) beside K = 300 in one
    launch (projections of different K, as RWKV-7's LoRAs), mixed; and 8,200 output columns (the wide-output
    column block of 32, as a 2048-wide model's channel mix); and other tilings than the default's, as
    benchmarks/bench_gemv.py runs them."""
    tol = TOL["float32 step"] if dtype == torch.float32 else TOL["bfloat16"]
    x, last = draw(2, 600, dtype=dtype, seed=11), draw(2, 600, dtype=dtype, seed=12)
    mix = torch.rand(600, generator=torch.Generator().manual_seed(13)).to(dtype)
    long = [
        Projection(draw(600, 33, dtype=dtype, seed=14, scale=0.05), mix=mix),
        Projection(draw(300, 20, dtype=dtype, seed=15), x_col=0),
    ]
    ref = grouped_gemv_reference(x, long, last=last)
    assert_rel_close(f"K = 600 and 300, {dtype}", grouped_gemv(x, long, last=last), ref, tol)
    for tiling in (Tiling(16, 64, 64, num_warps=8, num_stages=2), Tiling(32, 16, 512, num_warps=2)):  # as benched
        out = grouped_gemv(x, long, last=last, tiling=tiling)
        assert_rel_close(f"K = 600 and 300, {dtype}, {tiling}", out, ref, tol)
    # the LayerNorm in the prologue at 600 (over three K blocks), in a launch of its own at 1,100 (wider than
    # gemv.norm_in_prologue takes); and rows far off-centre (mean / std = 1,000: where E[x^2] - E[x]^2 would lose
    # every digit; the prologue's one pass merges chunks of 512 and one of 88): against float64 on the same inputs,
    # no further off than torch's own fp32 LayerNorm (whose fp32 mean of numbers near 1,000 already costs digits)
    for width in (600, 1100):
        assert gemv.norm_in_prologue(16, width) == (width == 600)
        x, last = draw(2, width, dtype=dtype, seed=11), draw(2, width, dtype=dtype, seed=12)
        mix = torch.rand(width, generator=torch.Generator().manual_seed(13)).to(dtype)
        one = [Projection(draw(width, 33, dtype=dtype, seed=14, scale=0.05), mix=mix)]
        norm = Norm(draw(width, dtype=dtype, seed=17), draw(width, dtype=dtype, seed=18), 1e-5)
        out, h = grouped_gemv(x, one, last=last, norm=norm)
        ref, ref_h = grouped_gemv_reference(x, one, last=last, norm=norm)
        assert_rel_close(f"K = {width} normalised, {dtype}", h, ref_h, TOL["float32 step"])
        assert_rel_close(f"K = {width} normalised and projected, {dtype}", out, ref, tol)
        far = (1000 + draw(2, width, dtype=torch.float64, seed=19)).to(dtype)
        _, h = grouped_gemv(far, one, last=last, norm=norm)
        w64, b64 = norm.weight.double(), norm.bias.double()
        exact = torch.nn.functional.layer_norm(far.double(), (width,), w64, b64, 1e-5)
        torch_fp32 = torch.nn.functional.layer_norm(far.float(), (width,), w64.float(), b64.float(), 1e-5)
        torch_err = rel_error(torch_fp32, exact)
        assert_rel_close(f"K = {width}, mean / std 1,000, normalised, {dtype}", h, exact, torch_err)
    wide = [Projection(draw(16, 8200, dtype=dtype, seed=16), out_act="relu2")]
    out = grouped_gemv(x[:1, :16], wide)
    assert_rel_close(f"N = 8200, {dtype}", out, grouped_gemv_reference(x[:1, :16], wide), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_matches_the_reference_with_every_epilogue(dtype):
    """Split K: several programs per output tile, the last to arrive adding their partials and finishing the tile.
    Every epilogue (relu^2 and sigmoid, which need the whole sum before them; the gate and the residual) and the
    LayerNorm prologue, K = 200 (four blocks of 64) over 2 and 3 splits (of two blocks each: the last partly, then
    wholly past K), B = 18
    over two batch blocks of 16; bit-identical on a second call (the partials added in split order), and the tile
    counters back at zero after each launch (a CUDA graph replays the launch on them)."""
    tol = TOL["float32 step"] if dtype == torch.float32 else TOL["bfloat16"]
    x, last = draw(18, 200, dtype=dtype, seed=21), draw(18, 200, dtype=dtype, seed=22)
    mix = torch.rand(200, generator=torch.Generator().manual_seed(23)).to(dtype)
    W = draw(200, 40, dtype=dtype, seed=24, scale=0.05)
    projections = [Projection(W, mix=mix, out_act="relu2"), Projection(W[:, :17], out_act="sigmoid"), Projection(W)]
    kw = {"last": last, "gate": draw(18, 97, dtype=dtype, seed=25), "residual": draw(18, 97, dtype=dtype, seed=26)}
    norm = Norm(draw(200, dtype=dtype, seed=27), draw(200, dtype=dtype, seed=28), 1e-5)
    ref, ref_h = grouped_gemv_reference(x, projections, norm=norm, **kw)
    for split_k in (2, 3):
        tiling = Tiling(16, 16, 64, num_warps=4, num_stages=2, split_k=split_k)
        out, h = grouped_gemv(x, projections, norm=norm, tiling=tiling, **kw)
        assert_rel_close(f"split K {split_k}, every epilogue, {dtype}", out, ref, tol)
        assert_rel_close(f"split K {split_k}, the normalised x, {dtype}", h, ref_h, TOL["float32 step"])
        again, _ = grouped_gemv(x, projections, norm=norm, tiling=tiling, **kw)
        assert torch.equal(out, again), f"split K {split_k}: a second call differs"
        assert not gemv._COUNTERS[x.device].any(), f"split K {split_k}: tile counters left non-zero"
    # where the default tiling splits K itself: K = 4,096, four times the columns and more (as 1.47B's channel mix)
    long_x, W_long = draw(1, 4096, dtype=dtype, seed=29), draw(4096, 48, dtype=dtype, seed=30, scale=0.02)
    assert gemv._default_tiling(1, 48, 4096).split_k == 4 and gemv._default_tiling(1, 768, 3072).split_k == 4
    out = grouped_gemv(long_x, [Projection(W_long)], residual=kw["residual"][:1, :48])
    ref = grouped_gemv_reference(long_x, [Projection(W_long)], residual=kw["residual"][:1, :48])
    assert_rel_close(f"the default tiling's split K, K = 4096, {dtype}", out, ref, tol)
    # and beyond 64 rows (two batch blocks of 64, each streaming the weights): K split two ways at 64-row blocks
    assert gemv._default_tiling(70, 48, 256) == Tiling(64, 64, 64, num_stages=4, split_k=2)
    assert gemv._default_tiling(32, 48, 256).split_k == 1 and gemv._default_tiling(32, 3072, 512).block_n == 64
    big_x, big_res = draw(70, 256, dtype=dtype, seed=31), draw(70, 48, dtype=dtype, seed=32)
    out = grouped_gemv(big_x, [Projection(W_long[:256])], residual=big_res)
    ref = grouped_gemv_reference(big_x, [Projection(W_long[:256])], residual=big_res)
    assert_rel_close(f"the default tiling's split K at B = 70, {dtype}", out, ref, tol)


def test_grouped_projections_refuse_bad_input_clearly():
    x, W = torch.randn(2, 8), torch.randn(8, 8)
    cases = [
        (lambda: grouped_gemv(x, [Projection(W, mix=torch.rand(8))]), "needs `last`"),
        (lambda: grouped_gemv(x, [Projection(W)], residual=torch.zeros(2, 4)), "residual must be (B, 8)"),
        (lambda: grouped_gemv(x, [Projection(W)], gate=torch.zeros(3, 8)), "gate must be (B, 8)"),
        (lambda: grouped_gemv(x, [Projection(W)], tiling=Tiling(16, 24, 64)), "powers of two >= 16"),
        (lambda: grouped_gemv(x, [Projection(W)], tiling=Tiling(16, 16, 64, split_k=0)), "split_k >= 1"),
        (lambda: grouped_gemv(x, [Projection(W[:4])], norm=Norm(W[0], W[1], 1e-5)), "reads all of x's 8"),
        (lambda: grouped_gemv(x, [Projection(W, out_act="gelu")]), "out_act one of"),
        (lambda: grouped_gemv(x, [Projection(W, mix_weighs="both")]), "mix_weighs one of"),
        (lambda: grouped_gemv(x, [Projection(W, scale=3.0)]), "power of two"),
        (lambda: grouped_gemv(x, [Projection(W, x_col=4)]), "reads x[:, 4:12] of x's 8 columns"),
        (lambda: grouped_gemv(x, [Projection(W, act="relu")]), "act must be one of"),
        (lambda: grouped_gemv(x, [Projection(W)] * 9), "1 to 8 projections"),
        (lambda: grouped_gemv(x, [Projection(W), Projection(W.double())]), "share one dtype"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert message in str(error.value), (message, str(error.value))


def test_the_grouped_projection_is_a_well_formed_torch_operator():
    """Its schema and fake (meta) implementation, as torch.compile meets it inside the decoder's compiled step."""
    x, last = torch.randn(3, 16), torch.randn(3, 16)
    W, mix = torch.randn(16, 24), torch.rand(16)
    residual, gate = torch.randn(3, 32), torch.randn(3, 32)
    args = (x, [W, W[:, :8]], [mix, None], [2, 1], [0, 0], [0, 1], [1.0, 2.0], [1, 0], last, residual, gate)
    norm = (torch.randn(16), torch.randn(16), 1e-5)
    checks = ("test_schema", "test_faketensor")
    for ln in ((None, None, 0.0), norm):  # with and without the LayerNorm (its normalised x the second output)
        torch.library.opcheck(torch.ops.rwkv_lab.grouped_gemv.default, (*args, *ln, None, False), test_utils=checks)


@pytest.mark.parametrize("arch", ["rwkv7", "rwkv4"])
def test_the_benchmarks_launches_are_the_models_and_match_the_reference(arch):
    """benchmarks/bench_gemv.py's launches of one layer (built at a preset's shapes, here a byte-level one), each at
    a benched tiling and through the L2-defeating copies, against the torch reference (fp16 on the CPU: upcast in
    the interpreter); and its tiling spelling parses."""
    from test_gpu import script

    from rwkv_lab.models import architecture

    module = script("bench_gemv")
    assert module.parse_tiling("16x32x128w4s3") == Tiling(16, 32, 128, num_warps=4, num_stages=3)
    assert module.parse_tiling("16x16x256w4s3k4") == Tiling(16, 16, 256, num_warps=4, num_stages=3, split_k=4)
    config = architecture(arch).get_config("byte-2x64")
    launches = getattr(module, f"{arch}_launches")(config, 2, "cpu")
    assert len(launches) == (5 if arch == "rwkv7" else 4)
    for name, launch in launches.items():
        for x, projections, kw in module.copies_of(launch, 2):
            out = grouped_gemv(x, projections, tiling=module.parse_tiling("16x16x64w4s2"), **kw)
            ref = grouped_gemv_reference(x, projections, **kw)
            if "norm" in kw:  # the launches with the block's LayerNorm in their prologue, as the models' are
                (out, _), (ref, _) = out, ref
                bare = grouped_gemv(x, projections, **module.without_norm(kw))
                ln = torch.nn.functional.layer_norm(
                    x.float(), x.shape[1:], kw["norm"].weight.float(), kw["norm"].bias.float(), kw["norm"].eps
                ).to(x.dtype)
                assert_rel_close(
                    f"bench_gemv {arch} {name} without its LayerNorm",
                    bare,
                    grouped_gemv_reference(x, projections, **module.without_norm(kw)),
                    TOL["bfloat16"],
                )
                bare_products = [dataclasses.replace(p, mix=None, act=None, out_act=None) for p in projections]
                torch_ref = grouped_gemv_reference(ln, bare_products)
                torch_out = torch.cat(module.torch_launches(x, projections, kw["norm"]), dim=1)
                assert_rel_close(f"bench_gemv {arch} {name}, the PyTorch launches", torch_out, torch_ref,
                                 TOL["bfloat16"])  # fmt: skip
            assert_rel_close(f"bench_gemv {arch} {name}", out, ref, TOL["bfloat16"])
        original, copy = launch[1][0].weight, module.copies_of(launch, 2)[1][1][0].weight
        assert copy.stride() == original.stride() and copy.data_ptr() != original.data_ptr()
