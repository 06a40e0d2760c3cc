"""Activations drawn on text: each token on a background coloured by a value (HTML for notebooks, matplotlib
for headless runs and exported figures)."""

from __future__ import annotations

import html

import numpy as np


def _colour(v: float) -> str:
    """Blue (negative) to white to red (positive), v in [-1, 1]."""
    v = max(-1.0, min(1.0, v))
    r, g, b = (255, int(255 * (1 - v)), int(255 * (1 - v))) if v >= 0 else (int(255 * (1 + v)), int(255 * (1 + v)), 255)
    return f"#{r:02x}{g:02x}{b:02x}"


def normalise(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    scale = np.abs(values - np.median(values)).max() or 1.0
    return (values - np.median(values)) / scale


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
