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
# # 03 · lm-eval: the paper's zero-shot tasks, beside the published tables
#
# `rwkv_lab.evaluation.backend` registers an lm-eval backend, `rwkv_lab`, that runs each context once in the parallel form
# and scores every continuation from a copy of its state (see its docstring). This notebook runs lm-eval with it
# and sets our numbers beside the RWKV paper's and the Pythia paper's rows of the matching size.
#
# - **Offline** (`data_dir` set, or `"auto"` finding `../shared/data/lm_eval`): lm-eval's own task definitions for
#   `piqa`, `lambada_openai` and `arc_easy`, their data read from local files.
# - **Online** (`data_dir = None`, on a connected machine): any lm-eval task, e.g. the paper's
#   `rwkv_lab.evaluation.tasks.PAPER_TASKS`, with `model_source = "RWKV/rwkv-4-169m-pile"` to reproduce the 169M row.
#
# With the embedded default model (5M parameters, trained on Python source code, byte-level) the English tasks sit
# near chance: that run checks the pipeline, not the model. The command line equivalent:
# `python -m rwkv_lab.evaluation.backend --model rwkv_lab --model_args pretrained=default --tasks piqa`.

# %% tags=["parameters"]
model_source = "default"  # 'default', a checkpoint path, or a hub id (RWKV/rwkv-4-169m-pile)
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
from rwkv_lab.evaluation.tasks import default_data_dir, run_lm_eval, side_by_side
from rwkv_lab.results import REPO_ROOT, find_result, results_dir, write_json, write_table

data = default_data_dir() if data_dir == "auto" else data_dir
lm = RWKVLM(pretrained=model_source, device=device, dtype=dtype, batch_size=batch_size)
print("model:", lm.model.source, f"({lm.model.num_params():,} parameters)")
print("tasks:", tasks, "offline from " + str(data) if data else "online (lm-eval's hub datasets)")
ours, raw = run_lm_eval(lm, tasks, limit=limit, data_dir=data)
params = {
    "model": lm.model.source,
    "tasks": tasks,
    "limit": limit,
    "device": device,
    "dtype": dtype,
    # relative to the repository: the same data found from another checkout is the same parameter
    "data_dir": os.path.relpath(data, REPO_ROOT) if data else "online",
}
write_json(
    results_dir() / "lm_eval" / "03_lm_eval.json",
    {k: raw[k] for k in ("results", "configs", "versions", "n-samples")},
    params,
    device,
)
write_table(results_dir() / "lm_eval" / "03_lm_eval.csv", ours, params, device=device)
# each number in plain notation (a perplexity of 1e9 beside an accuracy of 0.5 would turn the column scientific)
display(
    ours.style.format(lambda v: f"{v:,.4f}" if abs(v) < 1e4 else f"{v:,.0f}", subset=["value", "stderr"], na_rep="")
)

# %% [markdown]
# ## Beside the published rows
#
# Published numbers (in percent; LAMBADA perplexity as is) from `reference/`; `delta` is ours minus published.
# Each table takes all its rows from one published source, named in its `table` column: the RWKV paper's table
# (RWKV-4 and the transformers as its authors ran them), and separately the Pythia evals. The rows shown are the
# published models nearest in size to ours.

# %%
size_B = lm.model.num_params() / 1e9
print(f"our model: {size_B:.3f}B parameters; nearest published rows shown")
for source in ("rwkv_paper", "pythia_paper"):
    table = side_by_side(ours, size_B, source)
    print(table["table"].iloc[0] if len(table) else f"{source}: no task in common")
    display(table.drop(columns="table").style.format(precision=2))

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
