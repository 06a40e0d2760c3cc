"""State dynamics: recorded trajectories are the model's own states and logits, the feature extractors on
hand-made strings, implicit-attention shares, influence, and the channel ranking on a planted signal."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import TOL, assert_rel_close, random_model, random_state

from rwkv_lab.analysis.dynamics import (
    Trajectory,
    attention_by_distance,
    decay_distribution,
    decay_shift,
    decay_spectra,
    effective_rank,
    half_lives,
    influence,
    matrix_state_dynamics,
    readable_distance,
    record_trajectory,
    shares_by_distance,
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
from rwkv_lab.models import architecture
from rwkv_lab.models.rwkv4.config import get_config
from rwkv_lab.models.rwkv4.layers import ATT_A, ATT_B, ATT_X, FFN_X

TINY = get_config("tiny")
TINY7 = architecture("rwkv7").get_config("tiny")


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
    D = shares_by_distance(w)  # [t, d]
    assert D.tolist() == [pytest.approx(row) for row in ([1, 0, 0], [0.5, 0.5, 0], [0.5, 0.3, 0.2])]
    signed = torch.tensor([[2.0, 0, 0], [-1.0, 3.0, 0], [0.4, -0.6, 1.0]])[:, :, None]  # RWKV-7's: by magnitude
    assert shares_by_distance(signed)[1:, :2].tolist() == [pytest.approx(r) for r in ([0.75, 0.25], [0.5, 0.3])]
    two = torch.cat([w, signed], dim=-1)  # channels averaged
    assert torch.allclose(shares_by_distance(two), (D + shares_by_distance(signed)) / 2)
    assert shares_by_distance(torch.zeros(2, 2, 1)).abs().sum() == 0  # a zero row has no share anywhere
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


def test_effective_rank_of_matrices_of_known_rank():
    """Roy & Vetterli's effective rank: exactly r for r equal singular values (rank r, any scale); just above 1 for
    one dominant direction; 0 for the zero matrix; within [1, min(M, N)] and equal to exp(entropy) written out in
    numpy for a random matrix; batched."""
    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=torch.float64))
    for r in range(1, 8):
        for scale in (1e-8, 1.0, 1e8):
            m = scale * U[:, :r] @ V[:, :r].T  # (9, 7), r singular values equal to scale
            assert torch.linalg.matrix_rank(m) == r
            assert float(effective_rank(m)) == pytest.approx(r, rel=1e-12)
    tiny_second = U[:, :2] @ torch.diag(torch.tensor([1.0, 1e-9], dtype=torch.float64)) @ V[:, :2].T
    assert 1 < float(effective_rank(tiny_second)) < 1 + 1e-7
    assert float(effective_rank(torch.zeros(5, 4, dtype=torch.float64))) == 0.0
    m = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    s = np.linalg.svd(m.numpy(), compute_uv=False)
    p = s / s.sum(-1, keepdims=True)
    expected = np.exp(-(p * np.log(p)).sum(-1))
    got = effective_rank(m).numpy()
    print("effective rank of random 6 x 5:", got, "numpy:", expected)
    assert got.shape == (3,) and np.allclose(got, expected, rtol=1e-12) and ((got >= 1) & (got <= 5)).all()


def test_matrix_state_dynamics_against_the_recurrence():
    """Every column of matrix_state_dynamics from the states model.step leaves (float64), the singular values by
    numpy, the erased part as the matrix S_{t-1} a_t b_t^T itself; an RWKV-4 model is refused in one line."""
    model = random_model(TINY7, seed=3)
    T, H = 11, TINY7.n_head
    tokens = torch.randint(0, TINY7.vocab_size, (T,), generator=torch.Generator().manual_seed(3))
    table = matrix_state_dynamics(model, tokens)
    assert len(table) == TINY7.n_layer * H * T
    trace: list = []
    model(tokens[None], trace=trace)
    state, states = None, []
    for t in range(T):
        _, state = model.step(tokens[t : t + 1], state)
        states.append(state.wkv[0])
    states = torch.stack(states)  # (T, L, H, N, N)
    for layer, tr in enumerate(trace):
        got = table[table["layer"] == layer].sort_values(["token", "head"])
        column = lambda name: torch.tensor(got[name].to_numpy()).view(T, H)  # noqa: E731
        S = states[:, layer]  # (T, H, N, N)
        S_prev = torch.cat([torch.zeros_like(S[:1]), S[:-1]])
        s = np.linalg.svd(S.numpy(), compute_uv=False)
        p = s / s.sum(-1, keepdims=True)
        rank = np.exp(-np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(-1))
        a, b, kappa = tr["a"][0], tr["b"][0], tr["kappa"][0]  # (T, H, N)
        erased = torch.linalg.matrix_norm(S_prev @ (a[..., None] * b[..., None, :])) / torch.linalg.matrix_norm(S_prev)
        aligned = (S_prev @ kappa[..., None]).norm(dim=(-2, -1)) / torch.linalg.matrix_norm(S_prev, ord=2)
        write = tr["v"][0][..., None] * tr["k"][0][..., None, :]  # (T, H, N, N): v_t k_t^T
        written = torch.linalg.matrix_norm(write) / torch.linalg.matrix_norm(S)
        tol = TOL["float64 model"]
        assert_rel_close(f"layer {layer} effective rank", column("effective_rank"), torch.tensor(rank), tol)
        assert_rel_close(f"layer {layer} norm", column("norm"), torch.linalg.matrix_norm(S), tol)
        assert np.isnan(got["erased"].iloc[:H]).all() and np.isnan(got["key_alignment"].iloc[:H]).all()
        assert_rel_close(f"layer {layer} erased", column("erased")[1:], erased[1:], tol)
        assert_rel_close(f"layer {layer} key alignment", column("key_alignment")[1:], aligned[1:], tol)
        assert_rel_close(f"layer {layer} written", column("written"), written, tol)
        assert_rel_close(f"layer {layer} iclr", column("iclr"), tr["iclr"][0].mean(-1), tol)
        assert_rel_close(f"layer {layer} decay", column("decay"), torch.exp(tr["log_w"][0]).mean(-1), tol)
        assert (column("key_alignment")[1:] <= 1 + 1e-12).all()
    with pytest.raises(TypeError, match="rwkv4 keeps no matrix state per head"):
        matrix_state_dynamics(random_model(TINY), tokens)


def test_half_lives_of_either_generation():
    """RWKV-4's half-lives are decay_spectra's (from time_decay) at every token, spread 1; RWKV-7's are ln 2 over
    the trace's -log_w and differ between tokens."""
    model = random_model(TINY, dtype=torch.float64)
    tokens = torch.randint(1, TINY.vocab_size, (9,), generator=torch.Generator().manual_seed(1))
    lives = half_lives(model, tokens)  # (T, L, C)
    spectra = decay_spectra(model)
    assert lives.shape == (9, TINY.n_layer, TINY.n_embd)
    for t in range(9):
        assert np.allclose(lives[t].ravel(), spectra["half_life"], rtol=1e-12)
    table = decay_distribution(model, tokens)
    assert np.allclose(table["spread"], 1.0) and np.allclose(table["half_life_median"], spectra["half_life"])
    model7 = random_model(TINY7, seed=2)
    trace: list = []
    model7(tokens[None], trace=trace)
    lives7 = half_lives(model7, tokens)
    for layer, tr in enumerate(trace):
        assert np.allclose(lives7[:, layer], np.log(2) / -tr["log_w"][0].flatten(1).numpy(), rtol=1e-12)
    table7 = decay_distribution(model7, tokens)
    row = table7.iloc[5]
    column = lives7[:, int(row["layer"]), int(row["channel"])]
    assert row["half_life_median"] == pytest.approx(np.median(column))
    assert (table7["spread"] >= 1).all() and (table7["spread"] > 1.01).mean() > 0.5


@pytest.mark.parametrize("config", [TINY, TINY7], ids=["rwkv4", "rwkv7"])
def test_attention_by_distance_adds_up(config):
    """At every k the share on the token k back plus the share older than k is the share older than k - 1, and
    all of it (k = 0) is one; readable_distance reads the first k where the older share falls to the level."""
    model = random_model(config)
    tokens = torch.randint(1, config.vocab_size, (20,), generator=torch.Generator().manual_seed(4))
    shares = attention_by_distance(model, tokens, 1, distances=None)
    assert shares["k"].tolist() == list(range(19)) and shares["positions"].tolist() == list(range(19, 0, -1))
    first = shares.iloc[0]
    assert first["share_at"] + first["share_older"] == pytest.approx(1.0)
    assert shares["share_older"].is_monotonic_decreasing and (shares["share_at"] >= 0).all()
    table = pd.DataFrame({"layer": [0, 0, 0, 1, 1], "k": [0, 1, 2, 0, 1], "share_older": [0.9, 0.4, 0.1, 0.8, 0.7]})
    assert readable_distance(table, 0.5).tolist()[0] == 1 and np.isnan(readable_distance(table, 0.5).iloc[1])
