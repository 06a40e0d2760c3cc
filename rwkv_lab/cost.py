"""Training cost: FLOPs, GPU-hours, efficiency and dollars, from their inputs, in both directions.

The defaults reproduce the seed blog post ("The RWKV language model: An RNN with the advantages of a
transformer", J. S. Wind, 2023; reference/seed_cost_estimates.md): 6 FLOPs per parameter per token, an A100 at
312 TFLOP/s, $0.79 per A100-hour (the cheapest cloud price then) and $4.096 on AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import architecture_of
from .models.rwkv4.config import RWKVConfig
from .models.transformer.model import forward_flops_per_token as transformer_flops

TRAIN_FLOPS_PER_PARAM_TOKEN = 6  # forward 2 (a multiply and an add per weight) + backward 4
HOURS_PER_DAY = 24


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops: float  # dense 16-bit (bf16/fp16) matrix FLOP/s from the vendor's datasheet
    source: str
    price_per_hour: float | None = None  # $ per GPU-hour; a parameter, not a quote, unless the source says so

    @property
    def flops_per_hour(self) -> float:
        return self.peak_flops * 3600


A100 = Accelerator("A100 SXM", 312e12, "NVIDIA A100 datasheet: 312 TFLOPS dense BF16/FP16 Tensor Core", 0.79)
H100 = Accelerator("H100 SXM", 989.4e12, "NVIDIA H100 datasheet: 1,979 TFLOPS BF16 with sparsity = 989.4 dense")
H200 = Accelerator("H200 SXM", 989.4e12, "NVIDIA H200 datasheet: 1,979 TFLOPS BF16 with sparsity = 989.4 dense")
ACCELERATORS = {a.name: a for a in (A100, H100, H200)}
A100_PRICE_CHEAPEST_2023 = 0.79  # $/GPU-hour, cloud-gpus.com as quoted by the seed post
A100_PRICE_AWS = 4.096  # $/GPU-hour, AWS p4d.24xlarge ($32.77/h) / 8, as quoted by the seed post


# ---- FLOPs -------------------------------------------------------------------------------------------------------


def training_flops(params: float, tokens: float, flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN) -> float:
    """The 6 N D rule."""
    return flops_per_param_token * params * tokens


def training_flops_per_token(forward_flops_per_token: float) -> float:
    """The backward pass costs twice the forward."""
    return 3 * forward_flops_per_token


def prefill_flops(config, prompt_tokens: int, sequences: int) -> int:
    """A prefill's matrix FLOPs, either generation (its config's `forward_flops_per_token`): every prompt token's
    forward but the head's, which runs once per sequence (at its last position, for the first sampled token)."""
    head = 2 * config.vocab_size * config.n_embd
    return (config.forward_flops_per_token - head) * prompt_tokens + head * sequences


# ---- time and money ----------------------------------------------------------------------------------------------


def gpu_hours(flops: float, accelerator: Accelerator = A100, efficiency: float = 1.0) -> float:
    """GPU-hours to do `flops` at `efficiency` (MFU) of the accelerator's peak."""
    return flops / (accelerator.flops_per_hour * efficiency)


def run_gpu_hours(n_gpus: int, days: float) -> float:
    return n_gpus * HOURS_PER_DAY * days


def efficiency(flops: float, hours: float, accelerator: Accelerator = A100) -> float:
    """The fraction of peak a run achieved: ideal GPU-hours over actual GPU-hours (model FLOPs utilisation)."""
    return gpu_hours(flops, accelerator) / hours


def wall_clock_days(hours: float, n_gpus: int) -> float:
    return hours / n_gpus / HOURS_PER_DAY


def cost(hours: float, price_per_hour: float) -> float:
    return hours * price_per_hour


def training_cost(
    params: float,
    tokens: float,
    accelerator: Accelerator = A100,
    efficiency: float = 1.0,
    price_per_hour: float | None = None,
) -> float:
    """Dollars to train `params` on `tokens` (6 N D FLOPs) at `efficiency` of the accelerator's peak."""
    price = price_per_hour if price_per_hour is not None else accelerator.price_per_hour
    if price is None:
        raise ValueError(f"no price for {accelerator.name}: pass price_per_hour ($ per GPU-hour)")
    return cost(gpu_hours(training_flops(params, tokens), accelerator, efficiency), price)


def run_estimate(
    params_B: float, tokens_B: float, gpu: str = "H100 SXM", price: float = 2.0, efficiency: float = 0.3, gpus: int = 64
) -> dict:
    """A training run in the units a reader thinks in: GPU-hours, days on `gpus` GPUs and dollars at `price` per
    GPU-hour, for `params_B` billion parameters on `tokens_B` billion tokens at `efficiency` (MFU)."""
    hours = gpu_hours(training_flops(params_B * 1e9, tokens_B * 1e9), ACCELERATORS[gpu], efficiency)
    return {"GPU-hours": hours, "days": wall_clock_days(hours, gpus), "$": cost(hours, price)}


def tokens_for_budget(
    dollars: float,
    params: float,
    accelerator: Accelerator = A100,
    efficiency: float = 1.0,
    price_per_hour: float | None = None,
) -> float:
    """How many tokens a budget trains a model of `params` parameters on (the inverse of training_cost)."""
    return dollars / training_cost(params, 1.0, accelerator, efficiency, price_per_hour)


def params_for_budget(
    dollars: float,
    tokens: float,
    accelerator: Accelerator = A100,
    efficiency: float = 1.0,
    price_per_hour: float | None = None,
) -> float:
    """How large a model a budget trains on `tokens` tokens."""
    return dollars / training_cost(1.0, tokens, accelerator, efficiency, price_per_hour)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the peak."""
    return tokens_per_second * flops_per_token / peak_flops


def seed_estimate() -> dict:
    """Every row of the seed post's estimate, computed from its inputs (reference/seed_cost_estimates.md)."""
    flops = training_flops(14e9, 300e9)
    ideal = gpu_hours(flops, A100)
    actual = run_gpu_hours(64, 91.25)  # 64 A100s for about three months
    return {
        "flops_per_param_token": TRAIN_FLOPS_PER_PARAM_TOKEN,
        "train_flops_14B_300B": flops,
        "a100_peak_flops": A100.peak_flops,
        "a100_flops_per_hour": A100.flops_per_hour,
        "ideal_a100_hours": ideal,
        "actual_a100_hours": actual,
        "achieved_efficiency": efficiency(flops, actual, A100),
        "recent_efficiency": 0.5,
        "price_cheapest": A100_PRICE_CHEAPEST_2023,
        "cost_actual_cheapest": cost(actual, A100_PRICE_CHEAPEST_2023),
        "cost_at_50pct_cheapest": cost(ideal / 0.5, A100_PRICE_CHEAPEST_2023),
        "price_aws": A100_PRICE_AWS,
        "cost_actual_aws": cost(actual, A100_PRICE_AWS),
        "scaling_10x_params_10x_data": training_cost(140e9, 3000e9) / training_cost(14e9, 300e9),
    }


# The seed post's own figures, as printed (reference/seed_cost_estimates.md), beside which ours are shown.
SEED_POST_FIGURES = {
    "flops_per_param_token": "6",
    "train_flops_14B_300B": "2.5 × 10^22",
    "a100_peak_flops": "312 TFLOPS",
    "a100_flops_per_hour": "about 1.1 × 10^18",
    "ideal_a100_hours": "22 436 h",
    "actual_a100_hours": "≈ 140 160 A100 h",
    "achieved_efficiency": "about 20%",
    "recent_efficiency": "about 50%",
    "price_cheapest": "$0.79",
    "cost_actual_cheapest": "around $100k",
    "cost_at_50pct_cheapest": "$40k",
    "price_aws": "$4.096",
    "cost_actual_aws": "(original run on AWS)",
    "scaling_10x_params_10x_data": "100×",
}


def seed_table():
    """The seed estimate line by line: the post's figure beside the value computed here."""
    import pandas as pd

    ours = seed_estimate()
    return pd.DataFrame(
        [{"quantity": key, "post": SEED_POST_FIGURES[key], "computed": value} for key, value in ours.items()]
    )


def flops_vs_context(n_layer: int, d_model: int, vocab_size: int, contexts):
    """Training FLOPs per token of RWKV-4 and of a transformer of the same depth and width, as the context grows."""
    import pandas as pd

    rwkv = training_flops_per_token(RWKVConfig(n_layer, d_model, vocab_size).forward_flops_per_token)
    rows = []
    for T in contexts:
        tf = training_flops_per_token(transformer_flops(n_layer, d_model, vocab_size, T))
        attention = training_flops_per_token(4 * n_layer * d_model * T)
        rows.append(
            {
                "context": T,
                "rwkv_flops_per_token": rwkv,
                "transformer_flops_per_token": tf,
                "transformer_attention_share": attention / tf,
            }
        )
    return pd.DataFrame(rows)


def same_size_estimates(
    configs: dict,
    tokens: float,
    efficiency: dict[str, float],
    accelerator: Accelerator = A100,
    price_per_hour: float | None = None,
    n_gpus: int = 64,
    context: int = 1024,
):
    """A training run of each named config (any generation, through the registry) on `tokens` tokens: its
    parameters, forward FLOPs per token (its generation's count, `forward_flops_per_token`), the training FLOPs
    per token that makes (3x) beside the 6 N rule, and GPU-hours, days on `n_gpus` and dollars at the named
    config's `efficiency` (MFU), computed from the counted FLOPs."""
    import pandas as pd

    price = price_per_hour if price_per_hour is not None else accelerator.price_per_hour
    if price is None:
        raise ValueError(f"no price for {accelerator.name}: pass price_per_hour ($ per GPU-hour)")
    missing = sorted(set(configs) - set(efficiency))
    if missing:
        raise ValueError(f"no efficiency for {missing}: pass one MFU per config")
    rows = []
    for name, config in configs.items():
        arch = architecture_of(config)
        forward = arch.forward_flops_per_token(config, context)
        flops = training_flops_per_token(forward) * tokens
        hours = gpu_hours(flops, accelerator, efficiency[name])
        rows.append(
            {
                "model": name,
                "arch": arch.name,
                "params": config.n_params,
                "fwd_flops_per_token": forward,
                "train_flops_per_token": training_flops_per_token(forward),
                "six_n": TRAIN_FLOPS_PER_PARAM_TOKEN * config.n_params,
                "train_flops": flops,
                "MFU": efficiency[name],
                "GPU-hours": hours,
                "days": wall_clock_days(hours, n_gpus),
                "$": cost(hours, price),
            }
        )
    return pd.DataFrame(rows)
