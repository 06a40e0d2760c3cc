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
# # 01 · Two formulations, one function, two generations
#
# RWKV can be run as a **transformer** (all T tokens at once) or as an **RNN** (one token at a time, carrying a
# state of constant size). RWKV-4's parallel form is, per channel, a causal softmax over decayed keys (its state
# 5·C numbers per layer); RWKV-7's is its state update, a matrix per head changed by a generalised delta rule
# (its state C·N + 2·C numbers per layer), run in chunks. This notebook loads one model of each generation, runs
# one prompt both ways, and shows that they compute the same logits:
#
# 1. the parallel form over the whole prompt, with each of the operator's backends (the recurrence, the chunked
#    form, the explicit T × T form, and the GPU Triton kernel when the device is a GPU);
# 2. the RNN form, one `model.step` per token;
# 3. a parallel prefill of the first half, then RNN steps for the rest (how generation runs).
#
# Then the error of each formulation against T and dtype, both generations' implicit attention on the same text,
# and the speed of the two forms. The parameters cell selects the models: `"default"` is the embedded RWKV-4,
# `"default-rwkv7"` the embedded RWKV-7 (the same size, corpus and recipe), `"untrained-rwkv7"` that RWKV-7 at its
# official initialisation; or give a checkpoint path or a hub id (`RWKV/rwkv-4-169m-pile`,
# `fla-hub/rwkv7-168M-pile`).

# %% tags=["parameters"]
rwkv4_source = "default"  # 'default', a checkpoint path, or a hub id
rwkv7_source = "default-rwkv7"  # "default-rwkv7", "untrained-rwkv7", a checkpoint path, or a hub id
tokenizer_source = None  # None: each model's own (bytes for the defaults, GPT-NeoX-20B for the Pile models)
device = "cpu"
dtype = "float32"  # float64 | float32 | bfloat16 | float16
prompt = "The RWKV language model is an RNN with the advantages of a transformer: it trains in parallel, and it generates with a state of constant size."
prefill = None  # tokens run in parallel before stepping; None: half the prompt
backends = ["recurrent", "chunked", "attention"]  # the parallel form's backends; 'triton' is added on a GPU
study_lengths = [1, 16, 256, 1024]  # live numerics study (the committed ones go to 1M tokens for RWKV-4)
attention_layer = 2  # whose implicit attention matrix to draw
speed_lengths = [1, 4, 16, 64, 256]  # live timing of the two forms

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

import rwkv_lab
from rwkv_lab.models import architecture_of
from rwkv_lab.results import results_dir, save_figure, write_json

models = {}
for source in (rwkv4_source, rwkv7_source):
    model = rwkv_lab.load_model(source, dtype=dtype, device=device)
    name = architecture_of(model).name
    models[name] = (model, rwkv_lab.tokenizer_for(model, tokenizer_source))
    print(f"{name}: {model.source}")
    print(f"  {model.config}")
    print(f"  {model.num_params():,} parameters; state {model.config.state_numbers:,} numbers per sequence")

# %%
from rwkv_lab.analysis.equivalence import compare_backends, compare_formulations, step_all

if torch.device(device).type == "cuda" and "triton" not in backends:
    backends = [*backends, "triton"]
# float error of the dtype, with room for accumulation over the prompt; bugs are orders of magnitude larger
tolerance = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 3e-2, "float16": 1e-2}[dtype]
tables, reports = [], {}
for name, (model, tokenizer) in models.items():
    tokens = torch.tensor([tokenizer.encode(prompt)], device=device)
    rnn = step_all(model, tokens)  # the RNN form, once: what every other form is measured against
    tables.append(compare_backends(model, tokens, backends, reference=rnn).assign(model=name))
    # the default backend on this device, per position, and prefill + steps
    reports[name] = compare_formulations(model, tokens, prefill=prefill, reference=rnn)
    tables.append(
        pd.DataFrame(
            [{"backend": "prefill + steps", "T": reports[name]["T"]}
             | {"rel_err_logits": reports[name]["rel_err_logits_prefill"],
                "rel_err_state": reports[name]["rel_err_state_prefill"]}]
        ).assign(model=name)
    )  # fmt: skip
formulations = pd.concat(tables, ignore_index=True).set_index(["model", "backend"])
display(formulations.style.format("{:.3e}", subset=[c for c in formulations.columns if c.startswith("rel_err")]))
worst = formulations.filter(like="rel_err").max(axis=1)
match = bool((worst <= tolerance).all())
print(f"tolerance {tolerance:g} for {dtype}; largest relative error per generation:")
for name, err in worst.groupby(level="model").max().items():
    print(f"  {name}: {err:.3e} (backend {worst.loc[name].idxmax()})")
print("match:", match)
assert match

# %% [markdown]
# Per position, the largest difference in any logit between the parallel form (its default backend on this
# device) or prefill + steps and the RNN form, both generations. The differences are float rounding: they do not
# grow along the sequence.

# %%
fig, axes = plt.subplots(1, len(reports), figsize=(7 * len(reports), 3.5), sharey=True, squeeze=False)
floor = torch.finfo(getattr(torch, dtype)).tiny
for ax, (name, report) in zip(axes[0], reports.items()):
    ax.semilogy([max(d, floor) for d in report["max_abs_dlogit_parallel"]], ".-", label="parallel vs RNN")
    ax.semilogy(
        [max(d, floor) for d in report["max_abs_dlogit_prefill"]],
        ".-",
        label=f"prefill {report['prefill']} + steps vs RNN",
    )
    ax.axvline(report["prefill"] - 0.5, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("position t")
    ax.set_title(f"{name}: {models[name][0].source}, {dtype}, {device}", fontsize=9)
    ax.legend(fontsize=8)
axes[0][0].set_ylabel("max |Δ logit|")
params = {
    "models": {name: model.source for name, (model, _) in models.items()},
    "dtype": dtype,
    "device": device,
    "prompt": prompt,
    "backends": backends,
}
save_figure(fig, results_dir() / "figures" / "01_equivalence.png", params, device=device)
write_json(
    results_dir() / "01_equivalence.json",
    {
        "per_position": reports,
        "backends": formulations.reset_index().to_dict("records"),
        "match": match,
        "tolerance": tolerance,
    },
    params,
    device=device,
)
plt.show()

# %% [markdown]
# ## Error vs sequence length and dtype
#
# Every formulation of each generation's operator against its float64 recurrence: RWKV-4's WKV on inputs with the
# official initialisation's decays and on extreme ones (`|k| <= 80`, decays `1e-4` to `1e3`); RWKV-7's state
# update on inputs formed as the model forms them and on extreme ones (every decay at one end of RWKV-7's range,
# in-context learning rates 0 or 1, `|r|, |k|, |v| <= 10`). Live here at small sizes; below, the committed CPU
# studies (`python benchmarks/wkv_numerics.py --operator rwkv4` to 1M tokens, `--operator rwkv7` to 16k) drawn
# with each GPU kernel's check as squares (`results/wkv/wkv_kernel_check.json`,
# `results/wkv7/wkv7_kernel_check.json`), each file's run printed with it. bf16 and fp16 rows include the
# rounding of the inputs themselves.

# %%
from pathlib import Path

from rwkv_lab.analysis.wkv_error import OPERATORS, plot_study, run_study
from rwkv_lab.results import find_result, read_table

fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), sharey=True, squeeze=False)
for row, name in zip(axes, models):
    live = run_study(study_lengths, channels=16, operator=OPERATORS[name])
    print(f"{OPERATORS[name].name}: non-finite values in any formulation: {int(live['nonfinite'].sum())}")
    plot_study(live, title=f"{OPERATORS[name].name} (live, C = 16)", axes=row)
plt.show()

# %%
committed = {name: find_result(OPERATORS[name].study_file) for name in models}
drawn = {name: path for name, path in committed.items() if path.exists()}
for name in set(committed) - set(drawn):
    print(f"{OPERATORS[name].name}: no committed study yet ({committed[name].name}; the lead runs the benchmark)")
if drawn:
    fig, axes = plt.subplots(len(drawn), 2, figsize=(12, 4.2 * len(drawn)), sharey=True, squeeze=False)
    for row, (name, path) in zip(axes, drawn.items()):
        operator = OPERATORS[name]
        study, study_meta = read_table(path)
        print(f"{operator.name} CPU study: {study_meta['device']}, commit {study_meta['git_commit'][:10]}, "
              f"{study_meta['date_utc'][:10]}, T up to {int(study['T'].max()):,}")  # fmt: skip
        check = None
        if (check_path := find_result(operator.kernel_check_file)).exists():
            check_file = json.loads(check_path.read_text())
            meta = check_file["provenance"]
            print(f"{operator.name} GPU kernel check: {meta['device']}, commit {meta['git_commit'][:10]}, "
                  f"{meta['date_utc'][:10]}")  # fmt: skip
            check = operator.kernel_check(check_file["results"])
        plot_study(study, check, title=operator.name, axes=row)
    plt.show()

# %% [markdown]
# ## The implicit attention matrix, both generations on the same text
#
# The parallel form is attention. RWKV-4: for each channel, output t is a softmax-weighted average of the values
# of tokens 0..t, with scores `k_i - (t-1-i) w` (and `u + k_t` for the current token): no query, each row sums to
# one. RWKV-7: for each head, `y_t = sum_i alpha[t, i] v_i` with `alpha[t, i] = k_i^T A_{i+1} ... A_t r_t`, the
# key carried through the transitions and read by the query `r_t`: unnormalised and signed, rows summing to
# anything (the current token's bonus term is not in it). Below, one layer of each on the same prompt: the channel
# (RWKV-4) or head (RWKV-7) that attends nearest, the one that attends farthest (the |weight|-weighted distance
# t - i, read from the matrix), and the mean; drawn as sign(w)·sqrt(|w|), each panel on its own scale.

# %%
from rwkv_lab.analysis.implicit_attention import attention_profile, implicit_attention

fig, axes = plt.subplots(len(models), 3, figsize=(15, 4.8 * len(models)), squeeze=False)
for row, (name, (model, tokenizer)) in zip(axes, models.items()):
    tokens = torch.tensor([tokenizer.encode(prompt)[:64]], device=device)
    layer = min(attention_layer, model.config.n_layer - 1)
    weights = implicit_attention(model, tokens, layer).double().cpu()  # (T, T, C) or (T, T, H)
    profile = attention_profile(weights)
    near, far = int(profile["span"].argmin()), int(profile["span"].argmax())
    unit = "channel" if weights.shape[2] == model.config.n_embd else "head"
    print(
        f"{name} layer {layer}: {weights.shape[2]} {unit}s; rows sum to {profile['row_sum_min']:.3g} .. "
        f"{profile['row_sum_max']:.3g}; negative share of |weight| {profile['negative_share']:.3f}; "
        f"mean distance attended {profile['span'].min():.2f} ({unit} {near}) .. {profile['span'].max():.2f} "
        f"({unit} {far}) tokens"
    )
    panels = [
        (weights[:, :, near], f"{unit} {near}: attends {profile['span'][near]:.2f} back (nearest)"),
        (weights[:, :, far], f"{unit} {far}: attends {profile['span'][far]:.2f} back (farthest)"),
        (weights.mean(dim=2), f"mean over {unit}s"),
    ]
    labels = [tokenizer.decode([t]) for t in tokens[0].tolist()]
    for ax, (matrix, title) in zip(row, panels):
        shown = (matrix.sign() * matrix.abs().sqrt()).numpy()
        limit = max(float(abs(shown).max()), 1e-12)
        im = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"{name} layer {layer}, {title}", fontsize=9)
        ax.set_xlabel("attended token i")
        ax.set_ylabel("output position t")
        ax.set_xticks(range(len(labels)), [repr(c)[1:-1] for c in labels], fontsize=5, rotation=90)
        fig.colorbar(im, ax=ax, shrink=0.8, label="sign(w) sqrt(|w|)")
fig.suptitle(" | ".join(f"{name}: {model.source}" for name, (model, _) in models.items()), fontsize=9)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "01_implicit_attention.png", params, device=device)
plt.show()

# %% [markdown]
# ## Speed: parallel vs recurrent
#
# Processing T tokens in one parallel call vs T recurrent steps (live, on this machine), both generations; then
# the GPU benchmarks of each operator alone: RWKV-4's WKV from `results/wkv/wkv_benchmark.csv`
# (`python benchmarks/bench_wkv.py`) beside the peers measured in the same run (its `backend` column), and
# RWKV-7's from `results/wkv7/wkv7_gpu_benchmark.csv` (`python benchmarks/bench_wkv7.py`) beside fla's kernels.

# %% tags=["timings"]

from rwkv_lab.analysis.equivalence import time_formulations

fig, ax = plt.subplots(figsize=(6, 3.8))
for i, (name, (model, _)) in enumerate(models.items()):
    speed = time_formulations(model, speed_lengths)
    faster = speed[speed["parallel_s"] < speed["recurrent_s"]]
    print(name)
    print(speed.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"{name}: parallel form faster from T =", int(faster["T"].min()) if len(faster) else "never (in this range)")
    ax.loglog(speed["T"], speed["parallel_tokens_per_s"], "o-", color=f"C{i}", label=f"{name} parallel (one call)")
    ax.loglog(speed["T"], speed["recurrent_tokens_per_s"], "s--", color=f"C{i}", label=f"{name} recurrent (T steps)")
ax.set_xlabel("tokens T")
ax.set_ylabel("tokens / s")
ax.set_title(f"{', '.join(model.source for model, _ in models.values())}, {device}", fontsize=8)
ax.legend(fontsize=7)
# a figure of live timings: rewritten only when what it shows besides the times changes (the lengths, the models)
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
    print(f"RWKV-4 WKV: measured on {meta['device']}, copy bandwidth {bench['copy_GBps'].iloc[0]:.0f} GB/s")
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
    ax.set_title(f"RWKV-4 WKV forward, one sequence, fp32, {meta['device']}", fontsize=9)
    ax.legend(fontsize=7)
    plt.show()
bench7_csv = find_result("wkv7/wkv7_gpu_benchmark.csv")
if bench7_csv.exists():
    bench7, meta7 = read_table(bench7_csv)
    print(f"RWKV-7 wkv7: measured on {meta7['device']}, commit {meta7['git_commit'][:10]}, {meta7['date_utc'][:10]}")
    display(bench7[["candidate", "B", "T", "C", "dtype", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_peak_MiB"]].round(3))
else:
    print("RWKV-7 wkv7: no GPU benchmark yet (python benchmarks/bench_wkv7.py on a GPU)")

# %% [markdown]
# ## Generation runs on the RNN form
#
# `rwkv_lab.stream` prefills the prompt in parallel, then samples one token at a time, carrying the state (the
# default models were trained on Python source, so they continue an English prompt in their own way).

# %%
for name, (model, tokenizer) in models.items():
    print(f"{name}: ", end="")
    for piece in rwkv_lab.stream(
        model, tokenizer, "The RWKV model", max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0
    ):
        print(piece, end="")
    print()
