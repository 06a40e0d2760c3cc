"""The tools the notebooks call: implicit attention, the numerics study, the speed comparison."""

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model

from rwkv_lab.analysis.equivalence import time_formulations
from rwkv_lab.analysis.implicit_attention import implicit_attention
from rwkv_lab.analysis.wkv_error import plot_study, run_study
from rwkv_lab.models.rwkv4.config import PRESETS
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
