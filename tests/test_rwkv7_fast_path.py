"""RWKV-7's fast path (models/rwkv7/fast_path.py: the blocks through torch.compile) against the eager blocks on the
CPU: outputs, final state and every gradient from a random non-zero state at an odd length; what they keep for the
backward (RunConfig.saved_activations); when 'auto' takes it; a compiler failure falls back to the eager blocks with
a warning. The GPU check (the Triton operator, bf16
autocast) is tests/test_gpu.py's."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model
from test_rwkv7_model import random_state, tokens_for
from torch._dynamo.utils import counters

from rwkv_lab.measure.memory import saved_for_backward
from rwkv_lab.models.rwkv7 import fast_path, get_config
from rwkv_lab.models.rwkv7 import model as rwkv7_model
from rwkv_lab.ops.rwkv7 import COMPILED


@pytest.fixture(scope="module", autouse=True)
def no_autograd_cache():
    """This module compiles without torch's AOT-autograd cache: in the whole suite, torch 2.11 segfaulted pickling
    the entry of the fused blocks' backward here (after other tests and processes had compiled; alone it passes; at
    d4d1b71 too, after tests/test_browser.py), which killed the test process and every result after it."""
    import torch._functorch.config as functorch_config

    with functorch_config.patch(enable_autograd_cache=False):
        yield


# three layers: the first block (ln0, no value residual) and two after it, which share one compilation
TINY = dataclasses.replace(get_config("tiny"), n_layer=3)
TINY_TWO_LAYERS = get_config("tiny")


def training_step(model, tokens, state0, fused: bool):
    """Logits, final state and every gradient (the incoming state's included) of a loss on both outputs."""
    model.configure(fused_blocks=fused)
    model.zero_grad(set_to_none=True)
    state = type(state0)(*(t.detach().clone().requires_grad_(True) for t in state0.tensors()))
    logits, final = model(tokens, state)
    gen = torch.Generator().manual_seed(1)
    outputs = (logits, final.shift, final.wkv)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in outputs]
    sum((w * t).sum() for w, t in zip(weights, outputs)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads |= {"state.shift": state.shift.grad, "state.wkv": state.wkv.grad}
    return logits.detach(), final.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend, dtype, tol",
    [
        ("chunked", torch.float64, TOL["float64 model"]),
        ("triton", torch.float32, TOL["float32"]),
        ("triton_chunked", torch.float32, TOL["float32"]),
    ],
    ids=["chunked-float64", "triton-float32", "triton_chunked-float32"],
)
def test_fused_blocks_match_the_eager_blocks(backend, dtype, tol):
    """fused_blocks=True against the eager blocks: logits, final state and every parameter's gradient and the
    incoming state's, from a random non-zero state, T = 13 (odd), three layers. With the chunked operator (run
    outside the graph) in float64, and with the Triton ones (interpreted) in float32: custom operators inside the
    graph, as on the GPU (the chunked kernels at their smallest head size, 16)."""
    config = TINY if backend != "triton_chunked" else dataclasses.replace(TINY, head_size=16)
    model = random_model(config, seed=5, dtype=dtype)
    model.configure(backend=backend)
    tokens, state0 = tokens_for(config, 2, 13, seed=5), random_state(model, 2, seed=5)
    eager_logits, eager_state, eager_grads = training_step(model, tokens, state0, fused=False)
    graphs = counters["stats"]["unique_graphs"]
    logits, state, grads = training_step(model, tokens, state0, fused=True)
    assert model.run.fused_blocks is True  # no fallback
    graphs = counters["stats"]["unique_graphs"] - graphs
    # compiled: with the Triton operator one graph for the first block and one for the others (a compilation per
    # layer would be 3); the chunked form, outside the graph, splits each
    assert graphs == 2 if backend in COMPILED else graphs > 0, f"{graphs} graphs compiled"
    name = f"{backend} {str(dtype).removeprefix('torch.')}"
    assert_rel_close(f"fused {name} logits", logits, eager_logits, tol)
    assert_rel_close(f"fused {name} final state", state, eager_state, tol)
    # every parameter but layer 0's value-residual LoRA (unused there) has a gradient, in both paths, and the state
    assert set(grads) == set(eager_grads) and len(grads) == len(list(model.parameters())) - 3 + 2
    for key in sorted(eager_grads):
        assert_rel_close(f"fused {name} grad {key}", grads[key], eager_grads[key], tol)


def test_what_the_fused_blocks_keep_changes_memory_and_nothing_else():
    """RunConfig.saved_activations on RWKV-7's fused blocks (the Triton operator interpreted, in the graph):
    'matmuls' (the default: the matmuls' and the operator's outputs kept, the elementwise work recomputed) keeps
    fewer bytes per token for the backward than the partitioner's choice (counted by saved-tensor hooks), and both
    give the eager blocks' loss and every parameter's gradient. Two layers: the first block and one after it."""
    model = random_model(TINY_TWO_LAYERS, seed=3, dtype=torch.float32)
    model.configure(backend="triton")
    B, T = 2, 5
    tokens = tokens_for(TINY_TWO_LAYERS, B, T + 1, seed=3)

    def step(fused: bool, saved: str = "matmuls"):
        model.configure(fused_blocks=fused, saved_activations=saved)
        model.zero_grad(set_to_none=True)
        losses = []

        def forward():
            logits, _ = model(tokens[:, :-1])
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()))
            return losses[0]

        graphs = counters["stats"]["unique_graphs"]
        kept = sum(r["bytes"] for r in saved_for_backward(forward, model))
        assert model.run.fused_blocks is fused  # no fallback to the eager blocks
        # compiled, not a checkpoint that dynamo gave up on and ran eagerly (which keeps fewer bytes too)
        assert (counters["stats"]["unique_graphs"] > graphs) is fused
        return kept / (B * T), losses[0].detach(), {n: p.grad for n, p in model.named_parameters()}

    eager_bytes, eager_loss, eager = step(False)
    partitioner_bytes, partitioner_loss, partitioner = step(True, "partitioner")
    matmuls_bytes, matmuls_loss, matmuls = step(True, "matmuls")
    print(
        f"bytes kept for the backward per token (two layers, C = {TINY_TWO_LAYERS.n_embd}): eager {eager_bytes:.0f}, "
        f"partitioner {partitioner_bytes:.0f}, matmuls {matmuls_bytes:.0f}"
    )
    assert matmuls_bytes < partitioner_bytes
    tol = TOL["float32"]
    assert_rel_close("matmuls loss vs partitioner", matmuls_loss, partitioner_loss, tol)
    assert_rel_close("matmuls loss vs eager", matmuls_loss, eager_loss, tol)
    assert set(matmuls) == set(partitioner) == set(eager)
    for name in sorted(eager):
        if eager[name] is None:  # layer 0's value-residual LoRA, unused there: no gradient on any path
            assert matmuls[name] is None and partitioner[name] is None, name
            continue
        assert_rel_close(f"matmuls vs partitioner grad {name}", matmuls[name], partitioner[name], tol)
        assert_rel_close(f"matmuls vs eager grad {name}", matmuls[name], eager[name], tol)


def test_auto_takes_the_fused_blocks_when_training_on_cuda_only():
    model = random_model(TINY, dtype=torch.float32)
    cpu = torch.zeros(1, 1, TINY.n_embd)
    assert model.run.fused_blocks == "auto" and not model.uses_fused_blocks(cpu, "chunked", None)
    model.configure(fused_blocks=True)
    assert model.uses_fused_blocks(cpu, "chunked", None)
    assert not model.uses_fused_blocks(cpu, "chunked", trace=[])  # a trace records in Python: eager
    model.configure(fused_blocks="auto")
    cuda = types.SimpleNamespace(is_cuda=True)  # stands in for a CUDA tensor: only its device is asked
    assert model.uses_fused_blocks(cuda, "triton", None)  # training on CUDA with the Triton operator
    assert model.uses_fused_blocks(cuda, "triton_chunked", None)  # or the chunked kernels, both custom operators
    with torch.no_grad():
        assert not model.uses_fused_blocks(cuda, "triton", None)  # inference keeps the measured eager blocks
    assert not model.uses_fused_blocks(cuda, "chunked", None)
    model.configure(fused_blocks=False)
    assert not model.uses_fused_blocks(cuda, "triton", None)


def test_a_compiler_failure_falls_back_to_the_eager_blocks(monkeypatch):
    """A backend that fails raises dynamo's BackendCompilerFailed: the model warns once, turns its fused blocks off
    and gives the eager blocks' numbers."""

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    compiled = torch.compile(fast_path.block_forward, backend=failing_backend)
    monkeypatch.setattr(rwkv7_model, "fused_block_forward", lambda *settings: compiled)
    model = random_model(TINY, seed=2, dtype=torch.float64)
    model.configure(backend="chunked")
    tokens, state = tokens_for(TINY, 2, 5, seed=2), random_state(model, 2, seed=2)
    with torch.no_grad():
        expected, expected_state = model.configure(fused_blocks=False)(tokens, state)
        model.configure(fused_blocks=True)
        with pytest.warns(UserWarning, match="fused blocks unavailable, running the eager blocks"):
            logits, final = model(tokens, state)
    assert model.run.fused_blocks is False
    assert_rel_close("logits after the fallback", logits, expected, 0.0)
    assert_rel_close("state after the fallback", final, expected_state, 0.0)
