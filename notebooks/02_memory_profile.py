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
# grows with every token) while an RNN's state is constant. Both RWKV generations have one, of different sizes:
# RWKV-4 keeps 5 vectors of C per layer, RWKV-7 two token shifts and an N x N matrix per head and layer. Measured
# here with `rwkv_lab.measure.profiler` for RWKV-7, RWKV-4 and the size-matched Pythia (transformers
# `GPTNeoXForCausalLM`, SDPA attention, its KV cache: what a user would run), every path as a user takes it:
#
# - **prefill**: one parallel forward over T tokens (no grad, last position's logits): time and peak memory;
# - **generation** after a context of T tokens: memory held (weights + state or KV cache) and per-token latency,
#   the RWKV models decoding through `generate`'s decoder;
# - **training**: forward + backward under bf16 autocast with fp32 weights, through the trainer's fast path;
#
# each beside the analytic memory model (`analytic_memory`). The generations go through the registry: a model is
# a spec `'<generation>:<size>'` and what a sequence costs comes from the model itself (`state_bytes`, the KV
# cache's bytes per token). On the CPU this notebook runs a small live sweep of the byte-level default models and
# draws the GPU sweep `benchmarks/profile_memory.py` wrote (one card, one file per command).
#
# **Weights.** There are no RWKV-7 Pile weights offline, and timing and memory do not depend on the weights'
# values: the GPU sweep builds every model, RWKV-7 included, with random weights at the released shapes (each
# generation's official initialisation, at its scale).

# %% tags=["parameters"]
device = "cpu"
rwkv4_source = "default"  # the live sweep's RWKV-4 (CPU); a transformer matched to its shape runs beside it
rwkv7_source = "default-rwkv7"  # "default-rwkv7", "untrained-rwkv7", a checkpoint path, or a hub id
sizes = ["169M"]  # GPU mode: Pile shapes by their RWKV-4 size (169M, 430M, 1.5B), each with RWKV-7 and Pythia
dtype = "bfloat16"
batch = 1
prefill_contexts = [64, 256, 1024]  # CPU defaults; on a GPU e.g. [512, ..., 16384]
generation_contexts = [64, 256, 1024, 4096]  # on a GPU e.g. [1024, ..., 2**20]
end_to_end_contexts = [64]
training_contexts = [64, 256]
live_seconds = 40.0  # the live sweep's time budget (what it leaves unmeasured is recorded as such)
compile_decode = None  # GPU: None for the library default (torch.compile + a CUDA graph), False for the graph only

# %% [markdown]
# ## Bytes per sequence at the Pile shapes
#
# From each model's shapes (built on the meta device, nothing drawn): a recurrent model's `state_bytes` (its
# config's state numbers in fp32) beside the bytes of the state object `init_state(1)` allocates, and Pythia's KV
# cache per token of context in bf16; the last column is the context at which Pythia's KV cache (of the same size
# group) outgrows that state.

# %%
import json

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from rwkv_lab import load_model
from rwkv_lab.measure.profiler import PILE_SIZES, sequence_memory, subject_for, sweep
from rwkv_lab.measure.report import (
    crossover,
    kv_cache_limits,
    load_profiles,
    memory_ratio_table,
    peer_summary,
    pile_profiles,
    plot_kind,
    sweep_summary,
)
from rwkv_lab.models import architecture
from rwkv_lab.results import find_result, read_table, results_dir, save_figure, write_table

per_sequence = pd.concat(
    [sequence_memory(specs).assign(size_group=size) for size, specs in PILE_SIZES.items()], ignore_index=True
)
display(per_sequence)
for _, r in per_sequence.iterrows():
    if r["state_bytes"]:
        print(
            f"{r['model']}: {r['state_bytes']:,} bytes of state per sequence (the state object: "
            f"{r['state_object_bytes']:,}), whatever the context; its group's Pythia KV cache is larger from "
            f"{int(r['kv_cache_outgrows_state_at']):,} tokens on"
        )
    else:
        print(f"{r['model']}: KV cache {r['cache_bytes_per_token']:,} bytes per token of context (bf16)")

# %% [markdown]
# ## A live sweep on this machine
#
# On the CPU: the byte-level RWKV-4 and RWKV-7 (`rwkv4_source`, `rwkv7_source`) and a GPT-NeoX of RWKV-4's width,
# depth and vocabulary (random weights), within `live_seconds` (memory is the process's resident set). On a GPU
# (`device = "cuda"`): the Pile shapes of `sizes`, as the benchmark runs them.

# %% tags=["timings"]
plan = dict(
    prefill_contexts=prefill_contexts,
    generation_contexts=generation_contexts,
    end_to_end_contexts=end_to_end_contexts,
    training_contexts=training_contexts,
)
if device == "cuda":
    subjects = [spec for size in sizes for spec in PILE_SIZES[size]]
    live = sweep(subjects, batch, **plan, dtype=getattr(torch, dtype), device=device, compile=compile_decode)
else:
    rwkv4 = load_model(rwkv4_source)
    rwkv7 = load_model(rwkv7_source)
    gpt = architecture("transformer").build(rwkv4.config, context=max(generation_contexts))
    print(f"RWKV-4: {rwkv4.source}\nRWKV-7: {rwkv7.source}")
    subjects = [subject_for(m) for m in (rwkv4, rwkv7, gpt)]
    live = sweep(subjects, batch, **plan, seconds=live_seconds)
names = list(live["model"].unique())
params = {"device": device, "models": names, "dtype": dtype if device == "cuda" else "float32", "batch": batch}
# live times and the process's resident memory move from run to run: not compared, so a rerun that measured the
# same sweep leaves the committed file as it is
write_table(
    results_dir() / "profile" / f"02_live_{device}.csv",
    live,
    params,
    device=device,
    volatile=("seconds", "tokens_per_s", "memory_bytes", "memory_GiB", "measured_over_predicted", "status"),
)
display(
    live[
        ["model", "kind", "context", "status", "seconds", "tokens_per_s", "memory_GiB", "measured_over_predicted"]
    ].round(4)
)
skipped = live[live["status"].str.startswith("skipped")]
print(
    f"left unmeasured by the {live_seconds:.0f} s budget: {len(skipped)} of {len(live)} points"
    if device != "cuda"
    else ""
)

# %% tags=["timings"]
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
plot_kind(live, axes[0], "generation", "memory_GiB", "memory held in generation (GiB)", batch)
plot_kind(live, axes[1], "generation", "seconds", "ms per generated token", batch, scale=1e3)
plot_kind(live, axes[2], "prefill", "seconds", "prefill seconds", batch)
for ax, title in zip(axes, ("memory held while generating", "decode latency per token", "one prefill call")):
    ax.set_title(f"{title} (live, {device}; CPU: resident-set memory)", fontsize=9)
plt.show()

# %% [markdown]
# ## The GPU sweep: RWKV-7, RWKV-4 and Pythia on one card
#
# `benchmarks/profile_memory.py` runs the three families of one or more Pile sizes in one process, one model
# after another (each freed before the next is built), on one card, and writes one file
# (`results/profile/memory_profile_pile_<sizes>.csv`). Generation contexts run from 1k to 1M tokens or until out
# of memory; a time budget shares the command's minutes among the models, and what it left unmeasured is recorded
# as `skipped (time)`, which bounds nothing about memory. Each file is drawn on its own: every panel and every
# sentence below is that file's card.

# %%
files = pile_profiles()
if not files:
    print(
        "no three-generation GPU sweep yet: PYTHONPATH=$PWD python benchmarks/profile_memory.py --sizes 169M "
        "--budget-s 300 writes one"
    )
panels = [
    ("generation", "memory_GiB", "memory held after T tokens (GiB)", 1, "memory held while generating"),
    ("generation", "seconds", "ms per generated token", 1e3, "decode-only latency per token"),
    ("generation end-to-end", "tokens_per_s", "generated tokens/s", 1, "end to end: prefill T, then decode"),
    ("prefill", "seconds", "prefill seconds (one call)", 1, "one prefill call"),
    ("training", "tokens_per_s", "training tokens/s (fwd + bwd, bf16 autocast)", 1, "training speed"),
    ("training", "memory_GiB", "training peak memory (GiB)", 1, "training memory"),
]
sweeps = {}
for path in files:
    frame = load_profiles([path])
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    card = frame["device"].iloc[0]
    sweeps[path.name] = frame
    print(f"{path.name}: {card}, commit {meta['git_commit'][:10]}, {meta['date_utc'][:10]}")
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    for ax, (kind, value, ylabel, scale, title) in zip(axes.flat, panels):
        plot_kind(frame, ax, kind, value, ylabel, batch=int(frame["batch"].iloc[0]), scale=scale)
        ax.set_title(f"{title} ({card})", fontsize=9)
    capacity = frame["gpu_total_bytes"].iloc[0]
    if pd.notna(capacity):  # a GPU's file: its memory as a line
        axes[0, 0].axhline(capacity / 2**30, color="gray", ls=":", lw=0.8)
        axes[0, 0].text(
            frame["context"].max(), capacity / 2**30 * 1.05, f"{card}: {capacity / 2**30:.0f} GiB", fontsize=7,
            ha="right",
        )  # fmt: skip
    fig.tight_layout()
    save_figure(fig, results_dir() / "figures" / f"02_{path.stem}.png", {"file": path.name})
    plt.show()

    summary = sweep_summary(frame)
    display(summary.round(3))
    for _, r in summary.iterrows():
        per_seq = (
            f"{r['state_bytes']:,} bytes of state per sequence"
            if r["state_bytes"]
            else f"{r['cache_bytes_per_token']:,} bytes of KV cache per token"
        )
        gen = f"generation measured to {r['gen_longest']:,} tokens" if r["gen_longest"] == r["gen_longest"] else ""
        if r["gen_first_oom"] == r["gen_first_oom"] and r["gen_first_oom"] is not None:
            gen += f", out of memory at {int(r['gen_first_oom']):,}"
        if r["gen_first_skipped"] == r["gen_first_skipped"] and r["gen_first_skipped"] is not None:
            gen += f", {int(r['gen_first_skipped']):,} and longer left by the time budget"
        if r["held_GiB_longest"] == r["held_GiB_longest"] and r["held_GiB_longest"] is not None:
            gen += (
                f"; holds {r['held_GiB_shortest']:.3f} GiB at {int(r['gen_shortest']):,} tokens and "
                f"{r['held_GiB_longest']:.3f} GiB at {int(r['gen_longest']):,}, decoding "
                f"{r['ms_per_token_shortest']:.2f} then {r['ms_per_token_longest']:.2f} ms per token"
            )
        train = (
            f"; trains at {r['train_tokens_per_s']:,.0f} tokens/s at T = {int(r['train_longest']):,} "
            f"(peak {r['train_peak_GiB']:.2f} GiB)"
            if r["train_tokens_per_s"] == r["train_tokens_per_s"] and r["train_tokens_per_s"] is not None
            else ""
        )
        print(f"{r['model']} ({card}): {per_seq}; {gen}{train}")

# %% [markdown]
# ### Where the transformer runs out, and how much more memory it holds
#
# What bounds each curve: an RWKV model's held memory is its weights and a constant state; the transformer's is
# its weights and a KV cache growing with T. Where the transformer stopped, either that cache or the harness's
# transients ran out: the analytic model, which the measured held memory follows at every context that ran, says
# where the KV cache alone fills the card (`kv_cache_limits`). The ratios compare memory held during generation at
# the same context, and the crossovers the first context from which each RWKV stays better; every comparison is
# within one file.

# %%
for frame in sweeps.values():
    card = frame["device"].iloc[0]
    on_gpu = pd.notna(frame["gpu_total_bytes"].iloc[0])  # a card's memory to fill (a CPU smoke run has none)
    for _, r in kv_cache_limits(frame).iterrows() if on_gpu else ():
        print(
            f"{r['model']} ({card}): weights and KV cache alone fill the card's {r['capacity_GiB']:.1f} GiB at "
            f"{r['kv_cache_fills_memory_at']:,} tokens (measured / analytic held memory at most "
            f"{r['measured_over_predicted']:.3f})"
        )
    rows = []
    for _, group in per_sequence.groupby("size_group", sort=False):  # RWKV-7 and RWKV-4 beside their Pythia
        group = group[group["model"].isin(frame["model"])]
        recurrent = group.loc[group["arch"].map(lambda a: architecture(a).recurrent), "model"]
        for t in group.loc[~group["model"].isin(recurrent), "model"]:
            for rwkv in recurrent:
                for kind, value in (("generation", "memory_GiB"), ("generation", "seconds"), ("prefill", "seconds")):
                    better = crossover(frame, rwkv, t, kind, value)
                    rows.append({"pair": f"{rwkv} / {t}", "kind": kind, "value": value, "RWKV better from T =": better})
                ratio = memory_ratio_table(frame, rwkv, t)
                if len(ratio):
                    last = ratio.iloc[-1]
                    print(
                        f"at T = {int(last['context']):,} on {card}, {t} holds {last['transformer_over_rwkv']:.2f}x "
                        f"the memory {rwkv} holds ({last['transformer_GiB']:.3f} against {last['rwkv_GiB']:.3f} GiB)"
                    )
    if rows:
        display(pd.DataFrame(rows))

# %% [markdown]
# ### RWKV-4 against its peers, same weights, same run
#
# From the earlier RWKV-4 sweeps (169M, 1.5B and 7B against Pythia, committed under `results/profile/`; the `rwkv`
# package and transformers' RWKV take RWKV-4 checkpoints): prefill of 4096 tokens and per-token generation: ours (Triton WKV kernel; eager decoding through a CUDA graph,
# and compiled), the `rwkv` package (fp16, its CUDA kernel) and transformers' `RwkvForCausalLM` (its Python loop:
# its hub kernel is unreachable offline), one row per card and size. The bandwidth roofline of generation is that
# card's measured copy bandwidth over the weights' bytes per token.

# %%
peer_files = [find_result(f"profile/memory_profile{tag}.csv") for tag in ("_b1_small", "_b1_7B", "_b1_compiled", "_b8")]
for f in peer_files:
    meta = json.loads(f.with_suffix(".meta.json").read_text())
    print(f"{f.name}: {meta['device']}, commit {meta['git_commit'][:10]}, {meta['date_utc'][:10]}")
peers = peer_summary(load_profiles(peer_files), sizes=("169M", "1.5B", "7B"))
write_table(results_dir() / "profile" / "02_peer_summary.csv", peers, {"files": [f.name for f in peer_files]})
display(peers.round(1))
# a ratio is read within one card and one run; the same ratio from another card's run is a different measurement
sweep_dtypes = sorted({json.loads(f.with_suffix(".meta.json").read_text())["params"]["dtype"] for f in peer_files})
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
from rwkv_lab.measure.report import generation_summary, plot_generation_batches, rwkv4_gpu_generation_tables
from rwkv_lab.results import REPO_ROOT

gen_files = rwkv4_gpu_generation_tables(REPO_ROOT / "results" / "inference")
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

# %% [markdown]
# ### Batched generation end to end, both generations
#
# One `generate` call of 32 and of 128 prompts of mixed lengths (16 to 1,024 tokens), 128 new tokens each: the
# prompts prefilled together in one parallel pass (each to its own length and state), then decoded together. Set
# beside the decoder alone at the same batch, the prompts prefilled one at a time, and the first call at a batch
# size not seen before (`benchmarks/bench_generation.py --mixed-batches`; random weights at the released shapes).

# %%
from rwkv_lab.measure.report import batched_runs

# every run with mixed-prompt rows, each with which decode step it ran (its decoder check: compiled or fell back)
batched = batched_runs(REPO_ROOT / "results" / "inference")
if len(batched):
    display(batched.round(2))
    for _, r in batched.iterrows():
        print(
            f"{r['arch']} {r['size']}, {r['batch']} prompts ({r['device']}, decode step {r['step']}): "
            f"{r['end-to-end tok/s']:,.0f} tokens/s "
            f"end to end, {r['end to end / decoder']:.0%} of the decoder alone ({r['decoder alone tok/s']:,.0f})"
            + (
                f" where a prefill at the card's measured matrix throughput would allow at most "
                f"{r['end to end / decoder, ceiling']:.0%}; "
                if r["end to end / decoder, ceiling"] == r["end to end / decoder, ceiling"]  # not NaN: measured
                else "; "
            )
            + f"the prompts prefilled in one pass at {r['prefill one pass tok/s']:,.0f} tokens/s, "
            f"{r['prefill one pass tok/s'] / r['prefill one at a time tok/s']:.1f}x one at a time; a batch size not "
            f"seen before costs at most {r['new batch size, first call s (max)']:.1f} s on its first call"
        )
else:
    print("no batched generation measured yet (benchmarks/bench_generation.py --mixed-batches on a GPU)")
