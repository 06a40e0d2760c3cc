# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · State dynamics: what the RNN keeps in its state
#
# Everything RWKV knows about the past is in its state: per layer and channel the token-shift vectors and the WKV
# sums (a, b, p), whose ratio a/b is a decayed average of past values. This notebook looks at that state on
# held-out Python source with the shipped default model (trained on the standard library, byte-level, so every
# character is a token), or any checkpoint given below (`rwkv_lab.analysis.dynamics` does the work):
#
# 1. **decay spectra**: each channel's memory half-life ln 2 / w in tokens, trained vs the official initialisation;
# 2. **state trajectories** over the text;
# 3. **implicit attention**: how much of each output comes from tokens older than k;
# 4. **influence**: how much later positions change when one token is replaced, by distance and layer;
# 5. **interpretable channels**, as in Karpathy, Johnson & Fei-Fei (2015): the state channels that best track
#    position in line, indentation, bracket depth, strings and comments, chosen on the first half of the text and
#    scored on the second half, shown as text coloured by activation.
#
# The widgets at the end explore any text, layer and channel live in Jupyter; executed headless, the same figures
# are drawn statically and exported to `results/figures/`.

# %% tags=["parameters"]
model_source = "default"  # 'default' or any checkpoint (byte-level models read characters; BPE models tokens)
text = None  # None: held-out Python (validation files, never trained on)
n_bytes = 8000
attention_layer = 1
influence_position = 2000
interactive = True  # show the ipywidgets explorer (static figures are drawn either way)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, display

import rwkv_lab
from rwkv_lab.analysis.dynamics import (
    attention_by_distance,
    decay_shift,
    decay_spectra,
    influence,
    record_trajectory,
)
from rwkv_lab.analysis.render import coloured_html, plot_coloured_text
from rwkv_lab.analysis.text_features import (
    best_channels,
    channel_correlations,
    code_features,
    heldout_code,
    prose_features,
    token_features,
    token_pieces,
)
from rwkv_lab.results import results_dir, save_figure, write_table

torch.set_grad_enabled(False)
model = rwkv_lab.load_model(model_source)
tokenizer = rwkv_lab.tokenizer_for(model)
text = text if text is not None else heldout_code(n_bytes)
tokens = torch.tensor(tokenizer.encode(text)[:n_bytes])
decoded = tokenizer.decode(tokens.tolist())
print(model.source, f"| {len(tokens)} tokens")
params = {"model": model.source, "n_tokens": len(tokens)}

# %% [markdown]
# ## 1 · Decay spectra
#
# Each channel's half-life ln 2 / w after training (solid) against the official initialisation (dotted); the
# sentence under the figure states how far training moved them, computed from the two.

# %%
spectra = decay_spectra(model)
L = model.config.n_layer
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
bins = np.logspace(-2, 5, 50)
for layer in range(L):
    g = spectra[spectra["layer"] == layer]
    axes[0].hist(
        g["half_life"].clip(1e-2, 1e5),
        bins=bins,
        histtype="step",
        label=f"layer {layer}",
        color=plt.cm.viridis(layer / max(1, L - 1)),
    )
    axes[0].hist(
        g["half_life_init"].clip(1e-2, 1e5),
        bins=bins,
        histtype="step",
        ls=":",
        color=plt.cm.viridis(layer / max(1, L - 1)),
    )
axes[0].set_xscale("log")
axes[0].set_xlabel("half-life ln 2 / w (tokens); dotted: official initialisation")
axes[0].set_ylabel("channels")
axes[0].legend(fontsize=7)
axes[1].scatter(spectra["half_life"].clip(1e-2, 1e5), spectra["u"], s=3, c=spectra["layer"], cmap="viridis")
axes[1].set_xscale("log")
axes[1].set_xlabel("half-life (tokens)")
axes[1].set_ylabel("time_first u (bonus of the current token)")
fig.suptitle(model.source, fontsize=9)
save_figure(fig, results_dir() / "figures" / "05_decay_spectra.png", params)
plt.show()
by_layer, shift = decay_shift(spectra)
display(by_layer.round(3))
print(
    "median half-life per layer, trained vs initialisation: "
    + ", ".join(f"{a:.2f} vs {b:.2f}" for a, b in zip(by_layer["half_life"], by_layer["half_life_init"]))
    + f"; the longest is {shift['longest']:.0f} tokens (initialisation {shift['longest_init']:.0f});"
    f" the median channel's half-life changed by a factor {shift['median_factor']:.3f}"
)

# %% [markdown]
# ## 2 · State trajectories
#
# One parallel pass with read-only hooks, then the RNN form's state update over the recorded keys and values:
# a/b per layer and channel after every token. Below, the norm of each layer's a/b vector and the `32` most
# variable channels of one layer over the first `600` tokens.

# %%
traj = record_trajectory(model, tokens)
logits, _ = model(tokens[None])
print("trajectory logits equal the model's:", bool(np.array_equal(traj.logits, logits[0].double().numpy())))
fig, axes = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True)
span = slice(0, min(600, len(tokens)))
norms = traj.state_norms[span]
for layer in range(L):
    axes[0].plot(norms[:, layer], lw=0.8, label=f"layer {layer}")
axes[0].set_ylabel("||a / b||")
axes[0].legend(fontsize=6, ncol=L)
x = traj.wkv[span, attention_layer]
top = np.argsort(-x.std(0))[:32]
centre = x[:, top] - np.median(x[:, top], axis=0)  # each channel about its median, so 0 is white
limit = np.abs(centre).max() or 1.0
image = axes[1].imshow(centre.T, aspect="auto", cmap="RdBu_r", interpolation="nearest", vmin=-limit, vmax=limit)
fig.colorbar(image, ax=axes[1], label="a / b minus the channel's median")
axes[1].set_ylabel(f"layer {attention_layer}: top-32 channels")
axes[1].set_xlabel("token position")
save_figure(fig, results_dir() / "figures" / "05_state_trajectories.png", params)
plt.show()

# %% [markdown]
# ## 3 · Implicit attention and 4 · influence
#
# Left: the share of each WKV output that comes from tokens more than k steps back (mean over channels and over
# the positions that have tokens that far back, first 256 tokens). Right: replace one token by a space and measure how much every later position's
# residual stream (per layer) and logits change, against the distance.

# %%
shares = pd.concat([attention_by_distance(model, tokens[:256], layer) for layer in range(L)])
effect = influence(model, tokens[: influence_position + 600], influence_position, replacement=tokenizer.encode(" ")[0])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
for layer, g in shares.groupby("layer"):
    ax1.plot(g["k"] + 1, g["share_older"], "o-", label=f"layer {layer}", color=plt.cm.viridis(layer / max(1, L - 1)))
ax1.set_xscale("log")
ax1.set_xlabel("k + 1 (tokens back)")
ax1.set_ylabel("share of wkv from tokens older than k")
ax1.legend(fontsize=7)
for where, g in effect.groupby("where", sort=False):
    smooth = g["relative_change"].rolling(8, min_periods=1).mean()
    ax2.loglog(g["distance"] + 1, smooth, label=where, lw=1.5 if where == "logits" else 0.8)
ax2.set_xlabel("distance t - i + 1")
ax2.set_ylabel("relative change of the residual stream")
ax2.legend(fontsize=7)
fig.suptitle(
    f"influence of replacing token {influence_position} ({decoded[influence_position]!r}) by a space", fontsize=9
)
save_figure(fig, results_dir() / "figures" / "05_attention_influence.png", params)
plt.show()

# %% [markdown]
# ## 5 · Channels that track the text
#
# Every state quantity (a/b, the log of the state's total weight, both token shifts) of every layer and channel is
# correlated with features computed from the text. A channel is chosen on the first half of the text; its
# correlation on the second half is the held-out score.

# %%
features = pd.concat(
    [token_features(tokenizer, tokens, code_features), token_features(tokenizer, tokens, prose_features)], axis=1
)
table = channel_correlations(traj, features)
best = best_channels(table)
write_table(results_dir() / "dynamics" / "05_channels.csv", best, params)
display(best.round(3))
fig, axes = plt.subplots(len(best), 1, figsize=(14, 3.2 * len(best)))
half = len(tokens) // 2
for ax, (_, row) in zip(axes, best.iterrows()):
    values = traj.quantity(row["quantity"])[:, row["layer"], row["channel"]]
    piece = slice(half, half + 900)
    plot_coloured_text(ax, token_pieces(tokenizer, tokens[piece]), values[piece], width=110, max_lines=12)
    ax.set_title(
        f"{row['feature']}: {row['quantity']} layer {row['layer']} channel {row['channel']}, "
        f"held-out r = {row['corr_heldout']:.2f}",
        fontsize=9,
        loc="left",
    )
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "05_channels.png", params)
plt.show()
top = best.iloc[best["corr_heldout"].abs().argmax()]
display(
    HTML(
        coloured_html(
            token_pieces(tokenizer, tokens[half : half + 1500]),
            traj.quantity(top["quantity"])[half : half + 1500, top["layer"], top["channel"]],
        )
    )
)


# %% [markdown]
# ## Explore
#
# Type a text, pick a quantity, layer and channel; the text is coloured by that channel's activation and the
# trajectory plotted up to the time slider.


# %%
def explore(text="def f(x):\n    return [x, (x + 1)]  # a comment\n", quantity="wkv", layer=0, channel=0, upto=200):
    ids = torch.tensor(tokenizer.encode(text) or [0])
    tr = record_trajectory(model, ids)
    values = tr.quantity(quantity)[:, min(layer, L - 1), min(channel, model.config.n_embd - 1)]
    display(HTML(coloured_html(token_pieces(tokenizer, ids), values)))
    fig, ax = plt.subplots(figsize=(10, 2.2))
    ax.plot(values[:upto])
    ax.set_xlabel("token")
    plt.show()


explore(quantity=best.iloc[0]["quantity"], layer=int(best.iloc[0]["layer"]), channel=int(best.iloc[0]["channel"]))
if interactive:
    import ipywidgets as widgets

    widgets.interact(
        explore,
        text=widgets.Textarea(value=decoded[:400], layout=widgets.Layout(width="90%")),
        quantity=widgets.Dropdown(options=["wkv", "log_den", "ffn_x", "att_x"]),
        layer=widgets.IntSlider(0, 0, L - 1),
        channel=widgets.IntSlider(0, 0, model.config.n_embd - 1),
        upto=widgets.IntSlider(200, 1, 2000),
    )
