"""RWKV-7 against flash-linear-attention (fla, the `test` extra), an implementation written elsewhere: its CPU
reference of the DPLR delta rule, its Triton recurrence (in Triton's interpreter on the CPU) and its
RWKV7ForCausalLM, saved as fla saves it and loaded here as released.

The mapping of our wkv7(r, log_w, k, v, a, b, S) onto fla (fla/ops/generalized_delta_rule/dplr/naive.py,
fla/ops/rwkv7/fused_recurrent.py, fla/layers/rwkv7.py): q = r, k, v, alpha = a, beta = b, gk = log_w (fla's
"w" of chunk_rwkv7 / fused_recurrent_rwkv7 is the same log decay), scale = 1; fla's state is [key, value], ours
[value, key], so fla's state is our S transposed. fla's naive functions take (B, H, T, N) and scale q by N^-0.5
inside (no scale argument): they get r N^0.5. They compute in float32 whatever they are given, so they get
float32 inputs and our float64 forms get the same values widened: only the arithmetic differs.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TOL, assert_rel_close
from test_rwkv7_fla_trained import check_ours_against_fla
from test_rwkv7_ops import make_inputs, run

pytest.importorskip("fla", reason="fla (flash-linear-attention, in the `test` extra) is not installed")

from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise, dplr_recurrence
from fla.ops.rwkv7 import fused_recurrent_rwkv7

import rwkv_lab
from rwkv_lab.ops.rwkv7 import wkv7_attention, wkv7_chunked, wkv7_recurrent

OURS = {"recurrent": wkv7_recurrent, "chunked": wkv7_chunked, "attention": wkv7_attention}
OUTPUTS = ["y", "state", "grad r", "grad log_w", "grad k", "grad v", "grad a", "grad b", "grad state"]


def heads_first(x):
    return x.transpose(1, 2)  # (B, T, H, N) <-> (B, H, T, N)


def fla_naive(fn, r, log_w, k, v, a, b, state, **options):
    """fla's naive dplr_recurrence / dplr_chunkwise in our convention: y (B, T, H, N) and S (B, H, N, N)."""
    N = k.shape[-1]
    q, k, v, a, b, log_w = map(heads_first, (r * N**0.5, k, v, a, b, log_w))
    o, S = fn(q, k, v, a, b, log_w, initial_state=state.transpose(-1, -2), output_final_state=True, **options)
    return heads_first(o), S.transpose(-1, -2)


def fp32_inputs(B, T, H, N, seed):
    """RWKV-7-like inputs (a = -kappa, b = kappa iclr) and a random non-zero state, rounded to float32."""
    return [x.float() for x in make_inputs(B, T, H, N, seed=seed)]


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("form", OURS)
def test_wkv7_matches_fla_naive_recurrence(form, T):
    """Outputs, final state and every gradient: our float64 form against fla's float32 reference."""
    inputs = fp32_inputs(2, T, 3, 16, seed=T)
    ref = run(lambda *x: fla_naive(dplr_recurrence, *x), inputs)
    got = run(OURS[form], [x.double() for x in inputs])
    for what, x, x_ref in zip(OUTPUTS, got, ref):
        assert_rel_close(f"{form} float64 vs fla dplr_recurrence, T={T}, {what}", x.float(), x_ref, TOL["float32"])


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_wkv7_float32_matches_fla_naive_recurrence(form):
    inputs = fp32_inputs(1, 40, 2, 64, seed=5)
    y_ref, s_ref = fla_naive(dplr_recurrence, *inputs)
    y, s = OURS[form](*inputs)
    assert y.dtype == s.dtype == torch.float32
    assert_rel_close(f"{form} float32 vs fla dplr_recurrence, y", y, y_ref, TOL["float32"])
    assert_rel_close(f"{form} float32 vs fla dplr_recurrence, state", s, s_ref, TOL["float32"])


@pytest.mark.parametrize("chunk", [4, 16])
def test_wkv7_matches_fla_naive_chunkwise(chunk):
    """fla's naive chunked form (the algorithm of chunk_rwkv7) needs T a multiple of its chunk."""
    inputs = fp32_inputs(2, 32, 2, 16, seed=chunk)
    y_ref, s_ref = fla_naive(dplr_chunkwise, *inputs, chunk_size=chunk)
    y, s = wkv7_chunked(*(x.double() for x in inputs))
    assert_rel_close(f"chunked float64 vs fla dplr_chunkwise({chunk}), y", y.float(), y_ref, TOL["float32"])
    assert_rel_close(f"chunked float64 vs fla dplr_chunkwise({chunk}), state", s.float(), s_ref, TOL["float32"])


@pytest.fixture
def fla_triton(monkeypatch):
    """fla's Triton kernels on this device: CUDA, or the CPU in Triton's interpreter (conftest sets it without a
    GPU). The interpreter has no driver to time configurations with, so each autotuned kernel takes its first."""
    if torch.cuda.is_available():
        return "cuda"
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    monkeypatch.setattr(Autotuner, "prune_configs", lambda self, kwargs: prune(self, kwargs)[:1])
    return "cpu"


@pytest.mark.parametrize("T", [1, 19])
def test_wkv7_matches_fla_fused_recurrent_kernel(fla_triton, T):
    """fla's fused_recurrent_rwkv7 (Triton; forward only) against our float64 recurrence: y and the final state.

    (fla's chunk_rwkv7 does not run in the interpreter: chunk_dplr_fwd_kernel_h calls .to() on a range() index,
    which the interpreter leaves a Python int.)"""
    r, log_w, k, v, a, b, S = fp32_inputs(2, T, 2, 32, seed=T)
    y_ref, s_ref = wkv7_recurrent(*(x.double() for x in (r, log_w, k, v, a, b, S)))
    args = [x.to(fla_triton) for x in (r, log_w, k, v, a, b)]
    y, s = fused_recurrent_rwkv7(
        *args, scale=1.0, initial_state=S.transpose(-1, -2).contiguous().to(fla_triton), output_final_state=True
    )
    assert_rel_close(f"fla fused_recurrent_rwkv7 vs ours, T={T}, y", y.cpu().double(), y_ref, TOL["float32"])
    s = s.transpose(-1, -2).cpu().double()
    assert_rel_close(f"fla fused_recurrent_rwkv7 vs ours, T={T}, state", s, s_ref, TOL["float32"])


# --- fla's model, saved as fla saves it -------------------------------------------------------------------------

# Odd sizes where fla allows them: 3 heads, every LoRA its own width, the channel mix not 4C. Heads of 64, as every
# released x070 model: ln_x's eps is 64e-5 in RWKV-LM (and here) but head_dim * 1e-5 in fla, equal only at N = 64
# (at N = 32 the logits differ by a relative 3e-4).
FLA_SHAPE = dict(
    hidden_size=192,
    num_hidden_layers=3,
    head_dim=64,
    vocab_size=259,
    intermediate_size=200,
    decay_low_rank_dim=24,
    a_low_rank_dim=20,
    v_low_rank_dim=12,
    gate_low_rank_dim=40,
)


def fla_logits(model, tokens):
    """fla's logits in float32 on the CPU. Without grad and under 64 tokens fla runs fused_mul_recurrent_rwkv7
    (Triton, here in the interpreter); its token shift, mixes and gate-output correction are Triton kernels too."""
    with torch.no_grad():
        return model(tokens).logits.float()


@pytest.mark.slow  # fla's forward in Triton's interpreter: 10 to 20 s per call on 2 cores
def test_fla_model_loads_as_released_and_matches_its_logits(fla_triton, tmp_path):
    """A random fla RWKV7ForCausalLM (fla's own config class and init, then every parameter perturbed so none is
    left at an init constant), saved with save_pretrained, loads here as it is: logits match fla's to float32
    rounding. Then through our convert to a BlinkDL .pth and back to a transformers folder, which fla loads and
    runs to the same logits. fla's default fuse_norm=True (its fused l2-norm and GroupNorm kernels) runs first;
    our folder's config.json says fuse_norm=False (fla's plain torch norms), so the second run covers those."""
    from fla.models import RWKV7Config, RWKV7ForCausalLM

    torch.manual_seed(0)
    config = RWKV7Config(**FLA_SHAPE, fuse_cross_entropy=False)
    fla_model = RWKV7ForCausalLM(config).eval()
    with torch.no_grad():
        for p in fla_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    released = tmp_path / "released"
    fla_model.save_pretrained(released)
    tokens = torch.randint(0, config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(1))
    ref = fla_logits(fla_model.to(fla_triton), tokens.to(fla_triton)).cpu()

    ours = rwkv_lab.load_model(released)
    c = ours.config
    assert (c.n_layer, c.n_embd, c.n_head, c.head_size, c.vocab_size, c.dim_ffn) == (3, 192, 3, 64, 259, 200)
    assert (c.decay_lora, c.iclr_lora, c.value_lora, c.gate_lora) == (24, 20, 12, 40)
    with torch.no_grad():
        logits = ours(tokens)[0].float()
    assert_rel_close("ours vs fla RWKV7ForCausalLM, logits", logits, ref, TOL["float32"])

    pth = rwkv_lab.convert(released, tmp_path / "blinkdl.pth", format="pth")
    back = rwkv_lab.convert(pth, tmp_path / "back", format="transformers")
    with torch.no_grad():
        again = rwkv_lab.load_model(pth)(tokens)[0].float()
    assert_rel_close("ours from the converted .pth vs fla, logits", again, ref, TOL["float32"])
    reloaded = RWKV7ForCausalLM.from_pretrained(back).eval()
    assert reloaded.config.fuse_norm is False
    round_trip = fla_logits(reloaded.to(fla_triton), tokens.to(fla_triton)).cpu()
    assert_rel_close("fla from our converted folder vs fla, logits", round_trip, ref, TOL["float32"])


@pytest.mark.slow  # about a minute: fla's training step and forward in Triton's interpreter
def test_make_fla_fixture_runs_here_and_refuses_to_overwrite(tmp_path):
    """scripts/make_fla_fixture.py as a smoke test on the CPU (fla's naive recurrence in place of chunk_rwkv7,
    which does not run in the interpreter): its folder passes the fixture's checks of our logits against fla's,
    and a second run into the same folder is refused, leaving it as it was."""
    out = tmp_path / "made"
    make = [sys.executable, str(REPO / "scripts" / "make_fla_fixture.py"), "--device", "cpu", "--out", str(out)]
    tiny = ["--steps", "2", "--batch", "1", "--seq-len", "16", "--max-files", "60", "--val-windows", "2"]
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(make + tiny, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["training"]["steps"] == 2 and "naive" in prov["training"]["train_wkv"]
    check_ours_against_fla(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = subprocess.run(make, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists; refusing to overwrite" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # fla's forwards in Triton's interpreter, each timed once
def test_bench_generation_runs_fla_as_a_peer_on_our_weights(fla_triton, tmp_path, monkeypatch):
    """benchmarks/bench_generation.py's fla peer (RWKV7ForCausalLM on our weights, saved in fla's layout): its
    prefill and its greedy loop on fla's cache run and give one row each (each call timed once here)."""
    from test_gpu import script

    from rwkv_lab.models import architecture

    bench = script("bench_generation")
    monkeypatch.setattr(bench, "time_fn", lambda fn, device, warmup, repeat: (fn(), 0.5)[1])
    arch = architecture("rwkv7")
    model = arch.build(arch.get_config("tiny"), seed=0).eval()
    rows = bench.fla_rows(model, "tiny", 5, 2, tmp_path, torch.device(fla_triton))
    print(rows)
    assert [r["path"] for r in rows] == ["fla RWKV7ForCausalLM", "fla RWKV7ForCausalLM loop (greedy)"]
    assert [r["tokens_per_s"] for r in rows] == [5 / 0.5, 2 / 0.5]
