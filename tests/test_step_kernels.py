"""The one-token step in Triton kernels, both generations (RunConfig.step_kernels; interpreted on the CPU in CI:
TRITON_INTERPRET=1 from conftest.py; the grouped projections' own tests are test_gemv.py's): the whole step against
the float64 model's step, logits and the new state, from random non-zero states, in fp32, bf16 and fp16 (RWKV-4's
rescaled residual); RWKV-7's layers with and without the value residual; widths no block size divides; and
stepping a prompt equals the parallel form; the decoder's compiled step traces through the kernels once for two
batch sizes. tests/test_gpu.py's decoder check runs them on a GPU at the released shapes.
"""

import pytest
import torch
from helpers import TOL, assert_compiled_step_traces_once, assert_rel_close, random_model
from helpers import random_state as random_rwkv4_state
from test_rwkv7_model import random_state as random_rwkv7_state

from rwkv_lab.models import architecture_of
from rwkv_lab.models.rwkv4.config import RWKVConfig
from rwkv_lab.models.rwkv7.config import RWKV7Config

# three layers, widths, channel mixes and vocabularies that no block size divides; RWKV-7's first layer has no value
# residual, and its heads are two of 16
SMALL = {
    "rwkv4": RWKVConfig(n_layer=3, n_embd=40, vocab_size=97, ffn_dim=72, ctx_len=64, name="step-kernels-test"),
    "rwkv7": RWKV7Config(
        n_layer=3, n_embd=32, vocab_size=97, head_size=16, decay_lora=24, iclr_lora=16, value_lora=8, gate_lora=40,
        ffn_dim=72, ctx_len=64, name="step-kernels-test",
    ),
}  # fmt: skip
GENERATIONS = sorted(SMALL)


def small_model(arch: str, seed: int, dtype=torch.float64):
    return random_model(SMALL[arch], seed=seed).to(dtype)


def random_state(model, batch: int, seed: int):
    """A random non-zero state of the model's generation, in its state dtype."""
    arch = architecture_of(model).name
    return (random_rwkv4_state if arch == "rwkv4" else random_rwkv7_state)(model, batch, seed=seed)


def in_fp32(state):
    return type(state)(*(t.float() for t in state.tensors()))


def stepped(model, tokens, state, kernels: bool):
    model.configure(step_kernels=kernels)
    logits = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            out, state = model.step(tokens[:, t], state)
            logits.append(out)
    return torch.stack(logits, dim=1), state


@pytest.mark.parametrize("arch", GENERATIONS)
def test_the_kernels_step_equals_the_float64_step(arch):
    """Two tokens of three sequences from a random non-zero state: fp32 within the fp32 tolerance of float64, and
    each half precision no further from float64 than the reference step's own (which rounds after every op; the
    kernels once), with a margin of 1.5x for the two roundings' luck. RWKV-4's fp16 halves the residual after every
    layer (rescale_every=1: scales 1, 2 and 4 in the kernels' prologues)."""
    B = 3
    state = random_state(small_model(arch, B), B, seed=B)  # float64
    tokens = torch.randint(0, SMALL[arch].vocab_size, (B, 2), generator=torch.Generator().manual_seed(B))
    exact_logits, exact_state = stepped(small_model(arch, B), tokens, state, kernels=False)
    logits, new_state = stepped(small_model(arch, B, torch.float32), tokens, in_fp32(state), kernels=True)
    assert_rel_close(f"{arch} kernels' step fp32 logits", logits, exact_logits, TOL["float32"])
    assert_rel_close(f"{arch} kernels' step fp32 state", new_state, exact_state, TOL["float32"])
    for dtype in (torch.bfloat16, torch.float16) if arch == "rwkv4" else (torch.bfloat16,):
        model = small_model(arch, B, dtype).configure(rescale_every=1)
        errors = {}
        for kernels in (False, True):
            logits, new_state = stepped(model, tokens, in_fp32(state), kernels=kernels)
            name = f"{arch} {dtype} step, kernels={kernels}"
            errors[kernels] = assert_rel_close(f"{name}, logits", logits, exact_logits, TOL["bfloat16"])
            assert_rel_close(f"{name}, state", new_state, exact_state, TOL["bfloat16"])
        ours, reference = errors[True], errors[False]
        assert ours <= 1.5 * reference, (
            f"{arch} {dtype}: the kernels' error {ours:.2e}, the reference's {reference:.2e}"
        )


@pytest.mark.parametrize("arch", GENERATIONS)
def test_stepping_with_the_kernels_equals_the_parallel_form(arch):
    """Prefill then step: a prompt of 4 tokens stepped through the kernels gives the parallel form's logits and
    state (fp32, one sequence from a random non-zero state)."""
    model = small_model(arch, 7, torch.float32)
    state = random_state(model, 1, seed=7)
    tokens = torch.randint(0, SMALL[arch].vocab_size, (1, 4), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        parallel_logits, parallel_state = model(tokens, state)
    logits, new_state = stepped(model, tokens, state, kernels=True)
    assert_rel_close(f"{arch} kernels' steps vs parallel form, logits", logits, parallel_logits, TOL["float32"])
    assert_rel_close(f"{arch} kernels' steps vs parallel form, state", new_state, parallel_state, TOL["float32"])


def test_the_kernels_step_only_where_it_should():
    """Not with autograd (the step's reference keeps the graph), not for float64 (the reference is exact there),
    and `step_kernels` is checked where it is set."""
    model = small_model("rwkv7", 0, torch.float32)
    x = torch.zeros(1, SMALL["rwkv7"].n_embd)
    with torch.no_grad():
        assert not model.uses_step_kernels(x)  # "auto": on CUDA only
        model.configure(step_kernels=True)
        assert model.uses_step_kernels(x)
        assert not small_model("rwkv4", 0).configure(step_kernels=True).uses_step_kernels(x.double())
    assert not model.uses_step_kernels(x)  # autograd on
    with pytest.raises(ValueError, match="step_kernels must be one of"):
        model.configure(step_kernels="yes")


@pytest.mark.parametrize("arch", GENERATIONS)
def test_the_step_overlaps_its_launches_where_its_weights_are_small(arch, monkeypatch):
    """RunConfig.overlapped_launches "auto": for weights of at most OVERLAP_MAX_WEIGHT_BYTES at batches of at most
    OVERLAP_MAX_BATCH; True and False as set; checked where it is set. On the CPU the kernels then launch as ever:
    the step still equals its float64 reference (the GPU's overlapped step: test_gpu.py's decoder check)."""
    from rwkv_lab.models import base

    model = small_model(arch, 0, torch.float32).configure(step_kernels=True)
    assert model.overlaps_launches(16) and not model.overlaps_launches(17)  # a few KB of weights
    monkeypatch.setattr(base, "OVERLAP_MAX_WEIGHT_BYTES", 1024)
    assert not model.overlaps_launches(1)
    assert model.configure(overlapped_launches=True).overlaps_launches(64)
    token, state = torch.tensor([3, 7]), random_state(model, 2, seed=1)
    logits, _ = stepped(model, token[:, None], state, kernels=True)
    reference = small_model(arch, 0)  # the same weights in float64, its PyTorch step
    expected, _ = stepped(reference, token[:, None], type(state)(*(t.double() for t in state.tensors())), False)
    assert_rel_close(f"{arch} overlapped step vs float64", logits, expected, TOL["float32 step"])
    with pytest.raises(ValueError, match="overlapped_launches must be one of"):
        model.configure(overlapped_launches="yes")


def test_rwkv7s_time_mix_kernel_is_a_well_formed_torch_operator():
    """Its schema and fake (meta) implementation, as torch.compile meets it inside the decoder's compiled step."""
    checks = ("test_schema", "test_faketensor")
    B, H, N = 2, 2, 16
    C = H * N
    S = torch.randn(B, 3, H, N, N)[:, 1]  # a layer's slice of the model's state
    params = [torch.randn(1, 1, C) for _ in range(5)] + [torch.randn(H, N), torch.ones(C), torch.zeros(C)]
    proj, lora = torch.randn(B, 3 * C + 8), torch.randn(B, 4 * C)
    args = (proj, lora, S, *params, proj[:, :C], 0.6, 64e-5)  # RWKV-7's time mix
    torch.library.opcheck(torch.ops.rwkv_lab.rwkv7_time_mix_step.default, args, test_utils=checks)


def test_rwkv4s_wkv_kernel_is_a_well_formed_torch_operator():
    """Its schema and fake implementation, as torch.compile meets it where the decoder compiles the whole step."""
    B, C = 2, 40
    state = torch.randn(B, 3, 5, C)[:, 1]  # a layer's slice of the model's packed state
    args = (torch.randn(B, 3 * C), state, torch.randn(C), torch.randn(C))
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.rwkv_lab.rwkv4_wkv_gate_step.default, args, test_utils=checks)


@pytest.mark.parametrize("arch", GENERATIONS)
def test_the_decoders_compiled_step_traces_whole_through_the_kernels(arch):
    """The decoder's compiled step (the step with the sampler, fullgraph, the batch symbolic) traces through the
    kernels, opaque operators to dynamo, once for batches 2 and 4, and gives the uncompiled step's tokens, logits and
    state. Dynamo's eager backend here; tests/test_gpu.py's decoder check runs inductor and the CUDA graph."""
    model = small_model(arch, 3, torch.float32).configure(step_kernels=True)
    states = {batch: random_state(model, batch, seed=batch) for batch in (2, 4)}
    assert_compiled_step_traces_once(model, states, f"{arch} compiled kernels' step")


def test_where_the_step_runs_its_kernels_the_decoder_compiles_nothing(monkeypatch):
    """The decoder's default compile level (inference/decoder.py): with the step kernels (the whole step, both
    generations) nothing, the sampler being kernels too on CUDA (compiling cost seconds of the first call); with the
    PyTorch step, the step with the sampler; nothing where inductor cannot run (here, the CPU, until told
    otherwise). The CPU samples with the torch sampler, CUDA with the kernels."""
    from rwkv_lab.inference import decoder as decoder_module
    from rwkv_lab.inference.sampling import sample, sampler_for
    from rwkv_lab.inference.sampling_kernel import sample_kernel

    model = small_model("rwkv7", 0, torch.float32).configure(step_kernels=True)
    assert decoder_module.default_compile_level(model) is False  # the CPU: no inductor GPU code generator
    monkeypatch.setattr(decoder_module, "_compile_available", lambda device: True)
    assert decoder_module.default_compile_level(model) is False
    assert decoder_module.default_compile_level(model.configure(step_kernels=False)) == "step+sample"
    rwkv4 = small_model("rwkv4", 0, torch.float32).configure(step_kernels=True)
    assert decoder_module.default_compile_level(rwkv4) is False
    assert torch.is_grad_enabled(), "the probe leaves autograd as it found it"
    assert sampler_for("cpu") is sample and sampler_for("cuda") is sample_kernel


def test_the_compiled_sampler_alone_traces_once_for_every_bucket():
    """The "sample" level: the sampler compiled alone (fullgraph), its logits' batch marked dynamic as they enter
    (they come from the uncompiled step), gives the eager sampler's tokens at batches 2, 4 and 8 from one
    compilation: a new bucket costs a capture, not a compilation. Dynamo's eager backend here (tracing is what
    fails); tests/test_gpu.py's decoder check runs inductor."""
    from rwkv_lab.inference.decoder import _sampler_marked_dynamic
    from rwkv_lab.inference.sampling import sample, vocab_keys

    graphs = []

    def eager_recording(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    sampler = _sampler_marked_dynamic(torch.compile(sample, fullgraph=True, backend=eager_recording))
    keys = vocab_keys(97, "cpu")
    for batch in (2, 4, 8):
        logits = torch.randn(batch, 97, generator=torch.Generator().manual_seed(batch))
        seeds, steps = torch.arange(1, 1 + batch), torch.arange(batch)
        expected = sample(logits, 0.8, 0.9, seeds, steps, keys)
        assert torch.equal(sampler(logits, 0.8, 0.9, seeds, steps, keys), expected)
    assert len(graphs) == 1, f"the sampler compiled {len(graphs)} times for batches 2, 4 and 8; expected once"
