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
# # 02 · Memory and speed against a transformer, across context lengths
#
# The seed's central claim: a transformer's attention grows with the context (quadratic compute, a KV cache that
# grows with every token) while RWKV's state is constant, 5·C·L numbers per sequence. Measured here with
# `rwkv_lab.measure.profiler` for RWKV-4 and the size-matched Pythia (transformers `GPTNeoXForCausalLM`, SDPA attention,
# its KV cache: what a user would run), random weights at the real shapes:
#
# - **prefill**: one parallel forward over T tokens (no grad, last position's logits): time and peak memory;
# - **generation** after a context of T tokens: memory held (weights + state or KV cache) and per-token latency;
# - **training**: forward + backward under bf16 autocast: peak memory and tokens/s;
#
# each beside the analytic memory model (`analytic_memory`). On a GPU (`device = "cuda"`) this notebook runs the
# sweep for `sizes`; on a CPU it runs a small live sweep (tiny configs, process memory) and plots the committed
# GPU sweep (`python benchmarks/profile_memory.py`, results in `results/profile/`; its device is printed with it).

# %% tags=["parameters"]
device = "cpu"
sizes = ["169M"]  # GPU mode: RWKV-4 sizes, each with its Pythia match (169M, 430M, 1.5B, 3B, 7B, 14B)
dtype = "bfloat16"
batch = 1
prefill_contexts = [64, 256, 1024]  # CPU defaults; on a GPU e.g. [512, ..., 65536]
generation_contexts = [64, 256, 1024, 4096]  # on a GPU e.g. [1024, ..., 2**20]
training_contexts = [64, 256]
compile_decode = None  # GPU: None for the library default (torch.compile + a CUDA graph), False for the graph only

# %% tags=["timings"]
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from rwkv_lab.measure.profiler import pair_subjects, rwkv_subject, sweep, transformer_subject
from rwkv_lab.measure.report import (
    crossover,
    kv_cache_limits,
    load_profiles,
    memory_ratio_table,
    oom_contexts,
    peer_summary,
    plot_kind,
)
from rwkv_lab.models.rwkv4.config import RWKVConfig
from rwkv_lab.models.rwkv4.model import build_model
from rwkv_lab.models.transformer.model import pythia_model
from rwkv_lab.results import find_result, read_table, results_dir, save_figure, write_table

if device == "cuda":
    subjects = [s for size in sizes for s in pair_subjects(size, getattr(torch, dtype), device, compile_decode)]
else:  # tiny stand-ins with the same structure: RWKV 4 x 128 and a GPT-NeoX of the same width and depth
    tiny = RWKVConfig(n_layer=4, n_embd=128, vocab_size=2048, name="tiny-4x128")
    subjects = [
        rwkv_subject(build_model(tiny, zero_projections=False), "RWKV-4 tiny-4x128"),
        transformer_subject(
            pythia_model(
                "pythia-160m",
                torch.float32,
                "cpu",
                num_hidden_layers=4,
                hidden_size=128,
                num_attention_heads=2,
                intermediate_size=512,
                vocab_size=2048,
            ),
            "GPT-NeoX tiny-4x128",
        ),
    ]
live = sweep(subjects, batch, prefill_contexts, generation_contexts, training_contexts)
params = {"device": device, "sizes": sizes if device == "cuda" else "tiny-4x128", "dtype": dtype, "batch": batch}
# live times and the process's resident memory move from run to run: not compared, so a rerun that measured the
# same sweep leaves the committed file as it is
write_table(
    results_dir() / "profile" / f"02_live_{device}.csv",
    live,
    params,
    device=device,
    volatile=("seconds", "tokens_per_s", "memory_bytes", "memory_GiB", "measured_over_predicted"),
)
display(
    live[
        ["model", "kind", "context", "status", "seconds", "tokens_per_s", "memory_GiB", "measured_over_predicted"]
    ].round(4)
)

# %% tags=["timings"]
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
plot_kind(live, axes[0], "generation", "memory_GiB", "memory held in generation (GiB)", batch)
plot_kind(live, axes[1], "generation", "seconds", "ms per generated token", batch, scale=1e3)
plot_kind(live, axes[2], "prefill", "seconds", "prefill seconds", batch)
fig.suptitle(f"live sweep on {device} (CPU: resident-set memory of the process)", fontsize=9)
plt.show()

# %% [markdown]
# ## The committed GPU sweep
#
# RWKV-4 169M / 1.5B / 7B against Pythia-160m / 1.4b / 6.9b in bf16, batch 1 (and batch 8 at 1.5B); generation
# contexts 1k to 1M tokens for RWKV and until out of memory for Pythia; `rwkv_package` and transformers' RWKV
# measured in the same runs. "compiled" rows: RWKV decoding through `torch.compile` + a CUDA graph. The four files
# come from more than one card (each file's device is printed below): a panel labels each curve with its card when
# it holds several, and every ratio or crossover takes both models from one card.

# %%
files = [find_result(f"profile/memory_profile{tag}.csv") for tag in ("_b1_small", "_b1_7B", "_b1_compiled", "_b8")]
gpu = load_profiles(files)
for f in files:
    meta = json.loads(f.with_suffix(".meta.json").read_text())
    print(f"{f.name}: {meta['device']}, commit {meta['git_commit'][:10]}, {meta['date_utc'][:10]}")
ours = gpu[gpu["arch"].isin(["rwkv", "transformer"])]
eager = ours[~ours["model"].str.contains("compiled")]
# The figure: the current sweep alone (benchmarks/profile_memory.py --tag _b1), one card, every path as a user
# takes it (RWKV decoding through generate's decoder, training through the trainer's fast path with fp32 weights,
# Pythia's training through torch.compile); each panel names that card
sweep_file = find_result("profile/memory_profile_b1.csv")
current = load_profiles([sweep_file])
card = current["device"].iloc[0]
sweep_meta = json.loads(sweep_file.with_suffix(".meta.json").read_text())
print(f"{sweep_file.name}: {card}, commit {sweep_meta['git_commit'][:10]}, {sweep_meta['date_utc'][:10]}")
panels = [
    ("generation", "memory_GiB", "memory held after T tokens (GiB)", 1, "memory held while generating"),
    ("generation", "seconds", "ms per generated token", 1e3, "decode-only latency per token"),
    ("generation end-to-end", "tokens_per_s", "generated tokens/s", 1, "end to end: prefill T, then decode"),
    ("prefill", "seconds", "prefill seconds (one call)", 1, "one prefill call"),
    ("training", "tokens_per_s", "training tokens/s (fwd + bwd, bf16 autocast)", 1, "training speed"),
    ("training", "memory_GiB", "training peak memory (GiB)", 1, "training memory"),
]
fig, axes = plt.subplots(2, 3, figsize=(18, 9))
for ax, (kind, value, ylabel, scale, title) in zip(axes.flat, panels):
    plot_kind(current, ax, kind, value, ylabel, scale=scale)
    ax.set_title(f"{title} (batch 1; {card})", fontsize=9)
capacity = current["gpu_total_bytes"].iloc[0]
axes[0, 0].axhline(capacity / 2**30, color="gray", ls=":", lw=0.8)
axes[0, 0].text(
    current["context"].max(), capacity / 2**30 * 1.05, f"{card}: {capacity / 2**30:.0f} GiB", fontsize=7, ha="right"
)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "02_memory_profile.png", {"files": [sweep_file.name]})
plt.show()

# %% [markdown]
# What bounds the training panels: one sequence per step (batch 1), forward and backward only, each launched kernel
# by kernel. At that size RWKV's step is bound by its launches (hundreds of small kernels per layer), not by the
# card; the trainer replays its whole step from a CUDA graph and trains on thousands of tokens per step. The
# training-speed comparison at that size is `benchmarks/bench_training.py`'s (results/training_speed/), printed
# beside this sweep's below, both from the files.

# %%
train = current[current["kind"] == "training"].pivot_table(index="context", columns="arch", values="tokens_per_s")
T_max = train.index.max()
step_ratio = train.loc[T_max].drop("transformer").iloc[0] / train.loc[T_max, "transformer"]
speed, speed_meta = read_table(find_result("training_speed/training_vs_pythia.csv"))
small = speed[speed["size"] == "169M"].iloc[0]
print(
    f"this sweep, batch 1 at T = {T_max}, kernel by kernel: RWKV-4 169M trains at {step_ratio:.2f}x pythia-160m's "
    f"tokens/s ({card}); bench_training, {int(small['tokens_per_step']):,} tokens per step at T = "
    f"{int(small['context'])}, each step replayed from a CUDA graph: {small['speed_ratio']:.2f}x, the median of "
    f"{int(small['rounds_compared'])} rounds, RWKV faster in {int(small['rwkv_won_rounds'])} ({speed_meta['device']})"
)

# %% [markdown]
# ### Where the transformer runs out, and how much more memory it needs
#
# A dotted line marks the first context that ran out of memory on its card. What bounds each curve: RWKV's held
# memory is its weights and a constant state; the transformer's is its weights and a KV cache growing with T, and
# where it stops here, either that cache or our harness's transient memory (prefill chunks, attention masks, full
# logits) ran out. Which one follows from where the KV cache alone fills the card: the analytic model, which the
# measured held memory matches at every context that ran (`kv_cache_limits`), says so per model and card below.
# A sweep can also stop at its time limit (`skipped (time)`), which bounds nothing about memory. The ratio table
# compares the memory held during generation at the same context (weights included); every comparison takes both
# models from one device (`one_device`).

# %%
display(oom_contexts(ours[ours["kind"] == "generation"]))
limits = kv_cache_limits(ours)
display(limits.round(4))
for _, r in limits.iterrows():
    stop = (
        f"out of memory at {int(r['first_oom']):,} tokens in the sweep"
        if r["first_oom"] is not None and r["first_oom"] == r["first_oom"]
        else f"no context ran out of memory in the sweep (longest measured {r['longest_ok']:,})"
    )
    skipped = ours[
        (ours["model"] == r["model"])
        & (ours["batch"] == r["batch"])
        & (ours["device"] == r["device"])
        & (ours["kind"] == "generation")
        & ours["status"].str.startswith("skipped")
    ]["context"]
    if len(skipped):
        stop += f", then stopped by the series' time limit before {int(skipped.min()):,}"
    print(
        f"{r['model']} (batch {r['batch']}, {r['device']}): {stop}; weights and KV cache alone fill the card's "
        f"{r['capacity_GiB']:.1f} GiB at {r['kv_cache_fills_memory_at']:,} tokens"
        + (f", so what ran out was {r['oom_from']}" if isinstance(r["oom_from"], str) else "")
        + f" (measured / analytic held memory at most {r['measured_over_predicted']:.3f} where both exist)"
    )
pairs = [("RWKV-4 169M", "pythia-160m"), ("RWKV-4 1.5B", "pythia-1.4b"), ("RWKV-4 7B", "pythia-6.9b")]
ratios = pd.concat([memory_ratio_table(ours, r, t).assign(pair=f"{r} / {t}") for r, t in pairs])
display(ratios.pivot_table(index="context", columns="pair", values="transformer_over_rwkv").round(2))
rows = []
for r, t in pairs:
    for rwkv in (r, r + " compiled"):
        for batch in sorted(set(ours.loc[ours["model"] == rwkv, "batch"]) & set(ours.loc[ours["model"] == t, "batch"])):
            checks = [("generation", "seconds")] + (
                [("prefill", "seconds"), ("generation", "memory_GiB")] if rwkv == r else []
            )
            for kind, value in checks:
                try:
                    better = crossover(ours, rwkv, t, kind, value, batch=batch)
                except ValueError as err:  # measured on different cards: no comparison
                    better = f"not compared: {err}"
                if better is None:  # crossover's None: never better, or nothing measured on one card by both
                    ok = ours[(ours["kind"] == kind) & (ours["status"] == "ok") & (ours["batch"] == batch)]
                    shared = any(
                        set(g.loc[g["model"] == rwkv, "context"]) & set(g.loc[g["model"] == t, "context"])
                        for _, g in ok.groupby("device")
                    )
                    better = "never, at the contexts both ran" if shared else "no same-card data"
                rows.append(
                    {
                        "pair": f"{rwkv} / {t}",
                        "batch": batch,
                        "kind": kind,
                        "value": value,
                        "RWKV better from T =": better,
                    }
                )
with pd.option_context("display.max_colwidth", 200):
    display(pd.DataFrame(rows))

# %% [markdown]
# ### RWKV against its peers, same weights, same run
#
# Prefill of 4096 tokens and per-token generation: ours (Triton WKV kernel; eager decoding through a CUDA graph,
# and compiled), the `rwkv` package (fp16, its CUDA kernel) and transformers' `RwkvForCausalLM` (its Python loop:
# its hub kernel is unreachable offline), one row per card and size. The bandwidth roofline of generation is that
# card's measured copy bandwidth over the weights' bytes per token.

# %%
peers = peer_summary(gpu, sizes=("169M", "1.5B", "7B"))
write_table(results_dir() / "profile" / "02_peer_summary.csv", peers, {"files": [f.name for f in files]})
display(peers.round(1))
# a ratio is read within one card and one run; the same ratio from another card's run is a different measurement
sweep_dtypes = sorted({json.loads(f.with_suffix(".meta.json").read_text())["params"]["dtype"] for f in files})
for _, r in peers.dropna(subset=["prefill ours / rwkv package"]).iterrows():
    print(
        f"{r['size']} prefill at T = 4096 on {r['device']} (the sweep: ours in {', '.join(sweep_dtypes)}, the "
        f"package in fp16): {r['prefill ours / rwkv package']:.2f}x the package's tokens/s"
    )

# %% [markdown]
# ### Generation through the public API
#
# What a user gets from `rwkv_lab.generate` (top-p sampling, text streamed), and from the decoder it replays per
# token, measured by `benchmarks/bench_generation.py` with the `rwkv` package on the same weights in the same run
# (the profiler above decodes through the same decoder). Ratios are taken within one file: one device, one run.

# %%
from rwkv_lab.measure.report import generation_summary, plot_generation_batches
from rwkv_lab.results import REPO_ROOT

gen_files = sorted((REPO_ROOT / "results" / "inference").glob("generation_gpu_*.csv"))
summaries = []
for path in gen_files:
    frame, meta = read_table(path)
    summaries.append(generation_summary(frame).assign(device=meta["device"], file=path.name))
user_path = pd.concat(summaries, ignore_index=True)
display(user_path.round(2))
for _, r in user_path.dropna(subset=["prefill ours / package"]).iterrows():
    print(
        f"{r['size']} prefill at T = {int(r['prefill T'])} on {r['device']} ({r['file']}: both fp16): "
        f"{r['prefill ours / package']:.2f}x the package's tokens/s; compare it only with rows of the same card"
    )
batch_file = next(p for p in gen_files if "1.5B" in p.name)
batches, batch_meta = read_table(batch_file)
fig, ax = plt.subplots(figsize=(6, 4))
plot_generation_batches(batches, ax, "1.5B")
ax.set_title(f"RWKV-4 1.5B fp16, {batch_meta['device']}", fontsize=9)
save_figure(fig, results_dir() / "figures" / "02_generation_batches.png", {"file": batch_file.name})
plt.show()
best = batches[(batches["path"] == "rwkv_lab.generate (top-p)") & (batches["prompt"] == 16)]
best = best.loc[best["tokens_per_s"].idxmax()]
print(
    f"At 1.5B ({batch_meta['device']}), generate's decoding steps reach {best['tokens_per_s']:,.0f} tokens/s at batch "
    f"{int(best['batch'])}; end to end, the call as a user makes it (its prompts prefilled one after another, then "
    f"decoded together) delivers {best['end_to_end_tokens_per_s']:,.0f}; at batch 1, "
    f"{user_path.loc[user_path['size'] == '1.5B', 'generate top-p tok/s'].iloc[0]:,.0f} decoding."
)
