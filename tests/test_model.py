"""The whole network: parallel form == recurrent form, values and gradients; bad input is refused clearly."""

import math

import pytest
import torch
from helpers import TOL, assert_rel_close, random_model, random_state

from rwkv_lab.analysis.equivalence import step_all
from rwkv_lab.models.rwkv4.config import PRESETS, RWKVConfig
from rwkv_lab.models.rwkv4.model import RWKV4State, build_model

TINY = PRESETS["tiny"]


def tokens_for(model, B, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=gen)


@pytest.mark.parametrize("backend", ["attention", "chunked"])
@pytest.mark.parametrize("T", [1, 2, 15, 63])
def test_parallel_equals_recurrent_float64(backend, T):
    model = random_model(TINY, seed=T)
    tokens = tokens_for(model, 2, T, seed=T)
    state0 = random_state(model, 2, seed=T)
    par_logits, par_state = model(tokens, state0, backend=backend)
    rec_logits, rec_state = step_all(model, tokens, state0)
    assert_rel_close(f"{backend} T={T} logits", par_logits, rec_logits, TOL["float64 model"])
    assert_rel_close(f"{backend} T={T} state", par_state, rec_state, TOL["float64 model"])


def test_parallel_equals_recurrent_float32_long():
    model = random_model(TINY, seed=1, dtype=torch.float32)
    tokens = tokens_for(model, 1, 1000, seed=1)
    state0 = random_state(model, 1, seed=1)
    par_logits, par_state = model(tokens, state0)
    rec_logits, rec_state = step_all(model, tokens, state0)
    assert_rel_close("fp32 T=1000 logits", par_logits, rec_logits, TOL["float32"])
    assert_rel_close("fp32 T=1000 state", par_state, rec_state, TOL["float32"])


@pytest.mark.parametrize("prefill", [1, 7, 14, 15])
def test_prefill_then_step_equals_one_parallel_call(prefill):
    model = random_model(TINY, seed=2)
    tokens = tokens_for(model, 3, 15, seed=2)
    state0 = random_state(model, 3, seed=2)
    full_logits, full_state = model(tokens, state0)
    logits, state = model(tokens[:, :prefill], state0)
    rest, state = step_all(model, tokens[:, prefill:], state) if prefill < 15 else (logits[:, :0], state)
    assert_rel_close(f"prefill {prefill} logits", torch.cat([logits, rest], 1), full_logits, TOL["float64 model"])
    assert_rel_close(f"prefill {prefill} state", state, full_state, TOL["float64 model"])


def test_gradients_of_parallel_form_equal_recurrent_form():
    torch.manual_seed(0)
    model = random_model(TINY, seed=3)
    tokens = tokens_for(model, 2, 15, seed=3)
    targets = tokens_for(model, 2, 15, seed=4)
    state0 = random_state(model, 2, seed=3)

    def grads(run):
        model.zero_grad()
        s0 = state0.clone().requires_grad_(True)
        logits, state = run(s0)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()) + state.packed.square().mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()} | {"initial state": s0.packed.grad.clone()}

    def recurrent(s0):
        logits, state = [], s0
        for t in range(tokens.shape[1]):
            out, state = model.step(tokens[:, t], state)
            logits.append(out)
        return torch.stack(logits, 1), state

    g_rec = grads(recurrent)
    for backend in ("attention", "chunked"):
        g_par = grads(lambda s0: model(tokens, s0, backend=backend))
        for name in g_rec:
            assert_rel_close(f"{backend} grad {name}", g_par[name], g_rec[name], TOL["float64 long sequence"])


def test_extreme_keys_and_decays_stay_finite():
    model = random_model(TINY, seed=4, dtype=torch.float32)
    with torch.no_grad():
        for _i, block in enumerate(model.blocks):
            C = model.config.n_embd
            # decays w = exp(time_decay) from 1e-4 to 1e3, and keys scaled so |k| reaches ~80
            block.att.time_decay.copy_(torch.linspace(math.log(1e-4), math.log(1e3), C))
            block.att.key.weight.mul_(80 / block.att.key.weight.abs().sum(1, keepdim=True).mean())
    tokens = tokens_for(model, 2, 100, seed=4)
    outputs = {b: model(tokens, backend=b) for b in ("recurrent", "attention", "chunked")}
    ref_logits, ref_state = outputs["recurrent"]
    for backend, (logits, state) in outputs.items():
        assert torch.isfinite(logits).all() and state.is_finite(), backend
        assert_rel_close(f"extreme {backend} logits", logits, ref_logits, TOL["float32 vs another implementation"])


def test_official_initialisation():
    model = build_model(PRESETS["tiny"], seed=0)
    _C, L = model.config.n_embd, model.config.n_layer
    td0 = model.blocks[0].att.time_decay
    assert td0[0].item() == pytest.approx(-5.0) and td0[-1].item() == pytest.approx(3.0)
    assert model.blocks[0].att.time_first[:3].tolist() == pytest.approx([math.log(0.3) + d for d in (0.0, 0.5, -0.5)])
    assert model.blocks[L - 1].att.time_mix_v[0, 0, 0].item() == pytest.approx(0.3)
    # RWKV-LM zeroes these; the default model draws them so its output depends on the context
    assert model.blocks[0].att.key.weight.abs().max() == 0 and model.blocks[0].ffn.value.weight.abs().max() == 0
    drawn = build_model(PRESETS["tiny"], seed=0, zero_projections=False)
    assert drawn.blocks[0].att.key.weight.abs().max() > 0
    assert torch.equal(
        build_model(PRESETS["tiny"], seed=5).head.weight, build_model(PRESETS["tiny"], seed=5).head.weight
    )
    assert abs(model.emb.weight).max() <= 1e-4


def test_half_precision_models_run_and_track_float32():
    ref = random_model(TINY, seed=6, dtype=torch.float32)
    tokens = tokens_for(ref, 2, 40, seed=6)
    ref_logits, _ = ref(tokens)
    for dtype in (torch.bfloat16, torch.float16):
        model = random_model(TINY, seed=6, dtype=torch.float32).to(dtype)
        logits, state = model(tokens)
        assert logits.dtype == dtype and state.packed.dtype == torch.float32
        assert_rel_close(f"{dtype} logits vs fp32", logits, ref_logits, TOL["bfloat16 long sequence"])


def test_state_size_is_constant():
    model = random_model(TINY, seed=7, dtype=torch.float32)
    for T in (1, 10, 100):
        _, state = model(tokens_for(model, 1, T))
        assert sum(t.numel() for t in state.tensors()) == model.config.state_numbers


class TestBadInput:
    model = build_model(PRESETS["tiny"], seed=0, zero_projections=False)

    def test_token_ids_out_of_range(self):
        with pytest.raises(ValueError, match=r"token id 257 is out of range.*\[0, 257\)"):
            self.model(torch.tensor([[1, 257]]))
        with pytest.raises(ValueError, match="token id -1 is out of range"):
            self.model(torch.tensor([[-1, 3]]))
        with pytest.raises(ValueError, match="out of range"):
            self.model.step(torch.tensor([300]))

    def test_empty_and_misshapen_tokens(self):
        with pytest.raises(ValueError, match="tokens is empty"):
            self.model(torch.zeros(1, 0, dtype=torch.long))
        with pytest.raises(ValueError, match=r"shape \(B, T\)"):
            self.model(torch.tensor([1, 2, 3]))
        with pytest.raises(TypeError, match="int64 or int32"):
            self.model(torch.tensor([[1.0, 2.0]]))
        with pytest.raises(TypeError, match="torch.Tensor"):
            self.model([[1, 2]])

    def test_wrong_state(self):
        tokens = torch.tensor([[1, 2]])
        good = self.model.init_state(1)
        with pytest.raises(ValueError, match=r"state must have shape \(B, L, 5, C\) = \(1, 2, 5, 32\)"):
            self.model(tokens, RWKV4State(good.packed[:, :1]))
        with pytest.raises(ValueError, match="state must have shape"):
            self.model(tokens, self.model.init_state(2))
        with pytest.raises(TypeError, match="state must be torch.float32"):
            self.model(tokens, RWKV4State(good.packed.double()))
        with pytest.raises(TypeError, match="state must be an RWKV4State"):
            self.model(tokens, good.packed)  # the state is the model's object, not a bare tensor
        with pytest.raises(ValueError, match="state is on meta"):
            self.model(tokens, good.to("meta"))

    def test_valid_calls_do_not_modify_the_given_state(self):
        state = random_state(self.model, 1, seed=1)
        before = state.clone()
        self.model(torch.tensor([[5, 6, 7]]), state)
        assert all(torch.equal(a, b) for a, b in zip(state.tensors(), before.tensors()))


def test_config_with_one_layer_builds():
    model = build_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=11), seed=0, zero_projections=False)
    logits, state = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 11) and state.packed.shape == (1, 1, 5, 8)


def test_fp16_rescaling_keeps_a_growing_residual_finite():
    """Blocks 5 and 6 each add 3e4..6e4 to every channel: up to 1.2e5, which overflows fp16 unless the residual
    is halved after block 5 (then every value stays under 6.1e4)."""
    config = RWKVConfig(n_layer=7, n_embd=32, vocab_size=257)
    model = random_model(config, seed=8, dtype=torch.float32)
    C = config.n_embd
    with torch.no_grad():
        for i in (5, 6):
            # ln2 -> all ones, so k = relu(key . 1)^2 = 1, r = sigmoid(20) = 1, and channel c gets 6e4 * f_c
            block = model.blocks[i]
            block.ln2.weight.zero_()
            block.ln2.bias.fill_(1.0)
            block.ffn.key.weight.fill_(1.0 / C)
            block.ffn.receptance.weight.fill_(20.0 / C)
            f = 0.5 + 0.5 * torch.arange(C, dtype=torch.float32) / (C - 1)
            block.ffn.value.weight.copy_((6e4 / (4 * C)) * f[:, None].expand(C, 4 * C))
    tokens = tokens_for(model, 2, 20, seed=8)
    ref_logits, _ = model(tokens)
    half = random_model(config, seed=8, dtype=torch.float32)
    half.load_state_dict(model.state_dict())
    half = half.half()
    logits, _ = half(tokens)
    assert_rel_close("fp16 with rescaling vs fp32", logits, ref_logits, TOL["bfloat16"])
    half.configure(rescale_every=0)
    assert not torch.isfinite(half(tokens)[0]).all(), "without rescaling the fp16 residual should overflow here"


def test_the_padded_head_gives_the_heads_logits_and_gradients():
    """Training on CUDA pads the odd RWKV-4 vocabulary (50277) to aligned rows: same logits, same gradients."""
    from rwkv_lab.models.rwkv4.fast_path import HEAD_PAD, padded_head

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 24, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50277 % 1000, 24, generator=gen, dtype=torch.float64, requires_grad=True)  # V = 277
    padded = padded_head(hidden, weight)
    plain = torch.nn.functional.linear(hidden, weight)
    assert padded.shape == plain.shape and padded.stride(-2) % HEAD_PAD == 0
    assert_rel_close("padded head logits", padded, plain, TOL["float64 model"])
    g = torch.randn(plain.shape, generator=gen, dtype=torch.float64)
    for name, a, b in zip(
        ("hidden", "weight"),
        torch.autograd.grad((padded * g).sum(), (hidden, weight)),
        torch.autograd.grad((plain * g).sum(), (hidden, weight)),
    ):
        assert_rel_close(f"padded head grad {name}", a, b, TOL["float64 model"])
    whole = padded_head(hidden, weight, keep_padding=True)  # what lm_loss reads: the padding kept, zeros past V
    assert whole.shape[-1] % HEAD_PAD == 0 and whole.shape[-1] > plain.shape[-1]
    assert torch.equal(whole[..., : plain.shape[-1]], padded) and not whole[..., plain.shape[-1] :].any()
