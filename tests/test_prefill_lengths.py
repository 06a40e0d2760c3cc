"""Prompts of different lengths in one parallel pass (`model.prefill(tokens, state, lengths=)`, the RWKV-4 WKV's
`lengths`), batched generation through it, and the decoder's batch buckets: each against running every prompt
alone, in float64 (and float32), from random non-zero states."""

from pathlib import Path

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model
from helpers import random_state as random_state4

import rwkv_lab
from rwkv_lab.inference.decoder import Decoder, bucket_for
from rwkv_lab.inference.generation import PREFILL_CHUNK, PREFILL_TOKENS
from rwkv_lab.loading.tokenizer import tokenizer_for
from rwkv_lab.models import architecture
from rwkv_lab.ops import lengths as lengths_module
from rwkv_lab.ops.lengths import PASS_TOKENS, prefill_pieces, tokens_run
from rwkv_lab.ops.rwkv4 import wkv, wkv_chunked, wkv_recurrent

GENERATIONS = ["rwkv4", "rwkv7"]
T = 13  # odd; the lengths include 1 and T
LENGTHS = [5, 1, 13, 8]


def random_state(model, batch: int, seed: int):
    if model.config.arch == "rwkv4":
        return random_state4(model, batch, seed)
    gen = torch.Generator().manual_seed(seed)
    draw = lambda t, s: (s * torch.randn(t.shape, generator=gen, dtype=torch.float64)).to(t.dtype)  # noqa: E731
    empty = model.init_state(batch)
    return type(empty)(draw(empty.shift, 1.0), draw(empty.wkv, 0.5))


def wkv_inputs(B, T, C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    state = torch.stack([draw(B, C), draw(B, C).abs() + 0.5, 3 * draw(B, C)], dim=1)
    return torch.rand(C, generator=gen, dtype=torch.float64) + 0.05, draw(C), 2 * draw(B, T, C), draw(B, T, C), state


# ---- the RWKV-4 operator -----------------------------------------------------------------------------------------


def test_wkv_with_lengths_is_each_sequence_alone():
    """The reference with lengths: each row's outputs up to its length and its final state are those of the row
    alone; the chunked form (chunks of 1, 4 and sqrt(T), one more than T) equals the reference, gradients too."""
    w, u, k, v, state = wkv_inputs(4, T, 6)
    lengths = torch.tensor(LENGTHS)
    y, s = wkv_recurrent(w, u, k, v, state, lengths=lengths)
    for b, n in enumerate(LENGTHS):
        y1, s1 = wkv_recurrent(w, u, k[b : b + 1, :n], v[b : b + 1, :n], state[b : b + 1])
        assert_rel_close(
            f"reference with lengths, row {b} (length {n}) y", y[b : b + 1, :n], y1, TOL["float64 algebra"]
        )
        assert_rel_close(f"reference with lengths, row {b} state", s[b : b + 1], s1, TOL["float64 algebra"])
    leaves = lambda: [x.clone().requires_grad_(True) for x in (w, u, k, v, state)]  # noqa: E731
    gen = torch.Generator().manual_seed(3)
    gy, gs = torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(s.shape, generator=gen).double()
    ref = leaves()
    y, s = wkv_recurrent(*ref, lengths=lengths)
    ((y * gy).sum() + (s * gs).sum()).backward()
    for c in (1, 4, None, T + 1):
        mine = leaves()
        yc, sc = wkv_chunked(*mine, chunk_size=c, lengths=lengths)
        ((yc * gy).sum() + (sc * gs).sum()).backward()
        assert_rel_close(f"chunked (c={c}) with lengths y", yc, y, TOL["float64 algebra"])
        assert_rel_close(f"chunked (c={c}) with lengths state", sc, s, TOL["float64 algebra"])
        for name, a, b in zip("w u k v state".split(), mine, ref):
            assert_rel_close(f"chunked (c={c}) with lengths grad {name}", a.grad, b.grad, 1e-11)


@pytest.mark.parametrize("chunk, scan_here", [(16, 0), (64, 16)], ids=["scan-kernel", "scan-in-program"])
def test_triton_wkv_with_lengths_matches_the_reference(monkeypatch, chunk, scan_here):
    """The Triton forward with lengths (interpreted on the CPU: TRITON_INTERPRET=1, as tests/test_wkv_triton.py):
    chunks wholly past a length, partial chunks, the scan kernel and the in-program scan."""
    pytest.importorskip("triton")
    from rwkv_lab.ops.rwkv4 import triton_kernels

    for name, value in (("CHUNK", chunk), ("BLOCK_C", 16), ("SCAN_BLOCK", 4), ("SCAN_HERE_MAX_CHUNKS", scan_here)):
        monkeypatch.setattr(triton_kernels, name, value)
    Tt, lengths = 71, torch.tensor([1, 71, 30])
    w, u, k, v, state = (x.float() for x in wkv_inputs(3, Tt, 20, seed=1))
    y_ref, s_ref = wkv_recurrent(*(x.double() for x in (w, u, k, v, state)), lengths=lengths)
    with torch.no_grad():
        y, s = wkv(w, u, k, v, state, backend="triton", lengths=lengths)
    assert_rel_close("triton with lengths y", y, y_ref, TOL["float32"])
    assert_rel_close("triton with lengths state", s, s_ref, TOL["float32"])
    with pytest.raises(NotImplementedError, match="inference only"):
        wkv(w, u, k.requires_grad_(True), v, state, backend="triton", lengths=lengths)


def test_wkv_lengths_errors_are_one_line():
    w, u, k, v, state = wkv_inputs(2, 5, 3)
    bad = [
        (torch.tensor([0, 5]), ValueError, r"in \[1, T\] = \[1, 5\].*; got 0"),
        (torch.tensor([6, 5]), ValueError, "got 6"),
        (torch.tensor([5]), ValueError, r"shape \(B,\) = \(2,\)"),
        (torch.tensor([5.0, 5.0]), TypeError, "int64 or int32"),
        ([5, 5], TypeError, "integer tensor"),
    ]
    for lengths, error, match in bad:
        with pytest.raises(error, match=match) as info:
            wkv(w, u, k, v, state, backend="chunked", lengths=lengths)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="takes no lengths"):
        wkv(w, u, k, v, state, backend="attention", lengths=torch.tensor([5, 5]))


# ---- model.prefill(tokens, state, lengths=) ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", GENERATIONS)
def test_prefill_with_lengths_is_each_prompt_alone(name, dtype):
    """One padded batch (lengths 5, 1, 13, 8 of T = 13; the padding random ids) against each prompt prefilled
    alone from its own random state: the logits and every tensor of the state; with `chunk` (pieces some
    sequences end before) too."""
    arch = architecture(name)
    model = random_model(arch.get_config("tiny"), seed=2, dtype=dtype).eval()
    B = len(LENGTHS)
    tokens = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    state = random_state(model, B, seed=5)
    lengths = torch.tensor(LENGTHS)
    tol = TOL["float64 algebra"] if dtype == torch.float64 else TOL["float32"]
    with torch.no_grad():
        alone = [model.prefill(tokens[b : b + 1, :n], state[b]) for b, n in enumerate(LENGTHS)]
        ref_logits = torch.cat([logits for logits, _ in alone])
        ref_state = type(state).cat([s for _, s in alone])
        for chunk in (None, 4):
            logits, new = model.prefill(tokens, state.clone(), lengths=lengths, chunk=chunk)
            assert_rel_close(f"{name} {dtype} chunk={chunk} batched prefill logits", logits, ref_logits, tol)
            for field, mine, ref in zip(("shift/packed", "wkv"), new.tensors(), ref_state.tensors()):
                assert_rel_close(f"{name} {dtype} chunk={chunk} batched prefill state.{field}", mine, ref, tol)


@pytest.mark.parametrize("name", GENERATIONS)
def test_prefill_lengths_errors_are_one_line(name):
    model = architecture(name).build(architecture(name).get_config("tiny"), seed=1).eval()
    tokens = torch.zeros(2, 4, dtype=torch.long)
    for lengths, error in (
        (torch.tensor([0, 4]), ValueError),
        (torch.tensor([5, 4]), ValueError),
        (torch.tensor([[4, 4]]), ValueError),
        (torch.tensor([4.0, 4.0]), TypeError),
    ):
        with pytest.raises(error) as info:
            model.prefill(tokens, lengths=lengths)
        assert "lengths" in str(info.value) and "\n" not in str(info.value)


# ---- generate and the decoder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATIONS)
def test_generate_batched_equals_one_by_one(name):
    """Prompts of different lengths (one empty: end-of-text alone) in one call give, greedily, the tokens each
    gives alone; so does sampling with a seed per prompt."""
    arch = architecture(name)
    model = arch.build(arch.get_config("tiny"), seed=1, zero_projections=False).eval()
    tokenizer = tokenizer_for(model)
    prompts = ["def f(x):\n    return", "a", "", "import torch\nimport numpy as np\n"]
    for sampling in ({"temperature": 0.0}, {"temperature": 0.9, "top_p": 0.9}):
        seeds = [11, 12, 13, 14]
        batched = rwkv_lab.generate(model, tokenizer, prompts, max_new_tokens=10, seed=seeds, **sampling)
        alone = [
            rwkv_lab.generate(model, tokenizer, p, max_new_tokens=10, seed=s, **sampling)
            for p, s in zip(prompts, seeds)
        ]
        print(f"{name} {sampling}: batched {batched!r}")
        assert batched == alone


def test_bucket_for_rounds_up_to_powers_of_two():
    assert [bucket_for(b) for b in (1, 2, 3, 4, 5, 8, 9, 31, 32, 33, 100)] == [1, 2, 4, 4, 8, 8, 16, 32, 32, 64, 128]
    for bad in (0, -1, 2.0, True):
        with pytest.raises((ValueError, TypeError)):
            bucket_for(bad)


@pytest.mark.parametrize("name", GENERATIONS)
def test_decoder_pads_a_batch_to_its_bucket_without_changing_real_rows(name):
    """A decoder for a bucket of 8 runs batches of 3, 5 and 8 (rows padded, then dropped): each real row's logits,
    state and sampled token are model.step's on that batch alone."""
    arch = architecture(name)
    model = random_model(arch.get_config("tiny"), seed=3, dtype=torch.float64).eval()
    decoder = Decoder(model, batch=8, buckets=True)
    assert decoder.batch == 8
    for B in (3, 5, 8):
        state = random_state(model, B, seed=B)
        tokens = torch.randint(0, model.config.vocab_size, (B,), generator=torch.Generator().manual_seed(B))
        seeds, steps = torch.arange(B) + 7, torch.full((B,), 2)
        with torch.no_grad():
            ref_logits, ref_state = model.step(tokens, state)
            chosen, new, logits = decoder.step(tokens, state, 0.9, 0.8, seeds, steps, return_logits=True)
        assert logits.shape[0] == B and new.batch_size == B
        assert_rel_close(f"{name} decoder B={B} in a bucket of 8 logits", logits, ref_logits, TOL["float64 algebra"])
        assert_rel_close(f"{name} decoder B={B} in a bucket of 8 state", new, ref_state, TOL["float64 algebra"])
        from rwkv_lab.inference.sampling import sample

        assert torch.equal(chosen, sample(ref_logits, 0.9, 0.8, seeds, steps))
    with pytest.raises(ValueError, match="at most 8"):
        decoder.step(torch.zeros(9, dtype=torch.long), model.init_state(9))


# ---- where a batch of prompts is cut for its prefill -------------------------------------------------------------


@pytest.mark.parametrize("chunk, batch_tokens", [(None, None), (100, None), (4096, 2048), (7, 64)])
def test_prefill_pieces_cover_the_longest_prompt_within_their_bounds(chunk, batch_tokens):
    lengths = torch.randint(1, 700, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    pieces = prefill_pieces(lengths, chunk, batch_tokens)
    assert pieces[0][0] == 0 and pieces[-1][1] == max(lengths)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:])), "contiguous"
    for start, end in pieces:
        rows = sum(n > start for n in lengths)
        assert 0 < end - start <= min(chunk or end, max(64, batch_tokens // rows) if batch_tokens else end)


def test_prefill_pieces_without_a_pass_cost_cut_at_every_length():
    lengths = [5, 1, 13, 8, 13, 3]
    pieces = prefill_pieces(lengths, pass_tokens=0)
    assert pieces == [(0, 1), (1, 3), (3, 5), (5, 8), (8, 13)]
    assert tokens_run(lengths, pieces) == sum(lengths)  # no padding at all
    assert prefill_pieces(lengths, pass_tokens=10**6) == [(0, 13)]  # passes dear: one


@pytest.mark.parametrize("B", [32, 128])
def test_prefill_pieces_run_fewer_tokens_than_fixed_pieces(B):
    """bench_generation's mixed batches (lengths drawn from 16 to 1,024 with the batch as seed): the planned pieces
    against the fixed ones generate used before (max(64, PREFILL_TOKENS // B) tokens each), in tokens run (padding
    included) and passes."""
    lengths = torch.randint(16, 1025, (B,), generator=torch.Generator().manual_seed(B)).tolist()
    planned = prefill_pieces(lengths, PREFILL_CHUNK, PREFILL_TOKENS)
    size = max(64, min(PREFILL_CHUNK, PREFILL_TOKENS // B))
    fixed = [(s, min(s + size, max(lengths))) for s in range(0, max(lengths), size)]
    ratio = {name: tokens_run(lengths, p) / sum(lengths) for name, p in (("planned", planned), ("fixed", fixed))}
    print(
        f"B={B}: planned pieces run {ratio['planned']:.2f}x the prompts' tokens in {len(planned)} passes, "
        f"fixed pieces of {size} {ratio['fixed']:.2f}x in {len(fixed)}"
    )
    assert ratio["planned"] < ratio["fixed"]
    assert ratio["planned"] * sum(lengths) + PASS_TOKENS * len(planned) < ratio["fixed"] * sum(
        lengths
    ) + PASS_TOKENS * len(fixed)


@pytest.mark.parametrize("name", GENERATIONS)
def test_prefill_cut_at_every_length_is_each_prompt_alone(name, monkeypatch):
    """With passes free (PASS_TOKENS 0) the prefill cuts at every prompt's length, so the pieces' rows shrink one
    length at a time; and with a bound over the batch: still each prompt alone, in float64."""
    monkeypatch.setattr(lengths_module, "PASS_TOKENS", 0)
    arch = architecture(name)
    model = random_model(arch.get_config("tiny"), seed=4, dtype=torch.float64).eval()
    lengths = [5, 1, 13, 8, 13, 3]
    tokens = torch.randint(0, model.config.vocab_size, (len(lengths), T), generator=torch.Generator().manual_seed(2))
    state = random_state(model, len(lengths), seed=6)
    with torch.no_grad():
        alone = [model.prefill(tokens[b : b + 1, :n], state[b]) for b, n in enumerate(lengths)]
        for batch_tokens in (None, 4):
            logits, new = model.prefill(tokens, state.clone(), lengths=torch.tensor(lengths), batch_tokens=batch_tokens)
            tag = f"{name} cut at every length, batch_tokens={batch_tokens}"
            assert_rel_close(f"{tag} logits", logits, torch.cat([x for x, _ in alone]), TOL["float64 algebra"])
            assert_rel_close(f"{tag} state", new, type(state).cat([s for _, s in alone]), TOL["float64 algebra"])


@pytest.mark.parametrize("name", GENERATIONS)
def test_prefill_runs_the_mix_kernels_and_the_eager_blocks_numbers(name):
    """Without autograd, with the Triton operator, the uncompiled blocks take each half's LayerNorm, token shift and
    mixes from norm_mix's kernels (interpreted here): the padded batch's logits and state are the eager blocks'
    (RunConfig.norm_mix_kernels off), in float32, from a random state, the token shifts at each prompt's own end."""
    arch = architecture(name)
    model = random_model(arch.get_config("tiny"), seed=7, dtype=torch.float32).eval()
    tokens = torch.randint(0, model.config.vocab_size, (len(LENGTHS), T), generator=torch.Generator().manual_seed(3))
    state, lengths = random_state(model, len(LENGTHS), seed=8), torch.tensor(LENGTHS)
    x = model.emb(tokens)
    with torch.no_grad():
        assert model.uses_inference_mix_kernels(x, "triton", None)
        assert not model.uses_inference_mix_kernels(x, "chunked", None)
        assert not model.uses_inference_mix_kernels(x, "triton", trace=[])
        got = model.prefill(tokens, state.clone(), lengths=lengths, backend="triton")
        model.configure(norm_mix_kernels=False)
        assert not model.uses_inference_mix_kernels(x, "triton", None)
        ref = model.prefill(tokens, state.clone(), lengths=lengths, backend="triton")
    model.configure(norm_mix_kernels=True)
    assert not model.uses_inference_mix_kernels(x, "triton", None)  # grad mode on
    assert_rel_close(f"{name} prefill with the mix kernels: logits", got[0], ref[0], TOL["float32"])
    assert_rel_close(f"{name} prefill with the mix kernels: state", got[1], ref[1], TOL["float32"])


def test_the_prefill_pieces_benchmark_writes_its_table(tmp_path, monkeypatch):
    """benchmarks/bench_prefill_pieces.py's smoke run on the CPU (both generations' tiny presets): a row per way of
    cutting, the fixed pieces among them, and PASS_TOKENS as it found it."""
    import sys

    import pandas as pd

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from test_gpu import script

    module = script("bench_prefill_pieces")
    monkeypatch.setenv("RWKV_LAB_RESULTS", str(tmp_path))
    argv = ["bench_prefill_pieces.py", "--device", "cpu", "--sizes", "tiny", "--batches", "4", "--lengths", "2,13"]
    monkeypatch.setattr(sys, "argv", argv + ["--repeat", "1", "--pass-tokens", "0"])
    module.main()
    frame = pd.read_csv(tmp_path / "inference" / "prefill_pieces.csv")
    assert len(frame) == 2 * 4 and set(frame.arch) == {"rwkv4", "rwkv7"}
    fixed = frame[frame.pieces == "fixed pieces (before)"]
    free = frame[frame.pieces == "cut at the lengths, pass 0 tokens"]
    assert (fixed.passes == 1).all() and (free.tokens_run_over_prompts == 1.0).all() and (frame.tokens_per_s > 0).all()
    assert lengths_module.PASS_TOKENS == PASS_TOKENS
