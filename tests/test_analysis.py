"""The tools the notebooks call: implicit attention, the numerics study, the speed comparison."""

import math

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model

from rwkv_lab.analysis.equivalence import compare_backends, compare_formulations, step_all, time_formulations
from rwkv_lab.analysis.implicit_attention import attention_profile, implicit_attention
from rwkv_lab.analysis.wkv_error import OPERATORS, WKV4, WKV7, plot_study, run_study, study_inputs7
from rwkv_lab.models.rwkv4.config import PRESETS
from rwkv_lab.models.rwkv7.config import PRESETS as PRESETS7
from rwkv_lab.ops.rwkv4 import wkv_recurrent


def test_implicit_attention_reproduces_the_layers_wkv():
    model = random_model(PRESETS["tiny"], seed=3)
    tokens = torch.randint(0, 257, (1, 30), generator=torch.Generator().manual_seed(3))
    for layer in range(model.config.n_layer):
        weights = implicit_attention(model, tokens, layer)  # (T, T, C)
        assert_rel_close(
            f"layer {layer} rows sum to 1",
            weights.sum(dim=1),
            torch.ones(30, 32, dtype=weights.dtype),
            TOL["float64 algebra"],
        )
        inputs = model.wkv_inputs(tokens, layer)
        y, _ = wkv_recurrent(inputs["w"], inputs["u"], inputs["k"], inputs["v"], inputs["wkv_state"])
        assert_rel_close(
            f"layer {layer} weights . v == wkv",
            torch.einsum("tic,ic->tc", weights, inputs["v"][0]),
            y[0],
            TOL["float64 algebra"],
        )
    with pytest.raises(ValueError, match="layer must be in"):
        implicit_attention(model, tokens, 2)
    with pytest.raises(ValueError, match="one sequence"):
        implicit_attention(model, tokens.repeat(2, 1), 0)


def test_numerics_study_rows_and_figure():
    frame = run_study([1, 40], channels=8, kinds=("official", "extreme"))
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 2 * 2 * 3 * 4 and ok["nonfinite"].sum() == 0
    fp64 = ok[ok["dtype"] == "fp64"]
    assert fp64["rel_err_y"].max() < 1e-12
    assert ok[ok["dtype"] == "fp32"]["rel_err_y"].max() < 1e-4
    # bf16 keeps 8 bits of mantissa: its input rounding alone is ~1e-3
    assert 1e-4 < ok[ok["dtype"] == "bf16"]["rel_err_y"].max() < 1e-1
    assert plot_study(frame).axes


def test_time_formulations_reports_both_forms():
    model = random_model(PRESETS["tiny"], seed=1, dtype=torch.float32)
    frame = time_formulations(model, [1, 8], repeat=1)
    assert list(frame["T"]) == [1, 8] and (frame[["parallel_s", "recurrent_s"]] > 0).all().all()


def test_rwkv7_numerics_study_rows_and_figure():
    frame = run_study([1, 40], channels=8, operator=WKV7)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 2 * 2 * 3 * 4 and ok["nonfinite"].sum() == 0
    for dtype, low, high in (("fp64", 0, 1e-12), ("fp32", 0, 1e-5), ("bf16", 1e-4, 1e-1)):
        errors = ok[ok["dtype"] == dtype][["rel_err_y", "rel_err_state"]]
        print(f"wkv7 study {dtype}: largest rel err {errors.max().max():.2e}")
        assert low < errors.max().max() < high, dtype
    # the GPU check's fp32 'rwkv' rows (bench_wkv7.py) are the official family's squares; decay_at_bound is neither
    check = WKV7.kernel_check(
        [
            {"T": 40, "case": "rwkv", "dtype": "float32", "rel_err_y": 3e-7},
            {"T": 40, "case": "rwkv", "dtype": "float32", "rel_err_y": 5e-7},
            {"T": 40, "case": "rwkv", "dtype": "bfloat16", "rel_err_y": 3e-3},
            {"T": 40, "case": "decay_at_bound", "dtype": "float32", "rel_err_y": 9e-7},
        ]
    )
    assert check.to_dict("records") == [{"inputs": "official", "T": 40, "rel_err_y": 5e-7}]
    assert plot_study(frame, check, WKV7.name).axes
    four = WKV4.kernel_check([{"T": 1, "inputs": "official-init", "dtype": "fp32", "rel_err_y": 1e-7}])
    assert list(four["inputs"]) == ["official"]
    assert set(OPERATORS) == {"rwkv4", "rwkv7"}
    with pytest.raises(ValueError, match="has no backend"):
        run_study([1], backends=("fused",), operator=WKV7)


def test_rwkv7_study_inputs_are_rwkv7s():
    bound = -math.exp(-0.5)
    for kind in ("official", "extreme"):
        r, log_w, k, v, a, b = study_inputs7(50, 128, kind)
        assert r.shape == (1, 50, 2, 64) and r.dtype == torch.float64
        assert bool((log_w >= bound - 1e-15).all() and (log_w < 0).all()), kind
        kappa = -a
        assert_rel_close(f"{kind}: kappa unit norm", kappa.norm(dim=-1), torch.ones(1, 50, 2), TOL["float64 algebra"])
        iclr = b / kappa
        assert bool((iclr >= -1e-12).all() and (iclr <= 1 + 1e-12).all()), kind
    r, log_w, *_ = study_inputs7(3, 16, "extreme")
    assert r.shape == (1, 3, 1, 16) and set(log_w.unique().tolist()) <= {bound, -1e-9}
    with pytest.raises(ValueError, match="multiple of 64"):
        study_inputs7(3, 96, "official")
    with pytest.raises(ValueError, match="unknown input kind"):
        study_inputs7(3, 64, "typical")


def test_compare_backends_both_generations():
    for config in (PRESETS["tiny"], PRESETS7["tiny"]):
        model = random_model(config, seed=2)
        tokens = torch.randint(0, 257, (1, 23), generator=torch.Generator().manual_seed(2))
        reference = step_all(model, tokens)
        table = compare_backends(model, tokens, ["recurrent", "chunked", "attention"], reference=reference)
        assert list(table["backend"]) == ["recurrent", "chunked", "attention"] and set(table["T"]) == {23}
        errors = table[["rel_err_logits", "rel_err_state"]]
        print(f"{config.arch}: largest rel err of any backend vs the RNN form {errors.max().max():.2e}")
        assert errors.max().max() < TOL["float64 model"]
        # the reference is what the comparison measures against: a wrong one shows
        wrong = (reference[0] + 1, reference[1])
        assert compare_backends(model, tokens, ["chunked"], reference=wrong)["rel_err_logits"][0] > 1e-3
        report = compare_formulations(model, tokens, prefill=9, reference=reference)
        assert max(report[k] for k in report if k.startswith("rel_err")) < TOL["float64 model"]


def test_attention_profile_reads_the_matrix():
    T = 6
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # row t: 1 / (t + 1) on 0..t
    profile = attention_profile(torch.stack([torch.eye(T), uniform, -uniform], dim=2))
    # the identity attends distance 0; row t of the uniform one attends t / 2 on average
    assert torch.allclose(profile["span"], torch.tensor([0.0, 1.25, 1.25], dtype=torch.float64))
    assert profile["row_sum_min"] == pytest.approx(-1) and profile["row_sum_max"] == pytest.approx(1)
    assert profile["negative_share"] == pytest.approx(1 / 3)  # each panel sums |w| to T
    tokens = torch.randint(0, 257, (1, 20), generator=torch.Generator().manual_seed(4))
    softmax = attention_profile(implicit_attention(random_model(PRESETS["tiny"], seed=4), tokens, 1))
    assert softmax["negative_share"] == 0 and softmax["row_sum_min"] == pytest.approx(1)
    signed = attention_profile(implicit_attention(random_model(PRESETS7["tiny"], seed=4), tokens, 1))
    rows = f"{signed['row_sum_min']:.3g}..{signed['row_sum_max']:.3g}"
    print(f"RWKV-7 tiny: negative share {signed['negative_share']:.3f}, rows sum to {rows}")
    assert signed["negative_share"] > 0 and signed["span"].shape == (4,)
    with pytest.raises(ValueError, match=r"\(T, T, K\)"):
        attention_profile(torch.zeros(3, 4, 2))
