import csv

import pytest
from helpers import REPO

from rwkv_lab.models.rwkv4.config import PRESETS, RWKVConfig, get_config
from rwkv_lab.models.rwkv4.model import RWKV


def reference_rows():
    with open(REPO / "reference" / "rwkv4_configs.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row", reference_rows(), ids=lambda r: r["name"])
def test_presets_reproduce_published_parameter_counts(row):
    cfg = get_config(row["name"])
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size) == (
        int(row["n_layer"]),
        int(row["n_embd"]),
        int(row["vocab_size"]),
    )
    # the table prints 4 significant digits: ours must round to exactly that string
    assert float(f"{cfg.n_params:.4g}") == float(row["params"]), (cfg.n_params, row["params"])


@pytest.mark.parametrize("name", ["tiny", "byte-6x256", "169M"])
def test_formula_counts_the_modules_parameters(name):
    import torch

    with torch.device("meta"):
        model = RWKV(PRESETS[name])
    assert model.num_params() == PRESETS[name].n_params
    assert PRESETS[name].state_numbers == 5 * PRESETS[name].n_embd * PRESETS[name].n_layer


def test_config_errors_are_clear():
    with pytest.raises(KeyError, match="unknown preset"):
        get_config("1T")
    with pytest.raises(ValueError, match="n_embd must be a positive int"):
        RWKVConfig(n_layer=2, n_embd=0)
    with pytest.raises(ValueError, match="unknown RWKVConfig fields"):
        RWKVConfig.from_dict({"n_layer": 2, "n_embd": 8, "heads": 4})
    assert RWKVConfig.from_dict(PRESETS["tiny"].to_dict()) == PRESETS["tiny"]
