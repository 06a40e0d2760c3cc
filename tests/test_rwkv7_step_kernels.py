"""RWKV-7's one-token step in Triton kernels (RunConfig.step_kernels; interpreted on the CPU in CI: TRITON_INTERPRET=1
from conftest.py): the grouped projections (ops/gemv.py) against their torch reference, and the whole step against
the float64 model's step: logits and the new state, random non-zero states, fp32 and bf16, layers with and without
the value residual, partial blocks, batches across the kernels' batch blocks; and stepping a prompt equals the
parallel form. tests/test_gpu.py checks the same on a GPU at the released shapes.
"""

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model
from test_rwkv7_model import random_state

from rwkv_lab.models.rwkv7.config import RWKV7Config
from rwkv_lab.models.rwkv7.model import RWKV7State
from rwkv_lab.ops.gemv import Projection, grouped_gemv, grouped_gemv_reference

# three layers (the first without the value residual), two heads of 16; LoRA widths, a channel mix and a vocabulary
# that no block size divides
SMALL = RWKV7Config(
    n_layer=3, n_embd=32, vocab_size=97, head_size=16, decay_lora=24, iclr_lora=16, value_lora=8, gate_lora=40,
    ffn_dim=72, ctx_len=64, name="step-kernels-test",
)  # fmt: skip


def draw(*shape, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 3, 20])
def test_grouped_projections_match_their_reference(B, dtype):
    """Every prologue (mix from a strided `last`, tanh, sigmoid, columns read from an offset) and epilogue (relu^2, the
    residual) against torch: B = 20 spans two of the kernel's batch blocks; K = 40 and N = 17, 24 partial blocks;
    weights read as F.linear's (N, K) transposed and as a LoRA's (K, N)."""
    tol = TOL["float32 step"] if dtype == torch.float32 else TOL["bfloat16"]
    x, last = draw(B, 40, dtype=dtype, seed=1), draw(B, 2, 40, dtype=dtype, seed=2)[:, 1]  # last: a strided view
    W, lora = draw(40, 40, dtype=dtype, seed=3, scale=0.2), draw(40, 24, dtype=dtype, seed=4, scale=0.2)
    mixes = torch.rand(3, 1, 1, 40, generator=torch.Generator().manual_seed(5)).to(dtype)
    first = [
        Projection(W.t(), mix=mixes[0]),
        Projection(lora, mix=mixes[2], act="tanh"),
        Projection(W.t()[:, :17], mix=mixes[1], act="sigmoid"),
        Projection(lora),  # no mix: x itself
    ]
    out = grouped_gemv(x, first, last=last)
    assert out.shape == (B, 40 + 24 + 17 + 24) and out.dtype == dtype
    assert_rel_close(f"mixed projections B={B} {dtype}", out, grouped_gemv_reference(x, first, last=last), tol)
    wide = draw(B, 64, dtype=dtype, seed=6)
    second = [Projection(lora[:24].t(), x_col=0, act="tanh"), Projection(W[:20], x_col=30)]
    res = draw(B, 64, dtype=dtype, seed=7)
    for epilogue, residual in (("residual", res), ("relu2", None), (None, None)):
        out = grouped_gemv(wide, second, epilogue=epilogue, residual=residual)
        ref = grouped_gemv_reference(wide, second, epilogue=epilogue, residual=residual)
        assert_rel_close(f"offset columns, epilogue {epilogue}, B={B} {dtype}", out, ref, tol)


def test_grouped_projections_refuse_bad_input_clearly():
    x, W = torch.randn(2, 8), torch.randn(8, 8)
    cases = [
        (lambda: grouped_gemv(x, [Projection(W, mix=torch.rand(8))]), "needs `last`"),
        (lambda: grouped_gemv(x, [Projection(W)], epilogue="residual"), "go together"),
        (lambda: grouped_gemv(x, [Projection(W)], epilogue="gelu"), "epilogue must be one of"),
        (lambda: grouped_gemv(x, [Projection(W, x_col=4)]), "reads x[:, 4:12] of x's 8 columns"),
        (lambda: grouped_gemv(x, [Projection(W, act="relu")]), "act must be one of"),
        (lambda: grouped_gemv(x, [Projection(W)] * 9), "1 to 8 projections"),
        (lambda: grouped_gemv(x, [Projection(W), Projection(W.double())]), "share one dtype"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("`", ".")):
            call()


def fp32_state(state: RWKV7State) -> RWKV7State:
    return RWKV7State(shift=state.shift.float(), wkv=state.wkv.float())


def stepped(model, tokens, state, kernels: bool):
    model.configure(step_kernels=kernels)
    logits = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out, state = model.step(tokens[:, t], state)
            logits.append(out)
    return torch.stack(logits, dim=1), state


def test_the_kernels_step_equals_the_float64_step():
    """Two tokens of three sequences from a random non-zero state: fp32 within the fp32 step's tolerance of float64,
    and bf16 no further from float64 than the reference step's own bf16 (which rounds after every op; the kernels
    once), with a margin of 1.5x for the two roundings' luck."""
    B = 3
    reference = random_model(SMALL, seed=B)  # float64
    state = random_state(reference, B, seed=B)
    tokens = torch.randint(0, SMALL.vocab_size, (B, 2), generator=torch.Generator().manual_seed(B))
    exact_logits, exact_state = stepped(reference, tokens, state, kernels=False)
    fp32 = random_model(SMALL, seed=B).float()
    logits, new_state = stepped(fp32, tokens, fp32_state(state), kernels=True)
    assert_rel_close(f"kernels' step fp32 B={B} logits", logits, exact_logits, TOL["float32"])
    assert_rel_close(f"kernels' step fp32 B={B} state", new_state, exact_state, TOL["float32"])
    bf16 = random_model(SMALL, seed=B).to(torch.bfloat16)
    errors = {}
    for kernels in (False, True):
        logits, new_state = stepped(bf16, tokens, fp32_state(state), kernels=kernels)
        errors[kernels] = assert_rel_close(f"bf16 step, kernels={kernels}", logits, exact_logits, TOL["bfloat16"])
        assert_rel_close(f"bf16 step, kernels={kernels}, state", new_state, exact_state, TOL["bfloat16"])
    assert errors[True] <= 1.5 * errors[False], (
        f"bf16 kernels' error {errors[True]:.2e}, reference's {errors[False]:.2e}"
    )


def test_stepping_with_the_kernels_equals_the_parallel_form():
    """Prefill then step: a prompt of 4 tokens stepped through the kernels gives the parallel form's logits and
    state (fp32, one sequence from a random non-zero state)."""
    model = random_model(SMALL, seed=7).float()
    state = random_state(model, 1, seed=7)
    tokens = torch.randint(0, SMALL.vocab_size, (1, 4), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        parallel_logits, parallel_state = model(tokens, state)
    logits, new_state = stepped(model, tokens, state, kernels=True)
    assert_rel_close("kernels' steps vs parallel form, logits", logits, parallel_logits, TOL["float32"])
    assert_rel_close("kernels' steps vs parallel form, state", new_state, parallel_state, TOL["float32"])


def test_the_kernels_step_only_where_it_should():
    """Not with autograd (the step's reference keeps the graph), not for float64 (the reference is exact there),
    and `step_kernels` is checked where it is set."""
    model = random_model(SMALL, seed=0).float()
    x = torch.zeros(1, SMALL.n_embd)
    with torch.no_grad():
        assert not model.uses_step_kernels(x)  # "auto": on CUDA only
        model.configure(step_kernels=True)
        assert model.uses_step_kernels(x)
        assert not random_model(SMALL, seed=0).configure(step_kernels=True).uses_step_kernels(x.double())
    assert not model.uses_step_kernels(x)  # autograd on
    with pytest.raises(ValueError, match="step_kernels must be one of"):
        model.configure(step_kernels="yes")


def test_the_kernels_are_well_formed_torch_operators():
    """Their schemas and fake (meta) implementations, as torch.compile meets them inside the decoder's compiled
    step (which compiles around them: tests/test_decoding.py, and the GPU's decoder check)."""
    checks = ("test_schema", "test_faketensor")
    x, last = torch.randn(3, 16), torch.randn(3, 16)
    W, mix = torch.randn(16, 24), torch.rand(16)
    args = (x, [W, W[:, :8]], [mix, None], [0, 0], [0, 1], last, 0, None)
    torch.library.opcheck(torch.ops.rwkv_lab.grouped_gemv.default, args, test_utils=checks)
    B, H, N = 2, 2, 16
    C = H * N
    S = torch.randn(B, 3, H, N, N)[:, 1]  # a layer's slice of the model's state
    params = [torch.randn(1, 1, C) for _ in range(5)] + [torch.randn(H, N), torch.ones(C), torch.zeros(C)]
    proj, lora = torch.randn(B, 3 * C + 8), torch.randn(B, 4 * C)
    args = (proj, lora, S, *params, proj[:, :C], 0.6, 64e-5)
    torch.library.opcheck(torch.ops.rwkv_lab.rwkv7_time_mix_step.default, args, test_utils=checks)


def test_the_decoders_compiled_step_traces_whole_through_the_kernels():
    """The decoder's compiled step (the step with the sampler, fullgraph, the batch symbolic) traces through the
    kernels, opaque operators to dynamo, once for batches 2 and 4, and gives the uncompiled step's tokens, logits and
    state. Dynamo's eager backend here; tests/test_gpu.py's decoder check runs inductor and the CUDA graph."""
    from rwkv_lab.inference.decoder import _mark_batch_dynamic, _model_step, _step_and_sample
    from rwkv_lab.inference.sampling import vocab_keys

    model = random_model(SMALL, seed=3).float().configure(step_kernels=True)
    graphs = []

    def eager_recording(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(_step_and_sample, fullgraph=True, backend=eager_recording)
    keys = vocab_keys(SMALL.vocab_size, "cpu")
    for batch in (2, 4):
        state = random_state(model, batch, seed=batch)
        tokens, seeds = torch.arange(3, 3 + batch), torch.arange(1, 1 + batch)
        args = (model, _model_step, tokens, state, 0.8, 0.9, seeds, seeds, keys)
        with torch.no_grad():
            ref_tokens, ref_logits, ref_state = _step_and_sample(*args)
            _mark_batch_dynamic(tokens, *state.tensors(), seeds)
            out_tokens, logits, new_state = compiled(*args)
        assert torch.equal(out_tokens, ref_tokens)
        assert_rel_close(f"compiled kernels' step at batch {batch}, logits", logits, ref_logits, TOL["float32 step"])
        assert_rel_close(f"compiled kernels' step at batch {batch}, state", new_state, ref_state, TOL["float32 step"])
    assert len(graphs) == 1, f"the step was compiled {len(graphs)} times for batches 2 and 4; expected once"
