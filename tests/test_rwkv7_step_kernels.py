"""RWKV-7's one-token step in Triton kernels (RunConfig.step_kernels; interpreted on the CPU in CI: TRITON_INTERPRET=1
from conftest.py; the grouped projections' own tests are test_gemv.py's): the whole step against the float64 model's
step: logits and the new state, random non-zero states, fp32 and bf16, layers with and without
the value residual, partial blocks, batches across the kernels' batch blocks; and stepping a prompt equals the
parallel form. tests/test_gpu.py checks the same on a GPU at the released shapes.
"""

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model
from test_rwkv7_model import random_state

from rwkv_lab.models.rwkv7.config import RWKV7Config
from rwkv_lab.models.rwkv7.model import RWKV7State

# three layers (the first without the value residual), two heads of 16; LoRA widths, a channel mix and a vocabulary
# that no block size divides
SMALL = RWKV7Config(
    n_layer=3, n_embd=32, vocab_size=97, head_size=16, decay_lora=24, iclr_lora=16, value_lora=8, gate_lora=40,
    ffn_dim=72, ctx_len=64, name="step-kernels-test",
)  # fmt: skip


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


def test_the_time_mix_kernel_is_a_well_formed_torch_operator():
    """Its schema and fake (meta) implementation, as torch.compile meets it inside the decoder's compiled step."""
    checks = ("test_schema", "test_faketensor")
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
