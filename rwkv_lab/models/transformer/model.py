"""The transformer RWKV is compared against: Pythia-shaped GPT-NeoX models (transformers, SDPA attention) with
random weights, at the sizes of reference/pythia_configs.csv or matched to an RWKV config."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
# the Pythia model the RWKV-4 paper sets beside each RWKV-4 Pile size
PYTHIA_FOR = {
    "169M": "pythia-160m",
    "430M": "pythia-410m",
    "1.5B": "pythia-1.4b",
    "3B": "pythia-2.8b",
    "7B": "pythia-6.9b",
    "14B": "pythia-12b",
}


def pythia_configs() -> dict[str, dict]:
    with open(REFERENCE_DIR / "pythia_configs.csv") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def gpt_neox(n_layer: int, d_model: int, vocab: int, n_heads: int, max_positions: int = 2048, **overrides):
    """A Pythia-style GPTNeoXForCausalLM config (rotary on a quarter of each head, parallel residual, untied
    embeddings, SDPA attention); `overrides` replace fields."""
    from transformers import GPTNeoXConfig

    fields = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layer,
        num_attention_heads=n_heads,
        intermediate_size=4 * d_model,
        rotary_pct=0.25,
        max_position_embeddings=max_positions,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return GPTNeoXConfig(**(fields | overrides))


def pythia_model(name: str, dtype=torch.bfloat16, device="cpu", max_positions: int = 2048, **overrides):
    """A Pythia-shaped GPTNeoXForCausalLM (reference/pythia_configs.csv) with random weights and SDPA attention.
    `overrides` replace config fields (tests shrink it); rotary positions extend past the trained 2048."""
    from transformers import GPTNeoXForCausalLM

    row = pythia_configs()[name]
    config = gpt_neox(
        int(row["n_layer"]),
        int(row["d_model"]),
        int(row["vocab_size_padded"]),
        int(row["n_heads"]),
        max_positions,
        **overrides,
    )
    with torch.device(device):
        model = GPTNeoXForCausalLM(config).to(dtype)
    return model.eval()
