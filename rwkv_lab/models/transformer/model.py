"""The transformer RWKV is compared against: Pythia-shaped GPT-NeoX models (transformers, SDPA attention) with
random weights, at the sizes of reference/pythia_configs.csv or matched to an RWKV config."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "reference"
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
    model.config.name_or_path = "" if overrides else name  # its name where it is measured; a reshaped one: none
    return model.eval()


def kv_cache_bytes_per_token(config, dtype) -> int:
    """Bytes a GPT-NeoX (transformers config) adds to one sequence's KV cache per token of context: a key and a
    value of `hidden_size` per layer, 2·L·d numbers in the model's dtype."""
    return 2 * config.num_hidden_layers * config.hidden_size * torch.empty((), dtype=dtype).element_size()


def forward_flops_per_token(n_layer: int, d_model: int, vocab_size: int, context: int) -> int:
    """A GPT-NeoX/Pythia block's matrices (12 D^2 per layer) and the unembedding, plus attention over the
    context: 4 L D T (scores and weighted values over T positions, PaLM's convention; causal kernels do half)."""
    return 2 * (vocab_size * d_model + 12 * d_model * d_model * n_layer) + 4 * n_layer * d_model * context


def matched_transformer(config, context: int, seed: int = 0):
    """A Pythia-style GPT-NeoX (transformers, SDPA attention) of an RWKV config's width, depth and vocabulary:
    12 D^2 parameters per layer against RWKV-4's 13 D^2, so the two match within 10%. transformers' own
    initialisation, from `seed`."""
    from transformers import GPTNeoXForCausalLM

    D = config.n_embd
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(gpt_neox(config.n_layer, D, config.vocab_size, max(1, D // 64), max(2048, context)))
