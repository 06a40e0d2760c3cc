"""A real trained RWKV-7 from another implementation, loaded as released: tests/fixtures/fla_rwkv7_trained, an
RWKV7ForCausalLM that flash-linear-attention (fla) initialised and trained with its own kernels on a GPU, saved by
its save_pretrained (model/), with fla's float32 logits on two byte prompts (fla_logits.safetensors) and how they
were made (provenance.json). scripts/make_fla_fixture.py wrote it; its docstring says how.

Our logits (parallel form, both its backends, and the recurrent step) must match fla's to float32 rounding. fla
itself is not needed here: its logits are stored (tests/test_rwkv7_fla.py runs the script's CPU smoke test through
the same checks).
"""

from __future__ import annotations

import hashlib
import json

import torch
from helpers import REPO, TOL, assert_rel_close

import rwkv_lab

FIXTURE = REPO / "tests" / "fixtures" / "fla_rwkv7_trained"
MAKE = "scripts/make_fla_fixture.py --out <folder> on a GPU (see its docstring), then copy the folder here"


def test_fla_fixture_is_a_model_fla_trained_on_a_gpu():
    """The files are the ones the script wrote (their SHA-256 in provenance.json), trained by fla's chunk kernels
    on CUDA past what byte frequencies alone reach, and fla's logits came from its float32 recurrence."""
    prov, tokens, logits = read_fla_fixture()
    written = {p.relative_to(FIXTURE).as_posix() for p in FIXTURE.rglob("*") if p.is_file()} - {"provenance.json"}
    assert written == set(prov["files_sha256"]), f"files {sorted(written)} != those written {prov['files_sha256']}"
    for name, digest in prov["files_sha256"].items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == digest, f"{name} changed since written"
    training = prov["training"]
    print(
        f"fla trained {training['steps']} steps on {prov['device']}: loss {training['first_loss']:.3f} -> "
        f"{training['final_loss_mean_of_last_20']:.3f}; held-out {prov['held_out_loss']:.3f} nats/token "
        f"(byte frequencies alone {prov['held_out_unigram_loss']:.3f})"
    )
    assert training["train_wkv"] == "fla.ops.rwkv7.chunk_rwkv7 (Triton)" and not prov["triton_interpret"]
    assert not prov["device"].startswith("CPU"), f"made on {prov['device']}: a smoke run, not the fixture"
    assert training["steps"] >= 100 and prov["held_out_loss"] < prov["held_out_unigram_loss"]
    assert prov["logits_wkv_calls"] == {"fused_mul_recurrent_rwkv7": prov["config"]["num_hidden_layers"]}
    assert tokens.dtype == torch.int64 and logits.dtype == torch.float32 and tokens.shape[1] < 64
    assert logits.shape == (*tokens.shape, prov["config"]["vocab_size"])


def test_fla_trained_model_loads_as_released_and_matches_fla_logits():
    check_ours_against_fla(FIXTURE)


def read_fla_fixture(folder=FIXTURE) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(provenance, tokens (B, T), fla's logits (B, T, V)) of a folder scripts/make_fla_fixture.py wrote; a missing
    file fails, saying how the fixture is made."""
    from safetensors.torch import load_file

    for name in ("model/config.json", "model/model.safetensors", "fla_logits.safetensors", "provenance.json"):
        assert (folder / name).is_file(), f"{folder / name} is missing: the fixture is made by {MAKE}"
    stored = load_file(folder / "fla_logits.safetensors")
    return json.loads((folder / "provenance.json").read_text()), stored["tokens"], stored["logits"]


def check_ours_against_fla(folder):
    """model/ as fla saved it, through load_model: the config read from fla's, and our float32 logits from the
    parallel form (chunked and recurrent backends) and from the recurrent step, token by token, against fla's."""
    prov, tokens, ref = read_fla_fixture(folder)
    model = rwkv_lab.load_model(folder / "model")
    shape, c = prov["config"], model.config
    assert (c.arch, c.n_layer, c.n_embd, c.head_size, c.vocab_size, c.dim_ffn) == (
        "rwkv7",
        shape["num_hidden_layers"],
        shape["hidden_size"],
        shape["head_dim"],
        shape["vocab_size"],
        shape["intermediate_size"],
    )
    assert (c.decay_lora, c.iclr_lora, c.value_lora, c.gate_lora) == tuple(
        shape[f"{x}_low_rank_dim"] for x in ("decay", "a", "v", "gate")
    )
    assert rwkv_lab.tokenizer_for(model).name == "bytes"
    with torch.no_grad():
        for backend in ("chunked", "recurrent"):
            logits, _ = model(tokens, backend=backend)
            assert_rel_close(f"ours ({backend}) vs fla's trained model, logits", logits, ref, TOL["float32"])
        state, steps = None, []
        for t in range(tokens.shape[1]):
            step_logits, state = model.step(tokens[:, t], state)
            steps.append(step_logits)
    assert_rel_close("our recurrent step vs fla's trained model, logits", torch.stack(steps, 1), ref, TOL["float32"])
