"""End-to-end against implementations nobody here wrote: transformers' RwkvForCausalLM and the `rwkv` package."""

import os

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model

from rwkv_lab.analysis.equivalence import step_all
from rwkv_lab.loading.checkpoint import load_model, save_model
from rwkv_lab.models.rwkv4.config import RWKVConfig

CONFIG = RWKVConfig(n_layer=3, n_embd=48, vocab_size=301)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """Random weights in transformers' own model, written by its save_pretrained."""
    from transformers import RwkvConfig, RwkvForCausalLM

    hf_config = RwkvConfig(
        vocab_size=CONFIG.vocab_size,
        hidden_size=CONFIG.n_embd,
        num_hidden_layers=CONFIG.n_layer,
        attention_hidden_size=CONFIG.n_embd,
        intermediate_size=4 * CONFIG.n_embd,
        context_length=512,
    )
    torch.manual_seed(0)
    hf = RwkvForCausalLM(hf_config)
    C = CONFIG.n_embd
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "time_decay" in name:
                p.uniform_(-3, 2)
            elif "time_first" in name:
                p.normal_(0, 1)
            elif "time_mix" in name:
                p.uniform_(0, 1)
            elif "ln" in name or "pre_ln" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            elif "embeddings" in name:
                p.normal_(0, 1)
            else:
                p.normal_(0, 1.5 / C**0.5)
    folder = tmp_path_factory.mktemp("hf") / "rwkv-hf"
    hf.save_pretrained(folder)
    return folder


def hf_model(folder):
    from transformers import RwkvForCausalLM

    return RwkvForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_state_as_ours(hf_state):
    """transformers: 5 tensors (B, C, L) [ffn x, att x, a, b, p]; ours (B, L, 5, C) [att x, a, b, p, ffn x]."""
    ffn_x, att_x, a, b, p = (s.permute(0, 2, 1) for s in hf_state)
    return torch.stack([att_x, a, b, p, ffn_x], dim=2)


@pytest.mark.parametrize("T", [1, 7, 64, 300])
def test_matches_transformers(hf_folder, T):
    hf = hf_model(hf_folder)
    ours = load_model(hf_folder, dtype="float32")
    # transformers mis-broadcasts its token shift for B > 1 with T == 1 (logits come back (B, B, V)): B = 1 there
    B = 1 if T == 1 else 2
    tokens = torch.randint(0, CONFIG.vocab_size, (B, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        out = hf(tokens, use_cache=True)
        hf_logits, hf_state = out.logits, hf_state_as_ours(out.state)
        par_logits, par_state = ours(tokens)
        rec_logits, rec_state = step_all(ours, tokens)
    for form, logits, state in (("parallel", par_logits, par_state), ("recurrent", rec_logits, rec_state)):
        assert_rel_close(
            f"T={T} {form} logits vs transformers", logits, hf_logits, TOL["float32 vs another implementation"]
        )
        assert_rel_close(
            f"T={T} {form} state vs transformers", state.packed, hf_state, TOL["float32 vs another implementation"]
        )


def test_transformers_loads_what_we_save(tmp_path):
    from transformers import RwkvForCausalLM

    ours = random_model(CONFIG, seed=1, dtype=torch.float32)
    save_model(ours, tmp_path / "export", format="transformers")
    hf = RwkvForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    tokens = torch.randint(0, CONFIG.vocab_size, (1, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_rel_close(
            "transformers on our export", hf(tokens).logits, ours(tokens)[0], TOL["float32 vs another implementation"]
        )


@pytest.fixture(scope="module")
def rwkv_package():
    os.environ["RWKV_JIT_ON"] = "1"
    os.environ["RWKV_CUDA_ON"] = "0"
    from rwkv.model import RWKV as PeerRWKV

    return PeerRWKV


def test_matches_rwkv_package(tmp_path, rwkv_package):
    ours = random_model(CONFIG, seed=2, dtype=torch.float32)
    path = save_model(ours, tmp_path / "blinkdl.pth", format="pth")
    # the package takes the path without ".pth"
    peer = rwkv_package(model=str(path.with_suffix("")), strategy="cpu fp32")
    ours = load_model(path, dtype="float32")
    prompt = torch.randint(0, CONFIG.vocab_size, (23,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        peer_logits, peer_state = peer.forward(prompt, None)
        logits, state = ours(torch.tensor([prompt]))
        assert_rel_close(
            "prompt of 23 vs rwkv package", logits[0, -1], peer_logits, TOL["float32 vs another implementation"]
        )
        for i, token in enumerate([5, 17, 300, 0, 42]):
            peer_logits, peer_state = peer.forward([token], peer_state)
            step_logits, state = ours.step(torch.tensor([token]), state)
            assert_rel_close(
                f"step {i} vs rwkv package", step_logits[0], peer_logits, TOL["float32 vs another implementation"]
            )
        # its state list is [att x, a, b, p, ffn x] per layer, like ours
        peer_state = torch.stack(
            [torch.stack([s.float() for s in peer_state[5 * i : 5 * i + 5]]) for i in range(CONFIG.n_layer)]
        )
        assert_rel_close("state vs rwkv package", state.packed[0], peer_state, TOL["float32 vs another implementation"])
