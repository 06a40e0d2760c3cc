"""Tokenizers and text generation through the recurrent form."""

import pytest
import torch
from helpers import NEOX_TOKENIZER, TOL, assert_rel_close, random_model

from rwkv_lab.inference.generation import generate, stream
from rwkv_lab.inference.sampling import check_sampling, sample
from rwkv_lab.loading.checkpoint import default_model
from rwkv_lab.loading.tokenizer import BPETokenizer, ByteTokenizer, encode_batch, load_tokenizer, tokenizer_for
from rwkv_lab.models.rwkv4.config import PRESETS, RWKVConfig
from rwkv_lab.models.rwkv4.model import build_model


def test_neox_tokenizer_from_path_and_env(monkeypatch):
    tok = load_tokenizer(str(NEOX_TOKENIZER))
    assert tok.vocab_size == 50277
    ids = tok.encode("Hello world, RWKV!")
    assert ids[:2] == [12092, 1533] and tok.decode(ids) == "Hello world, RWKV!"
    assert tok.decode([0]) == "<|endoftext|>"
    monkeypatch.setenv("RWKV_LAB_TOKENIZER", str(NEOX_TOKENIZER))
    assert load_tokenizer().vocab_size == 50277


def test_neox_tokenizer_from_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from test_checkpoint import fill_hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("RWKV_LAB_TOKENIZER", raising=False)
    fill_hub_cache(tmp_path, "EleutherAI/gpt-neox-20b", {"tokenizer.json": NEOX_TOKENIZER})
    assert load_tokenizer().encode("Hello") == [12092]


def test_encode_batch_equals_encoding_each_text():
    texts = ["Hello world, RWKV!", "", "é中🙂 " * 50, "def f(x):\n    return x"]
    for tok in (BPETokenizer(NEOX_TOKENIZER), ByteTokenizer()):
        assert encode_batch(tok, texts) == [tok.encode(t) for t in texts]

    class OnlyEncode:  # a tokenizer without encode_batch: one encode a text
        def encode(self, text):
            return [len(text)]

    assert encode_batch(OnlyEncode(), ["ab", "c"]) == [[2], [1]]
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at index 3"):
        encode_batch(BPETokenizer(NEOX_TOKENIZER), ["fine", "ok \ud800"])


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'é中🙂'"
    ids = tok.encode(text)
    assert min(ids) >= 1 and max(ids) <= 256 and tok.decode(ids) == text
    assert tok.decode([0] + ids) == text


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        BPETokenizer(tmp_path / "bad.json")
    # a 257-token model cannot take NeoX ids
    with pytest.raises(ValueError, match=r"50277 tokens but the model's vocabulary has only 257"):
        tokenizer_for(build_model(PRESETS["tiny"]), str(NEOX_TOKENIZER))


def test_tokenizer_for_picks_the_models_own():
    assert isinstance(tokenizer_for(build_model(PRESETS["tiny"])), ByteTokenizer)
    with torch.device("meta"):
        from rwkv_lab.models.rwkv4.model import RWKV

        neox = RWKV(RWKVConfig(n_layer=1, n_embd=8))
    assert tokenizer_for(neox, str(NEOX_TOKENIZER)).vocab_size == 50277


@pytest.fixture(scope="module")
def model():
    return random_model(PRESETS["tiny"], seed=0, dtype=torch.float32)


def test_greedy_equals_argmax_stepping(model):
    tok = ByteTokenizer()
    prompt = "abc"
    logits, state = model(torch.tensor([tok.encode(prompt)]))
    logits, ids = logits[0, -1], []
    for _ in range(20):
        token = int(logits.argmax())
        if token == 0:
            break
        ids.append(token)
        logits, state = model.step(torch.tensor([token]), state)
        logits = logits[0]
    assert generate(model, tok, prompt, max_new_tokens=20, temperature=0) == tok.decode(ids)


def test_sampling_is_reproducible_with_a_seed(model):
    tok = ByteTokenizer()
    a = generate(model, tok, "x", max_new_tokens=30, temperature=1.0, seed=1)
    b = generate(model, tok, "x", max_new_tokens=30, temperature=1.0, seed=1)
    c = generate(model, tok, "x", max_new_tokens=30, temperature=1.0, seed=2)
    assert a == b and a != c


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(300, 4)  # 300 sequences, one distribution
    seeds, steps = torch.arange(300), torch.zeros(300, dtype=torch.int64)
    draws = sample(logits, 1.0, 0.7, seeds, steps)
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    share = float((draws == 0).double().mean())
    print(f"share of token 0 within the nucleus {share:.3f} (expected 0.5 / 0.8 = 0.625)")
    assert abs(share - 0.625) < 0.1
    assert set(sample(logits, 1.0, 1e-9, seeds, steps).tolist()) == {0}
    with pytest.raises(ValueError, match="top_p"):
        check_sampling(1.0, 0.0)


def test_stop_strings_and_streaming(model):
    tok = ByteTokenizer()
    full = generate(model, tok, "q", max_new_tokens=40, temperature=0)
    assert len(full) > 10
    stop = full[8:11]
    cut = full[: full.find(stop)]
    pieces = list(stream(model, tok, "q", max_new_tokens=40, temperature=0, stop=[stop, "never-appears"]))
    assert "".join(pieces) == cut == generate(model, tok, "q", max_new_tokens=40, temperature=0, stop=[stop])
    assert all(stop not in p for p in pieces)
    assert "".join(stream(model, tok, "q", max_new_tokens=40, temperature=0)) == full


def test_streaming_multibyte_characters_arrive_whole(monkeypatch):
    # a model that always predicts the bytes of "é" (0xC3 0xA9): no piece may hold half a character
    model = build_model(RWKVConfig(n_layer=1, n_embd=8, vocab_size=257), seed=0)
    with torch.no_grad():
        model.head.weight.zero_()
    sequence = iter([0xC3 + 1, 0xA9 + 1] * 10)

    def fake_sample(logits, *args):
        return torch.tensor([next(sequence)] * logits.shape[0])

    monkeypatch.setattr("rwkv_lab.inference.generation.sampler_for", lambda device: fake_sample)
    monkeypatch.setattr("rwkv_lab.inference.decoder.sampler_for", lambda device: fake_sample)
    pieces = list(stream(model, ByteTokenizer(), "x", max_new_tokens=6))
    assert "".join(pieces) == "ééé" and all("\ufffd" not in p for p in pieces)


def test_default_model_is_deterministic_and_fast():
    import time

    start = time.perf_counter()
    a = default_model()
    elapsed = time.perf_counter() - start
    b = default_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.vocab_size == 257 and "default" in a.source
    print(f"default model built in {elapsed:.2f} s")
    # a trained model: its output depends on the context
    la, _ = a(torch.tensor([[1, 2, 3]]))
    lb, _ = a(torch.tensor([[9, 2, 3]]))
    assert (la[0, -1] - lb[0, -1]).abs().max() > 1e-3


# ---- the fast path and batched generation (inference/decoder.py, inference/generation.py) ----------------------


def test_decoder_step_equals_the_eager_step(model):
    """The decoder (eager on the CPU; captured on a GPU, checked by benchmarks/bench_generation.py) returns the
    logits and state of model.step, and the token its sampler picks from them."""
    from rwkv_lab.inference.decoder import Decoder

    decoder = Decoder(model, batch=3)
    gen = torch.Generator().manual_seed(5)
    state = model.init_state(3)
    state.packed[:, :, 0] = torch.randn(3, model.config.n_layer, model.config.n_embd, generator=gen)
    tokens = torch.randint(1, 257, (3,), generator=gen)
    seeds, steps = torch.tensor([1, 2, 3]), torch.tensor([4, 4, 4])
    for _ in range(5):
        ref_logits, ref_state = model.step(tokens, state)
        chosen, new_state, logits = decoder.step(tokens, state, 0.9, 0.8, seeds, steps, return_logits=True)
        assert_rel_close("decoder logits vs model.step", logits, ref_logits, TOL["float32 step"])
        assert_rel_close("decoder state vs model.step", new_state, ref_state, TOL["float32 step"])
        assert torch.equal(chosen, sample(ref_logits, 0.9, 0.8, seeds, steps))
        tokens, state, steps = chosen, new_state, steps + 1


def test_a_failing_compile_level_falls_back_exactly_and_says_why(model, monkeypatch):
    """A compiler failure costs speed, never the result: each level that fails is given up with a warning whose
    text the decoder keeps (`fallbacks`, which the GPU benchmark records), down to the eager step, whose tokens
    and state are model.step's."""
    from rwkv_lab.inference import decoder as decoder_module

    def broken(model, level):
        def fails(*args):
            raise RuntimeError(f"inductor could not build level {level}")

        return fails

    monkeypatch.setattr(decoder_module, "_compiled", broken)
    decoder = decoder_module.Decoder(model, batch=2, compile=True)
    tokens, state = torch.tensor([5, 9]), model.init_state(2)
    with pytest.warns(RuntimeWarning, match="torch.compile of the decode step"):
        chosen, new_state = decoder.step(tokens, state)
    assert decoder.compile is False
    assert [m.split("(")[1] for m in decoder.fallbacks] == [
        "level 'step+sample') failed ",
        "level 'step') failed ",
        "level 'sample') failed ",
    ]
    assert all("inductor could not build" in m for m in decoder.fallbacks)
    ref_logits, ref_state = model.step(tokens, state)
    assert torch.equal(chosen, ref_logits.argmax(-1))
    assert_rel_close("decoder state after the fallbacks vs model.step", new_state, ref_state, TOL["float32 step"])


def test_greedy_text_equals_eager_stepping_over_200_tokens():
    model, tok = default_model(), ByteTokenizer()
    prompt = "def main():\n    "
    logits, state = model(torch.tensor([tok.encode(prompt)]))
    logits, ids = logits[0, -1], []
    for _ in range(200):
        token = int(logits.argmax())
        if token == tok.eot_id:
            break
        ids.append(token)
        logits, state = model.step(torch.tensor([token]), state)
        logits = logits[0]
    assert len(ids) == 200
    assert generate(model, tok, prompt, max_new_tokens=200, temperature=0) == tok.decode(ids)


def test_new_document_reads_the_prompt_after_end_of_text():
    model, tok = default_model(), ByteTokenizer()
    prompt = "def main():\n"
    logits, state = model(torch.tensor([[tok.eot_id] + tok.encode(prompt)]))
    logits, ids = logits[0, -1], []
    for _ in range(40):
        ids.append(int(logits.argmax()))
        logits, state = model.step(torch.tensor([ids[-1]]), state)
        logits = logits[0]
    as_document = generate(model, tok, prompt, max_new_tokens=40, temperature=0, new_document=True)
    mid_file = generate(model, tok, prompt, max_new_tokens=40, temperature=0)
    print(f"as a document's start: {as_document!r}; from the middle of a file: {mid_file!r}")
    assert as_document == tok.decode(ids)
    assert as_document != mid_file
    batched = generate(model, tok, [prompt, ""], max_new_tokens=40, temperature=0, new_document=True)
    assert batched == [as_document, generate(model, tok, "", max_new_tokens=40, temperature=0)]


def test_batched_generation_equals_each_prompt_alone():
    model = random_model(PRESETS["tiny"], seed=4, dtype=torch.float64)
    tok = ByteTokenizer()
    prompts = ["", "a", "x" * 1000, "print('hello')"]  # empty, one token, 1000x longer, ordinary
    kwargs = {"temperature": 0.9, "top_p": 0.95}
    batched = generate(model, tok, prompts, max_new_tokens=[5, 40, 40, 12], seed=[1, 2, 3, 4], **kwargs)
    alone = [
        generate(model, tok, p, max_new_tokens=m, seed=s, **kwargs)
        for p, m, s in zip(prompts, [5, 40, 40, 12], [1, 2, 3, 4])
    ]
    print([len(t) for t in batched])
    assert batched == alone
    assert len(batched[0]) <= 5 and len(batched[3]) <= 12


def test_stream_yields_index_and_pieces_per_sequence(model):
    tok = ByteTokenizer()
    prompts = ["ab", "cde"]
    pieces = list(stream(model, tok, prompts, max_new_tokens=20, temperature=0))
    assert all(isinstance(i, int) and isinstance(p, str) for i, p in pieces)
    texts = ["".join(p for i, p in pieces if i == k) for k in range(2)]
    assert texts == generate(model, tok, prompts, max_new_tokens=20, temperature=0)
    assert texts == [generate(model, tok, p, max_new_tokens=20, temperature=0) for p in prompts]


def test_per_sequence_stops_end_of_text_and_limits(model):
    tok = ByteTokenizer()
    full = generate(model, tok, ["q", "r"], max_new_tokens=40, temperature=0)
    assert all(len(t) > 10 for t in full)
    stops = [[full[0][5:8]], [full[1][9:11]]]
    cut = generate(model, tok, ["q", "r"], max_new_tokens=40, temperature=0, stop=stops)
    assert cut == [full[0][: full[0].find(stops[0][0])], full[1][: full[1].find(stops[1][0])]]
    # one str is one stop string, not a set of characters
    assert generate(model, tok, "q", max_new_tokens=40, temperature=0, stop=full[0][5:8]) == cut[0]
    three = generate(model, tok, "q", max_new_tokens=3, temperature=0)
    assert full[0].startswith(three.rstrip("\ufffd")) and len(tok.encode(three)) <= 3 + 2
    assert generate(model, tok, ["q", "r"], max_new_tokens=[3, 0], temperature=0) == [three, ""]
    with pytest.raises(ValueError, match="empty stop string"):
        generate(model, tok, "q", stop=[""])


def test_end_of_text_ends_only_its_sequence(model, monkeypatch):
    # a sampler that picks end-of-text (0) for the sequence of seed 1 from its third token, 'A' (66) otherwise
    def fake_sample(logits, temperature, top_p, seeds, steps, keys=None):
        return torch.where((seeds == 1) & (steps >= 2), 0, 66)

    monkeypatch.setattr("rwkv_lab.inference.generation.sampler_for", lambda device: fake_sample)
    monkeypatch.setattr("rwkv_lab.inference.decoder.sampler_for", lambda device: fake_sample)
    texts = generate(model, ByteTokenizer(), ["a", "b", "c"], max_new_tokens=6, seed=[0, 1, 2])
    assert texts == ["AAAAAA", "AA", "AAAAAA"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_new_tokens": -5}, ValueError, "max_new_tokens must be >= 0"),
        ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an int"),
        ({"max_new_tokens": None}, TypeError, "max_new_tokens must be an int"),
        ({"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ({"temperature": -1.0}, ValueError, "temperature >= 0"),
        ({"seed": 2**70}, ValueError, "seed must be in"),
        ({"seed": "1"}, TypeError, "seed must be an int"),
        ({"stop": [3]}, TypeError, "stop strings must be str"),
        ({"max_new_tokens": [1, 2]}, ValueError, "2 entries for 1 prompts"),
    ],
)
def test_generation_arguments_are_checked(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(model, ByteTokenizer(), "q", **kwargs)


@pytest.mark.parametrize("prompt", [b"bytes", None, [], ["ok", 3]])
def test_prompts_must_be_text(model, prompt):
    with pytest.raises(TypeError, match="prompt"):
        generate(model, ByteTokenizer(), prompt)


def test_cli_generates_what_the_library_does(capsys):
    from rwkv_lab.__main__ import main

    prompt = "def main():\n"
    assert main(["generate", prompt, "--new-document", "--temperature", "0", "--max-new-tokens", "30"]) == 0
    expected = generate(default_model(), ByteTokenizer(), prompt, max_new_tokens=30, temperature=0, new_document=True)
    assert capsys.readouterr().out == expected + "\n"
