"""Write the notebooks' source (no outputs) from the cell texts below, so diffs of notebooks stay reviewable.

Run `python scripts/make_notebooks.py` after editing; the executed copies live in results/notebooks/.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent


def notebook(cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, text in cells:
        if kind == "md":
            nb.cells.append(new_markdown_cell(text.strip()))
        else:
            cell = new_code_cell(text.strip())
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    return nb


EQUIVALENCE = [
    ("md", """
# 01 · Two formulations, one function

RWKV-4 can be run as a **transformer** (all T tokens at once, each channel a causal softmax over decayed keys)
or as an **RNN** (one token at a time, carrying a constant-size state of 5·C·L numbers). This notebook loads a
model, runs one prompt both ways, and shows that they compute the same logits:

1. the parallel form over the whole prompt;
2. the RNN form, one `model.step` per token;
3. a parallel prefill of the first half, then RNN steps for the rest (how generation runs).

The parameters cell below selects the model: `"default"` is the embedded model (built in a second, no download),
or give a checkpoint path or a hub id (`RWKV/rwkv-4-169m-pile`, `BlinkDL/rwkv-4-pile-169m`)."""),
    ("params", """
model_source = "default"  # 'default', a checkpoint path, or a hub id
tokenizer_source = None  # None: the model's own (bytes for the default, GPT-NeoX-20B for the Pile models)
device = "cpu"
dtype = "float32"  # float64 | float32 | bfloat16 | float16
prompt = "The RWKV language model is an RNN with the advantages of a transformer: it trains in parallel, and it generates with a state of constant size."
prefill = None  # tokens run in parallel before stepping; None: half the prompt
study_lengths = [1, 16, 256, 1024]  # live numerics study (the committed one goes to 1M tokens)
attention_layer = 2  # whose implicit attention matrix to draw
speed_lengths = [1, 4, 16, 64, 256]  # live timing of the two forms
"""),
    ("code", """
import matplotlib.pyplot as plt
import torch

import rwkv_lab
from rwkv_lab.results import results_dir, save_figure, write_json

model = rwkv_lab.load_model(model_source, dtype=dtype, device=device)
tokenizer = rwkv_lab.tokenizer_for(model, tokenizer_source)
print("model:", model.source)
print(model.config)
print(f"{model.num_params():,} parameters; state {model.config.state_numbers:,} numbers per sequence")
"""),
    ("code", """
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
"""),
    ("md", """
Per position, the largest difference in any logit between the parallel form (or prefill + steps) and the RNN
form. The differences are float rounding: they do not grow along the sequence."""),
    ("code", """
fig, ax = plt.subplots(figsize=(8, 3.5))
floor = torch.finfo(model.dtype).tiny
ax.semilogy([max(d, floor) for d in report["max_abs_dlogit_parallel"]], ".-", label="parallel vs RNN")
ax.semilogy([max(d, floor) for d in report["max_abs_dlogit_prefill"]], ".-", label=f"prefill {report['prefill']} + steps vs RNN")
ax.axvline(report["prefill"] - 0.5, color="gray", lw=0.8, ls=":")
ax.set_xlabel("position t")
ax.set_ylabel("max |Δ logit|")
ax.set_title(f"{model.source}, {dtype}, {device}", fontsize=9)
ax.legend()
params = {"model": model.source, "dtype": dtype, "device": device, "prompt": prompt, "T": report["T"]}
save_figure(fig, results_dir() / "figures" / "01_equivalence.png", params, device=device)
write_json(results_dir() / "01_equivalence.json", {**report, "match": match, "tolerance": tolerance}, params,
           device=device)
plt.show()
"""),
    ("md", """
## Error vs sequence length and dtype

Every WKV formulation against the float64 recurrence, on inputs with the official initialisation's decays and
on extreme ones (|k| up to 80, decays 1e-4 to 1e3). Live here at small sizes; the committed study below runs
to 1M tokens (`python benchmarks/wkv_numerics.py`, figure `results/figures/wkv_numerics.png`), with the GPU
kernel's own check (`results/wkv/wkv_kernel_check.json`) drawn as squares. bf16 and fp16 rows include the
rounding of the inputs themselves."""),
    ("code", """
from pathlib import Path

from IPython.display import Image, display

from rwkv_lab.numerics import plot_study, run_study

live = run_study(study_lengths, channels=16)
print("non-finite values in any formulation:", int(live["nonfinite"].sum()))
plot_study(live)
plt.show()
committed = results_dir() / "figures" / "wkv_numerics.png"
if not committed.exists():
    committed = Path("../results/figures/wkv_numerics.png")
if committed.exists():
    print("committed study:", committed)
    display(Image(filename=str(committed)))
"""),
    ("md", """
## The implicit attention matrix

The parallel form is attention: for each channel, output t is a softmax-weighted average of the values of
tokens 0..t, with scores `k_i - (t-1-i) w` (and `u + k_t` for the current token). No query: the weights depend on
the attended token's key and on distance. Below, one layer on the prompt: the channel with the fastest decay
(nearly a bigram model), the slowest (a long running average), and the mean over channels."""),
    ("code", """
from rwkv_lab.analysis import implicit_attention

layer = min(attention_layer, model.config.n_layer - 1)
weights = implicit_attention(model, tokens[:, :64], layer).float().cpu()  # (T, T, C)
decay = torch.exp(model.blocks[layer].att.time_decay.float()).cpu()
fast, slow = int(decay.argmax()), int(decay.argmin())
fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
panels = [(weights[:, :, fast], f"channel {fast}: w = {decay[fast]:.3g} (fastest decay)"),
          (weights[:, :, slow], f"channel {slow}: w = {decay[slow]:.3g} (slowest decay)"),
          (weights.mean(dim=2), "mean over channels")]
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
print("rows sum to 1:", bool(torch.allclose(weights.sum(dim=1), torch.ones(weights.shape[0], weights.shape[2]), atol=1e-4)))
save_figure(fig, results_dir() / "figures" / "01_implicit_attention.png", params, device=device)
plt.show()
"""),
    ("md", """
## Speed: parallel vs recurrent

Processing T tokens in one parallel call vs T recurrent steps (live, on this machine), then the GPU
benchmark of the WKV operator alone from `results/wkv/wkv_benchmark.csv` (`python benchmarks/bench_wkv.py`;
the peers `fla` and the `rwkv` package's CUDA kernel measured in the same run)."""),
    ("code", """
import pandas as pd

from rwkv_lab.equivalence import time_formulations

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
save_figure(fig, results_dir() / "figures" / "01_speed_crossover.png", params | {"lengths": speed_lengths}, device=device)
plt.show()
"""),
    ("code", """
bench_csv = results_dir() / "wkv" / "wkv_benchmark.csv"
if not bench_csv.exists():
    bench_csv = Path("../results/wkv/wkv_benchmark.csv")
if bench_csv.exists():
    bench = pd.read_csv(bench_csv)
    meta = pd.read_json(bench_csv.with_suffix(".meta.json"), typ="series")
    print(f"measured on {meta['device']}, copy bandwidth {bench['copy_GBps'].iloc[0]:.0f} GB/s")
    bench["shape"] = bench.apply(lambda r: f"({r.B},{r.T},{r.C})", axis=1)
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
"""),
    ("md", """
## Generation runs on the RNN form

`rwkv_lab.stream` prefills the prompt in parallel, then samples one token at a time, carrying the state. The
untrained default model produces noise; a real checkpoint produces text."""),
    ("code", """
for piece in rwkv_lab.stream(model, tokenizer, "The RWKV model", max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0):
    print(piece, end="")
print()
"""),
]

COST = [
    ("md", """
# 04 · What does it cost to train?

The seed blog post estimated the cost of training RWKV-4 14B: 6 FLOPs per parameter per token, 300B tokens,
A100s at 312 TFLOP/s, 64 GPUs for three months, about 16% efficiency. This notebook recomputes every line from
its inputs (`rwkv_lab.cost`; each number is also a test), then replaces the assumed efficiency with the
model FLOPs utilisation (MFU) we measured for a real training step on an H100
(`benchmarks/bench_training.py` → `results/cost/training_mfu.csv`), for RWKV-4 and the size-matched Pythia."""),
    ("params", """
gpu = "H100 SXM"  # A100 SXM | H100 SXM | H200 SXM
price_per_hour = 2.0  # $ per GPU-hour: a parameter to set to your quote, not a quote
params_B = 14.2  # RWKV-4 14B
tokens_B = 330
n_gpus = 64
interactive = True  # ipywidgets sliders (a static table is printed either way)
"""),
    ("code", """
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from rwkv_lab import cost
from rwkv_lab.results import REPO_ROOT, results_dir, save_figure

table = cost.seed_table()
display(table.style.format({"computed": "{:,.6g}"}))
seed = cost.seed_estimate()
checks = {"train_flops_14B_300B": round(seed["train_flops_14B_300B"] / 1e22, 2) == 2.52,
          "ideal_a100_hours": round(seed["ideal_a100_hours"]) == 22436,
          "actual_a100_hours": seed["actual_a100_hours"] == 140160,
          "achieved_efficiency": round(100 * seed["achieved_efficiency"], 1) == 16.0,
          "cost_actual_cheapest": round(seed["cost_actual_cheapest"]) == 110726,
          "cost_at_50pct_cheapest": round(seed["cost_at_50pct_cheapest"]) == 35449,
          "cost_actual_aws": round(seed["cost_actual_aws"]) == 574095}
print("every seed number reproduced:", all(checks.values()))
assert all(checks.values()), checks
"""),
    ("md", """
## Measured efficiency

One optimizer step (forward, backward, AdamW; bf16 autocast) timed on an H100, MFU against the measured bf16
matmul peak and against the datasheet. RWKV's FLOPs do not depend on the context; the transformer's grow with it."""),
    ("code", """
mfu_csv = results_dir() / "cost" / "training_mfu.csv"
if not mfu_csv.exists():
    mfu_csv = REPO_ROOT / "results" / "cost" / "training_mfu.csv"
mfu = pd.read_csv(mfu_csv)
ok = mfu[mfu["status"] == "ok"]
display(ok[["arch", "model", "context", "batch", "tokens_per_step", "step_ms", "tokens_per_s", "mfu_vs_measured_peak",
            "mfu_vs_datasheet", "peak_mem_GiB"]].round(3))
if (mfu["status"] == "oom").any():
    print("out of memory:", mfu[mfu["status"] == "oom"][["arch", "model", "context", "batch"]].to_dict("records"))
largest = ok[ok["context"] == 1024].sort_values("params").groupby("arch").last()
rwkv_mfu = float(largest.loc["RWKV-4", "mfu_vs_datasheet"])
pythia_mfu = float(largest.loc["Pythia", "mfu_vs_datasheet"])
print(f"largest measured at T=1024: RWKV-4 {largest.loc['RWKV-4', 'model']} MFU {rwkv_mfu:.1%} of the datasheet peak, "
      f"Pythia {largest.loc['Pythia', 'model']} {pythia_mfu:.1%}")
"""),
    ("md", """
## What would it cost today?

RWKV-4 14B on 330B tokens on the chosen GPU at our measured MFU (assumed to carry over from the largest size we
measured to 14B, which is the weakest link of this estimate), beside the seed's 50%."""),
    ("code", """
accel = cost.ACCELERATORS[gpu]
rows = []
for label, eff in [("measured RWKV-4 MFU", rwkv_mfu), ("measured Pythia MFU", pythia_mfu), ("seed's 50%", 0.5)]:
    hours = cost.gpu_hours(cost.training_flops(params_B * 1e9, tokens_B * 1e9), accel, eff)
    rows.append({"efficiency": label, "MFU": eff, "GPU-hours": hours,
                 f"days on {n_gpus} GPUs": cost.wall_clock_days(hours, n_gpus),
                 f"$ at {price_per_hour}/h": cost.cost(hours, price_per_hour)})
today = pd.DataFrame(rows)
display(today.style.format({"MFU": "{:.1%}", "GPU-hours": "{:,.0f}", f"days on {n_gpus} GPUs": "{:,.1f}",
                            f"$ at {price_per_hour}/h": "${:,.0f}"}))
"""),
    ("code", """
from rwkv_lab.config import PRESETS

sizes = ["169M", "430M", "1.5B", "3B", "7B", "14B"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for arch, eff in (("RWKV-4", rwkv_mfu), ("Pythia", pythia_mfu)):
    dollars = [cost.cost(cost.gpu_hours(cost.training_flops(PRESETS[s].n_params, 300e9), accel, eff), price_per_hour)
               for s in sizes]
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
save_figure(fig, results_dir() / "figures" / "04_cost.png", {"gpu": gpu, "price_per_hour": price_per_hour,
                                                           "rwkv_mfu": rwkv_mfu, "pythia_mfu": pythia_mfu})
plt.show()
"""),
    ("md", """
## Try it

Sliders for parameters, tokens, GPU, price and efficiency (live in Jupyter). Executed headless, the table below
gives the same function at a few settings."""),
    ("code", """
def estimate(params_B=14.2, tokens_B=330.0, gpu="H100 SXM", price=2.0, efficiency=0.3, gpus=64):
    hours = cost.gpu_hours(cost.training_flops(params_B * 1e9, tokens_B * 1e9), cost.ACCELERATORS[gpu], efficiency)
    return {"GPU-hours": round(hours), "days": round(cost.wall_clock_days(hours, gpus), 1), "$": round(hours * price)}


display(pd.DataFrame([{"params_B": p, "tokens_B": t, "gpu": g, "efficiency": e} | estimate(p, t, g, price_per_hour, e)
                      for p, t in ((1.5, 300), (14.2, 330)) for g in cost.ACCELERATORS for e in (rwkv_mfu, 0.5)]))
if interactive:
    import ipywidgets as widgets

    out = widgets.Output()
    ui = widgets.interactive(lambda **kw: print(estimate(**kw)),
                             params_B=widgets.FloatLogSlider(value=params_B, base=10, min=-1, max=2.5),
                             tokens_B=widgets.FloatLogSlider(value=tokens_B, base=10, min=0, max=4),
                             gpu=widgets.Dropdown(options=list(cost.ACCELERATORS), value=gpu),
                             price=widgets.FloatSlider(value=price_per_hour, min=0.1, max=10, step=0.05),
                             efficiency=widgets.FloatSlider(value=round(rwkv_mfu, 3), min=0.05, max=0.8, step=0.01),
                             gpus=widgets.IntSlider(value=n_gpus, min=1, max=4096))
    display(ui)
"""),
]

TRAINING = [
    ("md", """
# 06 · Trains like a transformer

RWKV-4's parallel form lets it train on whole sequences at once, like a transformer. Here both are trained the same
way on the same bytes (the Python standard library, split by file), with `rwkv_lab.train`: RWKV-4 and a GPT-NeoX
(Pythia-style, transformers with SDPA attention) of the same width and depth, parameters within 10%.

On a CPU the notebook trains a tiny pair live for a minute; it then plots the committed H100 runs
(`python benchmarks/train_compare.py`, three sizes, contexts 512 and 4096) and samples from the model those runs
produced, which ships as the suite's default (`rwkv_lab/default_model/MODEL_CARD.md`)."""),
    ("params", """
device = "cpu"
live_model = "byte-2x64"  # 'byte-<layers>x<width>' or a preset
live_context = 128
live_batch = 8
live_tokens = 60_000  # per architecture; a minute on two CPU cores
sample_prompt = "def "
sample_tokens = 300
"""),
    ("code", """
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from rwkv_lab.corpus import build_corpus, unigram_loss
from rwkv_lab.results import find_result, results_dir, save_figure, write_table
from rwkv_lab.train import TrainConfig, Trainer, bits_per_byte, plot_curves, side_by_side

corpus = build_corpus()
unigram_bpb = bits_per_byte(unigram_loss(corpus), corpus.val_bytes_per_token)
print(corpus.summary())
print(f"unigram baseline: {unigram_bpb:.3f} bits per byte")
"""),
    ("md", """
## Live: a tiny pair on this machine"""),
    ("code", """
live = []
for arch in ("rwkv", "transformer"):
    cfg = TrainConfig(arch=arch, model=live_model, context=live_context, batch_size=live_batch, tokens=live_tokens,
                      eval_every=max(1, live_tokens // (live_batch * live_context) // 4), warmup_steps=10,
                      eval_tokens=16 * live_context, device=device, lr=3e-3)
    trainer = Trainer(cfg, corpus)
    live.append(trainer.run())
live = pd.concat(live, ignore_index=True)
params = {"model": live_model, "context": live_context, "batch": live_batch, "tokens": live_tokens, "device": device}
write_table(results_dir() / "training" / "06_live_curves.csv", live, params, device=device)
display(live.dropna(subset=["val_bpb"])[["arch", "step", "tokens", "val_bpb", "tokens_per_s"]])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
plot_curves(live, axes, unigram_bpb, f"live, {device}")
plt.show()
"""),
    ("md", """
## The H100 runs

Same recipe for both architectures (AdamW, lr 1e-3 with warm-up and cosine decay, 32k tokens per step, bf16
autocast), the same batches. Validation bits per byte against tokens and against training FLOPs (6N per token for
RWKV, plus attention's 4·L·D·T for the transformer)."""),
    ("code", """
summary = pd.concat([pd.read_csv(find_result(f"training/summary{tag}.csv")) for tag in ("", "_T4096")])
curves = pd.concat([pd.read_csv(find_result(f"training/curves{tag}.csv")) for tag in ("", "_T4096")])
meta = pd.read_json(find_result("training/summary.meta.json"), typ="series")
gpu = meta["device"]
print(f"measured on {gpu}; corpus: Python {meta['python']} standard library, {meta['params']['corpus']['files_sha256'][:12]}")
gpu_unigram = meta["params"]["unigram_val_bpb"]
table = side_by_side(summary)
display(table.round(3))
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
for row, context in zip(axes, (512, 4096)):
    plot_curves(curves[curves["context"] == context], row, gpu_unigram, f"context {context}, {gpu}")
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "06_training_curves.png", {"source": "results/training"})
plt.show()
"""),
    ("md", """
Throughput and memory at the two contexts: the transformer's attention grows with T, RWKV's cost per token
does not; RWKV's elementwise work (token shift, mixes, the WKV operator) is not fused, which the small widths
here expose."""),
    ("code", """
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
ok = summary[summary["status"] == "ok"].copy()
ok["label"] = ok["model"] + " T=" + ok["context"].astype(str)
for ax, value, unit in ((ax1, "tokens_per_s", "training tokens / s"), (ax2, "peak_memory_GiB", "peak memory, GiB")):
    pivot = ok.pivot_table(index="label", columns="arch", values=value, sort=False)
    pivot.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(unit)
    ax.set_title(gpu, fontsize=9)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "06_training_throughput.png", {"source": "results/training"})
plt.show()
"""),
    ("md", """
## Samples: the shipped default vs its untrained self"""),
    ("code", """
import json

import rwkv_lab
from rwkv_lab.default import DEFAULT_CARD, untrained_model

card = json.loads(DEFAULT_CARD.read_text())
print(f"default model: {card['model']}, {card['params']:,} parameters, {card['training']['tokens_seen']:,} tokens, "
      f"validation {card['training']['val_bpb']:.3f} bits/byte (unigram {card['training']['unigram_val_bpb']:.3f})")
tokenizer = rwkv_lab.ByteTokenizer()
for name, model in (("trained default", rwkv_lab.default_model()), ("untrained", untrained_model())):
    text = rwkv_lab.generate(model, tokenizer, sample_prompt, max_new_tokens=sample_tokens, temperature=0.7, seed=0)
    print(f"---- {name} ----")
    print(sample_prompt + text)
"""),
]

MEMORY = [
    ("md", """
# 02 · Memory and speed against a transformer, across context lengths

The seed's central claim: a transformer's attention grows with the context (quadratic compute, a KV cache that
grows with every token) while RWKV's state is constant, 5·C·L numbers per sequence. Measured here with
`rwkv_lab.profiler` for RWKV-4 and the size-matched Pythia (transformers `GPTNeoXForCausalLM`, SDPA attention,
its KV cache: what a user would run), random weights at the real shapes:

- **prefill**: one parallel forward over T tokens (no grad, last position's logits): time and peak memory;
- **generation** after a context of T tokens: memory held (weights + state or KV cache) and per-token latency;
- **training**: forward + backward under bf16 autocast: peak memory and tokens/s;

each beside the analytic memory model (`analytic_memory`). On a GPU (`device = "cuda"`) this notebook runs the
sweep for `sizes`; on a CPU it runs a small live sweep (tiny configs, process memory) and plots the committed
H100 sweep (`python benchmarks/profile_memory.py`, results in `results/profile/`)."""),
    ("params", """
device = "cpu"
sizes = ["169M"]  # GPU mode: RWKV-4 sizes, each with its Pythia match (169M, 430M, 1.5B, 3B, 7B, 14B)
dtype = "bfloat16"
batch = 1
prefill_contexts = [64, 256, 1024]  # CPU defaults; on a GPU e.g. [512, ..., 65536]
generation_contexts = [64, 256, 1024, 4096]  # on a GPU e.g. [1024, ..., 2**20]
training_contexts = [64, 256]
compile_decode = False  # GPU: RWKV decodes through torch.compile + a CUDA graph
"""),
    ("code", """
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from rwkv_lab.config import RWKVConfig
from rwkv_lab.model import build_model
from rwkv_lab.profiler import (crossover, finish, load_profiles, memory_ratio_table, oom_contexts, pair_subjects,
                               plot_kind, pythia_model, rwkv_subject, sweep, transformer_subject)
from rwkv_lab.results import find_result, results_dir, save_figure, write_table

if device == "cuda":
    subjects = [s for size in sizes for s in pair_subjects(size, getattr(torch, dtype), device, compile_decode)]
else:  # tiny stand-ins with the same structure: RWKV 4 x 128 and a GPT-NeoX of the same width and depth
    tiny = RWKVConfig(n_layer=4, n_embd=128, vocab_size=2048, name="tiny-4x128")
    subjects = [rwkv_subject(build_model(tiny, zero_projections=False), "RWKV-4 tiny-4x128"),
                transformer_subject(pythia_model("pythia-160m", torch.float32, "cpu", num_hidden_layers=4,
                                                 hidden_size=128, num_attention_heads=2, intermediate_size=512,
                                                 vocab_size=2048), "GPT-NeoX tiny-4x128")]
live = sweep(subjects, batch, prefill_contexts, generation_contexts, training_contexts)
params = {"device": device, "sizes": sizes if device == "cuda" else "tiny-4x128", "dtype": dtype, "batch": batch}
write_table(results_dir() / "profile" / f"02_live_{device}.csv", live, params, device=device)
display(live[["model", "kind", "context", "status", "seconds", "tokens_per_s", "memory_GiB",
              "measured_over_predicted"]].round(4))
"""),
    ("code", """
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
plot_kind(live, axes[0], "generation", "memory_GiB", "memory held in generation (GiB)", batch)
plot_kind(live, axes[1], "generation", "seconds", "ms per generated token", batch, scale=1e3)
plot_kind(live, axes[2], "prefill", "seconds", "prefill seconds", batch)
fig.suptitle(f"live sweep on {device} (CPU: resident-set memory of the process)", fontsize=9)
plt.show()
"""),
    ("md", """
## The committed H100 sweep

RWKV-4 169M / 1.5B / 7B against Pythia-160m / 1.4b / 6.9b in bf16, batch 1 (and batch 8 at 1.5B); generation
contexts 1k to 1M tokens for RWKV and until out of memory for Pythia; `rwkv_package` and transformers' RWKV
measured in the same runs. "compiled" rows: RWKV decoding through `torch.compile` + a CUDA graph."""),
    ("code", """
files = [find_result(f"profile/memory_profile{tag}.csv") for tag in ("_b1_small", "_b1_7B", "_b1_compiled", "_b8")]
gpu = load_profiles(files)
gpu_name = gpu["device"].iloc[0]
print("measured on:", sorted(set(gpu["device"])))
ours = gpu[gpu["arch"].isin(["rwkv", "transformer"])]
fig, axes = plt.subplots(2, 2, figsize=(14, 9))
plot_kind(ours[~ours["model"].str.contains("compiled")], axes[0, 0], "generation", "memory_GiB",
          "memory held after T tokens (GiB)")
axes[0, 0].axhline(80, color="gray", ls=":", lw=0.8)
axes[0, 0].text(1100, 82, "80 GB card", fontsize=7)
plot_kind(ours, axes[0, 1], "generation", "seconds", "ms per generated token", scale=1e3)
plot_kind(ours[~ours["model"].str.contains("compiled")], axes[1, 0], "prefill", "seconds", "prefill seconds (one call)")
plot_kind(ours[~ours["model"].str.contains("compiled")], axes[1, 1], "training", "tokens_per_s",
          "training tokens/s (fwd + bwd, bf16)")
for ax in axes.flat:
    ax.set_title(f"batch 1, {gpu_name}", fontsize=9)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "02_memory_profile.png", {"files": [f.name for f in files]})
plt.show()
"""),
    ("md", """
### Where the transformer runs out, and how much more memory it needs

x marks the first context that ran out of memory on the 80 GB card. The ratio table compares the memory held
during generation at the same context (weights included)."""),
    ("code", """
display(oom_contexts(ours[ours["kind"] == "generation"]))
pairs = [("RWKV-4 169M", "pythia-160m"), ("RWKV-4 1.5B", "pythia-1.4b"), ("RWKV-4 7B", "pythia-6.9b")]
ratios = pd.concat([memory_ratio_table(ours, r, t).assign(pair=f"{r} / {t}") for r, t in pairs])
display(ratios.pivot_table(index="context", columns="pair", values="transformer_over_rwkv").round(2))
rows = []
for r, t in pairs:
    for kind, value in (("generation", "seconds"), ("prefill", "seconds"), ("generation", "memory_GiB")):
        rows.append({"pair": f"{r} / {t}", "kind": kind, "value": value,
                     "RWKV better from T =": crossover(ours, r, t, kind, value)})
    rows.append({"pair": f"{r} compiled / {t}", "kind": "generation", "value": "seconds",
                 "RWKV better from T =": crossover(ours, r + " compiled", t, "generation", "seconds")})
display(pd.DataFrame(rows))
"""),
    ("md", """
### RWKV against its peers, same weights, same run

Prefill of 4096 tokens and per-token generation: ours (Triton WKV kernel; eager decoding through a CUDA graph,
and compiled), the `rwkv` package (fp16, its CUDA kernel) and transformers' `RwkvForCausalLM` (its Python loop:
its hub kernel is unreachable offline). The bandwidth roofline of generation is the measured copy bandwidth over
the weights' bytes per token."""),
    ("code", """
import json

meta = json.loads(files[0].with_suffix(".meta.json").read_text())
bandwidth = meta["params"]["copy_bandwidth_Bps"]
gen = gpu[(gpu["kind"] == "generation") & (gpu["status"] == "ok") & (gpu["batch"] == 1)]
peers = []
for size in ("169M", "1.5B", "7B"):
    row = {"size": size}
    for label, name in (("ours", f"RWKV-4 {size}"), ("ours compiled", f"RWKV-4 {size} compiled"),
                        ("rwkv package", f"rwkv package {size}"), ("transformers RWKV", f"transformers RWKV {size}")):
        g = gen[gen["model"] == name]
        row[f"{label} tok/s"] = g.loc[g["context"] == g["context"].min(), "tokens_per_s"].iloc[0] if len(g) else None
    weights = gpu.loc[gpu["model"] == f"RWKV-4 {size}", "params"].iloc[0] * 2
    row["roofline tok/s"] = bandwidth / weights
    row["compiled % of roofline"] = 100 * row["ours compiled tok/s"] / row["roofline tok/s"]
    pre = gpu[(gpu["kind"] == "prefill") & (gpu["status"] == "ok")]
    ours_pre = pre[(pre["model"] == f"RWKV-4 {size}") & (pre["context"] == 4096)]["tokens_per_s"]
    pkg_pre = pre[pre["model"] == f"rwkv package {size}"]["tokens_per_s"]
    hf_pre = pre[pre["model"] == f"transformers RWKV {size}"]["tokens_per_s"]
    row |= {"prefill ours tok/s": ours_pre.iloc[0], "prefill rwkv package": pkg_pre.iloc[0],
            "prefill transformers RWKV": hf_pre.iloc[0], "ours / transformers RWKV": ours_pre.iloc[0] / hf_pre.iloc[0]}
    peers.append(row)
peers = pd.DataFrame(peers)
write_table(results_dir() / "profile" / "02_peer_summary.csv", peers, {"files": [f.name for f in files]})
display(peers.round(1))
"""),
]

LM_EVAL = [
    ("md", """
# 03 · lm-eval: the paper's zero-shot tasks, beside the published tables

`rwkv_lab.evaluation` registers an lm-eval backend, `rwkv_lab`, that runs each context once in the parallel form
and scores every continuation from a copy of its state (see its docstring). This notebook runs lm-eval with it
and sets our numbers beside the RWKV paper's and the Pythia paper's rows of the matching size.

- **Offline** (`data_dir` set, or `"auto"` finding `../shared/data/lm_eval`): lm-eval's own task definitions for
  `piqa`, `lambada_openai` and `arc_easy`, their data read from local files.
- **Online** (`data_dir = None`, on a connected machine): any lm-eval task, e.g. the paper's
  `rwkv_lab.eval_tasks.PAPER_TASKS`, with `model_source = "RWKV/rwkv-4-169m-pile"` to reproduce the 169M row.

With the embedded default model (5M parameters, trained on Python source code, byte-level) the English tasks sit
near chance: that run checks the pipeline, not the model. The command line equivalent:
`python -m rwkv_lab.evaluation --model rwkv_lab --model_args pretrained=default --tasks piqa`."""),
    ("params", """
model_source = "default"  # 'default', a checkpoint path, or a hub id (RWKV/rwkv-4-169m-pile)
tasks = ["piqa", "lambada_openai", "arc_easy"]
limit = 40  # documents per task; None for all
device = "cpu"
dtype = "float32"
data_dir = "auto"  # 'auto': ../shared/data/lm_eval if present; None: online (hub datasets)
batch_size = 16
"""),
    ("code", """
import json

import pandas as pd
from IPython.display import display

from rwkv_lab.eval_tasks import default_data_dir, run_lm_eval, side_by_side
from rwkv_lab.evaluation import RWKVLM
from rwkv_lab.results import atomic_write, find_result, provenance, results_dir, write_table

data = default_data_dir() if data_dir == "auto" else data_dir
lm = RWKVLM(pretrained=model_source, device=device, dtype=dtype, batch_size=batch_size)
print("model:", lm.model.source, f"({lm.model.num_params():,} parameters)")
print("tasks:", tasks, "offline from " + str(data) if data else "online (lm-eval's hub datasets)")
ours, raw = run_lm_eval(lm, tasks, limit=limit, data_dir=data)
params = {"model": lm.model.source, "tasks": tasks, "limit": limit, "device": device, "dtype": dtype,
          "data_dir": str(data) if data else "online"}
raw_json = json.dumps({"provenance": provenance(params, device), "lm_eval": {k: raw[k] for k in
                                                                              ("results", "configs", "versions", "n-samples")}},
                      indent=2, default=str)
atomic_write(results_dir() / "lm_eval" / "03_lm_eval.json", lambda tmp: tmp.write_text(raw_json))
write_table(results_dir() / "lm_eval" / "03_lm_eval.csv", ours, params, device=device)
display(ours)
"""),
    ("md", """
## Beside the published rows

Published numbers (in percent; LAMBADA perplexity as is) from `reference/` with their sources; `delta` is ours
minus published. The row size is the published model nearest to ours."""),
    ("code", """
size_B = lm.model.num_params() / 1e9
table = side_by_side(ours, size_B)
print(f"our model: {size_B:.3f}B parameters; nearest published rows shown")
display(table.round(2))
"""),
    ("md", """
## Throughput: our backend against lm-eval's `hf` backend on the same weights

`python benchmarks/bench_lm_eval.py`: a random RWKV-4 saved in transformers format and scored by both backends on
the same documents (the `hf` backend runs transformers' `RwkvForCausalLM`, whose CUDA kernel is downloaded from the
hub at run time and so unavailable offline: it ran its Python loop). `max_rel_diff_vs_hf` is the largest relative
difference of any request's log-likelihood between the two."""),
    ("code", """
for tag in ("_cpu", "_h100_1.5B"):
    path = find_result(f"lm_eval/throughput{tag}.csv")
    if path.exists():
        meta = pd.read_json(path.with_suffix(".meta.json"), typ="series")
        frame = pd.read_csv(path)
        print(f"{path.name}: {meta['device']}")
        display(frame[["backend", "task", "docs", "requests", "seconds", "docs_per_s", "params", "dtype",
                       "max_rel_diff_vs_hf", "hf_note"]])
        by = frame.pivot_table(index="task", columns="backend", values="docs_per_s")
        print("speed-up, docs/s ours over hf:", (by["rwkv_lab"] / by["hf"]).round(1).to_dict())
"""),
]

DYNAMICS = [
    ("md", """
# 05 · State dynamics: what the RNN keeps in its state

Everything RWKV knows about the past is in its state: per layer and channel the token-shift vectors and the WKV
sums (a, b, p), whose ratio a/b is a decayed average of past values. This notebook looks at that state on
held-out Python source with the shipped default model (trained on the standard library, byte-level, so every
character is a token), or any checkpoint given below (`rwkv_lab.dynamics` does the work):

1. **decay spectra**: each channel's memory half-life ln 2 / w in tokens, trained vs the official initialisation;
2. **state trajectories** over the text;
3. **implicit attention**: how much of each output comes from tokens older than k;
4. **influence**: how much later positions change when one token is replaced, by distance and layer;
5. **interpretable channels**, as in Karpathy, Johnson & Fei-Fei (2015): the state channels that best track
   position in line, indentation, bracket depth, strings and comments, chosen on the first half of the text and
   scored on the second half, shown as text coloured by activation.

The widgets at the end explore any text, layer and channel live in Jupyter; executed headless, the same figures
are drawn statically and exported to `results/figures/`."""),
    ("params", """
model_source = "default"  # 'default' or any checkpoint (byte-level models read characters; BPE models tokens)
text = None  # None: held-out Python (validation files, never trained on)
n_bytes = 8000
attention_layer = 1
influence_position = 2000
interactive = True  # show the ipywidgets explorer (static figures are drawn either way)
"""),
    ("code", """
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, display

import rwkv_lab
from rwkv_lab.dynamics import (attention_by_distance, best_channels, channel_correlations, code_features,
                               coloured_html, decay_spectra, heldout_code, influence, plot_coloured_text,
                               prose_features, record_trajectory, token_features, token_pieces)
from rwkv_lab.results import results_dir, save_figure, write_table

torch.set_grad_enabled(False)
model = rwkv_lab.load_model(model_source)
tokenizer = rwkv_lab.tokenizer_for(model)
text = text if text is not None else heldout_code(n_bytes)
tokens = torch.tensor(tokenizer.encode(text)[:n_bytes])
decoded = tokenizer.decode(tokens.tolist())
print(model.source, f"| {len(tokens)} tokens")
params = {"model": model.source, "n_tokens": len(tokens)}
"""),
    ("md", """
## 1 · Decay spectra

Training moves the half-lives away from the initialisation's smooth ramp: some channels become near-bigram
(half-life under a token), others keep memories for hundreds or thousands of tokens."""),
    ("code", """
spectra = decay_spectra(model)
L = model.config.n_layer
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
bins = np.logspace(-2, 5, 50)
for layer in range(L):
    g = spectra[spectra["layer"] == layer]
    axes[0].hist(g["half_life"].clip(1e-2, 1e5), bins=bins, histtype="step", label=f"layer {layer}",
                 color=plt.cm.viridis(layer / max(1, L - 1)))
    axes[0].hist(g["half_life_init"].clip(1e-2, 1e5), bins=bins, histtype="step", ls=":",
                 color=plt.cm.viridis(layer / max(1, L - 1)))
axes[0].set_xscale("log")
axes[0].set_xlabel("half-life ln 2 / w (tokens); dotted: official initialisation")
axes[0].set_ylabel("channels")
axes[0].legend(fontsize=7)
axes[1].scatter(spectra["half_life"].clip(1e-2, 1e5), spectra["u"], s=3, c=spectra["layer"], cmap="viridis")
axes[1].set_xscale("log")
axes[1].set_xlabel("half-life (tokens)")
axes[1].set_ylabel("time_first u (bonus of the current token)")
fig.suptitle(model.source, fontsize=9)
save_figure(fig, results_dir() / "figures" / "05_decay_spectra.png", params)
plt.show()
display(spectra.groupby("layer")[["half_life", "half_life_init", "u"]].median().round(3))
"""),
    ("md", """
## 2 · State trajectories

One parallel pass with read-only hooks, then the RNN form's state update over the recorded keys and values:
a/b per layer and channel after every token. Below, the norm of each layer's a/b vector and the 32 most variable
channels of one layer over the first 600 tokens."""),
    ("code", """
traj = record_trajectory(model, tokens)
logits, _ = model(tokens[None])
print("trajectory logits equal the model's:", bool(np.array_equal(traj.logits, logits[0].double().numpy())))
fig, axes = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True)
span = slice(0, min(600, len(tokens)))
norms = traj.state_norms[span]
for layer in range(L):
    axes[0].plot(norms[:, layer], lw=0.8, label=f"layer {layer}")
axes[0].set_ylabel("||a / b||")
axes[0].legend(fontsize=6, ncol=L)
x = traj.wkv[span, attention_layer]
top = np.argsort(-x.std(0))[:32]
axes[1].imshow(x[:, top].T, aspect="auto", cmap="RdBu_r", interpolation="nearest")
axes[1].set_ylabel(f"layer {attention_layer}: top-32 channels")
axes[1].set_xlabel("token position")
save_figure(fig, results_dir() / "figures" / "05_state_trajectories.png", params)
plt.show()
"""),
    ("md", """
## 3 · Implicit attention and 4 · influence

Left: the share of each WKV output that comes from tokens more than k steps back (mean over positions and
channels, first 256 tokens). Right: replace one token by a space and measure how much every later position's
residual stream (per layer) and logits change, against the distance."""),
    ("code", """
shares = pd.concat([attention_by_distance(model, tokens[:256], layer) for layer in range(L)])
effect = influence(model, tokens[: influence_position + 600], influence_position,
                   replacement=tokenizer.encode(" ")[0])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
for layer, g in shares.groupby("layer"):
    ax1.plot(g["k"] + 1, g["share_older"], "o-", label=f"layer {layer}", color=plt.cm.viridis(layer / max(1, L - 1)))
ax1.set_xscale("log")
ax1.set_xlabel("k + 1 (tokens back)")
ax1.set_ylabel("share of wkv from tokens older than k")
ax1.legend(fontsize=7)
for where, g in effect.groupby("where", sort=False):
    smooth = g["relative_change"].rolling(8, min_periods=1).mean()
    ax2.loglog(g["distance"] + 1, smooth, label=where, lw=1.5 if where == "logits" else 0.8)
ax2.set_xlabel("distance t - i + 1")
ax2.set_ylabel("relative change of the residual stream")
ax2.legend(fontsize=7)
fig.suptitle(f"influence of replacing token {influence_position} ({decoded[influence_position]!r}) by a space", fontsize=9)
save_figure(fig, results_dir() / "figures" / "05_attention_influence.png", params)
plt.show()
"""),
    ("md", """
## 5 · Channels that track the text

Every state quantity (a/b, the log of the state's total weight, both token shifts) of every layer and channel is
correlated with features computed from the text. A channel is chosen on the first half of the text; its
correlation on the second half is the held-out score."""),
    ("code", """
features = pd.concat([token_features(tokenizer, tokens, code_features),
                      token_features(tokenizer, tokens, prose_features)], axis=1)
table = channel_correlations(traj, features)
best = best_channels(table)
write_table(results_dir() / "dynamics" / "05_channels.csv", best, params)
display(best.round(3))
fig, axes = plt.subplots(len(best), 1, figsize=(14, 3.2 * len(best)))
half = len(tokens) // 2
for ax, (_, row) in zip(axes, best.iterrows()):
    values = traj.quantity(row["quantity"])[:, row["layer"], row["channel"]]
    piece = slice(half, half + 900)
    plot_coloured_text(ax, token_pieces(tokenizer, tokens[piece]), values[piece], width=110, max_lines=12)
    ax.set_title(f"{row['feature']}: {row['quantity']} layer {row['layer']} channel {row['channel']}, "
                 f"held-out r = {row['corr_heldout']:.2f}", fontsize=9, loc="left")
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "05_channels.png", params)
plt.show()
top = best.iloc[best["corr_heldout"].abs().argmax()]
display(HTML(coloured_html(token_pieces(tokenizer, tokens[half : half + 1500]),
                           traj.quantity(top["quantity"])[half : half + 1500, top["layer"], top["channel"]])))
"""),
    ("md", """
## Explore

Type a text, pick a quantity, layer and channel; the text is coloured by that channel's activation and the
trajectory plotted up to the time slider."""),
    ("code", """
def explore(text="def f(x):\\n    return [x, (x + 1)]  # a comment\\n", quantity="wkv", layer=0, channel=0, upto=200):
    ids = torch.tensor(tokenizer.encode(text) or [0])
    tr = record_trajectory(model, ids)
    values = tr.quantity(quantity)[:, min(layer, L - 1), min(channel, model.config.n_embd - 1)]
    display(HTML(coloured_html(token_pieces(tokenizer, ids), values)))
    fig, ax = plt.subplots(figsize=(10, 2.2))
    ax.plot(values[:upto])
    ax.set_xlabel("token")
    plt.show()


explore(quantity=best.iloc[0]["quantity"], layer=int(best.iloc[0]["layer"]), channel=int(best.iloc[0]["channel"]))
if interactive:
    import ipywidgets as widgets

    widgets.interact(explore, text=widgets.Textarea(value=decoded[:400], layout=widgets.Layout(width="90%")),
                     quantity=widgets.Dropdown(options=["wkv", "log_den", "ffn_x", "att_x"]),
                     layer=widgets.IntSlider(0, 0, L - 1), channel=widgets.IntSlider(0, 0, model.config.n_embd - 1),
                     upto=widgets.IntSlider(200, 1, 2000))
"""),
]

NOTEBOOKS = {"01_equivalence.ipynb": EQUIVALENCE, "02_memory_profile.ipynb": MEMORY, "03_lm_eval.ipynb": LM_EVAL, "04_cost_estimates.ipynb": COST, "05_state_dynamics.ipynb": DYNAMICS, "06_training.ipynb": TRAINING}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(notebook(cells), ROOT / "notebooks" / name)
        print("wrote", ROOT / "notebooks" / name)
