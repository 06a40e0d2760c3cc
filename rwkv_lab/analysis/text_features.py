"""Features of a text per token (code structure, prose position), held-out code to compute them on, and the
state channels that track them (after Karpathy, Johnson and Fei-Fei, 2015).

    table = channel_correlations(traj, token_features(tokenizer, traj.tokens))   # traj from dynamics
"""

from __future__ import annotations

import io
import tokenize

import numpy as np
import pandas as pd

from ..loading.default import heldout_text
from ..loading.tokenizer import ByteTokenizer
from ..training.corpus import is_validation, list_files, stdlib_dir
from .dynamics import Trajectory

# ---- features of the text --------------------------------------------------------------------------------------


def _per_byte(text: str, per_char: np.ndarray) -> np.ndarray:
    """Repeat each character's feature for each of its UTF-8 bytes (byte-level tokens)."""
    counts = [len(ch.encode("utf-8")) for ch in text]
    return np.repeat(per_char, counts)


def code_features(text: str) -> pd.DataFrame:
    """Per byte of `text`: position in line, indentation of the line, bracket depth (brackets in strings and
    comments do not count), inside a string, inside a comment (from Python's tokenizer; text after an
    unterminated string counts as inside it)."""
    n = len(text)
    in_string, in_comment = np.zeros(n), np.zeros(n)
    line_starts = np.concatenate([[0], np.cumsum([len(line) for line in text.splitlines(keepends=True)])])

    def offset(pos):
        return int(line_starts[pos[0] - 1] + pos[1])

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.STRING, tokenize.COMMENT) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
                target = in_comment if tok.type == tokenize.COMMENT else in_string
                target[offset(tok.start) : offset(tok.end)] = 1
    except (tokenize.TokenError, IndentationError, SyntaxError) as err:
        if "string" in str(err).lower() and len(err.args) > 1:
            in_string[offset(err.args[1]) :] = 1
    column, indent, depth = np.zeros(n), np.zeros(n), np.zeros(n)
    col, d, line_indent, at_start = 0, 0, 0, True
    for j, ch in enumerate(text):
        if ch == "\n":
            col, line_indent, at_start = 0, 0, True
        else:
            if at_start and ch == " ":
                line_indent += 1
            elif at_start:
                at_start = False
            col += 1
        code = not (in_string[j] or in_comment[j])
        if code and ch in "([{":
            d += 1
        column[j], indent[j], depth[j] = col, line_indent, d
        if code and ch in ")]}":
            d = max(0, d - 1)
    features = {
        "column": column,
        "indent": indent,
        "bracket_depth": depth,
        "in_string": in_string,
        "in_comment": in_comment,
    }
    return pd.DataFrame({k: _per_byte(text, v) for k, v in features.items()})


def prose_features(text: str) -> pd.DataFrame:
    """Per byte: position in the current word and in the current sentence (characters since its start)."""
    word, sentence = np.zeros(len(text)), np.zeros(len(text))
    w = s = 0
    for j, ch in enumerate(text):
        w = 0 if not ch.isalnum() else w + 1
        s = 0 if ch in ".!?\n" else s + 1
        word[j], sentence[j] = w, s
    return pd.DataFrame({"position_in_word": _per_byte(text, word), "position_in_sentence": _per_byte(text, sentence)})


# ---- channels that track features ------------------------------------------------------------------------------

QUANTITIES = ("wkv", "ffn_x", "att_x", "log_den")


def _pearson(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Correlation of each column of x (N, K) with f (N,); 0 where either is constant."""
    xc, fc = x - x.mean(0), f - f.mean()
    den = np.sqrt((xc**2).sum(0) * (fc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * fc[:, None]).sum(0) / den
    return np.nan_to_num(r)


def channel_correlations(
    traj: Trajectory, features: pd.DataFrame, quantities=QUANTITIES, select_fraction: float = 0.5
) -> pd.DataFrame:
    """For each feature, every (quantity, layer, channel) ranked by |correlation| on the first `select_fraction`
    of the text, with its correlation on the rest reported beside it (held out from the selection)."""
    T = len(traj.tokens)
    if len(features) != T:
        raise ValueError(f"features have {len(features)} rows for {T} tokens; compute them on the decoded text")
    cut = int(T * select_fraction)
    rows = []
    for q in quantities:
        x = traj.quantity(q).reshape(T, -1)  # (T, L*C)
        L, C = traj.quantity(q).shape[1:]
        for name in features.columns:
            f = features[name].to_numpy(dtype=float)
            r_sel, r_out = _pearson(x[:cut], f[:cut]), _pearson(x[cut:], f[cut:])
            for j in np.argsort(-np.abs(r_sel))[:5]:
                rows.append(
                    {
                        "feature": name,
                        "quantity": q,
                        "layer": int(j // C),
                        "channel": int(j % C),
                        "corr_selection": float(r_sel[j]),
                        "corr_heldout": float(r_out[j]),
                    }
                )
    table = pd.DataFrame(rows)
    return table.sort_values(
        ["feature", "corr_heldout"],
        key=lambda c: c.abs() if c.name == "corr_heldout" else c,
        ascending=[True, False],
        ignore_index=True,
    )


def best_channels(table: pd.DataFrame) -> pd.DataFrame:
    """The channel with the largest held-out |correlation| for each feature."""
    idx = table.assign(a=table["corr_heldout"].abs()).groupby("feature")["a"].idxmax()
    return table.loc[idx].reset_index(drop=True)


def token_pieces(tokenizer, tokens) -> list[str]:
    """The text of each token, one string per token, so that per-token values line up with what is shown."""
    return [tokenizer.decode([int(t)]) for t in tokens]


def token_features(tokenizer, tokens, extract=code_features) -> pd.DataFrame:
    """Text features per token: computed per byte on the decoded text, read at each token's last byte (for a
    byte-level model, one token is one byte)."""
    tokens = [int(t) for t in tokens]
    if isinstance(tokenizer, ByteTokenizer):
        return extract(bytes(max(0, t - 1) for t in tokens).decode("utf-8", errors="replace")).iloc[: len(tokens)]
    per_byte = extract(tokenizer.decode(tokens))
    ends = np.cumsum([len(p.encode("utf-8")) for p in token_pieces(tokenizer, tokens)]) - 1
    return per_byte.iloc[np.clip(ends, 0, len(per_byte) - 1)].reset_index(drop=True)


def heldout_code(n_bytes: int = 20000) -> str:
    """Held-out Python: the default model's held-out slice, then validation-split files of this interpreter's
    standard library (split by file name, as in training), up to `n_bytes` bytes of ASCII text."""
    parts, size = [heldout_text()], len(heldout_text())
    root = stdlib_dir()
    for path in list_files(root):
        if size >= n_bytes:
            break
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if is_validation(rel, 0.05) and text.isascii() and text not in parts[0]:
            parts.append(text)
            size += len(text)
    return "".join(parts)[:n_bytes]
