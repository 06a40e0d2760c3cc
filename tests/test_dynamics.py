"""State dynamics: recorded trajectories are the model's own states and logits, the feature extractors on
hand-made strings, implicit-attention shares, influence, and the channel ranking on a planted signal."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TOL, assert_rel_close, random_model, random_state

from rwkv_lab.analysis.dynamics import (
    Trajectory,
    attention_older_than,
    decay_shift,
    decay_spectra,
    influence,
    record_trajectory,
)
from rwkv_lab.analysis.render import coloured_html
from rwkv_lab.analysis.text_features import (
    best_channels,
    channel_correlations,
    code_features,
    prose_features,
    token_features,
    token_pieces,
)
from rwkv_lab.loading.default import untrained_model
from rwkv_lab.models.rwkv4.config import get_config
from rwkv_lab.models.rwkv4.layers import ATT_A, ATT_B, ATT_X, FFN_X

TINY = get_config("tiny")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("T", [1, 2, 15, 63])
def test_trajectory_is_the_rnn_state_after_every_token(T):
    model = random_model(TINY, dtype=torch.float64)
    tokens = torch.randint(0, TINY.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
    state = random_state(model, 1, seed=T)
    traj = record_trajectory(model, tokens, state)
    logits, final = model(tokens, state)
    assert np.array_equal(traj.logits, logits[0].numpy())  # the hooks change nothing
    s = state
    for t in range(T):  # the RNN form, one token at a time
        _, s = model.step(tokens[:, t], s)
        assert_rel_close(
            f"a/b after token {t}",
            torch.tensor(traj.wkv[t]),
            s.packed[0, :, ATT_A] / s.packed[0, :, ATT_B],
            TOL["float64 model"],
        )
        assert_rel_close(
            f"time-mix shift after token {t}",
            torch.tensor(traj.att_x[t]),
            s.packed[0, :, ATT_X],
            TOL["float64 algebra"],
        )
        assert_rel_close(
            f"channel-mix shift after token {t}",
            torch.tensor(traj.ffn_x[t]),
            s.packed[0, :, FFN_X],
            TOL["float64 algebra"],
        )
    assert_rel_close(
        "final state",
        torch.tensor(traj.wkv[-1]),
        final.packed[0, :, ATT_A] / final.packed[0, :, ATT_B],
        TOL["float64 model"],
    )


def test_code_features_on_hand_made_text():
    text = 'def f(x):\n    s = "a(b"  # c)\n    return [x]\n'
    f = code_features(text)
    assert len(f) == len(text.encode())
    at = {ch: i for i, ch in reversed(list(enumerate(text)))}
    assert f["column"][text.index("f(")] == 5 and f["column"][text.index("\n")] == 0
    assert f["indent"][text.index("s =")] == 4 and f["indent"][text.index("def")] == 0
    assert f["bracket_depth"][at["x"]] == 1 and f["bracket_depth"][text.index("return")] == 0
    assert f["bracket_depth"][text.index("a(b") + 1] == 0  # a bracket inside a string opens nothing ...
    inside = text.index('"a(b"')
    assert f["in_string"][inside + 2] == 1 and f["in_string"][text.index("s =")] == 0
    assert f["in_comment"][text.index("# c)") + 2] == 1 and f["in_comment"][text.index("return")] == 0
    unterminated = code_features('x = """abc\ndef')
    assert unterminated["in_string"].iloc[-1] == 1 and unterminated["in_string"].iloc[0] == 0
    p = prose_features("Hi there. Yo")
    assert list(p["position_in_word"][:4]) == [1, 2, 0, 1] and p["position_in_sentence"].iloc[-1] == 3
    assert len(code_features("é")) == 2  # one row per byte


def test_attention_shares_and_influence():
    w = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])[:, :, None]  # (T, T, C=1)
    older = attention_older_than(w, 0)[:, 0]
    assert older.tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert attention_older_than(w, 1)[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.2])
    model = random_model(TINY, dtype=torch.float64)
    tokens = torch.randint(1, TINY.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    same = influence(model, tokens, 10, replacement=int(tokens[10]))
    assert same["relative_change"].max() == 0.0
    changed = influence(model, tokens, 10, replacement=int(tokens[10]) % 200 + 1)
    assert changed["distance"].min() == 0 and changed["relative_change"].max() > 0
    removed = influence(model, tokens, 10)
    assert removed["distance"].min() == 1 and len(removed) == (TINY.n_layer + 1) * 29
    with pytest.raises(ValueError, match="position must be in"):
        influence(model, tokens, 40)


def test_decay_spectra_of_an_untrained_model_are_the_initialisation():
    spectra = decay_spectra(untrained_model())
    assert np.allclose(spectra["w"], spectra["w_init"], rtol=1e-6)
    assert np.allclose(spectra["half_life"], np.log(2) / spectra["w"])
    assert np.allclose(spectra["u"], spectra["u_init"], rtol=1e-6)
    by_layer, overall = decay_shift(spectra)
    assert overall["moved_over_10pct"] == 0 and np.allclose(by_layer["trained / init"], 1, rtol=1e-6)
    assert overall["longest"] == pytest.approx(overall["longest_init"], rel=1e-6)


def test_decay_shift_measures_a_planted_move():
    spectra = decay_spectra(untrained_model())
    moved = spectra.assign(half_life=spectra["half_life"] * np.where(spectra["layer"] == 0, 3.0, 1.0))
    by_layer, overall = decay_shift(moved)
    print(by_layer["trained / init"].round(3).tolist(), overall)
    share = (spectra["layer"] == 0).mean()
    assert overall["moved_over_10pct"] == pytest.approx(share)
    assert overall["max_factor"] == pytest.approx(3.0) and overall["min_factor"] == pytest.approx(1.0)
    assert by_layer["trained / init"].iloc[0] == pytest.approx(3.0)
    assert np.allclose(by_layer["trained / init"].iloc[1:], 1.0)


def test_channel_ranking_finds_a_planted_channel():
    rng = np.random.default_rng(0)
    T, L, C = 400, 2, 8
    feature = np.cumsum(rng.normal(size=T))
    wkv = rng.normal(size=(T, L, C))
    wkv[:, 1, 5] = -feature + 0.1 * rng.normal(size=T)
    zeros = np.zeros((T, L, C))
    traj = Trajectory(tokens=np.zeros(T), wkv=wkv, log_den=zeros, att_x=zeros, ffn_x=zeros, logits=np.zeros((T, 3)))
    best = best_channels(channel_correlations(traj, pd.DataFrame({"f": feature})))
    row = best.iloc[0]
    assert (row["quantity"], row["layer"], row["channel"]) == ("wkv", 1, 5) and row["corr_heldout"] < -0.95
    with pytest.raises(ValueError, match="features have 3 rows for 400 tokens"):
        channel_correlations(traj, pd.DataFrame({"f": [1, 2, 3]}))
    page = coloured_html(["a", "b", "\n"], np.array([0.0, 1.0, -1.0]))
    assert page.count("<span") == 3 and "#ff0000" in page and "#0000ff" in page


def test_token_features_line_up_with_tokens():
    from helpers import NEOX_TOKENIZER

    from rwkv_lab.loading.tokenizer import ByteTokenizer, load_tokenizer

    text = 'x = "é(" # (\n'
    byte = ByteTokenizer()
    f = token_features(byte, byte.encode(text))
    assert len(f) == len(text.encode()) and f["in_comment"].iloc[-2] == 1
    assert token_pieces(byte, byte.encode("ab")) == ["a", "b"]
    if NEOX_TOKENIZER.exists():
        bpe = load_tokenizer(str(NEOX_TOKENIZER))
        ids = bpe.encode(text)
        g = token_features(bpe, ids)
        assert len(g) == len(ids) and "".join(token_pieces(bpe, ids)) == text
        assert g["bracket_depth"].max() == 0 and g["in_string"].max() == 1
