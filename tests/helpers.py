"""Shared test helpers: the named relative-error check and random models."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.models import RecurrentState, architecture_of

REPO = Path(__file__).resolve().parent.parent
# real data every developer and CI run has beside the project (never committed); RWKV_LAB_SHARED overrides
SHARED = Path(os.environ.get("RWKV_LAB_SHARED", REPO.parent / "shared"))
NEOX_TOKENIZER = SHARED / "data" / "tokenizer" / "20B_tokenizer.json"


# The tolerances of the relative-error checks, by what is compared: float error of the arithmetic with room for
# its accumulation; a bug is orders of magnitude larger.
TOL = {
    "float64 algebra": 1e-12,  # two float64 formulas of the same quantity
    "float64 model": 1e-10,  # the whole network, two formulations, float64
    "float64 long sequence": 1e-9,  # float64 over 1000 steps
    "float32 step": 1e-6,  # one fp32 step, or a fast path against the eager one
    "float32": 1e-5,  # fp32 through the whole network or a long sequence
    "float32 vs another implementation": 1e-4,  # fp32 against code written elsewhere (its own op order)
    "bfloat16": 1e-2,
    "bfloat16 long sequence": 5e-2,
}


def assert_rel_close(name: str, x, ref, tol: float) -> float:
    """||x - ref|| / ||ref|| <= tol, printed either way; NaN or inf never passes. Tensors, or two states of the
    same generation (their tensors compared as one)."""
    if isinstance(x, RecurrentState) or isinstance(ref, RecurrentState):
        assert type(x) is type(ref), f"{name}: a {type(x).__name__} against a {type(ref).__name__}"
        x, ref = (torch.cat([t.flatten().double() for t in s.tensors()]) for s in (x, ref))
    assert x.shape == ref.shape, f"{name}: shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    err = rel_error(x, ref)
    print(f"{name}: rel err {err:.3e} (tol {tol:.0e})")
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.0e}"
    return err


def assert_like_eager(name: str, x, eager, ref, dtype) -> float:
    """A fast path's x against the float64 ref: in float32 within TOL["float32"]; in a half type, whose rounding of
    the activations the eager path shares, within 5e-2 and no worse than the eager path's own error (times 1.5,
    plus 1e-3). Both errors printed."""
    x, eager = x.double(), eager.double()
    if dtype == torch.float32:
        return assert_rel_close(name, x, ref, TOL["float32"])
    err = assert_rel_close(name, x, ref, 5e-2)
    err_eager = rel_error(eager, ref)
    print(f"{name}: the eager path's own error in {dtype}: {err_eager:.3e}")
    assert err <= 1.5 * err_eager + 1e-3, f"{name}: {err:.3e} against the eager path's {err_eager:.3e}"
    return err


def random_model(config, seed: int = 0, dtype=torch.float64, noise: float = 0.3):
    """Official init (of the config's generation) with drawn projections, then every parameter perturbed, so no
    structure hides a bug."""
    model = architecture_of(config).build(config, seed=seed, zero_projections=False).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) * p.std().clamp_min(0.1))
    return model


def random_state(model, batch: int, seed: int = 0):
    """A valid non-empty RWKV-4 state: any shifts, any numerators, positive denominators, any exponents."""
    gen = torch.Generator().manual_seed(seed)
    full = model.init_state(batch)
    state = full.packed
    shape = state[:, :, 0].shape
    draw = lambda: torch.randn(shape, generator=gen, dtype=torch.float64).to(state.dtype)  # noqa: E731
    state[:, :, 0] = draw()
    state[:, :, 1] = draw()
    state[:, :, 2] = draw().abs() + 0.5
    state[:, :, 3] = 3 * draw()
    state[:, :, 4] = draw()
    return full


def torchrun(nproc: int) -> list[str]:
    """The torchrun launcher for `nproc` local processes on a free port (never the default 29500, which another
    job on the machine may hold)."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    ]


def assert_compiled_step_traces_once(model, states: dict, name: str) -> None:
    """The decoder's compiled step (the step with the sampler, fullgraph) traced with dynamo's eager backend, the
    batch marked dynamic as the decoder marks every bucket past 1, at each batch of `states` ({batch: a state}):
    the uncompiled step's tokens, logits and state each time, and one compilation for them all (tracing is what
    fails; tests/test_gpu.py runs the whole decoder with inductor on a GPU)."""
    from rwkv_lab.inference.decoder import _mark_batch_dynamic, _model_step, _step_and_sample
    from rwkv_lab.inference.sampling import sample, vocab_keys

    graphs = []

    def eager_recording(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(_step_and_sample, fullgraph=True, backend=eager_recording)
    keys = vocab_keys(model.config.vocab_size, "cpu")
    for batch, state in states.items():
        tokens, seeds = torch.arange(3, 3 + batch), torch.arange(1, 1 + batch)
        args = (model, _model_step, sample, tokens, state, 0.8, 0.9, seeds, seeds, keys)
        with torch.no_grad():
            ref_tokens, ref_logits, ref_state = _step_and_sample(*args)
            _mark_batch_dynamic(tokens, *state.tensors(), seeds)
            out_tokens, logits, new_state = compiled(*args)
        assert torch.equal(out_tokens, ref_tokens)
        assert_rel_close(f"{name} at batch {batch}, logits", logits, ref_logits, TOL["float32 step"])
        assert_rel_close(f"{name} at batch {batch}, state", new_state, ref_state, TOL["float32 step"])
    assert len(graphs) == 1, f"{name}: compiled {len(graphs)} times for batches {list(states)}; expected once"
