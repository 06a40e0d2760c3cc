"""Every number of the seed post's cost estimate, from its inputs (reference/seed_cost_estimates.md)."""

import csv

import pytest
from helpers import REPO

from rwkv_lab import cost
from rwkv_lab.models.rwkv4.config import get_config
from rwkv_lab.models.transformer.model import forward_flops_per_token as transformer_flops


@pytest.fixture(scope="module")
def seed():
    return cost.seed_estimate()


def test_seed_table_to_the_digit_shown(seed):
    assert seed["flops_per_param_token"] == 6
    assert round(seed["train_flops_14B_300B"] / 1e22, 2) == 2.52  # "2.52 x 10^22"
    assert seed["a100_peak_flops"] == 312e12
    assert seed["a100_flops_per_hour"] == pytest.approx(1.1232e18, rel=1e-12)
    assert round(seed["ideal_a100_hours"]) == 22436
    assert round(seed["ideal_a100_hours"], 1) == 22435.9
    assert seed["actual_a100_hours"] == 140160
    assert round(100 * seed["achieved_efficiency"], 1) == 16.0
    assert round(seed["cost_actual_cheapest"]) == 110726
    assert round(seed["cost_at_50pct_cheapest"]) == 35449
    assert round(seed["cost_actual_aws"]) == 574095
    assert seed["scaling_10x_params_10x_data"] == pytest.approx(100)


def test_rwkv_forward_flops_reproduce_the_paper_table():
    with open(REPO / "reference" / "rwkv4_configs.csv") as f:
        for row in csv.DictReader(f):
            flops = get_config(row["name"]).forward_flops_per_token
            assert float(f"{flops:.4g}") == float(row["fwd_flops_per_token"]), row["name"]


def test_transformer_attention_grows_with_context_and_rwkv_does_not():
    pythia = dict(n_layer=24, d_model=2048, vocab_size=50304)
    short = transformer_flops(**pythia, context=1024)
    long = transformer_flops(**pythia, context=8192)
    assert long - short == 4 * 24 * 2048 * (8192 - 1024)
    assert cost.training_flops_per_token(short) == 3 * short


def test_budget_directions_invert_each_other():
    dollars = cost.training_cost(1.5e9, 300e9, cost.A100, efficiency=0.4)
    assert cost.tokens_for_budget(dollars, 1.5e9, cost.A100, efficiency=0.4) == pytest.approx(300e9)
    assert cost.params_for_budget(dollars, 300e9, cost.A100, efficiency=0.4) == pytest.approx(1.5e9)
    with pytest.raises(ValueError, match="no price for H100 SXM"):
        cost.training_cost(1e9, 1e9, cost.H100)
    assert cost.training_cost(1e9, 1e9, cost.H100, price_per_hour=2.0) > 0
    assert cost.wall_clock_days(cost.run_gpu_hours(64, 91.25), 64) == 91.25
    assert cost.mfu(1000, 1e12, 1e15) == 1.0
