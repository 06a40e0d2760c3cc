"""RWKV-7: against the `rwkv` package's RWKV_x070 on the same weights, parallel vs recurrent vs prefill (outputs,
states, every gradient), checkpoints (BlinkDL shapes, fla's hub layout), the state's operations, bad inputs."""

import dataclasses
import math

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model

from rwkv_lab.analysis.equivalence import step_all
from rwkv_lab.loading.default import untrained_model
from rwkv_lab.models.checks import CheckpointError
from rwkv_lab.models.rwkv7 import (
    ARCH,
    PILE_VOCAB,
    PRESETS,
    RWKV7,
    WORLD_VOCAB,
    RWKV7Config,
    RWKV7State,
    checkpoint,
    get_config,
)
from rwkv_lab.models.rwkv7.peer import rwkv_package_x070

TINY = get_config("tiny")
BACKENDS = ["auto", "chunked", "attention"]


def random_state(model: RWKV7, batch: int, seed: int = 0) -> RWKV7State:
    """A non-empty state: any token shifts, any S of the scale a sequence leaves."""
    gen = torch.Generator().manual_seed(seed)
    state = model.init_state(batch)
    draw = lambda t: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)  # noqa: E731
    return RWKV7State(shift=draw(state.shift), wkv=0.5 * draw(state.wkv))


def tokens_for(config, B, T, seed=0):
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# --- against the rwkv package -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rwkv_x070():
    return rwkv_package_x070()


def test_matches_rwkv_package(tmp_path, rwkv_x070):
    config = RWKV7Config(n_layer=2, n_embd=128, vocab_size=257)  # the package's head size, 64
    ours = random_model(config, seed=3, dtype=torch.float32)
    torch.save(ours.state_dict(), tmp_path / "x070.pth")
    peer = rwkv_x070(model=str(tmp_path / "x070"), strategy="cpu fp32")  # the path without ".pth"
    prompt = tokens_for(config, 1, 23, seed=3)[0].tolist()
    tol = TOL["float32"]
    with torch.no_grad():
        peer_logits, peer_state = peer.forward(prompt, None)
        logits, state = ours(torch.tensor([prompt]))
        assert_rel_close("prompt of 23 vs rwkv package", logits[0, -1], peer_logits, tol)
        for i, token in enumerate([5, 17, 256, 0, 42]):
            peer_logits, peer_state = peer.forward([token], peer_state)
            step_logits, state = ours.step(torch.tensor([token]), state)
            assert_rel_close(f"step {i} vs rwkv package", step_logits[0], peer_logits, tol)
    # its state list is [att x, S, ffn x] per layer
    for i in range(config.n_layer):
        att_x, wkv, ffn_x = peer_state[3 * i : 3 * i + 3]
        assert_rel_close(f"layer {i} S vs rwkv package", state.wkv[0, i], wkv, tol)
        assert_rel_close(f"layer {i} shifts vs rwkv package", state.shift[0, i], torch.stack([att_x, ffn_x]), tol)


# --- parallel == recurrent == prefill + steps ----------------------------------------------------------------


# every backend in float64; float32 through the default one
FORMS = [(backend, torch.float64) for backend in BACKENDS] + [("auto", torch.float32)]


@pytest.mark.parametrize("backend,dtype", FORMS)
@pytest.mark.parametrize("T", [1, 2, 63, 65])
def test_parallel_equals_recurrent_and_prefill(backend, dtype, T):
    name = "float64 model" if dtype == torch.float64 else "float32"
    model = random_model(TINY, seed=T, dtype=dtype)
    tokens = tokens_for(TINY, 2, T, seed=T)
    state = random_state(model, 2, seed=T)
    with torch.no_grad():
        rec_logits, rec_state = step_all(model, tokens, state.clone())
        par_logits, par_state = model(tokens, state.clone(), backend=backend)
        split = (T + 1) // 2
        last, tail_state = model.prefill(tokens[:, :split], state.clone(), chunk=7, backend=backend)
        tail_logits = [last]
        for t in range(split, T):
            logits, tail_state = model.step(tokens[:, t], tail_state)
            tail_logits.append(logits)
    tag = f"{backend} T={T} {dtype}"
    assert_rel_close(f"{tag} parallel logits vs recurrent", par_logits, rec_logits, TOL[name])
    tail = torch.stack(tail_logits, dim=1)
    assert_rel_close(f"{tag} prefill+steps logits vs recurrent", tail, rec_logits[:, split - 1 :], TOL[name])
    for field in ("shift", "wkv"):
        ref = getattr(rec_state, field)
        assert_rel_close(f"{tag} parallel {field} vs recurrent", getattr(par_state, field), ref, TOL[name])
        assert_rel_close(f"{tag} prefill+steps {field} vs recurrent", getattr(tail_state, field), ref, TOL[name])


@pytest.mark.parametrize("T", [2, 65])
def test_gradients_parallel_equal_recurrent(T):
    """Every parameter's gradient and the initial state's, float64, through logits and the final state."""
    gen = torch.Generator().manual_seed(T)
    results = []
    for form in ("parallel", "recurrent"):
        model = random_model(TINY, seed=7, dtype=torch.float64)
        state = random_state(model, 2, seed=7)
        state.shift.requires_grad_(True)
        state.wkv.requires_grad_(True)
        tokens = tokens_for(TINY, 2, T, seed=7)
        if form == "parallel":
            logits, final = model(tokens, state)
        else:  # step_all runs without autograd
            final, outs = state, []
            for t in range(T):
                out, final = model.step(tokens[:, t], final)
                outs.append(out)
            logits = torch.stack(outs, dim=1)
        gen.manual_seed(T)
        weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (logits, final.shift, final.wkv)]
        loss = sum((w * t).sum() for w, t in zip(weights, (logits, final.shift, final.wkv)))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        grads.update(state_shift=state.shift.grad, state_wkv=state.wkv.grad)
        results.append(grads)
    parallel, recurrent = results
    # layer 0's value-residual LoRA is unused (the package ignores it too): no gradient in either form
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    assert (
        set(parallel)
        == set(recurrent)
        == {n for n, _ in RWKV7(TINY).named_parameters()} - unused
        | {
            "state_shift",
            "state_wkv",
        }
    )
    for name in sorted(parallel):
        assert_rel_close(f"T={T} grad {name}", parallel[name], recurrent[name], TOL["float64 model"])


def test_step_without_autograd_writes_a_new_state():
    """Without autograd the step writes each layer's S straight into a fresh state (out=); with it, it stacks
    them: the two agree, float64, and neither touches the state it was given."""
    model = random_model(TINY, seed=5, dtype=torch.float64)
    state = random_state(model, 3, seed=5)
    before = state.clone()
    token = tokens_for(TINY, 3, 1, seed=5)[:, 0]
    logits, stacked = model.step(token, state)  # autograd on: the stacking path
    with torch.no_grad():
        fast_logits, written = model.step(token, state)
    assert_rel_close("no-autograd step logits vs autograd step", fast_logits, logits.detach(), TOL["float64 model"])
    assert_rel_close("no-autograd step state vs autograd step", written, stacked.detach(), TOL["float64 model"])
    assert_rel_close("the given state after both steps", state, before, 0.0)
    assert written.wkv.data_ptr() != state.wkv.data_ptr()


def test_bfloat16_model_keeps_a_float32_state():
    """bf16 weights and activations, the state in float32: both forms near the float64 model's logits."""
    reference = random_model(TINY, seed=6)
    model = random_model(TINY, seed=6, dtype=torch.bfloat16)
    tokens = tokens_for(TINY, 2, 20, seed=6)
    with torch.no_grad():
        expected, _ = reference(tokens)
        logits, state = model(tokens)
        stepped, step_state = step_all(model, tokens)
    assert state.wkv.dtype == step_state.shift.dtype == model.state_dtype == torch.float32
    assert_rel_close("bf16 parallel vs float64", logits, expected, TOL["bfloat16 long sequence"])
    assert_rel_close("bf16 recurrent vs float64", stepped, expected, TOL["bfloat16 long sequence"])


def test_trace_holds_what_the_wkv_was_given():
    model = random_model(TINY, seed=1)
    tokens = tokens_for(TINY, 2, 5)
    state = random_state(model, 2)
    trace = []
    model(tokens, state, trace=trace)
    assert len(trace) == TINY.n_layer
    B, T, H, N = 2, 5, TINY.n_head, TINY.head_size
    for i, layer in enumerate(trace):
        for key in ("r", "log_w", "k", "v", "kappa", "iclr", "a", "b"):
            assert layer[key].shape == (B, T, H, N), key
        for key in ("att_in", "ffn_in", "out"):
            assert layer[key].shape == (B, T, TINY.n_embd), key
        assert torch.equal(layer["wkv_state"], state.wkv[:, i])
        assert torch.equal(layer["a"], -layer["kappa"]) and torch.equal(layer["b"], layer["kappa"] * layer["iclr"])
        assert_rel_close(f"layer {i} |kappa| per head", layer["kappa"].norm(dim=-1), torch.ones(B, T, H), 1e-12)
        # every decay in (exp(-e^-1/2), 1)
        assert bool((layer["log_w"] < 0).all()) and bool((layer["log_w"] > -math.exp(-0.5)).all())


# --- checkpoints ---------------------------------------------------------------------------------------------


def meta_state_dict(config):
    with torch.device("meta"):
        return RWKV7(config).state_dict()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_from_state_dict_reads_every_preset(name):
    config = PRESETS[name]
    sd = meta_state_dict(config)
    assert checkpoint.matches(sd)
    assert sum(t.numel() for t in sd.values()) == config.n_params
    read = checkpoint.config_from_state_dict(sd, name=name)
    assert read == dataclasses.replace(config, ctx_len=read.ctx_len)  # the context is not in the weights
    # fla's config.json both ways
    assert checkpoint.config_from_hf(checkpoint.hf_config_dict(config), name=name) == config


def test_deep_embed_is_refused():
    sd = meta_state_dict(TINY)
    sd["blocks.0.ffn.s_emb.weight"] = torch.empty(0)
    with pytest.raises(ValueError, match="DeepEmbed") as err:
        checkpoint.config_from_state_dict(sd)
    assert "\n" not in str(err.value)


def test_state_dict_errors_are_one_line():
    sd = meta_state_dict(TINY)
    del sd["blocks.0.att.r_k"]
    assert not checkpoint.matches(sd)
    with pytest.raises(CheckpointError, match="r_k"):
        checkpoint.config_from_state_dict(sd)
    sd = meta_state_dict(TINY)
    sd["head.weight"] = torch.empty(3, TINY.n_embd, device="meta")
    with pytest.raises(ValueError, match="head.weight") as err:
        checkpoint.config_from_state_dict(sd)
    assert "\n" not in str(err.value)


def test_fla_layout_round_trip():
    model = random_model(TINY, seed=2)
    sd = model.state_dict()
    C, H, N = TINY.n_embd, TINY.n_head, TINY.head_size
    fla = checkpoint.to_fla_state_dict(sd)
    # fla's names and shapes (fla/layers/rwkv7.py, fla/models/rwkv7/modeling_rwkv7.py)
    expected = {
        "model.embeddings.weight": (TINY.vocab_size, C),
        "model.layers.0.pre_norm.weight": (C,),
        "model.layers.1.attn_norm.bias": (C,),
        "model.layers.1.attn.x_r": (1, 1, C),
        "model.layers.1.attn.k_k": (C,),
        "model.layers.1.attn.r_k": (H, N),
        "model.layers.1.attn.w_lora.lora.0.weight": (TINY.decay_lora, C),
        "model.layers.1.attn.w_lora.lora.2.weight": (C, TINY.decay_lora),
        "model.layers.1.attn.w_lora.lora.2.bias": (C,),
        "model.layers.1.attn.v_lora.lora.2.bias": (C,),
        "model.layers.1.attn.g_lora.lora.0.weight": (TINY.gate_lora, C),
        "model.layers.1.attn.r_proj.weight": (C, C),
        "model.layers.1.attn.g_norm.weight": (C,),
        "model.layers.1.ffn.x_k": (C,),
        "model.layers.1.ffn.key.weight": (TINY.dim_ffn, C),
        "model.norm.weight": (C,),
        "lm_head.weight": (TINY.vocab_size, C),
    }
    for key, shape in expected.items():
        assert tuple(fla[key].shape) == shape, key
    assert not any(k.startswith("model.layers.0.attn.v_lora") for k in fla)  # layer 0 has no value residual
    assert not any(k.startswith("model.layers.1.attn.g_lora.lora.2.bias") for k in fla)
    for key in sd:
        name = checkpoint.fla_key(key)
        assert name is None or checkpoint.blinkdl_key(name) == key
    back = checkpoint.from_fla_state_dict(fla, TINY)
    assert set(back) == set(sd)
    for key, value in sd.items():
        if key in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"):
            assert back[key].shape == value.shape and not back[key].any()
        else:
            assert torch.equal(back[key], value), key
    # the restored (zeroed) unused LoRA changes nothing
    reloaded = RWKV7(TINY).double()
    reloaded.load_state_dict(back)
    tokens = tokens_for(TINY, 1, 9)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens)[0], model(tokens)[0])


def test_hf_config_refuses_variants():
    d = checkpoint.hf_config_dict(TINY)
    for change in (
        {"attn": {"layers": [0]}},
        {"tie_word_embeddings": True},
        {"model_type": "rwkv6"},
        {"a_low_rank_dim": None},
    ):
        with pytest.raises(ValueError) as err:
            checkpoint.config_from_hf({**d, **change})
        assert "\n" not in str(err.value)


def test_key_maps_refuse_foreign_keys():
    with pytest.raises(KeyError, match="BlinkDL"):
        checkpoint.fla_key("blocks.0.mlp.weight")
    with pytest.raises(KeyError, match="fla"):
        checkpoint.blinkdl_key("transformer.h.0.attn.weight")


# --- the state, the config, the architecture record, bad inputs ---------------------------------------------


def test_state_select_cat_clone():
    model = random_model(TINY, seed=4)
    state = random_state(model, 3, seed=4)
    tokens = tokens_for(TINY, 3, 4, seed=4)
    with torch.no_grad():
        logits, after = model(tokens, state)
        one_logits, one_after = model(tokens[1:2], state[1])
    assert_rel_close("row 1 alone vs in the batch", one_logits, logits[1:2], TOL["float64 algebra"])
    assert after[1].allclose(one_after, rtol=1e-12, atol=1e-14)
    joined = RWKV7State.cat([state[0], state[1:]])
    assert joined.allclose(state, rtol=0, atol=0) and len(joined) == 3
    copy = state.clone()
    copy.wkv.add_(1)
    assert not copy.allclose(state)
    with pytest.raises(TypeError):
        RWKV7State.cat([state, torch.zeros(1)])


def test_config_properties():
    c = PRESETS["pile-168M"]
    assert c.n_head == 12 and c.dim_ffn == 3072 and c.arch == "rwkv7"
    assert c.state_numbers == 12 * (2 * 768 + 12 * 64 * 64)
    assert RWKV7Config.from_dict(c.to_dict()) == c
    assert get_config("byte-4x128") == RWKV7Config(n_layer=4, n_embd=128, vocab_size=257, name="byte-4x128")
    assert get_config("byte-2x32").head_size == 32
    # one-token FLOPs by hand at the tiny shape: every matmul, the head and 5 N^2 per head for S
    C, F, V, N = 32, 128, 257, 8
    matmuls = 2 * (4 * C * C + 2 * C * F + 2 * C * (8 + 8 + 4 + 16)) - 2 * C * 4
    assert TINY.forward_flops_per_token == 2 * (matmuls + V * C + 2 * 5 * C * N)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_layer": 0, "n_embd": 64},
        {"n_layer": 2, "n_embd": 96},  # not a multiple of 64
        {"n_layer": 2, "n_embd": 64, "gate_lora": 0},
        {"n_layer": 2, "n_embd": 64, "ffn_dim": True},
        {"n_layer": 2, "n_embd": 64, "layer_norm_eps": 0.0},
    ],
)
def test_bad_configs_one_line(kwargs):
    with pytest.raises(ValueError) as err:
        RWKV7Config(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_config_names_and_fields():
    with pytest.raises(KeyError, match="byte-"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown RWKV7Config fields"):
        RWKV7Config.from_dict({"n_layer": 1, "n_embd": 64, "n_heads": 1})


def test_architecture_record_builds_the_model():
    model = ARCH.build(TINY, seed=0)
    assert isinstance(model, RWKV7) and ARCH.name == TINY.arch == "rwkv7"
    assert ARCH.get_config("tiny") == TINY and ARCH.lr_scale == {"att.w0": 2.0}
    # the official init: untrained blocks add nothing (output and ffn.value zero), so logits ignore the context
    with torch.no_grad():
        a, _ = model(torch.tensor([[1, 2, 3]]))
        b, _ = model(torch.tensor([[9, 8, 3]]))
    assert torch.equal(a[0, -1], b[0, -1])
    assert model.blocks[0].att.ln_x.eps == 64e-5


def test_bad_inputs_one_line():
    model = random_model(TINY, seed=5)
    good = model.init_state(2)
    bad_state = random_state(model, 2)
    bad_state.wkv[1, 0, 0, 0, 0] = float("nan")
    cases = [
        (TypeError, lambda: model(torch.zeros(2, 3))),  # float tokens
        (ValueError, lambda: model(torch.zeros(2, 3, 1, dtype=torch.long))),
        (ValueError, lambda: model(torch.full((2, 3), TINY.vocab_size))),
        (ValueError, lambda: model(torch.zeros(2, 0, dtype=torch.long))),
        (ValueError, lambda: model.step(torch.zeros(2, 1, dtype=torch.long), good)),
        (TypeError, lambda: model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, 5, 32))),
        (ValueError, lambda: model(torch.zeros(3, 3, dtype=torch.long), good)),
        (TypeError, lambda: model(torch.zeros(2, 3, dtype=torch.long), RWKV7State(good.shift.float(), good.wkv))),
        (ValueError, lambda: model(torch.zeros(2, 3, dtype=torch.long), bad_state)),
        (ValueError, lambda: model.prefill(torch.zeros(2, 3, dtype=torch.long), chunk=0)),
    ]
    for error, call in cases:
        with pytest.raises(error) as err:
            call()
        assert "\n" not in str(err.value), str(err.value)


def test_implicit_attention_reproduces_each_layers_state_update():
    """implicit_attention (the analysis API, either generation) for RWKV-7: per head, causal, signed, and
    y_t = sum_i alpha[t, i] v_i is the layer's state update from the empty state."""
    from rwkv_lab.analysis.implicit_attention import implicit_attention
    from rwkv_lab.ops.rwkv7 import wkv7

    model = random_model(TINY, seed=5)
    tokens = torch.randint(0, TINY.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    trace: list = []
    model(tokens, trace=trace)
    for layer, t in enumerate(trace):
        alpha = implicit_attention(model, tokens, layer)  # (T, T, H)
        assert alpha.shape == (24, 24, TINY.n_head)
        assert float(torch.triu(alpha.permute(2, 0, 1), 1).abs().max()) == 0.0, "attends to a later token"
        assert bool((alpha < 0).any()), "RWKV-7's implicit attention is signed"
        y, _ = wkv7(t["r"], t["log_w"], t["k"], t["v"], t["a"], t["b"], None, backend="recurrent")
        weighted = torch.einsum("tih,ihn->thn", alpha, t["v"][0])
        assert_rel_close(f"layer {layer}: alpha . v == the state update's y", weighted, y[0], TOL["float64 model"])
    with pytest.raises(ValueError, match="layer must be in"):
        implicit_attention(model, tokens, TINY.n_layer)


def test_wkv_states_are_the_states_of_stepping_the_model():
    """wkv_inputs / wkv_states (the analysis seam): each layer's S after every token equals the state model.step
    leaves, from a random state, float64; the inputs are forward's trace (the blocks after the layer skipped);
    log_decays is the trace's log_w per layer, inside RWKV-7's range."""
    model = random_model(TINY, seed=6)
    tokens = tokens_for(TINY, 1, 13, seed=6)
    state = random_state(model, 1, seed=6)
    trace: list = []
    model(tokens, state, trace=trace)
    stepped, s = [], state
    for t in range(tokens.shape[1]):
        _, s = model.step(tokens[:, t], s)
        stepped.append(s.wkv)
    stepped = torch.stack(stepped, dim=1)  # (1, T, L, H, N, N)
    for layer in range(TINY.n_layer):
        inputs = model.wkv_inputs(tokens, layer, state, states=True)
        for key in ("r", "log_w", "k", "v", "kappa", "iclr", "a", "b", "wkv_state"):
            assert torch.equal(inputs[key], trace[layer][key]), f"layer {layer}: {key} differs from the trace"
        states = model.wkv_states(tokens, layer, state)
        assert states.shape == (1, 13, TINY.n_head, TINY.head_size, TINY.head_size)
        assert torch.equal(states, inputs["states"])
        assert_rel_close(f"layer {layer}: S per token vs step", states, stepped[:, :, layer], TOL["float64 model"])
    log_decays = model.log_decays(tokens, state)  # (B, T, L, C)
    assert torch.equal(log_decays, torch.stack([t["log_w"].flatten(2) for t in trace], dim=2))
    assert bool((log_decays < 0).all()) and bool((log_decays > -math.exp(-0.5)).all())
    with pytest.raises(ValueError, match="layer must be in"):
        model.wkv_inputs(tokens, TINY.n_layer)


# Every released x070 shape: (layers, width, vocabulary, LoRA widths w, a, v, g); heads of 64, channel mix 4C.
# Layers and widths: reference/rwkv7_configs.csv (hub cards). LoRA widths as read from the checkpoints (aierwiki/
# rwkvtune rwkvtune/configs/models/rwkv7-{0.4b,2.9b,7.2b}.json and its README, measured on the G1 files; the G1 and
# World models of one size share their shapes); the Pile 421M's gate width is the one its name's parameter count
# needs (160: 421.2M; 128 would be 419.6M), the World 0.4B's the one its card's 0.450B needs (128; 160: 452.3M).
RELEASED_SHAPES = {
    "pile-168M": (12, 768, PILE_VOCAB, (64, 64, 32, 128)),
    "pile-421M": (24, 1024, PILE_VOCAB, (64, 64, 32, 160)),
    "pile-1.47B": (24, 2048, PILE_VOCAB, (96, 96, 64, 256)),
    "world-0.1B": (12, 768, WORLD_VOCAB, (64, 64, 32, 128)),
    "world-0.4B": (24, 1024, WORLD_VOCAB, (64, 64, 32, 128)),
    "world-1.5B": (24, 2048, WORLD_VOCAB, (96, 96, 64, 256)),
    "world-2.9B": (32, 2560, WORLD_VOCAB, (96, 96, 64, 320)),
    "g0-7.2B": (32, 4096, WORLD_VOCAB, (128, 128, 96, 480)),
}


def spec_state_dict(L, C, V, loras, N=64):
    """A BlinkDL x070 state dict of meta tensors, key by key from the spec's checkpoint section (not from our model)."""
    empty = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    sd = {"emb.weight": empty(V, C), "ln_out.weight": empty(C), "ln_out.bias": empty(C), "head.weight": empty(V, C)}
    sd |= {"blocks.0.ln0.weight": empty(C), "blocks.0.ln0.bias": empty(C)}
    for i in range(L):
        p = f"blocks.{i}."
        sd |= {p + f"{ln}.{w}": empty(C) for ln in ("ln1", "ln2") for w in ("weight", "bias")}
        sd |= {p + f"att.x_{m}": empty(1, 1, C) for m in "rwkvag"}
        sd |= {p + f"att.{m}0": empty(1, 1, C) for m in "wav"}
        for m, D in zip("wavg", loras):
            sd |= {p + f"att.{m}1": empty(C, D), p + f"att.{m}2": empty(D, C)}
        sd |= {p + "att.k_k": empty(1, 1, C), p + "att.k_a": empty(1, 1, C), p + "att.r_k": empty(C // N, N)}
        sd |= {p + f"att.{m}.weight": empty(C, C) for m in ("receptance", "key", "value", "output")}
        sd |= {p + "att.ln_x.weight": empty(C), p + "att.ln_x.bias": empty(C), p + "ffn.x_k": empty(1, 1, C)}
        sd |= {p + "ffn.key.weight": empty(4 * C, C), p + "ffn.value.weight": empty(C, 4 * C)}
    return sd


@pytest.mark.parametrize("name", RELEASED_SHAPES)
def test_loader_reads_every_released_shape(name):
    """The config read from the weights (heads from r_k, each LoRA width from its matrix) in BlinkDL's names and in
    fla's hub names, and our network built from it has exactly the checkpoint's keys and shapes (a strict load)."""
    L, C, V, loras = RELEASED_SHAPES[name]
    sd = spec_state_dict(L, C, V, loras)
    for layout, read in [
        ("BlinkDL", checkpoint.config_from_state_dict(sd)),
        (
            "fla",
            checkpoint.config_from_state_dict(checkpoint.from_fla_state_dict(checkpoint.to_fla_state_dict(sd), None)),
        ),
    ]:
        got = (
            read.n_layer,
            read.n_embd,
            read.vocab_size,
            (read.decay_lora, read.iclr_lora, read.value_lora, read.gate_lora),
        )
        assert got == (L, C, V, loras), (layout, got)
        assert (read.n_head, read.head_size, read.dim_ffn) == (C // 64, 64, 4 * C), layout
    built = meta_state_dict(read)
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    if name in PRESETS:
        assert PRESETS[name] == dataclasses.replace(read, name=name, ctx_len=PRESETS[name].ctx_len), name


def test_the_1024_wide_gate_widths_give_the_published_parameter_counts():
    """The evidence for the two 0.4B gates above: only these widths give the counts their sources print."""
    count = lambda V, gate: RWKV7Config(n_layer=24, n_embd=1024, vocab_size=V, gate_lora=gate).n_params  # noqa: E731
    assert (round(count(PILE_VOCAB, 160) / 1e6), round(count(PILE_VOCAB, 128) / 1e6)) == (421, 420)  # "421M"
    assert (count(WORLD_VOCAB, 128) // 10**6, count(WORLD_VOCAB, 160) // 10**6) == (450, 452)  # "0.450B"


def test_trains_under_bf16_autocast():
    """The trainer's GPU recipe (bf16 autocast) on the CPU: the value-residual gate is fp32 (an fp32 bias plus a bf16
    LoRA) while the value is bf16; torch.lerp refused the mix until the gate took the value's dtype."""
    model = untrained_model(arch="rwkv7").train()
    tokens = torch.randint(0, 256, (2, 37))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    assert logits.dtype == torch.bfloat16
    # layer 0's value is every layer's v_first: its value-residual LoRA (v0, v1, v2) is not used
    unused = {f"blocks.0.att.{name}" for name in ("v0", "v1", "v2")}
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name in unused), name
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), name
