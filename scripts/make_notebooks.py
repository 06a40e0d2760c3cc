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
## Generation runs on the RNN form

`rwkv_lab.stream` prefills the prompt in parallel, then samples one token at a time, carrying the state. The
untrained default model produces noise; a real checkpoint produces text."""),
    ("code", """
for piece in rwkv_lab.stream(model, tokenizer, "The RWKV model", max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0):
    print(piece, end="")
print()
"""),
]

NOTEBOOKS = {"01_equivalence.ipynb": EQUIVALENCE}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(notebook(cells), ROOT / "notebooks" / name)
        print("wrote", ROOT / "notebooks" / name)
