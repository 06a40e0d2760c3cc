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
# # 03 · lm-eval: the paper's zero-shot tasks, both generations, beside the published tables
#
# `rwkv_lab.evaluation.backend` registers an lm-eval backend, `rwkv_lab`, that runs each context once in the parallel form
# and scores every continuation from a copy of its state (see its docstring). It takes any generation through the
# registry; this notebook runs lm-eval with it on an RWKV-4 and an RWKV-7 and sets each one's numbers beside the
# published rows of the matching size.
#
# - **Offline** (`data_dir` set, or `"auto"` finding `../shared/data/lm_eval`): lm-eval's own task definitions for
#   `piqa`, `lambada_openai` and `arc_easy`, their data read from local files.
# - **Online** (`data_dir = None`, on a connected machine): any lm-eval task, e.g. the paper's
#   `rwkv_lab.evaluation.tasks.PAPER_TASKS`. `rwkv4_source = "RWKV/rwkv-4-169m-pile"` reproduces the RWKV paper's
#   169M row; `rwkv7_source = "fla-hub/rwkv7-168M-pile"` the RWKV-7 Pile 168M card's row (set `limit = None`).
#
# With the embedded default models (about 5M parameters, trained on Python source code, byte-level) the English
# tasks sit near chance: that run checks the pipeline, not the models. The command line equivalent:
# `python -m rwkv_lab.evaluation --model rwkv_lab --model_args pretrained=default --tasks piqa`.

# %% tags=["parameters"]
rwkv4_source = "default"  # 'default', a checkpoint path, or a hub id (RWKV/rwkv-4-169m-pile)
rwkv7_source = "default-rwkv7"  # "default-rwkv7", "untrained-rwkv7", a checkpoint path, or a hub id
tasks = ["piqa", "lambada_openai", "arc_easy"]
limit = 40  # documents per task; None for all
device = "cpu"
dtype = "float32"
data_dir = "auto"  # 'auto': ../shared/data/lm_eval if present; None: online (hub datasets)
batch_size = 16

# %% tags=["timings"]

import os

import pandas as pd
from IPython.display import display

from rwkv_lab.evaluation.backend import RWKVLM
from rwkv_lab.evaluation.tasks import default_data_dir, run_lm_eval
from rwkv_lab.models import architecture_of
from rwkv_lab.results import REPO_ROOT, find_result, results_dir, write_json, write_table

data = default_data_dir() if data_dir == "auto" else data_dir
print("tasks:", tasks, "offline from " + str(data) if data else "online (lm-eval's hub datasets)")
runs, raws, sizes, sources = [], {}, {}, {}
for source in (rwkv4_source, rwkv7_source):
    lm = RWKVLM(pretrained=source, device=device, dtype=dtype, batch_size=batch_size)
    name = architecture_of(lm.model).name
    print(f"{name}: {lm.model.source} ({lm.model.num_params():,} parameters)")
    ours, raw = run_lm_eval(lm, tasks, limit=limit, data_dir=data)
    runs.append(ours.assign(arch=name, source=lm.model.source))
    raws[name] = {k: raw[k] for k in ("results", "configs", "versions", "n-samples")}
    sizes[name] = lm.model.num_params() / 1e9
    sources[name] = lm.model.source
    del lm
scores = pd.concat(runs, ignore_index=True)
params = {
    "models": sources,
    "tasks": tasks,
    "limit": limit,
    "device": device,
    "dtype": dtype,
    # relative to the repository: the same data found from another checkout is the same parameter
    "data_dir": os.path.relpath(data, REPO_ROOT) if data else "online",
}
write_json(results_dir() / "lm_eval" / "03_lm_eval.json", raws, params, device)
write_table(results_dir() / "lm_eval" / "03_lm_eval.csv", scores, params, device=device)
# each number in plain notation (a perplexity of 1e9 beside an accuracy of 0.5 would turn the column scientific)
display(
    scores.style.format(lambda v: f"{v:,.4f}" if abs(v) < 1e4 else f"{v:,.0f}", subset=["value", "stderr"], na_rep="")
)

# %% [markdown]
# ## Beside the published rows
#
# Published numbers (in percent; LAMBADA perplexity as is) from `reference/`; `delta` is ours minus published.
# Each table takes all its rows from one published source, named above it: RWKV-4 beside the RWKV paper's table
# (RWKV-4 and the transformers as its authors ran them), and separately beside the Pythia evals; RWKV-7 beside its
# Pile models' hub cards (LAMBADA and PIQA). The RWKV-7 paper's own table of the Pile models (beside RWKV-4, Pythia
# and Mamba) is not among them: no source the project could read holds its numbers (`reference/SOURCES.md`). The
# rows shown are the published models nearest in size to ours.

# %%
from rwkv_lab.evaluation.tasks import PUBLISHED_FOR, side_by_side

for name, ours in scores.drop(columns=["source"]).groupby("arch", sort=False):
    print(f"{name}: our model {sizes[name]:.3f}B parameters; nearest published rows shown")
    for source in PUBLISHED_FOR[name]:
        table = side_by_side(ours, sizes[name], source)
        print(f"  {table['table'].iloc[0]}" if len(table) else f"  {source}: no task in common")
        if len(table):
            display(table.drop(columns="table").style.format(precision=2, na_rep=""))
            accuracy = table[table["metric"] != "perplexity"]  # points of accuracy (a perplexity has its own scale)
            worst = accuracy.loc[accuracy["delta"].abs().idxmax()]
            print(
                f"  largest accuracy gap {worst['delta']:+.2f} points ({worst['task']} {worst['metric']}, beside "
                f"{worst['model']})"
            )

# %% [markdown]
# ## Throughput: our backend against lm-eval's `hf` backend on the same weights
#
# `python benchmarks/bench_lm_eval.py`: a random RWKV-4 saved in transformers format and scored by both backends on
# the same documents (the `hf` backend runs transformers' `RwkvForCausalLM`, whose CUDA kernel is downloaded from the
# hub at run time and so unavailable offline: it ran its Python loop). `max_rel_diff_vs_hf` is the largest relative
# difference of any request's log-likelihood between the two.

# %%
for tag in ("_cpu", "_h100_1.5B"):
    path = find_result(f"lm_eval/throughput{tag}.csv")
    if path.exists():
        meta = pd.read_json(path.with_suffix(".meta.json"), typ="series")
        frame = pd.read_csv(path)
        print(f"{path.name}: {meta['device']}")
        display(
            frame[
                [
                    "backend",
                    "task",
                    "docs",
                    "requests",
                    "seconds",
                    "docs_per_s",
                    "params",
                    "dtype",
                    "max_rel_diff_vs_hf",
                    "hf_note",
                ]
            ]
        )
        by = frame.pivot_table(index="task", columns="backend", values="docs_per_s")
        print("speed-up, docs/s ours over hf:", (by["rwkv_lab"] / by["hf"]).round(1).to_dict())
