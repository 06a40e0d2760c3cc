"""Reading a memory/speed sweep (notebook 02): profiles with their devices, where each model ran out of memory,
crossovers, ratios and the log-log plot.

A sweep can join files measured on different cards (load_profiles tags each row with its file's device, card
memory and copy bandwidth); every comparison between two models takes both from one device, and refuses when
they share none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def one_device(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The rows of models `a` and `b` from the one device both were measured on (a frame without a device column
    is one device); a ValueError names the devices when they share none."""
    if "device" not in frame:
        return frame
    on = {m: set(frame.loc[frame["model"] == m, "device"]) for m in (a, b)}
    shared = on[a] & on[b]
    if len(shared) != 1:
        raise ValueError(
            f"{a} (on {sorted(on[a])}) and {b} (on {sorted(on[b])}) share "
            + ("no device" if not shared else f"several devices {sorted(shared)}")
            + ": a comparison takes both from one device"
        )
    return frame[frame["device"] == shared.pop()]


def memory_ratio_table(frame: pd.DataFrame, rwkv: str, transformer: str, batch: int = 1) -> pd.DataFrame:
    """At each context both reached on one device: generation memory held by the transformer / by RWKV."""
    frame = one_device(frame, rwkv, transformer)
    gen = frame[(frame["kind"] == "generation") & (frame["status"] == "ok") & (frame["batch"] == batch)]
    a = gen[gen["model"] == rwkv].set_index("context")["memory_GiB"]
    b = gen[gen["model"] == transformer].set_index("context")["memory_GiB"]
    both = pd.DataFrame({"rwkv_GiB": a, "transformer_GiB": b}).dropna()
    both["transformer_over_rwkv"] = both["transformer_GiB"] / both["rwkv_GiB"]
    return both.reset_index()


def load_profiles(paths) -> pd.DataFrame:
    """Concatenate profile CSVs, each row tagged with its file's device, that card's memory and measured copy
    bandwidth (from <name>.meta.json)."""
    frames = []
    for path in paths:
        meta = pd.read_json(Path(path).with_suffix(".meta.json"), typ="series")
        params = meta["params"]
        frames.append(
            pd.read_csv(path).assign(
                device=meta["device"],
                source=Path(path).name,
                gpu_total_bytes=params.get("gpu_total_bytes"),
                copy_bandwidth_Bps=params.get("copy_bandwidth_Bps"),
            )
        )
    return pd.concat(frames, ignore_index=True)


def oom_contexts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model, kind and batch: the longest context measured and the first that ran out of memory."""
    rows = []
    for (model, kind, batch), g in frame.groupby(["model", "kind", "batch"], sort=False):
        ok, oom = g[g["status"] == "ok"], g[g["status"] == "oom"]
        rows.append(
            {
                "model": model,
                "kind": kind,
                "batch": batch,
                "longest_ok": int(ok["context"].max()) if len(ok) else None,
                "first_oom": int(oom["context"].min()) if len(oom) else None,
            }
        )
    return pd.DataFrame(rows)


def crossover(
    frame: pd.DataFrame,
    rwkv: str,
    transformer: str,
    kind: str,
    value: str,
    batch: int = 1,
    lower_is_better: bool = True,
):
    """The shortest context from which RWKV is better on `value` than the transformer (None if never), both
    measured on one device."""
    frame = one_device(frame, rwkv, transformer)
    g = frame[(frame["kind"] == kind) & (frame["status"] == "ok") & (frame["batch"] == batch)]
    a = g[g["model"] == rwkv].set_index("context")[value]
    b = g[g["model"] == transformer].set_index("context")[value]
    both = pd.DataFrame({"r": a, "t": b}).dropna().sort_index()
    better = both["r"] < both["t"] if lower_is_better else both["r"] > both["t"]
    # from this context on, RWKV stays better
    for T in both.index:
        if better.loc[T:].all():
            return int(T)
    return None


def plot_kind(frame: pd.DataFrame, ax, kind: str, value: str, ylabel: str, batch: int = 1, scale: float = 1.0):
    """One line per model: `value` (times `scale`) against context, log-log. Running out of memory is drawn where
    it happened: a dotted vertical limit at the first context that did not fit, in the model's colour. Where the
    panel holds rows of several devices, each label names its device."""
    g = frame[(frame["kind"] == kind) & (frame["batch"] == batch)]
    keys = ["model", "device"] if "device" in g and g["device"].nunique() > 1 else ["model"]
    for key, m in g.groupby(keys, sort=False):
        model = key[0] if len(keys) == 1 else f"{key[0]} ({key[1]})"
        ok = m[m["status"] == "ok"].sort_values("context")
        style = "--" if m["arch"].iloc[0] == "transformer" else "-"
        (line,) = ax.loglog(ok["context"], ok[value] * scale, "o" + style, ms=3, label=model)
        for T in m.loc[m["status"] == "oom", "context"]:
            ax.axvline(T, color=line.get_color(), ls=":", lw=1.2, label=f"{model}: out of memory at T = {T:,}")
    ax.set_xlabel("context T (tokens)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


def peer_summary(
    frame: pd.DataFrame,
    sizes=("169M", "1.5B", "7B"),
    prefill_context: int = 4096,
    bytes_per_param: int = 2,
) -> pd.DataFrame:
    """Per device and RWKV size (from load_profiles): batch-1 generation tokens/s of ours (default and compiled
    decode), the `rwkv` package and transformers' RWKV at the shortest context measured, the weight-bandwidth
    roofline (that device's measured copy bandwidth over the weights' bytes per token), and prefill tokens/s.
    Every column of a row comes from one device; a prefill ratio is formed only between rows measured at the same
    context; each prefill column names its context."""
    labels = (
        ("ours", "RWKV-4 {}"),
        ("ours compiled", "RWKV-4 {} compiled"),
        ("rwkv package", "rwkv package {}"),
        ("transformers RWKV", "transformers RWKV {}"),
    )
    rows = []
    for device, on in frame.groupby("device", sort=False):
        gen = on[(on["kind"] == "generation") & (on["status"] == "ok") & (on["batch"] == 1)]
        pre = on[(on["kind"] == "prefill") & (on["status"] == "ok")]
        for size in sizes:
            ours_rows = on[on["model"].isin([labels[0][1].format(size), labels[1][1].format(size)])]
            if not len(ours_rows):
                continue
            row = {"device": device, "size": size}
            for label, pattern in labels:
                g = gen[gen["model"] == pattern.format(size)]
                row[f"{label} tok/s"] = (
                    g.loc[g["context"] == g["context"].min(), "tokens_per_s"].iloc[0] if len(g) else None
                )
            weights = ours_rows["params"].iloc[0] * bytes_per_param
            row["roofline tok/s"] = on["copy_bandwidth_Bps"].iloc[0] / weights
            best = max((row[f"{label} tok/s"] or 0) for label in ("ours", "ours compiled"))
            row["ours % of roofline"] = 100 * best / row["roofline tok/s"]
            ours = pre[(pre["model"] == f"RWKV-4 {size}") & (pre["context"] == prefill_context)]["tokens_per_s"]
            row[f"prefill ours tok/s (T={prefill_context})"] = ours.iloc[0] if len(ours) else None
            for label, pattern in labels[2:]:
                p = pre[pre["model"] == pattern.format(size)]
                row[f"prefill {label} tok/s"] = p["tokens_per_s"].iloc[0] if len(p) else None
                row[f"prefill {label} T"] = int(p["context"].iloc[0]) if len(p) else None
                same_t = len(p) and len(ours) and int(p["context"].iloc[0]) == prefill_context
                row[f"prefill ours / {label}"] = ours.iloc[0] / p["tokens_per_s"].iloc[0] if same_t else None
            rows.append(row)
    return pd.DataFrame(rows)


def generation_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per size, from one benchmarks/bench_generation.py table (one device, one run): batch-1 tokens/s through
    `generate` (top-p, streamed text) and through the decoder alone, the `rwkv` package's loop on the same weights
    and the ratio, the share of the weight-bandwidth roofline (GPU), the first call's warm-up, and prefill
    tokens/s of ours and the package at the same prompt length."""
    rows = []
    for size, g in frame.groupby("size", sort=False):
        gen = g[(g["kind"] == "generation") & (g["batch"] == 1)]

        def pick(path_start, prompt=None, column="tokens_per_s", rows=gen):
            r = rows[rows["path"].str.startswith(path_start)]
            if prompt is not None:
                r = r[r["prompt"] == prompt]
            return float(r[column].iloc[0]) if len(r) else float("nan")

        ours = pick("rwkv_lab.generate (top-p)", 16)
        package = pick("rwkv package forward([token]) loop (greedy)")
        pre = g[g["kind"] == "prefill"]
        pre_ours = pre[pre["path"] == "model.prefill"]
        pre_pkg = pre[pre["path"].str.startswith("rwkv package")]
        same_t = len(pre_ours) and len(pre_pkg) and int(pre_ours["prompt"].iloc[0]) == int(pre_pkg["prompt"].iloc[0])
        roofline = (
            pick("rwkv_lab.generate (top-p)", 16, "roofline_tokens_per_s") if "roofline_tokens_per_s" in g else None
        )
        rows.append(
            {
                "size": size,
                "generate top-p tok/s": ours,
                "decoder.step tok/s": pick("decoder.step", 16),
                "rwkv package greedy tok/s": package,
                "generate / package": ours / package,
                "% of roofline": 100 * ours / roofline if roofline else float("nan"),
                "first-call warm-up s": pick("rwkv_lab.generate (top-p)", 16, "warmup_s"),
                "later-call warm-up s": pick("rwkv_lab.generate (top-p)", 16, "warmup_s_second_call"),
                "prefill T": int(pre_ours["prompt"].iloc[0]) if len(pre_ours) else None,
                "prefill ours tok/s": float(pre_ours["tokens_per_s"].iloc[0]) if len(pre_ours) else float("nan"),
                "prefill package tok/s": float(pre_pkg["tokens_per_s"].iloc[0]) if len(pre_pkg) else float("nan"),
                "prefill ours / package": float(pre_ours["tokens_per_s"].iloc[0] / pre_pkg["tokens_per_s"].iloc[0])
                if same_t
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def plot_generation_batches(frame: pd.DataFrame, ax, size: str):
    """Generated tokens/s against batch size for one size: through `generate` and through the decoder alone,
    with the weight-bandwidth roofline (batch x bandwidth / weight bytes) where measured."""
    g = frame[(frame["size"] == size) & (frame["kind"] == "generation") & (frame["prompt"] == 16)]
    for path, style in (("rwkv_lab.generate (top-p)", "o-"), ("decoder.step (top-p)", "s--")):
        r = g[g["path"] == path].sort_values("batch")
        ax.loglog(r["batch"], r["tokens_per_s"], style, label=path)
    if "roofline_tokens_per_s" in g:
        r = g[g["path"] == "rwkv_lab.generate (top-p)"].sort_values("batch")
        ax.loglog(r["batch"], r["roofline_tokens_per_s"], ":", color="gray", label="weight-bandwidth roofline")
    ax.set_xlabel("batch (sequences decoded together)")
    ax.set_ylabel("generated tokens/s (all sequences)")
    ax.legend(fontsize=7)


def kv_cache_limits(frame: pd.DataFrame, capacity_bytes: int | None = None) -> pd.DataFrame:
    """Per transformer model and batch of a generation sweep: the context at which its weights and KV cache alone
    fill `capacity_bytes` (where the transformer runs out, whatever a harness adds). The held memory is linear in
    the context: the line through the analytic model's predictions (`predicted_bytes`), scaled by the largest
    measured / predicted ratio of the contexts that ran. Beside it, the sweep's longest context and first OOM, and
    what ran out there (`oom_from`): the KV cache when it could not fit at that context, else the harness.
    `capacity_bytes` None: each device's own card (load_profiles' gpu_total_bytes), one row per device."""
    gen = frame[(frame["kind"] == "generation") & (frame["arch"] == "transformer")]
    if "device" not in gen:
        gen = gen.assign(device=None)
    rows = []
    for (device, model, batch), g in gen.groupby(["device", "model", "batch"], sort=False, dropna=False):
        capacity = capacity_bytes if capacity_bytes is not None else float(g["gpu_total_bytes"].iloc[0])
        predicted = g.dropna(subset=["predicted_bytes"])
        slope, intercept = np.polyfit(predicted["context"], predicted["predicted_bytes"], 1)
        ok = predicted[predicted["status"] == "ok"]
        ratio = float((ok["memory_bytes"] / ok["predicted_bytes"]).max())
        oom = g[g["status"] == "oom"]["context"]
        limit = int((capacity / ratio - intercept) / slope)
        first_oom = int(oom.min()) if len(oom) else None
        rows.append(
            {
                "device": device,
                "model": model,
                "batch": batch,
                "capacity_GiB": capacity / 2**30,
                "kv_cache_fills_memory_at": limit,
                "measured_over_predicted": ratio,
                "longest_ok": int(ok["context"].max()),
                "first_oom": first_oom,
                "oom_from": None if first_oom is None else "the KV cache" if limit < first_oom else "the harness",
            }
        )
    return pd.DataFrame(rows)


def pile_profiles() -> list[Path]:
    """The three-generation sweeps (benchmarks/profile_memory.py: results/profile/memory_profile_pile_*.csv), this
    run's (results_dir()) where it has one of a name, else the committed one; sorted by name."""
    from ..results import REPO_ROOT, results_dir

    found = {}
    for root in (REPO_ROOT / "results", results_dir()):  # this run's last, so it wins
        for path in sorted((root / "profile").glob("memory_profile_pile_*.csv")):
            found[path.name] = path
    return [found[name] for name in sorted(found)]


def _at(rows: pd.DataFrame, context, column: str):
    r = rows[rows["context"] == context]
    return float(r[column].iloc[0]) if len(r) and context is not None else None


def sweep_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model of one sweep (one device): its bytes per sequence (state, KV cache per token); generation's
    longest context measured, first out of memory and first left by the time budget, the memory held and
    milliseconds per token at its shortest and longest contexts; prefill and training tokens/s at the longest
    context each reached (and those contexts), training's peak memory there."""
    rows = []
    for model, g in frame.groupby("model", sort=False):
        row = {
            "model": model,
            "arch": g["arch"].iloc[0],
            "params": int(g["params"].iloc[0]),
            "state_bytes": int(g["state_bytes"].iloc[0]),
            "cache_bytes_per_token": int(g["cache_bytes_per_token"].iloc[0]),
        }
        for kind, key in (("generation", "gen"), ("prefill", "prefill"), ("training", "train")):
            k = g[g["kind"] == kind]
            ok = k[k["status"] == "ok"]
            oom, skipped = k[k["status"] == "oom"], k[k["status"].str.startswith("skipped")]
            row[f"{key}_longest"] = int(ok["context"].max()) if len(ok) else None
            row[f"{key}_first_oom"] = int(oom["context"].min()) if len(oom) else None
            row[f"{key}_first_skipped"] = int(skipped["context"].min()) if len(skipped) else None
            if key == "gen":
                shortest = int(ok["context"].min()) if len(ok) else None
                row["gen_shortest"] = shortest
                for where, T in (("shortest", shortest), ("longest", row["gen_longest"])):
                    row[f"held_GiB_{where}"] = _at(ok, T, "memory_GiB")
                    seconds = _at(ok, T, "seconds")
                    row[f"ms_per_token_{where}"] = None if seconds is None else 1e3 * seconds
            else:
                row[f"{key}_tokens_per_s"] = _at(ok, row[f"{key}_longest"], "tokens_per_s")
                row[f"{key}_peak_GiB"] = _at(ok, row[f"{key}_longest"], "memory_GiB")
        rows.append(row)
    return pd.DataFrame(rows)


def batched_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per size and batch of mixed-length prompts, from one benchmarks/bench_generation.py table (its `mixed`
    rows: one device, one run): a `generate` call end to end (the prompts prefilled in one pass, then decoded)
    against its decoding steps alone and the decoder alone at that batch; the prefill in one pass against the
    prompts one at a time; the first call at a batch size not seen before (one below and one above). Where the run
    measured the prefill's floor (its matrix FLOPs at the card's measured matrix throughput), the ceiling of end
    to end over the decoder alone: the call's tokens over that floor plus its decoding steps at the decoder
    alone's speed (the first token of each prompt comes from the prefill)."""
    mixed = frame[frame["kind"] == "mixed"]
    rows = []
    for (size, batch), g in mixed.groupby(["size", "batch"], sort=False):
        if not (g["path"] == "decoder.step (top-p)").any():
            continue  # the new-batch-size rows (batch +- 1) are read with their batch below

        def pick(path, column="tokens_per_s", rows=g):  # NaN where the run has no such row or column
            r = rows[rows["path"] == path]
            return float(r[column].iloc[0]) if len(r) and column in r else float("nan")

        call = "rwkv_lab.generate, mixed prompts (top-p)"
        decoder = pick("decoder.step (top-p)")
        end_to_end = pick(call, "end_to_end_tokens_per_s")
        generated = pick(call, "generated_tokens")
        floor = pick("prefill_prompts, one pass", "prefill_floor_s")
        ceiling = generated / (floor + (generated - batch) / decoder) / decoder
        new_sizes = mixed[(mixed["size"] == size) & mixed["batch"].isin([batch - 1, batch + 1])]
        new_sizes = new_sizes[new_sizes["path"] == "rwkv_lab.generate, first call at a new batch size"]
        rows.append(
            {
                "size": size,
                "batch": int(batch),
                "prompts": g["prompt"].iloc[0],
                "end-to-end tok/s": end_to_end,
                "decoding steps tok/s": pick(call),
                "decoder alone tok/s": decoder,
                "end to end / decoder": end_to_end / decoder,
                "prefill s": pick(call, "prefill_s"),
                "call s": pick(call, "total_s"),
                "prefill one pass tok/s": pick("prefill_prompts, one pass"),
                "prefill one at a time tok/s": pick("prefill_prompts, one prompt at a time"),
                "prefill floor s": floor,
                "end to end / decoder, ceiling": ceiling,
                "new batch size, first call s (max)": float(new_sizes["first_call_s"].max()),
            }
        )
    return pd.DataFrame(rows)


def rwkv4_gpu_generation_tables(inference_dir: Path) -> list[Path]:
    """benchmarks/bench_generation.py's RWKV-4 tables measured on a GPU (generation<tag>.csv, each one device and
    one run), whatever tag the run was given: not RWKV-7's (generation_rwkv7*), not the CPU's (by provenance)."""
    from ..results import read_table

    tables = []
    for path in sorted(Path(inference_dir).glob("generation*.csv")):
        if path.name.startswith("generation_rwkv7"):
            continue
        if not read_table(path)[1].get("device", "").startswith("CPU"):
            tables.append(path)
    return tables


def batched_runs(inference_dir: Path) -> pd.DataFrame:
    """`batched_summary` of every benchmarks/bench_generation.py table in `inference_dir` that has `mixed` rows
    (generation*.csv), each with its arch, device and which decode step ran: its run's decoder check
    (decoder_check*.json of the same tag and commit, a batch of 4) says whether the step kept torch.compile or fell
    back, and whether it ran the model's step kernels; without one, the compile level the table recorded.
    An empty frame when none has."""
    from ..results import read_table

    runs = []
    for path in sorted(Path(inference_dir).glob("generation*.csv")):
        frame, meta = read_table(path)
        if "kind" not in frame or not (frame["kind"] == "mixed").any():
            continue
        check = path.with_name(path.name.replace("generation", "decoder_check", 1)).with_suffix(".json")
        record = json.loads(check.read_text()) if check.exists() else {}
        # the check speaks for this table only if the same run wrote both (a later run may have rewritten one)
        same_run = record.get("provenance", {}).get("git_commit") == meta.get("git_commit")
        result = record.get("results", {}) if same_run else {}
        compiled = result.get("compiled")
        if compiled is None and "decoder_compiled" in frame:  # what the run's decoder recorded (later runs)
            levels = frame["decoder_compiled"].dropna().astype(str)
            compiled = None if levels.empty else (False if levels.iloc[0] == "False" else levels.iloc[0])
        if compiled is None:
            step = "unknown (no decoder check in its run)"
        elif not result:  # the level the table recorded; why, and whether the step kernels ran, only a check says
            step = (f"compiled ({compiled})" if compiled else "uncompiled") + " (no decoder check in its run)"
        else:
            # uncompiled: the default where the step and the sampler are kernels; a fallback where a compile
            # failed (the check lists why; older checks, from before that default, do not)
            fell_back = result.get("compile_fallbacks", True)
            step = f"compiled ({compiled})" if compiled else "uncompiled" + (" (fell back)" if fell_back else "")
            step += ", step kernels" if result.get("step_kernels") else ""
        summary = batched_summary(frame).assign(
            arch=frame["arch"].iloc[0], device=meta["device"], step=step, file=path.name
        )
        runs.append(summary)
    return pd.concat(runs, ignore_index=True) if runs else pd.DataFrame()
