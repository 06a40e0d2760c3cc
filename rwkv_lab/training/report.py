"""Comparing training runs (notebook 06): the architectures side by side, and their validation curves."""

from __future__ import annotations

import pandas as pd

from ..models import ARCHITECTURES, architecture
from ..results import find_result
from .trainer import ALIASES


def canonical_archs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its `arch` column in the registry's names: benchmarks/train_compare.py's summary rows name an
    architecture as its command line did ('rwkv' for RWKV-4, the name before the second generation), the curves as
    the trainer does ('rwkv4')."""
    return frame.assign(arch=frame["arch"].replace(ALIASES)) if "arch" in frame else frame


def compare_run(tag: str = "") -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """One benchmarks/train_compare.py run (`--tag`): its summary (one row per run), its curves and its
    provenance, the architectures in the registry's names."""
    summary = canonical_archs(pd.read_csv(find_result(f"training/summary{tag}.csv")))
    curves = canonical_archs(pd.read_csv(find_result(f"training/curves{tag}.csv")))
    return summary, curves, pd.read_json(find_result(f"training/summary{tag}.meta.json"), typ="series")


def arch_label(name: str) -> str:
    """What a figure calls an architecture (its registry label), for old names too."""
    return architecture(ALIASES.get(name, name)).label


def bench_training_run(tag: str = "") -> tuple[pd.DataFrame, pd.Series]:
    """One run of benchmarks/bench_training.py (`--tag`): its RWKV-4-vs-Pythia table per size and context
    (results/training_speed/training_vs_pythia<tag>.csv) and the run's provenance."""
    table = pd.read_csv(find_result(f"training_speed/training_vs_pythia{tag}.csv"))
    return table, pd.read_json(find_result(f"training_speed/training_vs_pythia{tag}.meta.json"), typ="series")


def chosen_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs a comparison reads: of a learning-rate sweep (benchmarks/train_compare.py --lrs), the one marked
    `chosen` per (architecture, size, context); a summary without a sweep is its own choice."""
    ok = summary[summary["status"] == "ok"]
    return ok[ok["chosen"].astype(bool)] if "chosen" in ok else ok


def sweep_edges(summary: pd.DataFrame) -> pd.DataFrame:
    """The chosen runs whose rate is the largest or the smallest of their sweep (more than one rate finished):
    (arch, model, context, lr, edge), edge "largest" or "smallest". Their best rate may lie beyond the sweep, so a
    comparison that reads them compares each architecture at the best rate it was given, not at its best."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for _, run in chosen_runs(summary).iterrows():
        same = ok[(ok["arch"] == run["arch"]) & (ok["model"] == run["model"]) & (ok["context"] == run["context"])]
        rates = sorted(same["lr"].unique()) if "lr" in same else []
        if len(rates) > 1 and run["lr"] in (rates[0], rates[-1]):
            edge = "largest" if run["lr"] == rates[-1] else "smallest"
            rows.append({k: run[k] for k in ("arch", "model", "context", "lr")} | {"edge": edge})
    return pd.DataFrame(rows, columns=["arch", "model", "context", "lr", "edge"])


def chosen_curves(curves: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The validation curves of the chosen runs (curves carry their run's `lr` when they come from a sweep)."""
    if "lr" not in curves or "lr" not in summary:
        return curves
    keys = chosen_runs(summary)[["arch", "model", "context", "lr"]]
    return curves.merge(keys, on=["arch", "model", "context", "lr"])


def unfinished_runs(summary: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The runs a benchmarks/train_compare.py command planned (its `params`: every size x context x architecture at
    each rate of `lrs`, or the `arch_lrs` pairs) that have no finished row in `summary`: (arch, model, context,
    lr, status), status the row's own or "not run" (no row: the run was skipped, e.g. by the deadline)."""
    summary = canonical_archs(summary)
    archs = [ALIASES.get(a, a) for a in params.get("archs", "rwkv,transformer").split(",")]
    named = [
        (ALIASES.get(a, a), float(lr))
        for a, lr in (p.split(":") for p in filter(None, params.get("arch_lrs", "").split(",")))
    ]
    pairs = named + [
        (a, float(lr)) for a in archs if a not in {n for n, _ in named} for lr in str(params["lrs"]).split(",")
    ]
    rows = []
    for model in params["sizes"].split(","):
        for context in (int(c) for c in str(params["contexts"]).split(",")):
            for arch, lr in pairs:
                row = summary[
                    (summary["arch"] == arch)
                    & (summary["model"] == model)
                    & (summary["context"] == context)
                    & ((summary["lr"] - lr).abs() <= 1e-12 * lr)
                ]
                status = row["status"].iloc[0] if len(row) else "not run"
                if status != "ok":
                    rows.append({"arch": arch, "model": model, "context": context, "lr": lr, "status": status})
    return pd.DataFrame(rows, columns=["arch", "model", "context", "lr", "status"])


def best_and_final(curves: pd.DataFrame, train_tokens: int) -> pd.DataFrame:
    """Per run (architecture, size, context, learning rate) of validation curves: where validation bits/byte was
    lowest (its tokens and epochs over a corpus of `train_tokens`) and where the run ended. A final value above the
    best says the run trained past the point where more epochs stopped helping (overfitting)."""
    keys = [k for k in ("arch", "model", "context", "lr") if k in curves]
    val = curves.dropna(subset=["val_bpb"])
    rows = []
    for key, run in val.groupby(keys, sort=False):
        best, last = run.loc[run["val_bpb"].idxmin()], run.loc[run["tokens"].idxmax()]
        rows.append(
            dict(zip(keys, key))
            | {
                "best_val_bpb": best["val_bpb"],
                "best_at_tokens": int(best["tokens"]),
                "best_at_epochs": best["tokens"] / train_tokens,
                "final_val_bpb": last["val_bpb"],
                "final_tokens": int(last["tokens"]),
                "final_epochs": last["tokens"] / train_tokens,
            }
        )
    return pd.DataFrame(rows)


def per_token_activations(by_kind: pd.DataFrame, width: int) -> pd.DataFrame:
    """Of benchmarks/saved_activations.py's kinds (results/training/saved_activations_by_kind.csv), per (arch,
    path, what it keeps, budget): what grows with the tokens, in bf16 (tokens, C) tensors per layer (2 C bytes per
    token). The kinds that do not grow with the tokens (bf16 copies of the weights, LayerNorm statistics) are left
    out: they do not scale to another batch or width the same way."""
    grows = by_kind[~by_kind["kind"].str.endswith(" other")]
    keys = [k for k in ("arch", "path", "saved_activations", "activation_memory_budget") if k in grows]
    out = grows.groupby(keys, dropna=False, sort=False)["bytes_per_token_layer"].sum().reset_index()
    out["bf16_BTC_tensors_per_layer"] = out.pop("bytes_per_token_layer") / (2 * width)
    return out


def fastest_paths(steps: pd.DataFrame) -> pd.DataFrame:
    """Of benchmarks/bench_training.py's rows (results/training_speed/training_mfu.csv), the ones a comparison
    reads: per
    (architecture, model, context), the faster path that ran (RWKV's fused blocks, Pythia eager or compiled);
    the eager RWKV rows ('RWKV-4 eager', 'RWKV-7 eager') are the before, not a choice. A file from before the
    variants is read as it is."""
    ok = steps[steps["status"] == "ok"]
    if "variant" not in ok:
        return ok
    ok = ok[~ok["variant"].str.endswith(" eager")]
    return ok.sort_values("tokens_per_s").groupby(["arch", "model", "context"]).tail(1).sort_index()


def side_by_side(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (size, context): each architecture's bits-per-byte, tokens/s and memory (`val_bpb_<arch>`, ...),
    and each recurrent one's ratios to the transformer (`bpb_ratio_<arch>_over_tf`, `speed_ratio_...`,
    `memory_ratio_...`), from the chosen run of each (see chosen_runs)."""
    ok = canonical_archs(chosen_runs(summary))
    wide = ok.pivot_table(
        index=["model", "context"],
        columns="arch",
        values=["params", "val_bpb", "tokens_per_s", "peak_memory_GiB"],
        sort=False,
    )
    wide.columns = [f"{value}_{arch}" for value, arch in wide.columns]
    baseline = next(a for a in ok["arch"].unique() if not architecture(a).recurrent)
    for arch in [a for a in ARCHITECTURES if a in set(ok["arch"]) and architecture(a).recurrent]:
        for ratio, value in (("bpb", "val_bpb"), ("speed", "tokens_per_s"), ("memory", "peak_memory_GiB")):
            wide[f"{ratio}_ratio_{arch}_over_tf"] = wide[f"{value}_{arch}"] / wide[f"{value}_{baseline}"]
    return wide.reset_index()


def plot_curves(curves: pd.DataFrame, axes, unigram_bpb: float | None = None, title: str = ""):
    """Validation bits-per-byte against tokens (axes[0]) and training FLOPs (axes[1]), one line per run: a colour
    per size, a line style per architecture."""
    evals = canonical_archs(curves).dropna(subset=["val_bpb"])
    colours = dict(
        zip(
            sorted(evals["model"].unique(), key=lambda m: evals[evals.model == m]["params"].iloc[0]),
            ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"),
        )
    )
    styles = dict(zip(ARCHITECTURES, ("-", "--", ":", "-.")))
    for (model, arch, _context), g in evals.groupby(["model", "arch", "context"]):
        label = f"{arch_label(arch)} {model} ({g['params'].iloc[0] / 1e6:.1f}M)"
        for ax, x in zip(axes, ("tokens", "flops")):
            ax.plot(g[x], g["val_bpb"], styles[arch], color=colours.get(model), label=label)
    for ax, x in zip(axes, ("tokens", "flops")):
        if unigram_bpb is not None:
            ax.axhline(unigram_bpb, color="gray", lw=0.8, ls=":", label="unigram baseline")
        ax.set_xscale("log")
        ax.set_xlabel("training tokens" if x == "tokens" else "training FLOPs")
        ax.set_ylabel("validation bits per byte")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)


def context_gap_shares(runs: pd.DataFrame, score: str = "val_bpb_at_512") -> pd.DataFrame:
    """Of benchmarks/context_effect.py's runs, per architecture: the `score` (bits/byte on the same short
    validation windows) of the short-context run, the long-context run and the short-context run cut from the
    long run's spans (the same tokens per step as the long run); the gap long - short; and `batch_share`, the part
    of the gap the cut run already shows, (cut - short) / (long - short). Near 1: fewer, longer draws per step make
    the gap; near 0: the long context itself does (`cause` names which, or both where neither has two thirds)."""
    rows = []
    for arch, g in runs.groupby("arch", sort=False):
        plain = g[g["span"] == g["context"]]
        short = plain.loc[plain["context"].idxmin()]
        long = plain.loc[plain["context"].idxmax()]
        cut = g[(g["span"] == long["context"]) & (g["context"] == short["context"])].iloc[0]
        gap = long[score] - short[score]
        share = (cut[score] - short[score]) / gap
        cause = "both" if 1 / 3 < share < 2 / 3 else "the batch's fewer draws" if share >= 2 / 3 else "the context"
        row = {"arch": arch, "short": short[score], "long": long[score], "cut": cut[score], "gap": gap}
        rows.append(row | {"batch_share": share, "cause": cause})
    return pd.DataFrame(rows)


def kernel_time_by_kind(kernels: pd.DataFrame) -> pd.DataFrame:
    """Of benchmarks/bench_training.py --profile's kernels (results/training_speed/training_kernels.csv):
    milliseconds of GPU
    time per step, one row per (variant, size, context), one column per kernel kind, and `device_ms` their total
    (the step's wall time, in training_mfu.csv, is longer by what the host adds: launches, Python, guards)."""
    keys = ["variant", "size", "context"]
    wide = kernels.pivot_table(index=keys, columns="kind", values="ms", aggfunc="sum", fill_value=0.0, sort=False)
    wide.columns.name = None
    wide["device_ms"] = wide.sum(axis=1)
    return wide.reset_index()


def plot_kernel_time(by_kind: pd.DataFrame, ax, title: str = ""):
    """Stacked bars: each step's GPU time by kernel kind (kernel_time_by_kind), RWKV-4 beside Pythia per size."""
    kinds = [c for c in by_kind.columns if c not in ("variant", "size", "context", "device_ms")]
    labels = by_kind["size"] + " T=" + by_kind["context"].astype(str) + "\n" + by_kind["variant"]
    bottom = pd.Series(0.0, index=by_kind.index)
    for kind in kinds:
        ax.bar(labels, by_kind[kind], bottom=bottom, label=kind)
        bottom += by_kind[kind]
    ax.set_ylabel("GPU time per step, ms")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
