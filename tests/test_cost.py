"""Every number of the seed post's cost estimate, from its inputs (reference/seed_cost_estimates.md)."""

import csv

import pytest
import torch
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


class _StateProducts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the multiplies of the state update done elementwise (S diag(w), (S a) b^T, v k^T): every aten.mul or
    addcmul (the rank-one terms added in place) whose output is a stack of N x N matrices (B, H, N, N)."""

    PRODUCTS = (torch.ops.aten.mul, torch.ops.aten.addcmul, torch.ops.aten.addcmul_)

    def __init__(self, n: int):
        super().__init__()
        self.n, self.multiplies = n, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.PRODUCTS and out.dim() == 4 and out.shape[-2:] == (self.n, self.n):
            self.multiplies += out.numel()
        return out


@pytest.mark.parametrize("name", ["tiny", "byte-6x256", "pile-168M", "world-0.4B"])
def test_rwkv7_forward_flops_match_a_count_of_its_ops(name):
    """RWKV-7's FLOPs per token against what one recurrent step executes (meta tensors, no arithmetic): torch's
    FlopCounterMode counts every matmul (projections, LoRAs, channel mix, head, and the state's S a and S r as
    bmm), the dispatch mode the state update's three elementwise rank-one products, 2 FLOPs per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    from rwkv_lab.models import architecture

    arch = architecture("rwkv7")
    config = arch.get_config(name)
    with torch.device("meta"):
        model = arch.model_class(config)
    token = torch.zeros(1, dtype=torch.long, device="meta")
    products = _StateProducts(config.head_size)
    with FlopCounterMode(display=False) as counter, products:
        model.step(token, check=False)
    counts = {op.__name__: flops for op, flops in counter.get_flop_counts()["Global"].items()}
    C, L, N = config.n_embd, config.n_layer, config.head_size
    parts = config.flops_parts
    assert products.multiplies == 3 * C * N * L  # per head 3 N^2: S diag(w), (S a) b^T, v k^T
    assert counts["bmm"] == 2 * 2 * C * N * L  # S a and S r
    assert counts["bmm"] + 2 * products.multiplies == parts["state_update"]
    assert (
        counts["mm"] + counts.get("addmm", 0)
        == parts["projections"] + parts["loras"] + parts["channel_mix"] + parts["head"]
    )
    assert counter.get_total_flops() + 2 * products.multiplies == arch.forward_flops_per_token(config, 1024)
    print(f"{name}: {arch.forward_flops_per_token(config, 1024):,} FLOPs per token, as counted; parts {parts}")


def test_same_size_estimates_take_either_generation():
    from rwkv_lab.models import architecture

    rwkv4 = get_config("14B")
    rwkv7 = architecture("rwkv7").config_class(n_layer=40, n_embd=5120, vocab_size=rwkv4.vocab_size)
    table = cost.same_size_estimates(
        {"RWKV-4 14B": rwkv4, "RWKV-7": rwkv7}, 300e9, {"RWKV-4 14B": 0.5, "RWKV-7": 0.25}, cost.A100
    ).set_index("model")
    assert list(table["arch"]) == ["rwkv4", "rwkv7"]
    # RWKV-4's counted FLOPs are the paper's 2 (V D + 13 D^2 L), 2% below 6 N at 14B (N counts the embedding,
    # which does no matmul)
    assert table.loc["RWKV-4 14B", "train_flops_per_token"] == 3 * 2 * (50277 * 5120 + 13 * 5120**2 * 40)
    assert table.loc["RWKV-4 14B", "train_flops_per_token"] / table.loc["RWKV-4 14B", "six_n"] == pytest.approx(
        0.98, abs=0.002
    )
    ideal = cost.gpu_hours(table.loc["RWKV-7", "train_flops"], cost.A100)
    assert table.loc["RWKV-7", "GPU-hours"] == pytest.approx(ideal / 0.25)
    assert table.loc["RWKV-7", "$"] == pytest.approx(ideal / 0.25 * 0.79)
    assert table.loc["RWKV-7", "train_flops"] == 3 * rwkv7.forward_flops_per_token * 300e9
    with pytest.raises(ValueError, match=r"no efficiency for \['RWKV-7'\]"):
        cost.same_size_estimates({"RWKV-7": rwkv7}, 1e9, {}, cost.A100)
    with pytest.raises(ValueError, match="no price for H100 SXM"):
        cost.same_size_estimates({"RWKV-7": rwkv7}, 1e9, {"RWKV-7": 0.3}, cost.H100)


@pytest.mark.parametrize("name", ["rwkv4", "rwkv7"])
def test_prefill_flops_count_every_matrix_product_of_a_prefill(name):
    """cost.prefill_flops against torch's FlopCounterMode over a real prefill of 3 prompts of 7 tokens: every matrix
    product, the head once per prompt (RWKV-7's state update, counted by the formula as 5 C N a token, runs as
    batched products in the parallel form and is left out of the comparison)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rwkv_lab.cost import prefill_flops
    from rwkv_lab.models import architecture

    arch = architecture(name)
    config = arch.get_config("tiny")
    model = arch.build(config, seed=0).eval()
    tokens = torch.randint(0, config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.prefill(tokens)
    matmuls = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    state_update = config.flops_parts["state_update"] * tokens.numel() if name == "rwkv7" else 0
    print(f"{name}: {matmuls:,} FLOPs in matrix products, formula {prefill_flops(config, 21, 3) - state_update:,}")
    assert matmuls == prefill_flops(config, tokens.numel(), 3) - state_update
