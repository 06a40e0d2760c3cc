"""Write a default model's card (card.json and MODEL_CARD.md in its folder, rwkv_lab/loading/default.py) from
measurements.

    python scripts/make_model_card.py --tag _default_40M                   # RWKV-4's, default_model/
    python scripts/make_model_card.py --arch rwkv7 --tag _default_rwkv7_40M  # RWKV-7's, default_model_rwkv7/

Reads the GPU training run (results/training/summary<tag>.csv and its provenance, written by train_compare.py),
then measures here, on the CPU in fp32 with the shipped bf16 weights: the loss on the held-out slice
(default_model/heldout.txt, written here from a validation-split file of this interpreter's standard library),
validation bits-per-byte on this interpreter's validation split (the training run's evaluation windows), the
unigram baseline, a sample and greedy continuations.
"""

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.inference.generation import generate
from rwkv_lab.loading.checkpoint import default_model
from rwkv_lab.loading.default import DEFAULTS, HELDOUT_TEXT
from rwkv_lab.loading.tokenizer import ByteTokenizer
from rwkv_lab.models import architecture
from rwkv_lab.results import atomic_write, provenance
from rwkv_lab.training.corpus import build_corpus, is_validation, list_files, stdlib_dir, unigram_loss
from rwkv_lab.training.report import chosen_runs
from rwkv_lab.training.trainer import ALIASES, TrainConfig, Trainer, bits_per_byte

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_CHARS = 6000
SAMPLE_PROMPT = "def "
GREEDY_PROMPTS = ("def main():\n", "import os\n")
GREEDY_TOKENS = 80


def text_loss(model, text: str) -> float:
    """Mean nats per byte of `text`, predicted from end-of-text onwards (the model's document start)."""
    tokens = torch.tensor([[0] + ByteTokenizer().encode(text)])
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    return float(torch.nn.functional.cross_entropy(logits[0].double(), tokens[0, 1:]))


def heldout_slice() -> tuple[str, str]:
    root = stdlib_dir()
    for path in list_files(root):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if is_validation(rel, 0.05) and len(text) > 2 * HELDOUT_CHARS and text.isascii():
            cut = text.rfind("\n", 0, HELDOUT_CHARS) + 1
            return rel, text[:cut]
    raise RuntimeError("no suitable validation file")


def training_command(params: dict) -> str:
    """The train_compare.py command line that wrote the run, from its recorded parameters."""
    archs = f"--archs {params['archs']} " if params.get("archs", "rwkv,transformer") != "rwkv,transformer" else ""
    rates = f"--arch-lrs {params['arch_lrs']}" if params.get("arch_lrs") else f"--lrs {params['lrs']}"
    return (
        f"python benchmarks/train_compare.py --sizes {params['sizes']} --contexts {params['contexts']} "
        f"--tokens {params['tokens']} {archs}{rates} --export-size {params['export_size']} "
        f"--export-context {params['export_context']}" + (f" --tag {params['tag']}" if params.get("tag") else "")
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tag",
        required=True,
        help="the train_compare run that exported the weights: results/training/summary<tag>.csv",
    )
    parser.add_argument("--arch", default="rwkv4", choices=sorted(DEFAULTS), help="whose default model")
    args = parser.parse_args()
    default = DEFAULTS[args.arch]
    summary = pd.read_csv(ROOT / f"results/training/summary{args.tag}.csv")
    meta = json.loads((ROOT / f"results/training/summary{args.tag}.meta.json").read_text())
    params = meta["params"]
    summary = chosen_runs(summary)  # of a learning-rate sweep, the chosen runs
    run = summary[
        (summary.arch.map(lambda name: ALIASES.get(name, name)) == args.arch)
        & (summary.model == params["export_size"])
        & (summary.context == params["export_context"])
    ].iloc[0]
    tf = summary[
        (summary.arch == "transformer") & (summary.model == run.model) & (summary.context == run.context)
    ].iloc[0]
    model = default_model(arch=args.arch)
    rel, text = heldout_slice()
    atomic_write(HELDOUT_TEXT, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    corpus = build_corpus()
    trainer = Trainer(
        TrainConfig(arch=args.arch, model=params["export_size"], context=int(run.context), device="cpu"),
        corpus,
        progress=False,
    )
    trainer.model.load_state_dict(model.state_dict())
    local_val = trainer.evaluate()
    # every prompt is read as the start of a file (after end-of-text), as the model saw files in training
    tok = ByteTokenizer()
    sample = generate(model, tok, SAMPLE_PROMPT, max_new_tokens=400, temperature=0.7, seed=0, new_document=True)
    greedy = {
        p: generate(model, tok, p, max_new_tokens=GREEDY_TOKENS, temperature=0, new_document=True)
        for p in GREEDY_PROMPTS
    }
    card = {
        "model": params["export_size"],
        "params": int(run.params),
        "weights_dtype": "bfloat16",
        "training": {
            "command": training_command(params),
            "results_tag": args.tag,  # the run's files: results/training/summary<tag>.csv
            "device": meta["device"],
            "git_commit": meta["git_commit"],
            "date_utc": meta["date_utc"],
            "python": meta["python"],
            "corpus": params["corpus"],
            "tokens_seen": int(run.tokens),
            "context": int(run.context),
            "batch_size": int(run.batch_size),
            "lr": float(run["lr"]),
            "lr_scale": architecture(args.arch).lr_scale,
            "weight_decay_matrices": TrainConfig.weight_decay,
            "train_seconds": float(run.train_seconds),
            "tokens_per_s": float(run.tokens_per_s),
            "val_loss": float(run.val_loss),
            "val_bpb": float(run.val_bpb),
            "unigram_val_loss": params["unigram_val_loss"],
            "unigram_val_bpb": params["unigram_val_bpb"],
            "matched_transformer_val_bpb": float(tf.val_bpb),
            "matched_transformer_params": int(tf.params),
        },
        "checked_here": {
            "provenance": provenance(device="cpu"),
            "dtype": "float32",
            "corpus": corpus.summary(),
            "val_loss": local_val,
            "val_bpb": bits_per_byte(local_val, corpus.val_bytes_per_token),
            "unigram_val_loss": unigram_loss(corpus),
            "unigram_val_bpb": bits_per_byte(unigram_loss(corpus), corpus.val_bytes_per_token),
            "heldout_file": rel,
            "heldout_chars": len(text),
            "heldout_loss": text_loss(model, text),
        },
        "sample": {"prompt": SAMPLE_PROMPT, "temperature": 0.7, "seed": 0, "new_document": True, "text": sample},
        "greedy": {"max_new_tokens": GREEDY_TOKENS, "new_document": True, "continuations": greedy},
    }
    card["checked_here"]["heldout_bpb"] = card["checked_here"]["heldout_loss"] / math.log(2)
    atomic_write(default.card_path, lambda tmp: tmp.write_text(json.dumps(card, indent=2) + "\n"))
    t, c = card["training"], card["checked_here"]
    scales = ", ".join(f"`{name}` at {scale:g}x" for name, scale in t["lr_scale"].items())
    md = f"""# Model card: the rwkv-lab default {default.label} model (`load_model("{default.source}")`)

{default.label}, {card["model"]} ({card["params"]:,} parameters), byte-level (256 bytes + end-of-text = token 0), weights
in bf16 (`model.safetensors`, BlinkDL key names, config in the metadata). Written by `scripts/make_model_card.py`;
every number below is measured, in `card.json`.

## Training
- Data: the Python standard library of Python {t["python"]} (`{t["corpus"]["source"]}`), {t["corpus"]["n_train_files"]}
  training files, {t["corpus"]["n_val_files"]} validation files (split by the SHA-1 of the relative path; file-list
  SHA-256 `{t["corpus"]["files_sha256"]}`).
- {t["tokens_seen"]:,} tokens seen ({t["tokens_seen"] / t["corpus"]["train_tokens"]:.1f} epochs), context {t["context"]},
  batch {t["batch_size"]}, AdamW lr {t["lr"]} (warm-up, cosine; RWKV-LM's layerwise rates: {scales}; weight decay
  {t["weight_decay_matrices"]} on the matrices only), bf16 autocast, on an {t["device"]} in
  {t["train_seconds"]:.0f} s ({t["tokens_per_s"]:,.0f} tokens/s), commit {t["git_commit"][:10]}, {t["date_utc"]}.
- Reproduce: `{t["command"]}` (the chosen {card["model"]} {default.label} run is exported to
  `results/training/{args.arch}-{card["model"]}-T{t["context"]}{args.tag}.safetensors`).

## Quality (validation split, context {t["context"]})
| | nats/byte | bits/byte |
|---|---|---|
| this model (at training, bf16 autocast, GPU) | {t["val_loss"]:.4f} | {t["val_bpb"]:.4f} |
| matched GPT-NeoX transformer ({t["matched_transformer_params"]:,} parameters, same tokens) | | {t["matched_transformer_val_bpb"]:.4f} |
| unigram baseline (byte frequencies of the training split) | {t["unigram_val_loss"]:.4f} | {t["unigram_val_bpb"]:.4f} |
| this model, fp32 on the CPU, Python {c["provenance"]["python"]}'s validation split | {c["val_loss"]:.4f} | {c["val_bpb"]:.4f} |
| unigram baseline there | {c["unigram_val_loss"]:.4f} | {c["unigram_val_bpb"]:.4f} |

Held-out slice `heldout.txt` (first {c["heldout_chars"]} characters of `{c["heldout_file"]}`, a validation file):
{c["heldout_loss"]:.5f} nats/byte in fp32 on the CPU (the tests check this number).

## Sample (prompt `{SAMPLE_PROMPT}` at a file's start, temperature 0.7, seed 0)
```python
{SAMPLE_PROMPT}{sample}
```

## Greedy continuations ({GREEDY_TOKENS} tokens, each prompt at a file's start: `new_document=True`)
""" + "".join(f"\n`{p!r}` continues as `{text!r}`\n" for p, text in greedy.items())
    atomic_write(default.directory / "MODEL_CARD.md", lambda tmp: tmp.write_text(md))
    print(md)


if __name__ == "__main__":
    main()
