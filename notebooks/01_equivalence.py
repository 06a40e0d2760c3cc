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
# # 01 · Two formulations, one function
#
# RWKV-4 can be run as a **transformer** (all T tokens at once, each channel a causal softmax over decayed keys)
# or as an **RNN** (one token at a time, carrying a constant-size state of 5·C·L numbers). This notebook loads a
# model, runs one prompt both ways, and shows that they compute the same logits:
#
# 1. the parallel form over the whole prompt;
# 2. the RNN form, one `model.step` per token;
# 3. a parallel prefill of the first half, then RNN steps for the rest (how generation runs).
#
# The parameters cell below selects the model: `"default"` is the embedded model (built in a second, no download),
# or give a checkpoint path or a hub id (`RWKV/rwkv-4-169m-pile`, `BlinkDL/rwkv-4-pile-169m`).

# %% tags=["parameters"]
model_source = "default"  # 'default', a checkpoint path, or a hub id
tokenizer_source = None  # None: the model's own (bytes for the default, GPT-NeoX-20B for the Pile models)
device = "cpu"
dtype = "float32"  # float64 | float32 | bfloat16 | float16
prompt = "The RWKV language model is an RNN with the advantages of a transformer: it trains in parallel, and it generates with a state of constant size."
prefill = None  # tokens run in parallel before stepping; None: half the prompt
study_lengths = [1, 16, 256, 1024]  # live numerics study (the committed one goes to 1M tokens)
attention_layer = 2  # whose implicit attention matrix to draw
speed_lengths = [1, 4, 16, 64, 256]  # live timing of the two forms

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch

import rwkv_lab
from rwkv_lab.results import results_dir, save_figure, write_json

model = rwkv_lab.load_model(model_source, dtype=dtype, device=device)
tokenizer = rwkv_lab.tokenizer_for(model, tokenizer_source)
print("model:", model.source)
print(model.config)
print(f"{model.num_params():,} parameters; state {model.config.state_numbers:,} numbers per sequence")

# %%
tokens = torch.tensor([tokenizer.encode(prompt)], device=device)
report = rwkv_lab.compare_formulations(model, tokens, prefill=prefill)
# float error of the dtype, with room for accumulation over the prompt; bugs are orders of magnitude larger
tolerance = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 3e-2, "float16": 1e-2}[dtype]
for key in ("rel_err_logits_parallel", "rel_err_logits_prefill", "rel_err_state_parallel", "rel_err_state_prefill"):
    print(f"{key:28s} {report[key]:.3e}")
match = max(report[k] for k in report if k.startswith("rel_err")) <= tolerance
print(f"T = {report['T']} tokens, prefill = {report['prefill']}; tolerance {tolerance:g} for {dtype}")
print("match:", match)
assert match

# %% [markdown]
# Per position, the largest difference in any logit between the parallel form (or prefill + steps) and the RNN
# form. The differences are float rounding: they do not grow along the sequence.

# %%
fig, ax = plt.subplots(figsize=(8, 3.5))
floor = torch.finfo(model.dtype).tiny
ax.semilogy([max(d, floor) for d in report["max_abs_dlogit_parallel"]], ".-", label="parallel vs RNN")
ax.semilogy(
    [max(d, floor) for d in report["max_abs_dlogit_prefill"]], ".-", label=f"prefill {report['prefill']} + steps vs RNN"
)
ax.axvline(report["prefill"] - 0.5, color="gray", lw=0.8, ls=":")
ax.set_xlabel("position t")
ax.set_ylabel("max |Δ logit|")
ax.set_title(f"{model.source}, {dtype}, {device}", fontsize=9)
ax.legend()
params = {"model": model.source, "dtype": dtype, "device": device, "prompt": prompt, "T": report["T"]}
save_figure(fig, results_dir() / "figures" / "01_equivalence.png", params, device=device)
write_json(
    results_dir() / "01_equivalence.json", {**report, "match": match, "tolerance": tolerance}, params, device=device
)
plt.show()

# %% [markdown]
# ## Error vs sequence length and dtype
#
# Every WKV formulation against the float64 recurrence, on inputs with the official initialisation's decays and
# on extreme ones (`|k| <= 80`, decays `1e-4` to `1e3`). Live here at small sizes; below, the committed CPU study
# (`python benchmarks/wkv_numerics.py`, `results/numerics/wkv_numerics.csv`) drawn with the current GPU kernel
# check (`results/wkv/wkv_kernel_check.json`) as squares, each file's run printed with it. bf16 and fp16 rows
# include the rounding of the inputs themselves.

# %%
from pathlib import Path

from IPython.display import display

from rwkv_lab.analysis.wkv_error import plot_study, run_study
from rwkv_lab.results import find_result, read_table

live = run_study(study_lengths, channels=16)
print("non-finite values in any formulation:", int(live["nonfinite"].sum()))
plot_study(live)
plt.show()
study, study_meta = read_table(find_result("numerics/wkv_numerics.csv"))
check_file = json.loads(find_result("wkv/wkv_kernel_check.json").read_text())
for what, meta in (("CPU study", study_meta), ("GPU kernel check", check_file["provenance"])):
    print(f"{what}: {meta['device']}, commit {meta['git_commit'][:10]}, {meta['date_utc'][:10]}")
plot_study(study, pd.DataFrame(check_file["results"]))
plt.show()

# %% [markdown]
# ## The implicit attention matrix
#
# The parallel form is attention: for each channel, output t is a softmax-weighted average of the values of
# tokens 0..t, with scores `k_i - (t-1-i) w` (and `u + k_t` for the current token). No query: the weights depend on
# the attended token's key and on distance. Below, one layer on the prompt: the channel with the fastest decay
# (nearly a bigram model), the slowest (a long running average), and the mean over channels.

# %%
from rwkv_lab.analysis.implicit_attention import implicit_attention

layer = min(attention_layer, model.config.n_layer - 1)
weights = implicit_attention(model, tokens[:, :64], layer).float().cpu()  # (T, T, C)
decay = torch.exp(model.blocks[layer].att.time_decay.float()).cpu()
fast, slow = int(decay.argmax()), int(decay.argmin())
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
panels = [
    (weights[:, :, fast], f"channel {fast}: w = {decay[fast]:.3g} (fastest decay)"),
    (weights[:, :, slow], f"channel {slow}: w = {decay[slow]:.3g} (slowest decay)"),
    (weights.mean(dim=2), "mean over channels"),
]
labels = [tokenizer.decode([t]) for t in tokens[0, :64].tolist()]
for ax, (matrix, title) in zip(axes, panels):
    im = ax.imshow(matrix.numpy() ** 0.5, cmap="magma", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("attended token i")
    ax.set_ylabel("output position t")
    if len(labels) <= 64:
        ax.set_xticks(range(len(labels)), [repr(c)[1:-1] for c in labels], fontsize=5, rotation=90)
fig.colorbar(im, ax=axes, shrink=0.8, label="sqrt(weight)")
fig.suptitle(f"layer {layer} of {model.source}", fontsize=9)
print(
    "rows sum to 1:",
    bool(torch.allclose(weights.sum(dim=1), torch.ones(weights.shape[0], weights.shape[2]), atol=1e-4)),
)
save_figure(fig, results_dir() / "figures" / "01_implicit_attention.png", params, device=device)
plt.show()

# %% [markdown]
# ## Speed: parallel vs recurrent
#
# Processing T tokens in one parallel call vs T recurrent steps (live, on this machine), then the GPU
# benchmark of the WKV operator alone from `results/wkv/wkv_benchmark.csv` (`python benchmarks/bench_wkv.py`),
# beside the peers measured in the same run (its `backend` column, printed below).

# %% tags=["timings"]

from rwkv_lab.analysis.equivalence import time_formulations

speed = time_formulations(model, speed_lengths)
faster = speed[speed["parallel_s"] < speed["recurrent_s"]]
print(speed.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
print("parallel form faster from T =", int(faster["T"].min()) if len(faster) else "never (in this range)")
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.loglog(speed["T"], speed["parallel_tokens_per_s"], "o-", label="parallel (one call)")
ax.loglog(speed["T"], speed["recurrent_tokens_per_s"], "s-", label="recurrent (T steps)")
ax.set_xlabel("tokens T")
ax.set_ylabel("tokens / s")
ax.set_title(f"{model.source}, {device}", fontsize=8)
ax.legend()
# a figure of live timings: rewritten only when what it shows besides the times changes (the lengths, the model)
save_figure(
    fig,
    results_dir() / "figures" / "01_speed_crossover.png",
    params | {"lengths": speed_lengths},
    device=device,
    drawn_from=speed[["T"]],
)
plt.show()

# %%
bench_csv = results_dir() / "wkv" / "wkv_benchmark.csv"
if not bench_csv.exists():
    bench_csv = Path("../results/wkv/wkv_benchmark.csv")
if bench_csv.exists():
    bench = pd.read_csv(bench_csv)
    meta = pd.read_json(bench_csv.with_suffix(".meta.json"), typ="series")
    print(f"measured on {meta['device']}, copy bandwidth {bench['copy_GBps'].iloc[0]:.0f} GB/s")
    print("backends in this run:", ", ".join(bench["backend"].unique()))
    bench["shape"] = bench.apply(lambda r: f"({r['B']},{r['T']},{r['C']})", axis=1)
    table = bench.pivot_table(index=["shape", "dtype"], columns="backend", values="fwd_ms", sort=False)
    display(table.round(3))
    one = bench[(bench["B"] == 1) & (bench["dtype"] == "fp32") & bench["fwd_ms"].notna()]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, g in one.groupby("backend"):
        g = g.sort_values("T")
        ax.loglog(g["T"], g["fwd_ms"], "o-", label=name)
    ax.set_xlabel("T (B = 1, C = 2048 up to 16k, 4096 at 64k)")
    ax.set_ylabel("forward ms")
    ax.set_title("WKV forward, one sequence, fp32", fontsize=9)
    ax.legend(fontsize=7)
    plt.show()

# %% [markdown]
# ## Generation runs on the RNN form
#
# `rwkv_lab.stream` prefills the prompt in parallel, then samples one token at a time, carrying the state (the
# default model was trained on Python source, so it continues an English prompt in its own way).

# %%
for piece in rwkv_lab.stream(model, tokenizer, "The RWKV model", max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0):
    print(piece, end="")
print()
