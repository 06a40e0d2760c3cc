# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · What does it cost to train?
#
# The seed blog post estimated the cost of training RWKV-4 14B: 6 FLOPs per parameter per token, 300B tokens,
# A100s at 312 TFLOP/s, 64 GPUs for three months, "about 20%" efficiency (16.0% computed from its own inputs).
# This notebook recomputes every line from its inputs (`rwkv_lab.cost`; each number is also a test), then replaces the assumed efficiency with the
# model FLOPs utilisation (MFU) we measured for a real training step on a GPU (its device is printed with it)
# (`benchmarks/bench_training.py` → `results/training_speed/training_mfu.csv`), for RWKV-4 and the size-matched Pythia.
# Then the same estimate for an RWKV-7 of the same size, from its own count of FLOPs per token.

# %% tags=["parameters"]
gpu = "H100 SXM"  # A100 SXM | H100 SXM | H200 SXM
price_per_hour = 2.0  # $ per GPU-hour: a parameter to set to your quote, not a quote
params_B = 14.2  # RWKV-4 14B
tokens_B = 330
n_gpus = 64
interactive = True  # ipywidgets sliders (a static table is printed either way)
# RWKV-7's measured training step, where training_mfu.csv has none (benchmarks/bench_training.py --arch rwkv7 --tag)
rwkv7_mfu_file = "training_speed/training_mfu_rwkv7_matmuls.csv"

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from rwkv_lab import cost
from rwkv_lab.results import find_result, results_dir, save_figure
from rwkv_lab.training.report import fastest_paths

table = cost.seed_table()
display(table.style.format({"computed": "{:,.6g}"}))
seed = cost.seed_estimate()
print(
    f"achieved efficiency of the seed's run, computed from its inputs: {seed['achieved_efficiency']:.1%} "
    f"(the post rounds it to {cost.SEED_POST_FIGURES['achieved_efficiency']}); tests/test_cost.py checks every row"
)

# %% [markdown]
# ## Measured efficiency
#
# One optimizer step (forward, backward, AdamW; bf16 autocast) timed on a GPU, MFU against the measured bf16
# matmul peak and against the datasheet. RWKV's FLOPs do not depend on the context; the transformer's grow with it.

# %%
mfu_csv = find_result("training_speed/training_mfu.csv")
mfu = pd.read_csv(mfu_csv)
mfu_meta = json.loads(mfu_csv.with_suffix(".meta.json").read_text())
mfu_runs = mfu_meta.get("runs", [mfu_meta])
print(
    f"{mfu_csv.name}: measured on {sorted({r['device'] for r in mfu_runs})}, commit "
    f"{sorted({r['git_commit'][:10] for r in mfu_runs})}, {sorted({r['date_utc'][:10] for r in mfu_runs})}"
)
ok = mfu[mfu["status"] == "ok"]
display(
    ok[
        [
            "arch",
            "model",
            "context",
            "batch",
            "tokens_per_step",
            "step_ms",
            "tokens_per_s",
            "mfu_vs_measured_peak",
            "mfu_vs_datasheet",
            "peak_mem_GiB",
        ]
    ].round(3)
)
if (mfu["status"] == "oom").any():
    print("out of memory:", mfu[mfu["status"] == "oom"][["arch", "model", "context", "batch"]].to_dict("records"))
fast = fastest_paths(mfu)  # each architecture on its faster path
largest = fast[fast["context"] == 1024].sort_values("params").groupby("arch").last()
rwkv_mfu = float(largest.loc["RWKV-4", "mfu_vs_datasheet"])
pythia_mfu = float(largest.loc["Pythia", "mfu_vs_datasheet"])
print(
    f"largest measured at T=1024: RWKV-4 {largest.loc['RWKV-4', 'model']} MFU {rwkv_mfu:.1%} of the datasheet peak, "
    f"Pythia {largest.loc['Pythia', 'model']} {pythia_mfu:.1%}"
)

# %% [markdown]
# ## What would it cost today?
#
# RWKV-4 14B on 330B tokens on the chosen GPU at our measured MFU, beside the seed's 50%. Two assumptions, both
# stated because they are the weakest links: the MFU measured on the device printed above carries over to the
# chosen GPU (an A100 choice applies a utilisation measured on another GPU to A100 peak and prices), and from the
# largest size we measured to 14B.

# %%
accel = cost.ACCELERATORS[gpu]
rows = []
for label, eff in [("measured RWKV-4 MFU", rwkv_mfu), ("measured Pythia MFU", pythia_mfu), ("seed's 50%", 0.5)]:
    rows.append(
        {"efficiency": label, "MFU": eff} | cost.run_estimate(params_B, tokens_B, gpu, price_per_hour, eff, n_gpus)
    )
today = pd.DataFrame(rows)
print(f"days on {n_gpus} GPUs, $ at {price_per_hour} per GPU-hour on {gpu}:")
display(today.style.format({"MFU": "{:.1%}", "GPU-hours": "{:,.0f}", "days": "{:,.1f}", "$": "${:,.0f}"}))

# %% [markdown]
# ## RWKV-7 at the same size
#
# RWKV-7's FLOPs per token, from its package's count (`forward_flops_per_token`, the sum of `flops_parts`;
# `tests/test_cost.py` checks it against a count of the ops one step executes): RWKV-4's four C × C projections
# and channel mix, plus four low-rank paths (the decay, the in-context learning rate, the value residual, the
# output gate: 2 C D each) and a state update of 5 N² multiply-adds per head, O(C · N) per token against
# RWKV-4's O(C). No RWKV-7 of 14B is among the released shapes (`reference/rwkv7_configs.csv`), so the shape is
# RWKV-4 14B's own, 40 layers × 5120 with its vocabulary, heads of 64 and RWKV-LM's LoRA widths for that width:
# the two then differ in architecture alone (RWKV-7 has fewer parameters at this shape: a same-parameter one would be
# a little wider or deeper, its cost higher by the same ratio; the parameter counts are printed below). Each run's
# FLOPs are 3 × its forward count × tokens (the seed used 6 N, printed beside it). RWKV-7's MFU is its own measured
# one where the MFU file has an RWKV-7 row, else the one of `rwkv7_mfu_file` (its largest size at T = 1024, printed
# with its card and size, which need not be RWKV-4's), else RWKV-4's, an assumption printed as one.

# %%
from rwkv_lab.models import architecture

rwkv4_14b = architecture("rwkv4").get_config("14B")
rwkv7_14b = architecture("rwkv7").config_class(
    n_layer=rwkv4_14b.n_layer, n_embd=rwkv4_14b.n_embd, vocab_size=rwkv4_14b.vocab_size, name="40x5120"
)
print(rwkv7_14b)
parts = pd.Series(rwkv7_14b.flops_parts, name="forward FLOPs per token")
display(
    pd.DataFrame({"FLOPs": parts, "share": parts / parts.sum()}).style.format({"FLOPs": "{:,.0f}", "share": "{:.2%}"})
)
print(
    f"RWKV-7 40x5120: {rwkv7_14b.forward_flops_per_token:,} forward FLOPs per token, "
    f"{rwkv7_14b.forward_flops_per_token / rwkv4_14b.forward_flops_per_token:.3f} x RWKV-4 14B's "
    f"{rwkv4_14b.forward_flops_per_token:,}; low-rank paths {parts['loras'] / parts.sum():.1%}, state update "
    f"{parts['state_update'] / parts.sum():.2%}; {rwkv7_14b.n_params / 1e9:.2f}B parameters against "
    f"{rwkv4_14b.n_params / 1e9:.2f}B"
)
if "RWKV-7" in largest.index:
    rwkv7_mfu, where7 = float(largest.loc["RWKV-7", "mfu_vs_datasheet"]), f"measured ({mfu_csv.name})"
else:
    rwkv7_mfu, where7 = rwkv_mfu, "RWKV-4's measured MFU (RWKV-7's training step not measured: an assumption)"
    if (file7 := find_result(rwkv7_mfu_file)).exists():
        steps7 = fastest_paths(pd.read_csv(file7))
        steps7 = steps7[(steps7["arch"] == "RWKV-7") & (steps7["context"] == 1024)].sort_values("params")
        if len(steps7):
            row7, meta7 = steps7.iloc[-1], json.loads(file7.with_suffix(".meta.json").read_text())
            rwkv7_mfu = float(row7["mfu_vs_datasheet"])
            where7 = (
                f"measured for {row7['model']} at T = 1024 ({file7.name}: {meta7['device']}, commit "
                f"{meta7['git_commit'][:10]}; RWKV-4's is {largest.loc['RWKV-4', 'model']}'s)"
            )
print(f"RWKV-7 MFU: {rwkv7_mfu:.1%} of the datasheet peak, {where7}")
pair = {"RWKV-4 14B": rwkv4_14b, "RWKV-7 40x5120": rwkv7_14b}
seed_runs = [
    ("seed's A100s at its achieved efficiency", cost.A100, cost.A100_PRICE_CHEAPEST_2023, seed["achieved_efficiency"]),
    ("seed's A100s at 50%", cost.A100, cost.A100_PRICE_CHEAPEST_2023, 0.5),
]
estimates = [
    cost.same_size_estimates(pair, 300e9, dict.fromkeys(pair, eff), accel_, price, n_gpus).assign(run=label)
    for label, accel_, price, eff in seed_runs
]
estimates.append(
    cost.same_size_estimates(
        pair, tokens_B * 1e9, {"RWKV-4 14B": rwkv_mfu, "RWKV-7 40x5120": rwkv7_mfu}, cost.ACCELERATORS[gpu],
        price_per_hour, n_gpus,
    ).assign(run=f"{tokens_B:g}B tokens on {gpu} at {price_per_hour} $/h, measured MFU")
)  # fmt: skip
same_size = pd.concat(estimates, ignore_index=True).set_index(["run", "model"])
display(
    same_size.drop(columns=["arch"]).style.format(
        {"params": "{:,.0f}", "fwd_flops_per_token": "{:.4g}", "train_flops_per_token": "{:.4g}", "six_n": "{:.4g}",
         "train_flops": "{:.4g}", "MFU": "{:.1%}", "GPU-hours": "{:,.0f}", "days": "{:,.1f}", "$": "${:,.0f}"}
    )
)  # fmt: skip
dollars = same_size["$"].unstack("model")
for run, row in dollars.iterrows():
    print(f"{run}: RWKV-7 40x5120 ${row['RWKV-7 40x5120']:,.0f} vs RWKV-4 14B ${row['RWKV-4 14B']:,.0f} "
          f"({row['RWKV-7 40x5120'] / row['RWKV-4 14B']:.3f} x)")  # fmt: skip

# %%
from rwkv_lab.models.rwkv4.config import PRESETS

sizes = ["169M", "430M", "1.5B", "3B", "7B", "14B"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for arch, eff in (("RWKV-4", rwkv_mfu), ("Pythia", pythia_mfu)):
    dollars = [
        cost.cost(cost.gpu_hours(cost.training_flops(PRESETS[s].n_params, 300e9), accel, eff), price_per_hour)
        for s in sizes
    ]
    ax1.loglog([PRESETS[s].n_params for s in sizes], dollars, "o-", label=f"{arch} at {eff:.0%} MFU")
ax1.set_xlabel("parameters")
ax1.set_ylabel(f"USD for 300B tokens on {gpu} at {price_per_hour} USD/h")
ax1.legend()
cfg = PRESETS["14B"]
ctx = cost.flops_vs_context(cfg.n_layer, cfg.n_embd, cfg.vocab_size, [2**e for e in range(10, 21)])
ax2.loglog(ctx["context"], ctx["rwkv_flops_per_token"], "o-", label="RWKV-4 (40 x 5120)")
ax2.loglog(ctx["context"], ctx["transformer_flops_per_token"], "s-", label="transformer, same depth and width")
half = ctx[ctx["transformer_attention_share"] >= 0.5]
if len(half):
    ax2.axvline(int(half["context"].min()), color="gray", ls=":", label="attention >= half of the FLOPs")
ax2.set_xlabel("training context T")
ax2.set_ylabel("training FLOPs per token")
ax2.legend(fontsize=8)
display(ctx.assign(transformer_attention_share=ctx["transformer_attention_share"].round(3)))
save_figure(
    fig,
    results_dir() / "figures" / "04_cost.png",
    {"gpu": gpu, "price_per_hour": price_per_hour, "rwkv_mfu": rwkv_mfu, "pythia_mfu": pythia_mfu},
)
plt.show()


# %% [markdown]
# ## Try it
#
# Sliders for parameters, tokens, GPU, price and efficiency (live in Jupyter). Executed headless, the table below
# gives the same function at a few settings.

# %%
display(
    pd.DataFrame(
        [
            {"params_B": p, "tokens_B": t, "gpu": g, "efficiency": e}
            | cost.run_estimate(p, t, g, price_per_hour, e, n_gpus)
            for p, t in ((1.5, 300), (14.2, 330))
            for g in cost.ACCELERATORS
            for e in (rwkv_mfu, 0.5)
        ]
    ).round({"GPU-hours": 0, "days": 1, "$": 0})
)
if interactive:
    import ipywidgets as widgets

    ui = widgets.interactive(
        lambda **kw: print({k: round(v, 1) for k, v in cost.run_estimate(**kw).items()}),
        params_B=widgets.FloatLogSlider(value=params_B, base=10, min=-1, max=2.5),
        tokens_B=widgets.FloatLogSlider(value=tokens_B, base=10, min=0, max=4),
        gpu=widgets.Dropdown(options=list(cost.ACCELERATORS), value=gpu),
        price=widgets.FloatSlider(value=price_per_hour, min=0.1, max=10, step=0.05),
        efficiency=widgets.FloatSlider(value=round(rwkv_mfu, 3), min=0.05, max=0.8, step=0.01),
        gpus=widgets.IntSlider(value=n_gpus, min=1, max=4096),
    )
    display(ui)
