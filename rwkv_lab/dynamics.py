"""RWKV's state, made visible: decay spectra, state trajectories over a text, implicit attention shares, the
influence of one token on later ones, and channels that track features of the text (after Karpathy, Johnson and
Fei-Fei, "Visualizing and Understanding Recurrent Networks", 2015).

    traj = record_trajectory(model, tokens)          # per token, layer, channel: wkv state, shifts, norms
    table = channel_correlations(traj, features)     # every state channel against every text feature
"""

from __future__ import annotations

import html
import io
import math
import tokenize
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .analysis import implicit_attention
from .model import official_time_decay, official_time_first

# ---- decay spectra ---------------------------------------------------------------------------------------------


def decay_spectra(model) -> pd.DataFrame:
    """Per layer and channel: w = exp(time_decay), its memory half-life ln 2 / w in tokens, the bonus u, and the
    same at the official initialisation."""
    cfg, rows = model.config, []
    for i, block in enumerate(model.blocks):
        w = torch.exp(block.att.time_decay.detach().double().cpu())
        w0 = torch.exp(official_time_decay(i, cfg.n_layer, cfg.n_embd))
        rows.append(pd.DataFrame({
            "layer": i, "channel": np.arange(cfg.n_embd), "w": w.numpy(), "half_life": (math.log(2) / w).numpy(),
            "u": block.att.time_first.detach().double().cpu().numpy(), "w_init": w0.numpy(),
            "half_life_init": (math.log(2) / w0).numpy(), "u_init": official_time_first(cfg.n_embd).numpy()}))
    return pd.concat(rows, ignore_index=True)


# ---- trajectories ----------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """Per position t (after reading token t), per layer and channel, as numpy arrays (T, L, C):

    wkv: a / b, the state's decayed average of past values (what a token with no key weight would read);
    log_den: ln(b) + p, the log of the (unnormalised) total weight the state holds;
    att_x, ffn_x: the token-shift vectors (the time-mix and channel-mix inputs of token t);
    logits: (T, V), identical to the model's own (recorded by hooks that only read)."""

    tokens: np.ndarray
    wkv: np.ndarray
    log_den: np.ndarray
    att_x: np.ndarray
    ffn_x: np.ndarray
    logits: np.ndarray

    def quantity(self, name: str) -> np.ndarray:
        return getattr(self, name)

    @property
    def state_norms(self) -> np.ndarray:
        """(T, L): the norm of each layer's wkv vector."""
        return np.linalg.norm(self.wkv, axis=-1)


@torch.no_grad()
def record_trajectory(model, tokens: torch.Tensor, state=None) -> Trajectory:
    """The state after every token of `tokens` (T,) or (1, T), for every layer and channel.

    One parallel pass with forward pre-hooks that only read each block's time-mix and channel-mix inputs (the
    token-shift states are exactly these inputs), then the RNN form's WKV recurrence over the recorded keys and
    values gives (a, b, p) after every token. The returned logits are the model's own: the hooks change nothing.
    """
    tokens = tokens.reshape(1, -1).to(model.device)
    model.check_tokens(tokens, ndim=2)
    if state is None:
        state = model.init_state(1)
    seen: dict = {}
    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.att.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("att", i), args)))
        handles.append(block.ffn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("ffn", i), args)))
    try:
        logits, _ = model(tokens, state)
    finally:
        for h in handles:
            h.remove()
    wkv, log_den, att_x, ffn_x = [], [], [], []
    for i, block in enumerate(model.blocks):
        x, last_x, wkv_state = seen[("att", i)][:3]  # (1, T, C), (1, C), (1, 3, C)
        att = block.att
        k, v, _ = att.keys_values(x, last_x)
        k, v = k[0].double().cpu(), v[0].double().cpu()  # (T, C)
        w = torch.exp(att.time_decay.double().cpu())
        a, b, p = wkv_state[0].double().cpu()
        rows_a, rows_b, rows_p = [], [], []
        for t in range(k.shape[0]):  # the state update of the RNN form (wkv.wkv_recurrent), kept per step
            q = torch.maximum(p - w, k[t])
            e1, e2 = torch.exp(p - w - q), torch.exp(k[t] - q)
            a, b, p = e1 * a + e2 * v[t], e1 * b + e2, q
            rows_a.append(a), rows_b.append(b), rows_p.append(p)
        A, B, P = torch.stack(rows_a), torch.stack(rows_b), torch.stack(rows_p)
        wkv.append(A / B)
        log_den.append(torch.log(B) + P)
        att_x.append(x[0].double().cpu())
        ffn_x.append(seen[("ffn", i)][0][0].double().cpu())
    stack = lambda xs: torch.stack(xs, dim=1).numpy()  # noqa: E731 - [(T, C)] * L -> (T, L, C)
    return Trajectory(tokens=tokens[0].cpu().numpy(), wkv=stack(wkv), log_den=stack(log_den), att_x=stack(att_x),
                      ffn_x=stack(ffn_x), logits=logits[0].double().cpu().numpy())


# ---- implicit attention ----------------------------------------------------------------------------------------


def attention_older_than(weights: torch.Tensor, k: int) -> torch.Tensor:
    """From implicit attention weights (T, T, C): per output t and channel, the share of wkv_t that comes from
    tokens more than k steps back (i < t - k). (T, C)."""
    T = weights.shape[0]
    t = torch.arange(T)
    old = (t[None, :] < t[:, None] - k).to(weights.dtype)  # (T, T)
    return torch.einsum("tic,ti->tc", weights, old)


def attention_by_distance(model, tokens: torch.Tensor, layer: int, distances=(0, 1, 4, 16, 64, 256)) -> pd.DataFrame:
    """Mean share (over positions and channels) of each output drawn from tokens older than k, for each k."""
    weights = implicit_attention(model, tokens.reshape(1, -1), layer).double().cpu()
    return pd.DataFrame({"layer": layer, "k": list(distances),
                         "share_older": [float(attention_older_than(weights, k).mean()) for k in distances]})


# ---- influence -------------------------------------------------------------------------------------------------


@torch.no_grad()
def layer_outputs(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output (the residual stream) for one sequence, [(T, C)] * L, plus the logits (T, V) last."""
    outs = []
    handles = [b.register_forward_hook(lambda m, i, o: outs.append(o[0][0].double().cpu())) for b in model.blocks]
    try:
        logits, _ = model(tokens.reshape(1, -1).to(model.device))
    finally:
        for h in handles:
            h.remove()
    return outs + [logits[0].double().cpu()]


def influence(model, tokens: torch.Tensor, position: int, replacement: int | None = None) -> pd.DataFrame:
    """How much later positions change when token `position` is replaced by `replacement` (or removed, None):
    per layer (and 'logits'), the relative change ||dx_t|| / ||x_t|| at each t >= position, by distance t - i."""
    tokens = tokens.reshape(-1).cpu()
    T = len(tokens)
    if not 0 <= position < T:
        raise ValueError(f"position must be in [0, {T}); got {position}")
    base = layer_outputs(model, tokens)
    if replacement is None:
        if T < 2:
            raise ValueError("removing a token needs at least two tokens")
        changed = layer_outputs(model, torch.cat([tokens[:position], tokens[position + 1 :]]))
        # position t of the original is position t - 1 without token i, for t > i
        pairs = [(b[position + 1 :], c[position:]) for b, c in zip(base, changed)]
        start = position + 1
    else:
        edited = tokens.clone()
        edited[position] = replacement
        changed = layer_outputs(model, edited)
        pairs = [(b[position:], c[position:]) for b, c in zip(base, changed)]
        start = position
    rows = []
    names = [f"layer {i}" for i in range(model.config.n_layer)] + ["logits"]
    for name, (b, c) in zip(names, pairs):
        rel = ((c - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).numpy()
        rows.append(pd.DataFrame({"where": name, "distance": np.arange(len(rel)) + start - position,
                                  "relative_change": rel}))
    return pd.concat(rows, ignore_index=True)


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
    features = {"column": column, "indent": indent, "bracket_depth": depth, "in_string": in_string,
                "in_comment": in_comment}
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


def channel_correlations(traj: Trajectory, features: pd.DataFrame, quantities=QUANTITIES,
                         select_fraction: float = 0.5) -> pd.DataFrame:
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
                rows.append({"feature": name, "quantity": q, "layer": int(j // C), "channel": int(j % C),
                             "corr_selection": float(r_sel[j]), "corr_heldout": float(r_out[j])})
    table = pd.DataFrame(rows)
    return table.sort_values(["feature", "corr_heldout"], key=lambda c: c.abs() if c.name == "corr_heldout" else c,
                             ascending=[True, False], ignore_index=True)


def best_channels(table: pd.DataFrame) -> pd.DataFrame:
    """The channel with the largest held-out |correlation| for each feature."""
    idx = table.assign(a=table["corr_heldout"].abs()).groupby("feature")["a"].idxmax()
    return table.loc[idx].reset_index(drop=True)


# ---- showing activations on text -------------------------------------------------------------------------------


def _colour(v: float) -> str:
    """Blue (negative) to white to red (positive), v in [-1, 1]."""
    v = max(-1.0, min(1.0, v))
    r, g, b = (255, int(255 * (1 - v)), int(255 * (1 - v))) if v >= 0 else (int(255 * (1 + v)), int(255 * (1 + v)), 255)
    return f"#{r:02x}{g:02x}{b:02x}"


def normalise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    scale = np.abs(values - np.median(values)).max() or 1.0
    return (values - np.median(values)) / scale


def token_pieces(tokenizer, tokens) -> list[str]:
    """The text of each token, one string per token, so that per-token values line up with what is shown."""
    return [tokenizer.decode([int(t)]) for t in tokens]


def token_features(tokenizer, tokens, extract=code_features) -> pd.DataFrame:
    """Text features per token: computed per byte on the decoded text, read at each token's last byte (for a
    byte-level model, one token is one byte)."""
    from .tokenizer import ByteTokenizer

    tokens = [int(t) for t in tokens]
    if isinstance(tokenizer, ByteTokenizer):
        return extract(bytes(max(0, t - 1) for t in tokens).decode("utf-8", errors="replace")).iloc[: len(tokens)]
    per_byte = extract(tokenizer.decode(tokens))
    ends = np.cumsum([len(p.encode("utf-8")) for p in token_pieces(tokenizer, tokens)]) - 1
    return per_byte.iloc[np.clip(ends, 0, len(per_byte) - 1)].reset_index(drop=True)


def coloured_html(pieces: list[str], values: np.ndarray) -> str:
    """Karpathy-style: each token's text on a background coloured by its activation (red +, blue -)."""
    values = normalise(values)
    spans = []
    for piece, v in zip(pieces, values):
        shown = html.escape(piece).replace(" ", "&nbsp;").replace("\n", "&#8629;<br>")
        spans.append(f'<span style="background:{_colour(v)}">{shown}</span>')
    return '<div style="font-family:monospace;font-size:11px;line-height:1.5">' + "".join(spans) + "</div>"


def plot_coloured_text(ax, pieces: list[str], values: np.ndarray, width: int = 100, max_lines: int = 30):
    """The same as coloured_html, drawn with matplotlib (for headless runs and exported figures)."""
    from matplotlib.patches import Rectangle

    values = normalise(values)
    row = col = 0
    for piece, v in zip(pieces, values):
        for ch in piece or " ":
            if row >= max_lines:
                break
            ax.add_patch(Rectangle((col, -row - 1), 1, 1, color=_colour(v)))
            if ch not in "\n ":
                ax.text(col + 0.5, -row - 0.5, ch, ha="center", va="center", fontsize=6, family="monospace")
            col += 1
            if ch == "\n" or col >= width:
                row, col = row + 1, 0
    ax.set_xlim(0, width)
    ax.set_ylim(-min(row + 1, max_lines), 0)
    ax.axis("off")


def heldout_code(n_bytes: int = 20000) -> str:
    """Held-out Python: the default model's held-out slice, then validation-split files of this interpreter's
    standard library (split by file name, as in training), up to `n_bytes` bytes of ASCII text."""
    from .corpus import is_validation, list_files, stdlib_dir
    from .default import heldout_text

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

