"""The RWKV World tokenizer against the `rwkv` package's TRIE_TOKENIZER (the reference implementation)."""

import importlib.util
import json
import random
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import REPO, SHARED

from rwkv_lab.inference.generation import _Sequence
from rwkv_lab.loading import tokenizer as tokenizer_module
from rwkv_lab.loading.tokenizer import WORLD_VOCAB_FILE, check_tokenizer, load_tokenizer, world_tokenizer
from rwkv_lab.models.rwkv4.config import RWKVConfig

LM_EVAL = SHARED / "data" / "lm_eval"
needs_data = pytest.mark.skipif(not LM_EVAL.exists(), reason="needs ../shared/data")

# text the lm-eval files lack: CJK, emoji (ZWJ sequences, flags, skin tones), combining marks, right-to-left, controls
WORLD_TEXT = [
    "RWKV（读作 RwaKuv）是一种具有 GPT 级别性能的 RNN，可以像 GPT 一样直接并行训练。",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな、漢字を混ぜます。",
    "한국어 문장도 토큰화합니다. 서울특별시!",
    "emoji 🙂🦜👩‍👩‍👧‍👦 🇳🇴🇯🇵 👍🏽 ✔︎ 🫠🪿",
    "combining: e\u0301 a\u030a n\u0303; Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย",
    "controls \x00\x01\t\r\n\x7f\x85 nbsp\u00a0 zwsp\u200b bom\ufeff end\U0010ffff",
    "    def f(x):\n\t\treturn {'a': [1, 2, 3]}  # comment\n\n\n" + " " * 300 + "#" * 200 + "-" * 100,
]


@pytest.fixture(scope="module")
def tok():
    return world_tokenizer()


@pytest.fixture(scope="module")
def ref():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(_vocab_path()))


def _vocab_path() -> Path:
    return Path(next(iter(importlib.util.find_spec("rwkv").submodule_search_locations)), WORLD_VOCAB_FILE)


def _lm_eval_texts() -> list[str]:
    """Every text field of the lm-eval files: 5153 LAMBADA passages, 1838 PIQA goals with both solutions, 2376
    ARC-Easy questions with their choices."""
    texts = []
    for line in (LM_EVAL / "lambada_openai" / "lambada_test.jsonl").read_text(encoding="utf-8").splitlines():
        texts.append(json.loads(line)["text"])
    for line in (LM_EVAL / "piqa" / "valid.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["goal"], row["sol1"], row["sol2"]]
    for line in (LM_EVAL / "arc_easy" / "arc_easy.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["query"], *row["choices"]]
    return texts


def _code_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((REPO / "rwkv_lab").rglob("*.py"))]


def _mismatches(tok, ref, texts) -> list[str]:
    return [t[:60] for t in texts if tok.encode(t) != ref.encode(t)]


@needs_data
def test_ids_equal_the_packages_on_lm_eval_text(tok, ref):
    texts = _lm_eval_texts()
    assert len(texts) > 15000
    bad = _mismatches(tok, ref, texts)
    print(f"{len(texts)} lm-eval texts, {len(bad)} tokenized differently from the rwkv package")
    assert not bad, f"ids differ from the rwkv package's on {len(bad)} texts, first {bad[0]!r}"


def test_ids_equal_the_packages_on_code_and_world_text(tok, ref):
    texts = _code_texts() + WORLD_TEXT
    bad = _mismatches(tok, ref, texts)
    print(f"{len(texts)} code files and world texts, {len(bad)} tokenized differently from the rwkv package")
    assert not bad, f"ids differ from the rwkv package's on {len(bad)} texts, first {bad[0]!r}"
    for text in WORLD_TEXT:
        assert tok.decode(tok.encode(text)) == text


def _random_text(rng: random.Random, n: int) -> str:
    """Code points from ASCII, Latin, CJK, emoji and the whole range (never a surrogate: those have no UTF-8)."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0, 0xD7FF), (0xE000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def test_random_unicode_round_trips_with_the_packages_ids(tok, ref):
    rng = random.Random(0)
    for n in [0, 1, 2, 3, 17, 100, 1000, 5000]:
        text = _random_text(rng, n)
        ids = tok.encode(text)
        assert ids == ref.encode(text), f"ids differ from the rwkv package's on random text of {n} characters"
        assert tok.decode(ids) == text


def test_random_bytes_encode_as_the_package_and_decode_back(tok, ref):
    """Any bytes, valid UTF-8 or not: what a str's encode reaches through its UTF-8, and more."""
    rng = random.Random(1)
    # random bytes, and random bytes from a small alphabet (long repeats, which the long tokens match)
    samples = [rng.randbytes(n) for n in [1, 2, 5, 64, 4096]]
    samples += [bytes(rng.choice(b" \n\t#-=ab\xe4\xb8\xad\x00\xff") for _ in range(n)) for n in [3, 500, 4096]]
    for data in samples:
        ids = tok.encode_bytes(data)
        assert ids == ref.encodeBytes(data), f"ids differ from the rwkv package's on {len(data)} random bytes"
        assert tok.decode_bytes(ids) == data


def test_random_ids_decode_to_the_packages_bytes(tok, ref):
    rng = random.Random(2)
    for n in [1, 2, 7, 300, 3000]:
        ids = [rng.randint(1, 65529) for _ in range(n)]
        data = tok.decode_bytes(ids)
        assert data == ref.decodeBytes(ids), f"bytes differ from the rwkv package's for {n} random ids"
        assert tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_end_of_text_and_the_vocabulary_size(tok):
    assert tok.eot_id == 0 and tok.vocab_size == 65536 and tok.name == "rwkv_vocab_v20230424"
    ids = tok.encode(WORLD_TEXT[0])
    assert 0 not in ids and max(ids) <= 65529
    assert tok.decode([0, *ids, 0]) == WORLD_TEXT[0] and tok.decode_bytes([0]) == b""
    assert tok.encode("") == [] and tok.decode([]) == ""
    assert load_tokenizer("world").encode("Hello world") == tok.encode("Hello world") == [33155, 40213]
    world, neox = (SimpleNamespace(config=RWKVConfig(n_layer=1, n_embd=8, vocab_size=v)) for v in (65536, 50277))
    check_tokenizer(tok, world)  # check_tokenizer reads only the model's config
    with pytest.raises(ValueError, match="has 65536 tokens but the model's vocabulary has only 50277"):
        check_tokenizer(tok, neox)


def test_the_vocabulary_is_parsed_once_per_process(tok):
    assert world_tokenizer()._trie is tok._trie


def test_incremental_decoding_holds_back_a_split_character(tok):
    """generate() decodes the ids since the last complete character: a character whose bytes span tokens must
    come out whole, never as U+FFFD."""
    text = "tokens 🪿 and 𓀀𓀁 and 鱻"
    split = [c for c in text if len(tok.encode(c)) > 1]
    assert split, "no character of the text spans tokens: the test would not exercise incremental decoding"
    seq = _Sequence(index=0, max_new=100, stop=[])
    pieces = []
    for token in tok.encode(text):
        before = len(seq.text)
        seq.append(token, tok)
        pieces.append(seq.text[before:])
    assert seq.text == text and not any("\ufffd" in p for p in pieces)
    assert tok.decode(tok.encode(split[0])[:1]) == "\ufffd"


def test_errors_are_one_line(tok, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"lone surrogate '\\udcff' at index 2"):
        tok.encode("ab\udcff")
    with pytest.raises(TypeError, match="text to encode must be a str; got bytes"):
        tok.encode(b"ab")
    for bad in [65530, -1, 1.5, "a", None, [1]]:
        with pytest.raises(ValueError, match=rf"token id {re.escape(repr(bad))} is not an int in 0..65529"):
            tok.decode([5, bad])
    with pytest.raises(FileNotFoundError, match="no RWKV World vocabulary file at"):
        world_tokenizer(tmp_path / "missing.txt")
    good = _vocab_path().read_text(encoding="utf-8").splitlines()[:300]  # every single byte, and a few more
    cases = {
        "not a literal": (5, "5 'e 1"),
        "a wrong length": (7, "7 '\\x06' 2"),
        "a wrong id": (9, "10 '\\x08' 1"),
        "two literals": (3, "3 'a', 'b' 1"),
        "a name": (4, "4 x 1"),
        "no spaces": (2, "2"),
    }
    for what, (number, line) in cases.items():
        lines = list(good)
        lines[number - 1] = line
        (tmp_path / f"{what}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"line {number} is not '{number} <str or bytes literal>"):
            world_tokenizer(tmp_path / f"{what}.txt")
    (tmp_path / "no_byte.txt").write_text("1 'a' 1\n2 'ab' 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the single byte 0x00, so not every text could be encoded"):
        world_tokenizer(tmp_path / "no_byte.txt")
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"ships in the `rwkv` package: pip install 'rwkv>=0.8.26'"):
        world_tokenizer()


@needs_data
def test_encode_speed_against_the_package(tok, ref):
    """Not asserted (a benchmark writes results): printed to show the trie walk against the package's."""
    text = "\n\n".join(_lm_eval_texts())[:1_000_000]  # characters, nearly all ASCII
    times = {}
    for name, encode in [("rwkv_lab", tok.encode), ("rwkv package", ref.encode)]:
        start = time.process_time()
        ids = encode(text)
        times[name] = time.process_time() - start
    assert ids == tok.encode(text)
    mb = len(text.encode("utf-8")) / 1e6
    print(
        f"encode {mb:.2f} MB ({len(ids)} tokens), CPU time: rwkv_lab {times['rwkv_lab']:.3f} s, "
        f"rwkv package {times['rwkv package']:.3f} s ({times['rwkv package'] / times['rwkv_lab']:.1f}x)"
    )
