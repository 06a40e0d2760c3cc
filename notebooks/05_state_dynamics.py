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
# Everything an RWKV knows about the past is in its state. RWKV-4 keeps, per layer and channel, the token-shift
# vectors and the WKV sums (a, b, p), whose ratio a/b is a decayed average of past values, each channel forgetting
# at a fixed rate. RWKV-7 keeps a matrix S (`64 x 64`) per head and rewrites it at every token with a generalised
# delta rule, S_t = S_{t-1} (diag(w_t) - kappa_t (iclr_t kappa_t)^T) + v_t k_t^T: its decays w_t depend on the
# token, and the removal key kappa_t with the in-context learning rate iclr_t say what it erases before writing.
# This notebook asks both generations the same questions on the same held-out Python source, with the two default
# models (byte-level, trained alike on the standard library, so every character is a token) or any checkpoints
# given below (`rwkv_lab.analysis.dynamics` does the work; each model exposes what it computes per layer):
#
# 1. **decays**: RWKV-4's half-life ln 2 / w per channel, trained vs the official initialisation; RWKV-7's
#    half-life per channel and token, its spread over the text against RWKV-4's fixed ones;
# 2. **state trajectories** of RWKV-4 over the text;
# 3. **RWKV-7's matrix state**: its effective rank per layer, head and token, and how much each token overwrites
#    (the in-context learning rate, where the removal key points, the share erased and written);
# 4. **how long a token stays readable**: the implicit attention by distance of both generations, and the
#    influence of one replaced token on later positions;
# 5. **interpretable channels** of RWKV-4, as in Karpathy, Johnson & Fei-Fei (2015): the state channels that best
#    track position in line, indentation, bracket depth, strings and comments, chosen on the first half of the text
#    and scored on the second half, shown as text coloured by activation.
#
# The widgets at the end explore RWKV-4's channels and RWKV-7's matrix state (layer, head, token) live in Jupyter;
# executed headless, the same figures are drawn statically beside them and exported to `results/figures/`.

# %% tags=["parameters"]
rwkv4_source = "default"  # RWKV-4: 'default' or any checkpoint (byte-level models read characters; BPE tokens)
rwkv7_source = "default-rwkv7"  # "default-rwkv7", "untrained-rwkv7", a checkpoint path, or a hub id
text = None  # None: held-out Python (validation files, never trained on)
n_bytes = 8000
matrix_tokens = 1024  # RWKV-7's states and decays per token over the first tokens (T x H x 64 x 64 per layer)
attention_tokens = 256  # the implicit attention's T x T weights over the first tokens
attention_layer = 1
influence_position = 2000
interactive = True  # show the ipywidgets explorers (static figures are drawn either way)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, display

import rwkv_lab
from rwkv_lab.analysis.dynamics import (
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
from rwkv_lab.models import architecture_of
from rwkv_lab.results import results_dir, save_figure, write_table

torch.set_grad_enabled(False)
rwkv4 = rwkv_lab.load_model(rwkv4_source)
rwkv7 = rwkv_lab.load_model(rwkv7_source)
tokenizer = rwkv_lab.tokenizer_for(rwkv4)
tokenizer7 = rwkv_lab.tokenizer_for(rwkv7)
text = text if text is not None else heldout_code(n_bytes)
tokens = torch.tensor(tokenizer.encode(text)[:n_bytes])
tokens7 = torch.tensor(tokenizer7.encode(text)[:n_bytes])
decoded = tokenizer.decode(tokens.tolist())
decoded7 = tokenizer7.decode(tokens7.tolist())
label = {id(m): f"{architecture_of(m).name}: {m.source}" for m in (rwkv4, rwkv7)}
for m, t in ((rwkv4, tokens), (rwkv7, tokens7)):
    print(label[id(m)], f"| {len(t)} tokens")
params = {"rwkv4": rwkv4.source, "rwkv7": rwkv7.source, "n_tokens": len(tokens), "matrix_tokens": matrix_tokens}
L, L7 = rwkv4.config.n_layer, rwkv7.config.n_layer

# %% [markdown]
# ## 1 · Decays
#
# RWKV-4: each channel's half-life ln 2 / w after training (solid) against the official initialisation (dotted);
# the sentence under the figure states how far training moved them, computed from the two.

# %%
spectra = decay_spectra(rwkv4)
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
fig.suptitle(label[id(rwkv4)], fontsize=9)
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
# RWKV-7: each channel's half-life ln 2 / -ln w_t at every token of the first `matrix_tokens` tokens (the model's
# own `log_decays`). Left: per layer, the distribution of the RWKV-7 half-lives over channels and tokens (solid)
# against RWKV-4's fixed ones over channels (dotted). Right: in layer `attention_layer`, per channel (sorted by
# RWKV-7's median) the band from the 10% to the 90% quantile over the tokens, a line where the decay does not
# depend on the token (RWKV-4's always).

# %%
lives = {id(m): half_lives(m, t[:matrix_tokens]) for m, t in ((rwkv4, tokens), (rwkv7, tokens7))}  # (T, L, C)
spread = {id(m): decay_distribution(m, t[:matrix_tokens]) for m, t in ((rwkv4, tokens), (rwkv7, tokens7))}
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
bins = np.logspace(-1, 5, 60)
for layer in range(L7):
    colour = plt.cm.viridis(layer / max(1, L7 - 1))
    values = lives[id(rwkv7)][:, layer].ravel()
    axes[0].hist(values.clip(0.1, 1e5), bins=bins, histtype="step", density=True, color=colour, label=f"layer {layer}")
    if layer < L:
        fixed = lives[id(rwkv4)][0, layer]
        axes[0].hist(fixed.clip(0.1, 1e5), bins=bins, histtype="step", density=True, ls=":", color=colour)
axes[0].set_xscale("log")
axes[0].set_xlabel("half-life (tokens); solid: RWKV-7 per channel and token, dotted: RWKV-4 per channel")
axes[0].set_ylabel("density")
axes[0].legend(fontsize=7)
for m, style in ((rwkv7, "C1"), (rwkv4, "C0")):
    g = spread[id(m)]
    g = g[g["layer"] == min(attention_layer, m.config.n_layer - 1)].sort_values("half_life_median")
    x = np.arange(len(g))
    axes[1].fill_between(x, g["half_life_q10"], g["half_life_q90"], color=style, alpha=0.3, lw=0)
    axes[1].plot(x, g["half_life_median"], color=style, lw=1, label=label[id(m)])
axes[1].set_yscale("log")
axes[1].set_xlabel(f"channel of layer {attention_layer}, sorted by median half-life")
axes[1].set_ylabel("half-life: 10%-90% over tokens, median")
axes[1].legend(fontsize=7)
fig.suptitle(f"decays per token over {matrix_tokens} tokens", fontsize=9)
save_figure(fig, results_dir() / "figures" / "05_decays_per_token.png", params)
plt.show()
by_layer = pd.DataFrame(
    {
        name: spread[id(m)].groupby("layer")[column].median()
        for m, short in ((rwkv4, "RWKV-4"), (rwkv7, "RWKV-7"))
        for name, column in ((f"{short} median half-life", "half_life_median"), (f"{short} spread q90/q10", "spread"))
    }
)
display(by_layer.round(3))
spread7 = spread[id(rwkv7)]["spread"]
print(
    f"RWKV-7: the median channel's half-life varies over the tokens by a factor q90/q10 of {spread7.median():.3f} "
    f"(the most variable channel {spread7.max():.3g}, {(spread7 > 2).mean():.1%} of channels above 2); "
    f"RWKV-4's by {spread[id(rwkv4)]['spread'].median():.3f} (fixed decays)"
)

# %% [markdown]
# ## 2 · State trajectories (RWKV-4)
#
# One parallel pass with read-only hooks, then the RNN form's state update over the recorded keys and values:
# a/b per layer and channel after every token. Below, the norm of each layer's a/b vector and the `32` most
# variable channels of one layer over the first `600` tokens.

# %%
traj = record_trajectory(rwkv4, tokens)
logits, _ = rwkv4(tokens[None])
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
fig.suptitle(label[id(rwkv4)], fontsize=9)
save_figure(fig, results_dir() / "figures" / "05_state_trajectories.png", params)
plt.show()

# %% [markdown]
# ## 3 · RWKV-7's matrix state
#
# Per layer, head and token t of the first `matrix_tokens` tokens, from the model's own state after every token
# (`model.wkv_inputs(..., states=True)`): the **effective rank** of S_t, after Roy & Vetterli (2007): exp of the
# entropy of its singular values normalised to sum to one (r for r equal singular values, at most the head size);
# and how much token t overwrites: the in-context learning rate **iclr** (mean over the head's channels), the **key
# alignment** ||S_{t-1} kappa_t|| / s_max(S_{t-1}) (does the removal key point at what the state holds: 1 at its
# strongest direction), the share **erased** ||S_{t-1} a_t b_t^T|| / ||S_{t-1}|| and the share **written**
# ||v_t k_t^T|| / ||S_t|| (Frobenius norms). Lines are means over the heads, smoothed over `16` tokens.

# %%
dynamics = matrix_state_dynamics(rwkv7, tokens7[:matrix_tokens])
per_layer = dynamics.groupby(["layer", "token"]).mean(numeric_only=True).reset_index()
quantities = ["effective_rank", "iclr", "key_alignment", "erased", "written", "decay"]
fig, axes = plt.subplots(2, 3, figsize=(15, 6.5), sharex=True)
for ax, quantity in zip(axes.ravel(), quantities):
    for layer, g in per_layer.groupby("layer"):
        smooth = g[quantity].rolling(16, min_periods=1).mean()
        ax.plot(g["token"], smooth, lw=0.9, color=plt.cm.viridis(layer / max(1, L7 - 1)), label=f"layer {layer}")
    ax.set_title(quantity, fontsize=9)
axes[0, 0].legend(fontsize=7, ncol=2)
for ax in axes[1]:
    ax.set_xlabel("token position")
fig.suptitle(label[id(rwkv7)], fontsize=9)
fig.tight_layout()
save_figure(fig, results_dir() / "figures" / "05_matrix_state.png", params)
plt.show()
last = dynamics[dynamics["token"] == dynamics["token"].max()]
summary = dynamics.groupby("layer")[quantities].median()
summary.insert(0, "rank at the last token", last.groupby("layer")["effective_rank"].mean())
write_table(results_dir() / "dynamics" / "05_matrix_state.csv", summary.reset_index(), params)
display(summary.round(3))
N = rwkv7.config.head_size
print(
    f"RWKV-7's state after {matrix_tokens} tokens has an effective rank of "
    + ", ".join(f"{r:.1f}" for r in summary["rank at the last token"])
    + f" per layer (mean over heads, out of {N}); the median token erases {dynamics['erased'].median():.3f} of "
    f"the state's norm and writes {dynamics['written'].median():.3f} of it, with an in-context learning rate of "
    f"{dynamics['iclr'].median():.3f} and its removal key at {dynamics['key_alignment'].median():.3f} of the "
    "state's strongest direction"
)

# %% [markdown]
# ## 4 · How long a token stays readable, and influence
#
# Left: the implicit attention by distance, from each model's own T x T weights on the first `attention_tokens`
# tokens (`model.implicit_attention`): the share of each output's weight **magnitude** on tokens more than k steps
# back, over the positions that have tokens that far back, averaged over channels (RWKV-4, whose rows are a
# softmax) or heads (RWKV-7, whose weights are unnormalised and signed: magnitudes, so a negative weight counts by
# its size). Right: replace one token by a space and measure how much every later position's residual stream (per
# layer) and logits change, against the distance, for both models.

# %%
shares = {
    id(m): pd.concat([attention_by_distance(m, t[:attention_tokens], layer, None) for layer in range(m.config.n_layer)])
    for m, t in ((rwkv4, tokens), (rwkv7, tokens7))
}
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
for m, ls in ((rwkv4, ":"), (rwkv7, "-")):
    n = m.config.n_layer
    for layer, g in shares[id(m)].groupby("layer"):
        axes[0].loglog(g["k"] + 1, g["share_older"], ls, color=plt.cm.viridis(layer / max(1, n - 1)), lw=1)
axes[0].plot([], [], "k:", label=label[id(rwkv4)])
axes[0].plot([], [], "k-", label=label[id(rwkv7)])
axes[0].set_xlabel("k + 1 (tokens back); colour: layer")
axes[0].set_ylabel("share of |weight| on tokens older than k")
axes[0].legend(fontsize=7)
for ax, m, t, words in ((axes[1], rwkv4, tokens, decoded), (axes[2], rwkv7, tokens7, decoded7)):
    space = rwkv_lab.tokenizer_for(m).encode(" ")[0]
    effect = influence(m, t[: influence_position + 600], influence_position, replacement=space)
    for where, g in effect.groupby("where", sort=False):
        smooth = g["relative_change"].rolling(8, min_periods=1).mean()
        ax.loglog(g["distance"] + 1, smooth, label=where, lw=1.5 if where == "logits" else 0.8)
    ax.set_xlabel("distance t - i + 1")
    ax.set_ylabel("relative change of the residual stream")
    ax.set_title(f"{label[id(m)]}: token {influence_position} ({words[influence_position]!r}) -> ' '", fontsize=8)
    ax.legend(fontsize=6)
save_figure(fig, results_dir() / "figures" / "05_attention_influence.png", params)
plt.show()
readable = pd.DataFrame(
    {short: readable_distance(shares[id(m)]) for m, short in ((rwkv4, "RWKV-4"), (rwkv7, "RWKV-7"))}
)
readable.index.name = "layer"
display(readable)
print(
    "half of each output's weight magnitude lies on tokens older than k up to k = "
    + "; ".join(
        f"{short}: " + ", ".join("beyond the text" if np.isnan(k) else f"{k:.0f}" for k in readable[short])
        for short in readable
    )
    + f" (per layer, first {attention_tokens} tokens)"
)

# %% [markdown]
# ## 5 · Channels that track the text (RWKV-4)
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
fig.suptitle(label[id(rwkv4)], fontsize=9)
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
# RWKV-4: type a text, pick a quantity, layer and channel; the text is coloured by that channel's activation and the
# trajectory plotted up to the time slider.


# %%
def explore(text="def f(x):\n    return [x, (x + 1)]  # a comment\n", quantity="wkv", layer=0, channel=0, upto=200):
    ids = torch.tensor(tokenizer.encode(text) or [0])
    tr = record_trajectory(rwkv4, ids)
    values = tr.quantity(quantity)[:, min(layer, L - 1), min(channel, rwkv4.config.n_embd - 1)]
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
        channel=widgets.IntSlider(0, 0, rwkv4.config.n_embd - 1),
        upto=widgets.IntSlider(200, 1, 2000),
    )


# %% [markdown]
# RWKV-7: pick a layer, head and token of the text; left, the state S_t after that token (or the change the token
# made, S_t - S_{t-1}); middle, its singular values; right, the head's effective rank over the text up to the
# token. Drawn once below for the last token of section 3, live with the widgets in Jupyter.


# %%
def explore_state(view="state S_t", layer=0, head=0, token=matrix_tokens - 1):
    layer, head, token = min(layer, L7 - 1), min(head, rwkv7.config.n_head - 1), min(token, len(tokens7) - 1)
    S = rwkv7.wkv_states(tokens7[None, : token + 1], layer)[0, -2:, head].double()  # (<= 2, N, N)
    shown = S[-1] if view == "state S_t" or len(S) == 1 else S[-1] - S[0]
    singular = torch.linalg.svdvals(S[-1])
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    limit = float(shown.abs().max()) or 1.0
    image = axes[0].imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=axes[0])
    axes[0].set_title(f"{view}: rows value index, columns key index", fontsize=8)
    axes[1].semilogy(singular.clamp_min(1e-12), ".-")
    axes[1].set_title(f"singular values of S_t: effective rank {float(effective_rank(S[-1])):.2f}", fontsize=8)
    g = dynamics[(dynamics["layer"] == layer) & (dynamics["head"] == head) & (dynamics["token"] <= token)]
    axes[2].plot(g["token"], g["effective_rank"], lw=0.8)
    axes[2].axvline(token, color="k", lw=0.5)
    axes[2].set_xlabel("token")
    axes[2].set_title("effective rank of this head's state", fontsize=8)
    fig.suptitle(
        f"{label[id(rwkv7)]}: layer {layer}, head {head}, after token {token} ({decoded7[token]!r})", fontsize=9
    )
    plt.show()


explore_state()
if interactive:
    import ipywidgets as widgets

    widgets.interact(
        explore_state,
        view=widgets.Dropdown(options=["state S_t", "change S_t - S_{t-1}"]),
        layer=widgets.IntSlider(0, 0, L7 - 1),
        head=widgets.IntSlider(0, 0, rwkv7.config.n_head - 1),
        token=widgets.IntSlider(min(matrix_tokens, len(tokens7)) - 1, 0, min(matrix_tokens, len(tokens7)) - 1),
    )
