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
# # 06 · Trains like a transformer
#
# RWKV's parallel form lets it train on whole sequences at once, like a transformer. Here RWKV-7, RWKV-4 and a
# GPT-NeoX (Pythia-style, transformers with SDPA attention) of the same width and depth are trained the same way on
# the same bytes (the Python standard library, split by file), with `rwkv_lab.training.trainer`.
#
# On a CPU the notebook trains a tiny trio live; it then plots the committed GPU runs
# (`python benchmarks/train_compare.py`, three sizes, contexts 512 and 4096, each architecture at two learning rates),
# the released sizes' training speed, the attempts at retraining the default model, and samples from the shipped
# default (`rwkv_lab/loading/default_model/MODEL_CARD.md`). Last, the RWKV-7 paper's expressivity claim as a small
# experiment: tracking state (composing permutations; parity) on inputs longer than those trained on.

# %% tags=["parameters"]
device = "cpu"
live_model = "byte-2x64"  # 'byte-<layers>x<width>' or a preset
live_context = 128
live_batch = 8
live_tokens = 60_000  # per architecture
live_archs = ["rwkv7", "rwkv4", "transformer"]
live_threads = 1  # torch CPU threads for the live runs: their ops are too small to split across cores
rwkv7_compare_tags = ["_default_rwkv7_40M", "_0.1B"]  # benchmarks/train_compare.py --tags of the GPU runs with RWKV-7
# state tracking: the live run (tiny), then the committed runs of benchmarks/state_tracking.py (--tag), where present
tracking_task = "parity"
tracking_model = "byte-2x64"
tracking_train_length = 16
tracking_test_length = 64
tracking_steps = 400
tracking_batch = 64
tracking_lr = 1e-2
tracking_tags = ["_gpu", ""]
sample_prompt = "def "
sample_tokens = 300

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from rwkv_lab.models.rwkv4.config import get_config
from rwkv_lab.results import find_result, results_dir, save_figure, write_table
from rwkv_lab.training import TrainConfig, Trainer, bits_per_byte
from rwkv_lab.training.corpus import build_corpus, unigram_loss
from rwkv_lab.training.report import (
    arch_label,
    bench_training_run,
    best_and_final,
    canonical_archs,
    chosen_curves,
    chosen_runs,
    compare_run,
    context_gap_shares,
    kernel_time_by_kind,
    per_token_activations,
    plot_curves,
    plot_kernel_time,
    side_by_side,
    sweep_edges,
    unfinished_runs,
)
from rwkv_lab.training.state_tracking import cpu_threads

corpus = build_corpus()
unigram_bpb = bits_per_byte(unigram_loss(corpus), corpus.val_bytes_per_token)
print(corpus.summary())
print(f"unigram baseline: {unigram_bpb:.3f} bits per byte")

# %% [markdown]
# ## Live: a tiny trio on this machine

# %% tags=["timings"]
live = []
for arch in live_archs:
    cfg = TrainConfig(
        arch=arch,
        model=live_model,
        context=live_context,
        batch_size=live_batch,
        tokens=live_tokens,
        eval_every=max(1, live_tokens // (live_batch * live_context) // 4),
        warmup_steps=10,
        eval_tokens=16 * live_context,
        device=device,
        lr=3e-3,
    )
    trainer = Trainer(cfg, corpus)
    with cpu_threads(live_threads if device == "cpu" else None):
        live.append(trainer.run())
live = pd.concat(live, ignore_index=True)
params = {"model": live_model, "context": live_context, "batch": live_batch, "tokens": live_tokens, "device": device}
params["archs"] = live_archs
# live times and memory move from run to run: not compared, so a rerun that trained the same curves leaves the
# committed file as it is
write_table(
    results_dir() / "training" / "06_live_curves.csv",
    live,
    params,
    device=device,
    volatile=("tokens_per_s", "train_seconds", "peak_memory_bytes"),
)
display(live.dropna(subset=["val_bpb"])[["arch", "params", "step", "tokens", "val_bpb", "tokens_per_s"]])
for arch, run in live.groupby("arch", sort=False):
    final = run.dropna(subset=["val_bpb"]).iloc[-1]
    print(
        f"{arch_label(arch)} ({int(final['params']):,} parameters): {final['val_bpb']:.3f} bits/byte after "
        f"{int(final['tokens']):,} tokens, {run['tokens_per_s'].iloc[len(run) // 2 :].median():,.0f} tokens/s on {device}"
    )
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
plot_curves(live, axes, unigram_bpb, f"live, {device}")
plt.show()

# %% [markdown]
# ## The GPU runs
#
# Same recipe for both architectures (AdamW with warm-up and cosine decay, bf16 autocast; the tokens, tokens per
# step and learning rates of each context are printed below), the same batches, RWKV-4 on its fused blocks and the
# transformer through torch.compile. Each (architecture, size, context) ran at every rate of a small sweep; the
# comparisons read the run with the lower final validation bits/byte (`chosen`). Validation bits per byte against
# tokens and against training FLOPs per token as `rwkv_lab.cost` counts them: 3·2(VD + 13D²L) for RWKV-4 (V the
# vocabulary, D the width, L the layers) and 3·(2(VD + 12D²L) + 4LDT) for the transformer.

# %%
runs = {tag: compare_run(tag) for tag in ("", "_T4096")}  # (summary, curves, provenance), names as the registry's
summary = pd.concat([run[0] for run in runs.values()])
curves = chosen_curves(pd.concat([run[1] for run in runs.values()]), summary)  # of a sweep, the chosen run of each
metas = {tag: run[2] for tag, run in runs.items()}
meta = metas[""]
gpu = meta["device"]
corpus_meta = meta["params"]["corpus"]
print(
    f"corpus: Python {meta['python']} standard library, {corpus_meta['files_sha256'][:12]}, "
    f"{corpus_meta['train_tokens']:,} training tokens"
)
for run in metas.values():
    p = run["params"]
    print(
        f"T = {p['contexts']}: measured on {run['device']} at commit {run['git_commit'][:10]}, {p['tokens']:,} tokens "
        f"({p['tokens'] / corpus_meta['train_tokens']:.1f} epochs), {p['tokens_per_step']:,} tokens per step, "
        f"peak learning rate {p.get('lrs', p.get('lr'))}"
    )
gpu_unigram = meta["params"]["unigram_val_bpb"]
sweep = summary[summary["status"] == "ok"].pivot_table(
    index=["model", "context"], columns=["arch", "lr"], values="val_bpb", sort=False
)
display(sweep.round(3))
run_keys = ["arch", "model", "context"]
ran = summary[summary["status"] == "ok"]
top = ran.groupby(run_keys, as_index=False)["lr"].max().rename(columns={"lr": "top_lr"})
edge = chosen_runs(summary).merge(top, on=run_keys)
# the runs each command planned (its sizes x architectures x rates) that have no finished row
skipped = pd.concat([unfinished_runs(summary, run["params"]) for run in metas.values()], ignore_index=True)
print(
    f"{int((edge['lr'] == edge['top_lr']).sum())} of the {len(edge)} chosen runs are at the highest rate that ran; "
    f"{len(skipped)} planned run(s) did not finish"
    + "".join(
        f"\n  {r['arch']} {r['model']} T = {r['context']} lr {r['lr']:g}: {r['status']}" for _, r in skipped.iterrows()
    )
    + "\na wider sweep could move the chosen runs further"
)
table = side_by_side(summary)
display(table.round(3))
for _, r in table.iterrows():
    print(
        f"{r['model']} at T = {r['context']}: RWKV-4 {r['val_bpb_rwkv4']:.3f} vs the transformer "
        f"{r['val_bpb_transformer']:.3f} bits/byte, at {r['speed_ratio_rwkv4_over_tf']:.2f}x its tokens/s and "
        f"{r['memory_ratio_rwkv4_over_tf']:.2f}x its peak memory"
    )
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
for row, context in zip(axes, (512, 4096)):
    plot_curves(curves[curves["context"] == context], row, gpu_unigram, f"context {context}, {gpu}")
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "06_training_curves.png", {"source": "results/training"})
plt.show()

# %% [markdown]
# Throughput and memory at the two contexts: the transformer's attention grows with T, RWKV's cost per token
# does not. These runs launched each step kernel by kernel; at these widths (128 to 384) a step is a few
# milliseconds of GPU work spread over many small kernels, and what the host's launches cost is measured further
# down, where the same widths train with each step replayed from a CUDA graph.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
ok = chosen_runs(summary).copy()
ok["label"] = ok["model"] + " T=" + ok["context"].astype(str)
for ax, value, unit in ((ax1, "tokens_per_s", "training tokens / s"), (ax2, "peak_memory_GiB", "peak memory, GiB")):
    pivot = ok.pivot_table(index="label", columns="arch", values=value, sort=False)
    pivot.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(unit)
    ax.set_title(gpu, fontsize=9)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "06_training_throughput.png", {"source": "results/training"})
plt.show()

# %% [markdown]
# ## Released sizes on one GPU: RWKV-4's fused blocks beside Pythia
#
# `benchmarks/bench_training.py`: one optimizer step (forward, backward, fused AdamW, bf16 autocast) of RWKV-4 at
# 169M, 430M and 1.5B with random weights of the official scale, on its training path (blocks through
# torch.compile around the Triton WKV, the head's vocabulary padded to aligned rows), beside the size-matched
# Pythia through torch.compile (SDPA attention), the same tokens per step, in one run, each step replayed from a
# CUDA graph as the trainer's are (the `cuda_graph` column says where a capture failed and the step ran kernel by
# kernel). The profile of each step (`--profile`) says where the GPU time goes; set beside the step's wall time
# (below), the difference is what the host adds, or, where the wall time is the shorter, the profiler's own cost.

# %%
speed, speed_meta = bench_training_run()
steps = pd.read_csv(find_result("training_speed/training_mfu.csv"))
by_kind = kernel_time_by_kind(pd.read_csv(find_result("training_speed/training_kernels.csv")))
print(
    f"measured on {speed_meta['device']}, commit {speed_meta['git_commit'][:10]}, {speed_meta['date_utc'][:10]}, "
    f"{int(speed['tokens_per_step'].iloc[0]):,} tokens per step"
)
display(steps[["variant", "size", "context", "cuda_graph", "step_ms", "tokens_per_s"]].round(1))
display(
    speed[["size", "context", "rwkv_tokens_per_s", "pythia_tokens_per_s", "speed_ratio"]]
    .join(speed[["rwkv_peak_mem_GiB", "pythia_peak_mem_GiB", "memory_ratio", "rwkv_mfu_vs_measured_peak"]])
    .round(3)
)
timed = by_kind.merge(steps[["variant", "size", "context", "step_ms"]], on=["variant", "size", "context"])
for _, r in speed.iterrows():
    ours = timed[(timed["variant"] == "RWKV-4") & (timed["size"] == r["size"]) & (timed["context"] == r["context"])]
    ours = ours.iloc[0]
    longer = "longer" if ours["step_ms"] > ours["device_ms"] else "shorter"
    print(
        f"{r['size']} at T = {r['context']}: RWKV-4 trains at {r['speed_ratio']:.2f}x Pythia's tokens/s with "
        f"{r['memory_ratio']:.2f}x its peak memory; its step is {ours['step_ms']:.1f} ms of wall time for "
        f"{ours['device_ms']:.1f} ms of profiled GPU work (the wall time {longer}; "
        f"{ours['matmul'] / ours['device_ms']:.0%} matmuls, {ours['WKV (Triton)'] / ours['device_ms']:.0%} the WKV)"
    )
fig, ax = plt.subplots(figsize=(12, 4))
plot_kernel_time(by_kind, ax, f"one training step by kernel kind, {speed_meta['device']}")
fig.tight_layout()
save_figure(
    fig,
    results_dir() / "figures" / "06_training_kernels.png",
    {"source": "results/training_speed/training_kernels.csv"},
)
plt.show()

# %% [markdown]
# ### How the step got here
#
# The runs that measured each change on the way to this path (the step launched kernel by kernel, then replayed
# from a CUDA graph, the compiled loss, the kept matmul outputs, the LayerNorm and mix kernels, the partitioner's
# memory budgets) are superseded by the run above: they are kept, with their provenance, under
# `results/history/training_speed/` and `results/history/training/` (`results/README.md` lists them), and no
# figure here reads them. The current T = 4096 comparison at the three small widths, on the current blocks:

# %%
widths = pd.read_csv(find_result("training/summary_T4096_norm_mix.csv"))
widths_meta = pd.read_json(find_result("training/summary_T4096_norm_mix.meta.json"), typ="series")
wide = widths.pivot_table(index="model", columns="arch", values="tokens_per_s", sort=False)
wide = wide.assign(ratio=wide["rwkv"] / wide["transformer"])
display(wide.round(2))
for model, r in wide.iterrows():
    print(
        f"{model} at T = 4096 ({widths_meta['device']}, commit {widths_meta['git_commit'][:10]}): RWKV-4 at "
        f"{r['ratio']:.2f}x the transformer's tokens/s, one run each"
    )

# %% [markdown]
# ### What a training step keeps for the backward
#
# `benchmarks/saved_activations.py` counts, with autograd's saved-tensor hooks, what one training step keeps for
# its backward per layer and token (on the CPU: the compiler's partitioner, which decides what a compiled graph
# keeps, is the same on both devices), for RWKV-4's blocks (eager; fused keeping only the outputs of the matmuls
# and of the WKV and the LayerNorm and mix kernels' mixes, the matmuls' inputs, the default
# `saved_activations = "matmuls"`; fused as the partitioner chooses at several
# `activation_memory_budget`s), for RWKV-7's (eager; fused keeping the matmuls' and the operator's outputs, and as
# the partitioner chooses) and for the matched GPT-NeoX layer. Scaled to the GPU run's 1.5B shape, that count
# is set beside the measured peak-memory difference.

# %%
kept = pd.read_csv(find_result("training/saved_activations.csv"))
kept_meta = pd.read_json(find_result("training/saved_activations.meta.json"), typ="series")
kinds = pd.read_csv(find_result("training/saved_activations_by_kind.csv"))
print(
    f"counted on {kept_meta['device']} (torch {kept_meta['torch']}; the GPU run: {speed_meta['torch']}), "
    f"commit {kept_meta['git_commit'][:10]}, width {kept['width'].iloc[0]}"
)
display(kinds)
grows = per_token_activations(kinds, int(kept["width"].iloc[0]))
display(grows.round(2))
# the run of the default as counted here (the LayerNorm and mix kernels' mixes kept)
default_run, default_meta = bench_training_run()
big = default_run[(default_run["size"] == "1.5B") & (default_run["context"] == 1024)].iloc[0]
layers, width = get_config("1.5B").n_layer, get_config("1.5B").n_embd  # Pythia-1.4b has the same two
per_tensor_gib = 2 * width * layers * big["tokens_per_step"] / 2**30  # one bf16 (tokens, C) tensor in every layer
tf = grows[(grows["arch"] == "transformer") & (grows["path"] == "compiled")].iloc[0]["bf16_BTC_tensors_per_layer"]
for _, r in grows[grows["path"] == "fused"].iterrows():
    n = r["bf16_BTC_tensors_per_layer"]
    matmuls = (
        "the matmuls' inputs and outputs" if r["arch"] in ("rwkv", "rwkv4") else "the matmuls' and operator's outputs"
    )
    how = (
        f"keeping {matmuls}"
        if r["saved_activations"] == "matmuls"
        else f"as the partitioner chooses at activation_memory_budget {r['activation_memory_budget']:g}"
    )
    print(
        f"fused {r['arch']} {how}: {n:.1f} bf16 (tokens, C) "
        f"tensors per layer against the compiled GPT-NeoX layer's {tf:.1f}; at 1.5B ({layers} layers, C = {width}, "
        f"{int(big['tokens_per_step']):,} tokens per step) {(n - tf) * per_tensor_gib:+.1f} GiB"
    )
print(
    f"measured at 1.5B on {default_meta['device']} (commit {default_meta['git_commit'][:10]}, saved_activations "
    f"{TrainConfig.saved_activations!r}): RWKV-4's peak is {big['rwkv_peak_mem_GiB'] - big['pythia_peak_mem_GiB']:+.1f} "
    "GiB against Pythia's"
)

# %%
default = speed[speed["context"] == 1024]
print(
    f"the default keeps the matmuls' outputs (TrainConfig.saved_activations = {TrainConfig.saved_activations!r}): "
    f"peak memory {default['memory_ratio'].min():.2f}-{default['memory_ratio'].max():.2f}x Pythia's at "
    f"{default['speed_ratio'].min():.2f}-{default['speed_ratio'].max():.2f}x its tokens/s at T = 1024"
)

# %% [markdown]
# ## At T = 4096 both train slower per token: the context, or the batch?
#
# At the same tokens per step a step at T = 4096 draws 8x fewer independent windows than one at T = 512.
# `benchmarks/context_effect.py` separates the two: a third run trains at T = 512 on exactly the T = 4096 run's
# tokens, cut into 512-token windows (`TrainConfig.span`); all three are scored on the same 512-token validation
# windows. (The transformer is causal at T = 4096, tested, so a masking bug is ruled out.)

# %%
effect = pd.read_csv(find_result("training/context_effect.csv"))
effect_meta = pd.read_json(find_result("training/context_effect.meta.json"), typ="series")
display(effect[["arch", "run", "batch_size", "val_bpb_own_context", "val_bpb_at_512", "tokens_per_s"]].round(3))
shares = context_gap_shares(effect)
display(shares.round(3))
run_params = effect_meta["params"]
for _, r in shares.iterrows():
    print(
        f"{'RWKV-4' if r['arch'] == 'rwkv' else 'the transformer'} ({run_params['size']}, "
        f"{run_params['tokens']:,} tokens, {effect_meta['device']}): trained at T = 4096 it ends {r['gap']:.3f} "
        f"bits/byte behind T = 512 on the same windows; trained at T = 512 on the T = 4096 run's tokens it is "
        f"{r['cut'] - r['short']:.3f} behind, so {r['batch_share']:.0%} of the gap comes with the fewer draws per "
        f"step and {1 - r['batch_share']:.0%} with the context: the cause is {r['cause']}"
    )

# %% [markdown]
# ## Retraining the default: how many epochs the corpus gives
#
# The default model is byte-6x256 trained at T = 512 on the standard library, on the fused path with RWKV-LM's
# recipe (`benchmarks/train_compare.py`, three runs: `--tag _default`, `_default_50M`, `_default_40M`). The corpus
# has about 10M training tokens, so more tokens means more epochs over the same files; the third run, sized from
# the first two, is the one shipped (its card below says which run it is).

# %%
retrain = []
for tag in ("_default", "_default_50M", "_default_40M"):
    runs = canonical_archs(pd.read_csv(find_result(f"training/curves{tag}.csv")))
    run_meta = pd.read_json(find_result(f"training/summary{tag}.meta.json"), typ="series")
    train_tokens = run_meta["params"]["corpus"]["train_tokens"]
    retrain.append(best_and_final(runs, train_tokens).assign(run=tag, device=run_meta["device"]))
    runs = runs.dropna(subset=["val_bpb"])
    for key, run in runs.groupby(["arch", "lr"]):
        length = f"{run_meta['params']['tokens'] / 1e6:.0f}M-token run"
        plt.plot(run["tokens"] / train_tokens, run["val_bpb"], label=f"{key[0]} lr {key[1]:g} ({length})")
retrain = pd.concat(retrain, ignore_index=True)
plt.xlabel("epochs over the training split")
plt.ylabel("validation bits / byte")
plt.ylim(top=1.6)
plt.legend(fontsize=8)
plt.title(f"byte-6x256, T = 512, {retrain['device'].iloc[0]}", fontsize=9)
save_figure(plt.gcf(), results_dir() / "figures" / "06_default_retrain.png", {"source": "results/training"})
plt.show()
display(retrain.round(3))
for _, r in retrain.iterrows():
    print(
        f"{r['arch']} at lr {r['lr']:g} over {r['final_epochs']:.1f} epochs: lowest {r['best_val_bpb']:.3f} bits/byte "
        f"at {r['best_at_epochs']:.1f} epochs, {r['final_val_bpb']:.3f} at the end"
    )

# %% [markdown]
# ## RWKV-7 beside RWKV-4 and the transformer on the GPU
#
# The same recipe and corpus with the second generation added (`python benchmarks/train_compare.py --archs
# rwkv7,rwkv,transformer --tag <tag>`), one run per tag: `byte-6x256` at `T = 512` on `40M` tokens, and the 0.1B
# class (`byte-12x768`, its parameter count printed below) on `10M`. Each architecture trains at the rates of its own
# sweep; the comparison reads each one's chosen run.

# %%
for tag in rwkv7_compare_tags:
    if not find_result(f"training/summary{tag}.csv").exists():
        print(f"results/training/summary{tag}.csv is not there yet: the GPU run has not been committed")
        continue
    trio, trio_curves, trio_meta = compare_run(tag)
    p = trio_meta["params"]
    print(
        f"{tag}: measured on {trio_meta['device']} at commit {trio_meta['git_commit'][:10]}, {p['tokens']:,} tokens, "
        f"{p['tokens_per_step']:,} tokens per step, rates {p.get('arch_lrs') or p['lrs']}"
    )
    display(
        trio[trio["status"] == "ok"]
        .pivot_table(index=["model", "context"], columns=["arch", "lr"], values="val_bpb", sort=False)
        .round(3)
    )
    trio_unfinished = unfinished_runs(trio, p)
    print(f"{len(trio_unfinished)} planned run(s) did not finish")
    chosen = chosen_runs(trio)
    display(chosen[["arch", "model", "lr", "params", "val_bpb", "tokens_per_s", "peak_memory_GiB"]].round(3))
    tf = chosen[chosen["arch"] == "transformer"].iloc[0]
    for _, r in chosen.iterrows():
        print(
            f"{arch_label(r['arch'])} {r['model']} ({int(r['params']):,} parameters) at lr {r['lr']:g}: "
            f"{r['val_bpb']:.3f} bits/byte, {r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_s'] / tf['tokens_per_s']:.2f}x "
            f"the transformer's), peak memory {r['peak_memory_GiB']:.2f} GiB"
        )
    for _, e in sweep_edges(trio).iterrows():
        print(
            f"{arch_label(e['arch'])} {e['model']}: its chosen rate {e['lr']:g} is the {e['edge']} it was given; "
            "its best may lie beyond the sweep"
        )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    model_names = ", ".join(chosen["model"].unique())
    title = f"{model_names}, {trio_meta['device']}"
    plot_curves(chosen_curves(trio_curves, trio), axes, trio_meta["params"]["unigram_val_bpb"], title)
    fig.tight_layout()
    save_figure(fig, results_dir() / "figures" / f"06_rwkv7_curves{tag}.png", {"source": "results/training"})
    plt.show()

# %% [markdown]
# ## Samples: each generation's shipped default vs its untrained self

# %%
import rwkv_lab
from rwkv_lab.loading.default import DEFAULTS, untrained_model

tokenizer = rwkv_lab.ByteTokenizer()
shipped = {}  # generation -> its trained default, where its weights are in the package
for arch, packaged in DEFAULTS.items():
    if not packaged.weights.exists():
        print(f"{packaged.label}: no trained default in the package yet ({packaged.weights.name} missing)")
        continue
    card = packaged.card()
    shipped[arch] = rwkv_lab.default_model(arch=arch)
    print(
        f"{packaged.label} default ({packaged.source!r}): {card['model']}, {card['params']:,} parameters, "
        f"{card['training']['tokens_seen']:,} tokens "
        f"({card['training']['tokens_seen'] / card['training']['corpus']['train_tokens']:.1f} epochs), "
        f"validation {card['training']['val_bpb']:.3f} bits/byte (unigram {card['training']['unigram_val_bpb']:.3f}), "
        f"lr {card['training']['lr']:g}, trained on {card['training']['device']} by `{card['training']['command']}`"
    )
with cpu_threads(live_threads if device == "cpu" else None):  # one token at a time: small ops
    for arch, trained in shipped.items():
        label = DEFAULTS[arch].label
        for name, model in (("trained default", trained), ("untrained", untrained_model(arch=arch))):
            text = rwkv_lab.generate(
                model,
                tokenizer,
                sample_prompt,
                max_new_tokens=sample_tokens,
                temperature=0.7,
                seed=0,
                new_document=True,
            )
            print(f"---- {label}, {name} ----")
            print(sample_prompt + text)
        for prompt in ("def main():\n", "import os\n"):
            # new_document: the prompt is a file's start (after end-of-text), as training saw every file's first bytes
            greedy = rwkv_lab.generate(trained, tokenizer, prompt, max_new_tokens=60, temperature=0, new_document=True)
            print(f"---- greedy continuation of {prompt!r} by the {label} default, at a file's start ----\n{greedy!r}")
default = shipped["rwkv4"]

# %% [markdown]
# ## The decays learn
#
# With RWKV-LM's recipe (`time_decay` at 2x and `time_first` at 3x the base rate, weight decay only on the
# matrices: `rwkv_lab.training.trainer.LR_SCALE`), training moves each channel's memory half-life ln 2 / w away
# from the official initialisation. Notebook 05 draws the spectra; here, per layer, the shipped default against
# the initialisation it started from.

# %%
from rwkv_lab.analysis.dynamics import decay_shift, decay_spectra

by_layer, shift = decay_shift(decay_spectra(default))
display(by_layer.round(3))
print(
    f"{shift['moved_over_10pct']:.0%} of the {shift['channels']} channels moved their half-life by more than 10%; "
    f"median factor {shift['median_factor']:.2f} (channels from {shift['min_factor']:.2f}x to "
    f"{shift['max_factor']:.2f}x); the longest half-life is {shift['longest']:.0f} tokens (initialisation "
    f"{shift['longest_init']:.0f})"
)

# %% [markdown]
# ## Tracking state past the lengths trained on
#
# The RWKV-7 paper shows that its state update (a decay plus a rank-one delta-rule term with vector-valued
# in-context learning rates) can track state that a diagonal recurrence like RWKV-4's, or a transformer of
# constant depth, cannot: composing permutations (the S5 word problem) and parity. The test here
# (`rwkv_lab.training.state_tracking`): each input is a permutation of n elements, and the answer at every position
# is the arrangement after applying all inputs so far (for `n = 2`, parity; S3 has `6` elements, S5 `120`). Every
# architecture trains at the same width and depth, with the same steps, batch and schedule, through the same
# trainer, on words of one length; each is then scored at every length up to a longer one, the positions past the
# training length never seen. A learning-rate sweep is decided on held-out words of the training length only.
#
# Live: a tiny version on this machine.

# %% tags=["timings"]
from rwkv_lab.training.state_tracking import summarise, train_word_problem, word_problem

group = word_problem(tracking_task)
tracking_logs, tracking_acc = [], []
for arch in live_archs:
    with cpu_threads(live_threads if device == "cpu" else None):
        log, acc = train_word_problem(
            group,
            arch,
            tracking_model,
            tracking_train_length,
            tracking_test_length,
            tracking_steps,
            batch_size=tracking_batch,
            lr=tracking_lr,
            device=device,
        )
    tracking_logs.append(log)
    tracking_acc.append(acc)
tracking_acc = pd.concat(tracking_acc, ignore_index=True)
tracking = summarise(pd.concat(tracking_logs, ignore_index=True), tracking_acc)
display(tracking[["task", "arch", "params", "val_loss", "within", "beyond", "longest_tenth", "solved_up_to"]].round(3))


def plot_tracking(acc, ax, title):
    for arch, run in acc.groupby("arch", sort=False):
        ax.plot(run["length"], run["accuracy"], label=f"{arch_label(arch)} ({int(run['params'].iloc[0]):,})")
    ax.axvline(acc["train_length"].iloc[0], color="gray", lw=0.8, ls="--", label="longest trained")
    ax.axhline(word_problem(acc["task"].iloc[0]).chance, color="gray", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("input length")
    ax.set_ylabel("accuracy of the answer")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def tell(table, where):
    for _, r in table.iterrows():
        print(
            f"{r['task']}, {arch_label(r['arch'])} ({where}): {r['within']:.3f} of the answers right up to the "
            f"trained length {int(r['train_length'])}, {r['beyond']:.3f} past it, {r['longest_tenth']:.3f} near "
            f"length {int(r['test_length'])} (chance {word_problem(r['task']).chance:.3f}); every length up to "
            f"{int(r['solved_up_to'])} at 95% or better"
        )


tell(tracking, f"live, {tracking_steps} steps, {device}")
fig, ax = plt.subplots(figsize=(6, 3.6))
plot_tracking(tracking_acc, ax, f"{tracking_task}, {tracking_model}, {tracking_steps} steps, live on {device}")
plt.show()

# %% [markdown]
# The committed runs (`benchmarks/state_tracking.py`: longer, more tasks, the chosen rate of each sweep).

# %%
from rwkv_lab.results import read_table

committed = [tag for tag in tracking_tags if find_result(f"state_tracking/summary{tag}.csv").exists()]
for tag in committed:
    table, meta = read_table(find_result(f"state_tracking/summary{tag}.csv"))
    acc, _ = read_table(find_result(f"state_tracking/accuracy{tag}.csv"))
    p = meta["params"]
    print(
        f"state_tracking{tag}: {meta['device']}, commit {meta['git_commit'][:10]}, {p['model']}, {p['steps']:,} "
        f"steps of {p['batch_size']} words of {p['train_length']}, rates {p['lrs']}, seeds {p['seeds']}"
    )
    table = table[table["chosen"]]
    display(table[["task", "arch", "lr", "seed", "params", "val_loss", "within", "beyond", "solved_up_to"]].round(3))
    tell(table, meta["device"])
    acc = acc.merge(table[["task", "arch", "lr", "seed"]])
    tasks = list(acc["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        plot_tracking(acc[(acc["task"] == task) & (acc["seed"] == acc["seed"].min())], ax, f"{task}, {meta['device']}")
    fig.tight_layout()
    save_figure(fig, results_dir() / "figures" / f"06_state_tracking{tag}.png", {"source": "results/state_tracking"})
    plt.show()
if not committed:
    print("no committed run of benchmarks/state_tracking.py yet")

# %% [markdown]
# How to read it: a run right on nearly every answer up to the trained length and at chance past it learned
# the training length, not a rule that holds at any length; `solved_up_to` says how far past it the answers stay
# right. A model whose state update can represent the composition (the paper's argument for RWKV-7) may still not
# find that solution by training at this size and budget: what the figure shows is what these runs found. The
# larger run (`--tag _gpu`, wider models, more steps, a rate sweep) is the one to read for the claim.
