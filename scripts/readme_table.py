"""Write the README's "Measured so far" table from the committed results: every number is read from a file under
results/, the device from that file's provenance, and a ratio only from rows of one file (one device, one run).

    python scripts/readme_table.py          # rewrite the table in README.md (between the two markers)
    python scripts/readme_table.py --check  # exit 1 if README.md differs from what the results say (a test runs it)

Each row below names its file, the columns and the filter it reads; change the results and rerun this script.
It reads only current results: a file under results/history/ (a superseded run) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from rwkv_lab.measure.report import batched_runs, generation_summary, rwkv4_gpu_generation_tables
from rwkv_lab.training.report import chosen_runs, context_gap_shares, fastest_paths

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
BEGIN, END = "<!-- measured:begin (scripts/readme_table.py writes this table) -->", "<!-- measured:end -->"


def current(relative: str) -> Path:
    """results/<relative>, refused if it is a superseded run (results/history/): the table shows current results."""
    if relative.startswith("history/"):
        raise ValueError(f"results/{relative} is a superseded run (results/history/); the table reads current files")
    return RESULTS / relative


def provenance(relative: str) -> dict:
    path = current(relative)
    if path.suffix == ".json":
        return json.loads(path.read_text())["provenance"]
    return json.loads(path.with_suffix(".meta.json").read_text())


def device(relative: str) -> str:
    meta = provenance(relative)
    # a file merged from several runs keeps each run's provenance: they must share one device
    names = {r["device"] for r in meta["runs"]} if "runs" in meta else {meta["device"]}
    if len(names) != 1:
        raise ValueError(f"results/{relative} holds runs on several devices {sorted(names)}; split it")
    name = names.pop()
    return "CPU (2 cores)" if name.startswith("CPU") and "2 logical" in name else name.removeprefix("NVIDIA ")


def edited(relative: str) -> bool:
    """Whether the file's provenance says it was completed after the run (a commit filled in, runs merged): such
    files are marked in the table until they are re-measured."""
    meta = provenance(relative)
    return any(k.endswith("note") for k in meta)


def table(relative: str) -> pd.DataFrame:
    return pd.read_csv(current(relative))


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"


def k(x: float) -> str:
    return f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:,.0f}"


def row(what: str, relative: str, number: str, files: str | None = None) -> list[str]:
    where = device(relative) + (" (provenance completed by hand, see its file)" if edited(relative) else "")
    return [what, where, number, f"`results/{files or relative}`"]


def equivalence():
    per = json.loads(current("01_equivalence.json").read_text())["results"]["per_position"]
    r4 = per["rwkv4"]
    return row(
        f"parallel vs recurrent form, default model (RWKV-4), fp32, {r4['T']}-token prompt",
        "01_equivalence.json",
        f"logits rel. error {r4['rel_err_logits_parallel']:.2e}",
    )


def kernel_check(f: str = "wkv/wkv_kernel_check.json", what: str = ""):
    c = pd.DataFrame(json.loads(current(f).read_text())["results"])
    fp32 = c[c["dtype"] == "fp32"]
    grads = ["rel_err_dw", "rel_err_du", "rel_err_dk", "rel_err_dv", "rel_err_dstate"]
    parts = []
    for inputs in ("official-init", "extreme"):
        g = fp32[fp32["inputs"] == inputs]
        parts.append(f"{inputs}: y ≤ {g['rel_err_y'].max():.1e}, every gradient ≤ {g[grads].max().max():.1e}")
    return row(f"{what}Triton WKV kernel vs the fp64 reference, fp32, T up to {fp32['T'].max():,}", f, "; ".join(parts))


def wkv_forward():
    f = "wkv/wkv_benchmark.csv"
    b = table(f)
    cells = []
    for T, C, dtype in ((16384, 2048, "fp32"), (65536, 4096, "fp32"), (65536, 4096, "bf16")):
        g = b[(b["B"] == 1) & (b["T"] == T) & (b["C"] == C) & (b["dtype"] == dtype)].set_index("backend")
        ours = g.loc["triton", "fwd_ms"]
        fla = g.loc["fla fused_recurrent_rwkv4", "fwd_ms"]
        cells.append(
            f"(1, {T}, {C}) {dtype}: {ours:.3g} ms, {g.loc['triton', 'fwd_pct_copy_bw']:.0f}% of copy "
            f"bandwidth, fla {fla / ours:.1f}× slower"
        )
    return row("WKV forward, Triton kernel vs fla's `fused_recurrent_rwkv4` (same run)", f, "; ".join(cells))


def wkv_fwd_bwd(f: str = "wkv/wkv_benchmark_targets.csv", what: str = ""):
    b = table(f)
    cells = []
    for B, T, C in ((8, 1024, 768), (8, 1024, 2048), (16, 4096, 2048)):
        g = b[(b["B"] == B) & (b["T"] == T) & (b["C"] == C) & (b["dtype"] == "bf16")].set_index("backend")
        ours, fla = g.loc["triton"], g.loc["fla fused_recurrent_rwkv4"]
        cells.append(
            f"({B}, {T}, {C}): {ours['fwd_bwd_ms']:.2f} vs {fla['fwd_bwd_ms']:.2f} ms "
            f"({fla['fwd_bwd_ms'] / ours['fwd_bwd_ms']:.2f}× fla's speed), replayed from a CUDA graph "
            f"{ours['fwd_bwd_graphed_ms']:.2f} vs {fla['fwd_bwd_graphed_ms']:.2f} ms "
            f"({fla['fwd_bwd_graphed_ms'] / ours['fwd_bwd_graphed_ms']:.2f}×)"
        )
    rounds = provenance(f)["params"].get("rounds")  # runs before `alternate` timed one round
    turns = f" (the median of {rounds} rounds taking turns)" if rounds else ""
    return row(
        what + "WKV forward+backward, bf16, Triton kernel vs fla's `fused_recurrent_rwkv4`, each call kernel by kernel"
        f"{turns} and replayed from a CUDA graph (the device's work alone), same run",
        f,
        "; ".join(cells),
    )


def graph_note(relative: str) -> str:
    """How a bench_training run launched its steps, from its training_mfu file's `cuda_graph` column (absent in
    runs before the CUDA graph), naming any step whose capture failed."""
    t = table(relative.replace("training_vs_pythia", "training_mfu"))
    if "cuda_graph" not in t:
        return "each step launched kernel by kernel"
    if not t["cuda_graph"].any():
        return "each step launched kernel by kernel (`--cuda-graph off`)"
    failed = t[~t["cuda_graph"].astype(bool)]
    note = "each step replayed from a CUDA graph"
    if len(failed):
        note += " (not captured, so launched kernel by kernel: " + ", ".join(
            f"{r['model']} T = {r['context']}" for _, r in failed.iterrows()
        )
        note += ")"
    return note


def versus_cells(t: pd.DataFrame, memory_ratio: bool = False) -> str:
    return "; ".join(
        f"{r['size']} T = {r['context']}: {k(r['rwkv_tokens_per_s'])} vs {k(r['pythia_tokens_per_s'])} tokens/s "
        f"({r['speed_ratio']:.2f}×), peak {r['rwkv_peak_mem_GiB']:.1f} vs {r['pythia_peak_mem_GiB']:.1f} GiB"
        + (f" ({r['memory_ratio']:.2f}×)" if memory_ratio else "")
        for _, r in t.iterrows()
    )


def saved_note(relative: str) -> str:
    """What a bench_training run's fused blocks kept for the backward, from its training_mfu file's
    `saved_activations` column (absent in runs before RWKV.saved_activations: the partitioner's choice)."""
    t = table(relative.replace("training_vs_pythia", "training_mfu"))
    rwkv = t[t["variant"] == "RWKV-4"]
    kept = rwkv["saved_activations"] if "saved_activations" in t else pd.Series([])
    if len(kept) and (kept == "matmuls").all():
        # the ops kept are recorded from commit 7cbf459 on
        mixes = rwkv["kept_ops"].str.contains("norm_mix_forward").all() if "kept_ops" in t else False
        if mixes:
            return "keeping the matmuls' inputs (the mixes) and outputs and the WKV's outputs for the backward"
        return "keeping the matmuls' and the WKV's outputs for the backward"
    return "keeping what the compiler's partitioner chooses for the backward"


def mixes_note(relative: str) -> str:
    """Who ran RWKV-4's LayerNorms and mixes in a bench_training run, from its training_mfu file's
    `norm_mix_kernels` column (absent in runs before RWKV.norm_mix_kernels: inductor)."""
    t = table(relative.replace("training_vs_pythia", "training_mfu"))
    kernels = t[t["variant"] == "RWKV-4"]["norm_mix_kernels"] if "norm_mix_kernels" in t else pd.Series([])
    if len(kernels) and kernels.astype(bool).all():
        return "its LayerNorms and mixes in rwkv_lab.ops.norm_mix's Triton kernels"
    return "its LayerNorms and mixes fused by inductor"


def training_vs_pythia():
    f = "training_speed/training_vs_pythia.csv"
    t = table(f)
    if "generation" in t:  # the row is RWKV-4's (RWKV-7's, once measured, is its own row)
        t = t[t["generation"] == "RWKV-4"]
    tokens = int(t["tokens_per_step"].iloc[0])
    won = t[t["speed_ratio"] < 1]
    other = (
        "Pythia faster: "
        + ", ".join(f"{r['size']} T = {r['context']} ({r['speed_ratio']:.2f}×)" for _, r in won.iterrows())
        if len(won)
        else f"Pythia faster in none of the {len(t)} configurations"
    )
    return row(
        f"training step (forward + backward + AdamW, bf16 autocast, {tokens // 1024}k tokens per step): RWKV-4 (fused "
        f"blocks {saved_note(f)}, {mixes_note(f)}) vs Pythia (torch.compile), {graph_note(f)}, the cross-entropy "
        "compiled over masked padding, same run, one step timing per configuration (no spread measured)",
        f,
        versus_cells(t, memory_ratio=True) + f"; {other}",
    )


def default_model():
    """The shipped default's validation bits/byte, from the run that trained it (its card names the run), beside
    every other attempt at the same size where the transformer did better."""
    card = json.loads((ROOT / "rwkv_lab" / "loading" / "default_model" / "card.json").read_text())
    f = f"training/summary{card['training']['results_tag']}.csv"
    t = table(f)
    shipped = t[(t["arch"] == "rwkv") & (t["lr"] == card["training"]["lr"])].iloc[0]
    matched = t[(t["arch"] == "transformer") & (t["status"] == "ok")]
    best_tf = matched.loc[matched["val_bpb"].idxmin()]
    rows = [
        row(
            f"the shipped default (byte-6x256, {int(shipped['tokens']) / 1e6:.0f}M tokens, "
            f"{card['training']['tokens_seen'] / card['training']['corpus']['train_tokens']:.1f} epochs), validation "
            "bits/byte, beside the matched GPT-NeoX's best rate in the same run",
            f,
            f"{shipped['val_bpb']:.3f} at lr {shipped['lr']:g} vs {best_tf['val_bpb']:.3f} at lr {best_tf['lr']:g}",
        )
    ]
    for other in sorted((RESULTS / "training").glob("summary_default*.csv")):
        rel = f"training/{other.name}"
        if rel == f or "rwkv7" in other.name:  # RWKV-7's default run: rwkv7_rows
            continue
        o = table(rel)
        ok = o[o["status"] == "ok"]
        rwkv, tf = ok[ok["arch"] == "rwkv"], ok[ok["arch"] == "transformer"]
        if not len(rwkv) or not len(tf):
            continue
        best_r, best_t = rwkv.loc[rwkv["val_bpb"].idxmin()], tf.loc[tf["val_bpb"].idxmin()]
        winner = "the transformer lower" if best_t["val_bpb"] < best_r["val_bpb"] else "RWKV-4 lower"
        rows.append(
            row(
                f"another attempt at the default (byte-6x256, {int(best_r['tokens']) / 1e6:.0f}M tokens), best "
                f"validation bits/byte of each architecture in the same run ({winner})",
                rel,
                f"RWKV-4 {best_r['val_bpb']:.3f} at lr {best_r['lr']:g} vs the transformer {best_t['val_bpb']:.3f} "
                f"at lr {best_t['lr']:g}",
            )
        )
    return rows


def wkv_cpu():
    f = "wkv/wkv_cpu_speed.csv"
    t = table(f).set_index("backend")
    return row(
        "chunked vs recurrent WKV, (1, 4096, 768) fp32",
        f,
        f"{t.loc['chunked', 'fwd_ms']:.0f} ms vs {t.loc['recurrent', 'fwd_ms']:.0f} ms "
        f"({t.loc['recurrent', 'fwd_ms'] / t.loc['chunked', 'fwd_ms']:.1f}×)",
    )


def training_mfu():
    f = "training_speed/training_mfu.csv"
    t = fastest_paths(table(f))
    t = t[t["context"] == 1024]
    cells = []
    for arch in ("RWKV-4", "Pythia"):
        g = t[t["arch"] == arch].sort_values(["params", "tokens_per_step"], ascending=[True, False])
        cells.append(
            f"{arch} "
            + ", ".join(
                f"{m} {100 * v:.1f}% ({n // 1024}k)"
                for m, v, n in zip(g["model"], g["mfu_vs_measured_peak"], g["tokens_per_step"])
            )
        )
    return row("training-step MFU (of the measured bf16 matmul peak), T = 1024, (tokens per step)", f, "; ".join(cells))


def train_compare():
    f = "training/summary.csv"
    t = chosen_runs(table(f)).sort_values("params")
    rwkv, tf = t[t["arch"] == "rwkv"], t[t["arch"] == "transformer"]
    sizes = " / ".join(f"{p / 1e6:.1f}M" for p in rwkv["params"])
    tokens = int(rwkv["tokens"].iloc[0])
    corpus = provenance(f)["params"]["corpus"]["train_tokens"]
    runs = table(f)
    ok = runs[runs["status"] == "ok"]
    pairs = ok[ok["arch"] == "rwkv"].merge(ok[ok["arch"] == "transformer"], on=["model", "context", "lr"])
    won = pairs[pairs["val_bpb_y"] < pairs["val_bpb_x"]]
    other = (
        "; the transformer lower at the same rate: "
        + ", ".join(
            f"{r['model']} lr {r['lr']:g} ({r['val_bpb_y']:.3f} vs {r['val_bpb_x']:.3f})" for _, r in won.iterrows()
        )
        if len(won)
        else f"; the transformer lower in none of the {len(pairs)} same-rate pairs"
    )
    return row(
        f"RWKV-4 vs matched GPT-NeoX, validation bits/byte after {tokens / 1e6:.0f}M training tokens "
        f"({tokens / corpus:.1f} epochs of the {corpus / 1e6:.1f}M-token stdlib corpus) at T = 512 ({sizes} params)",
        f,
        " / ".join(f"{v:.3f}" for v in rwkv["val_bpb"])
        + " vs "
        + " / ".join(f"{v:.3f}" for v in tf["val_bpb"])
        + other,
    )


def spread(values) -> str:
    """The median of runs of one configuration with their range: `k(median) (min-max, n runs)`."""
    v = pd.Series(values)
    return f"{k(v.median())} ({k(v.min())}-{k(v.max())}, {len(v)} run{'s' if len(v) > 1 else ''})"


def train_speed():
    """Tokens/s at the largest size: the median over the learning-rate sweep's runs (the rate does not change
    the work of a step, so they are repeats of one configuration) with their range."""
    cells, peak = [], ""
    for f in ("training/summary.csv", "training/summary_T4096.csv"):
        t = table(f)
        t = t[t["status"] == "ok"]
        big = t[t["params"] == t[t["arch"] == "rwkv"]["params"].max()]
        big_tf = t[(t["arch"] == "transformer") & (t["model"] == big["model"].iloc[0])]
        ctx = int(big["context"].iloc[0])
        faster = int(big_tf["tokens_per_s"].min() > big["tokens_per_s"].max()) - int(
            big["tokens_per_s"].min() > big_tf["tokens_per_s"].max()
        )
        who = {1: "the transformer faster in every run", -1: "RWKV-4 faster in every run", 0: "the ranges overlap"}
        cells.append(
            f"T = {ctx}: {spread(big['tokens_per_s'])} vs {spread(big_tf['tokens_per_s'])} tokens/s ({who[faster]})"
        )
        if ctx == 512:
            chosen = chosen_runs(t)
            b = chosen[chosen["model"] == big["model"].iloc[0]].set_index("arch")["peak_memory_GiB"]
            peak = f"; peak memory {b['rwkv']:.1f} vs {b['transformer']:.1f} GiB"
    return row(
        f"the same, training speed at the largest size ({big['model'].iloc[0]}), the median of the learning-rate "
        "sweep's runs (min-max)",
        "training/summary.csv",
        "; ".join(cells) + peak,
        "training/summary*.csv",
    )


def train_speed_graphed():
    """RWKV-4 vs the transformer's tokens/s at T = 4096 at every width, the step replayed from a CUDA graph: each
    ratio within one run."""
    rows = []
    for f, blocks in (("training/summary_T4096_norm_mix.csv", ", the blocks' LayerNorms and mixes in Triton kernels"),):
        t = table(f).sort_values("params")
        rwkv, tf = t[t["arch"] == "rwkv"], t[t["arch"] == "transformer"].set_index("model")
        graphed = provenance(f)["params"].get("cuda_graph", True)  # before the option: the trainer's default, on
        cells = [
            f"{r['model']}: {k(r['tokens_per_s'])} vs {k(tf.loc[r['model'], 'tokens_per_s'])} tokens/s "
            f"({r['tokens_per_s'] / tf.loc[r['model'], 'tokens_per_s']:.2f}×)"
            for _, r in rwkv.iterrows()
        ]
        how = "each step replayed from a CUDA graph" if graphed else "launched kernel by kernel (`--cuda-graph off`)"
        slower = [r["model"] for _, r in rwkv.iterrows() if r["tokens_per_s"] < tf.loc[r["model"], "tokens_per_s"]]
        cells.append("the transformer faster at " + (", ".join(slower) if slower else "none of these widths"))
        rows.append(
            row(
                f"RWKV-4 vs matched GPT-NeoX, training speed at T = 4096, {how}{blocks}, same run, one run per "
                "width (no spread measured)",
                f,
                "; ".join(cells),
            )
        )
    return rows


def context_effect():
    f = "training/context_effect.csv"
    t = table(f)
    p = provenance(f)["params"]
    shares = context_gap_shares(t)
    cells = [
        f"{'RWKV-4' if r['arch'] == 'rwkv' else 'transformer'} {r['short']:.3f} / {r['long']:.3f} / {r['cut']:.3f} "
        f"({r['batch_share']:.0%} of the gap with the batch: {r['cause']})"
        for _, r in shares.iterrows()
    ]
    return row(
        f"why T = 4096 trains slower per token: bits/byte on the same 512-token validation windows after "
        f"{p['tokens'] / 1e6:.0f}M tokens ({p['size']}), trained at T = 512 / T = 4096 / T = 512 on the T = 4096 "
        "run's tokens",
        f,
        "; ".join(cells),
    )


def generation_gpu():
    """From each GPU generation table, through the same summary notebook 02 shows (measure.report)."""
    rows = []
    for f in rwkv4_gpu_generation_tables(RESULTS / "inference"):
        if f.name.endswith("_batched.csv"):  # without the peers: generation_batched's rows
            continue
        rel = f"inference/{f.name}"
        t = table(rel)
        summary = generation_summary(t)
        cells = [
            f"{r['size']}: {r['generate top-p tok/s']:,.0f} tok/s ("
            + (
                ""
                if pd.isna(r["generate / package"])
                else f"{r['generate / package']:.1f}× the `rwkv` package's greedy loop, "
            )
            + f"{r['% of roofline']:.0f}% of the weight-bandwidth roofline; first call's "
            f"warm-up {r['first-call warm-up s']:.0f} s, later {r['later-call warm-up s']:.0f})"
            for _, r in summary.iterrows()
        ]
        rows.append(
            row("generation through `rwkv_lab.generate`, batch 1, top-p, streamed text, fp16", rel, "; ".join(cells))
        )
        batched = t[(t["kind"] == "generation") & (t["batch"] > 1) & (t["path"] == "rwkv_lab.generate (top-p)")]
        if len(batched):
            # end to end: the call as a user makes it, its prompts prefilled one after another before decoding
            cells = [
                f"B = {r['batch']}: {r['end_to_end_tokens_per_s']:,.0f} end to end ({r['tokens_per_s']:,.0f} decoding "
                "alone)"
                for _, r in batched.iterrows()
            ]
            rows.append(
                row(
                    f"the same at {batched['size'].iloc[0]}, generated tokens/s in all, end to end (prompts prefilled "
                    "one after another, then decoded together) beside the decoding steps alone",
                    rel,
                    ", ".join(cells),
                )
            )
        same_t = summary.dropna(subset=["prefill ours / package"])  # a ratio only where both ran at one T
        cells = [
            f"{r['size']}: {k(r['prefill ours tok/s'])} vs {k(r['prefill package tok/s'])} tokens/s "
            f"({r['prefill ours / package']:.2f}×{', the package faster' if r['prefill ours / package'] < 1 else ''})"
            for _, r in same_t.iterrows()
        ]
        if cells:
            T = int(same_t["prefill T"].iloc[0])
            rows.append(row(f"prefill at T = {T}, `model.prefill` vs the `rwkv` package, fp16", rel, "; ".join(cells)))
    return rows


def generation_cpu():
    f = "inference/generation_cpu.csv"
    if not (RESULTS / f).exists():
        return []
    t = table(f)
    gen = t[(t["kind"] == "generation") & (t["prompt"] == 16)].set_index("path")["tokens_per_s"]
    pre = t[t["kind"] == "prefill"].set_index("path")
    cells = [
        f"generate top-p {gen['rwkv_lab.generate (top-p)']:.1f} vs package top-p loop "
        f"{gen['rwkv package forward([token]) loop (top-p)']:.1f} tok/s",
        f"greedy {gen['rwkv_lab.generate (greedy)']:.1f} vs {gen['rwkv package forward([token]) loop (greedy)']:.1f}",
        f"prefill T = {int(pre.loc['model.prefill', 'prompt'])}: {pre.loc['model.prefill', 'tokens_per_s']:.0f} vs "
        f"{pre.loc['rwkv package forward(prompt)', 'tokens_per_s']:.0f} tokens/s",
    ]
    return [
        row(
            "169M fp32 on the CPU through `generate` and `model.prefill`, the `rwkv` package in the same run",
            f,
            "; ".join(cells),
        )
    ]


def lm_eval():
    f = "lm_eval/throughput_cpu.csv"
    t = table(f).set_index("backend")
    g = "lm_eval/throughput_h100_1.5B.csv"
    h = table(g)
    ours = h[h["backend"] == "rwkv_lab"].set_index("task")["docs_per_s"]
    return [
        row(
            "lm-eval backend vs lm-eval's `hf` on the same weights, full PIQA",
            f,
            f"worst relative difference of any log-likelihood {t.loc['rwkv_lab', 'max_rel_diff_vs_hf']:.2e}; "
            f"{t.loc['rwkv_lab', 'docs_per_s']:.1f} vs {t.loc['hf', 'docs_per_s']:.1f} docs/s",
        ),
        row(
            "lm-eval at 1.5B fp16, full PIQA / LAMBADA", g, f"{ours['piqa']:.1f} / {ours['lambada_openai']:.1f} docs/s"
        ),
        data_parallel_eval(),
    ]


def data_parallel_eval():
    f = "lm_eval/data_parallel.csv"
    t = table(f).set_index("processes")
    p = provenance(f)["params"]
    n = p["nproc"]
    tasks = p["tasks"].replace(",", " + ")
    return row(
        f"data-parallel lm-eval (torchrun, {n} GPUs), {p['preset']} {p['dtype']}, full {tasks}: wall time of the "
        f"whole run, 1 vs {n} processes",
        f,
        f"{t.loc[1, 'seconds']:.1f} vs {t.loc[n, 'seconds']:.1f} s ({t.loc[n, 'speedup']:.2f}× speed-up)",
    )


def dynamics():
    f = "dynamics/05_channels.csv"
    t = table(f)
    best = t.assign(a=t["corr_heldout"].abs()).sort_values("a", ascending=False).drop_duplicates("feature")
    cells = ", ".join(f"{feat.replace('_', ' ')} {v:.2f}" for feat, v in zip(best["feature"], best["corr_heldout"]))
    s = "dynamics/speed_cpu.json"
    speed = json.loads(current(s).read_text())
    return [
        row("state channels of the default model tracking held-out code (correlation on the held-out half)", f, cells),
        row(
            f"state analysis of a {speed['provenance']['params']['tokens']}-token text, default model",
            s,
            f"{speed['results']['total_s']:.1f} s",
        ),
    ]


def trio_row(f: str):
    """A train_compare run of the three architectures: each one's chosen run (notebook 06 draws them), and which
    chosen rates lie at an end of their sweep (report.sweep_edges)."""
    from rwkv_lab.training.report import arch_label, chosen_runs, sweep_edges

    t = table(f)
    chosen = chosen_runs(t).set_index("arch")
    edges = sweep_edges(t)
    cells = [
        f"{arch_label(a)} {r['val_bpb']:.3f} (lr {r['lr']:g}, {k(r['tokens_per_s'])} tokens/s)"
        for a, r in ((a, chosen.loc[a]) for a in ("rwkv7", "rwkv", "transformer"))
    ]
    at_edge = ", ".join(f"{arch_label(e['arch'])}'s {e['edge']}" for _, e in edges.iterrows())
    model, tokens = t["model"].iloc[0], int(t["tokens"].iloc[0])
    return row(
        f"RWKV-7, RWKV-4 and the matched GPT-NeoX trained on the same {tokens / 1e6:.0f}M bytes at {model} (the 0.1B "
        "class), validation bits/byte of each one's best swept rate, and training tokens/s",
        f,
        "; ".join(cells) + (f"; chosen rate at the sweep's edge: {at_edge}" if at_edge else ""),
    )


def rwkv7_rows():
    """RWKV-7: the shipped default beside RWKV-4 and the transformer in its training run; the operator's GPU kernel
    (the default tiling and RWKV-LM x070's design in the same run), its float64 check, the CPU chunked form; the
    CPU decode and prefill against the `rwkv` package."""
    rows = []
    card = json.loads((ROOT / "rwkv_lab" / "loading" / "default_model_rwkv7" / "card.json").read_text())
    f = f"training/summary{card['training']['results_tag']}.csv"
    t = table(f)
    ok = t[t["status"] == "ok"]
    best = {arch: g.loc[g["val_bpb"].idxmin()] for arch, g in ok.groupby("arch")}
    seven, four, tf = best["rwkv7"], best["rwkv"], best["transformer"]
    rows.append(
        row(
            f"the shipped RWKV-7 default (byte-6x256, {int(seven['tokens']) / 1e6:.0f}M tokens), validation bits/byte "
            "beside RWKV-4 and the matched GPT-NeoX in the same run (each at the best of its swept rates), and "
            "training tokens/s",
            f,
            f"RWKV-7 {seven['val_bpb']:.3f} (lr {seven['lr']:g}), RWKV-4 {four['val_bpb']:.3f} (lr {four['lr']:g}), "
            f"transformer {tf['val_bpb']:.3f} (lr {tf['lr']:g}); {k(seven['tokens_per_s'])} vs "
            f"{k(four['tokens_per_s'])} vs {k(tf['tokens_per_s'])} tokens/s",
        )
    )
    rows.append(trio_row("training/summary_0.1B.csv"))
    c = pd.DataFrame(json.loads(current("wkv7/wkv7_kernel_check.json").read_text())["results"])
    grads = [col for col in c if col.startswith("rel_err_grad")]
    # a check from before the chunked kernels had a backward names no backend: the per-token kernel's
    for backend, checked in c.groupby(c["backend"] if "backend" in c else pd.Series("triton", c.index), sort=False):
        fp32 = checked[checked["dtype"] == "float32"]
        name = "Triton operator" if backend == "triton" else "chunked Triton kernels"
        rows.append(
            row(
                f"RWKV-7's {name} vs the fp64 recurrence, fp32, T up to {fp32['T'].max():,}",
                "wkv7/wkv7_kernel_check.json",
                f"y ≤ {fp32['rel_err_y'].max():.1e}, state ≤ {fp32['rel_err_state'].max():.1e}, every gradient ≤ "
                f"{fp32[grads].max().max():.1e}",
            )
        )
    f = "wkv7/wkv7_gpu_benchmark.csv"
    b = table(f)
    ours, x070 = b[b["candidate"] == "ours"], b[b["candidate"].str.startswith("x070")]
    cells = []
    for _, r in ours.iterrows():
        old = x070[(x070["B"] == r["B"]) & (x070["T"] == r["T"])]
        cells.append(
            f"({r['B']}, {r['T']}, {r['C']}): fwd {r['fwd_ms']:.2f} ms, fwd + bwd {r['fwd_bwd_ms']:.2f} ms"
            + (f" (the x070 design {old['fwd_bwd_ms'].iloc[0]:.1f} ms)" if len(old) else "")
        )
    chunked = b[b["candidate"].str.startswith("chunked kernels") & b["error"].isna()]
    for _, r in chunked.iterrows():
        cells.append(
            f"the chunked kernels at ({r['B']}, {r['T']}, {r['C']}): fwd {r['fwd_ms']:.2f} ms, fwd + bwd "
            f"{r['fwd_bwd_ms']:.2f} ms, peak {r['fwd_bwd_peak_MiB']:,.0f} MiB"
        )
    fla = b[b["candidate"] == "fla chunk_rwkv7 lower_bound"]
    for _, r in fla.iterrows():
        at = lambda t: t[(t["B"] == r["B"]) & (t["T"] == r["T"])]  # noqa: E731
        cells.append(
            f"fla's chunk_rwkv7 with lower_bound at ({r['B']}, {r['T']}, {r['C']}): fwd {r['fwd_ms']:.2f} ms, "
            f"fwd + bwd {r['fwd_bwd_ms']:.2f} ms, peak {r['fwd_bwd_peak_MiB']:,.0f} MiB"
            + " ("
            + "; ".join(
                f"{label} {r['fwd_bwd_ms'] / m['fwd_bwd_ms']:.2f}× its speed, peak {m['fwd_bwd_peak_MiB']:,.0f} MiB"
                for label, mine in (("ours", ours), ("the chunked kernels", chunked))
                for _, m in at(mine).iterrows()
            )
            + ")"
        )
    peers = [name for name, t in (("RWKV-LM x070's design", x070), ("fla's chunk_rwkv7", fla)) if len(t)]
    rows.append(
        row(
            "RWKV-7's operator on the GPU, bf16, head size 64: our Triton kernels (the per-token kernel at its "
            "default tiling, and the chunked kernels)"
            + (f" beside {' and '.join(peers)}" if peers else "")
            + ", in the same run"
            + ("" if len(fla) else " (fla's chunk_rwkv7 not timed in this run: its autotuning outlasted the call)"),
            f,
            "; ".join(cells),
        )
    )
    f = "wkv7/wkv7_cpu_speed.csv"
    cpu = table(f)
    cells = []
    for threads, s in cpu.groupby("threads", sort=False):
        s = s.set_index("form")
        best_form = s["speedup_vs_recurrent"].idxmax()
        r = s.loc[best_form]
        cells.append(
            f"{threads} thread{'s' if threads > 1 else ''}: {best_form} {1e3 * r['median_s']:.1f} ms vs "
            f"{1e3 * s.loc['recurrent', 'median_s']:.1f} ms ({r['speedup_vs_recurrent']:.2f}×)"
        )
    r = cpu.iloc[0]
    rows.append(
        row(f"RWKV-7's chunked operator vs its recurrence, ({r['B']}, {r['T']}, {r['C']}) fp32", f, "; ".join(cells))
    )
    f = "rwkv7/rwkv7_cpu_speed.csv"
    p = table(f)
    p = p[p["threads"] == p["threads"].max()].set_index("phase")
    rows.append(
        row(
            f"RWKV-7 0.1B shape (vocabulary 65,536) fp32, {p['threads'].iloc[0]} threads, beside the `rwkv` package's "
            "x070 on the same weights",
            f,
            "; ".join(
                f"{phase} {r['ours_tokens_per_s']:,.1f} vs {r['package_tokens_per_s']:,.1f} tokens/s "
                f"({r['speedup']:.2f}×)"
                for phase, r in p.iterrows()
            ),
        )
    )
    return rows


def rwkv7_gpu_rows():
    """RWKV-7 on the GPU: `generate` at batch 1 beside the `rwkv` package's x070 (its CUDA kernel) and the
    weight-bandwidth roofline; prefill beside the package; training beside the matched Pythia."""
    rows = []
    for path in sorted((RESULTS / "inference").glob("generation_rwkv7*.csv")):
        if path.name.endswith("_batched.csv"):  # without the peers: generation_batched's rows
            continue
        f = f"inference/{path.name}"
        t = table(f)
        if "rwkv package forward([token]) loop (top-p)" not in set(t["path"]):  # a run without the peers (--no-peers)
            continue
        cells = []
        for size, g in t.groupby("size", sort=False):
            speed = g[g["kind"] != "mixed"].set_index("path")["tokens_per_s"].astype(float)
            ours = g[g["path"] == "rwkv_lab.generate (top-p)"].iloc[0]
            tps, package = ours["tokens_per_s"], speed["rwkv package forward([token]) loop (top-p)"]
            prefill, package_prefill = speed["model.prefill"], speed["rwkv package forward(prompt)"]
            prefill_T = int(g.loc[g["path"] == "model.prefill", "prompt"].iloc[0])
            cell = (
                f"{size}: generate {tps:,.0f} tokens/s vs the package {package:,.0f} ({tps / package:.1f}×), "
                f"{100 * tps / ours['roofline_tokens_per_s']:.0f}% of the roofline, first call "
                f"{ours['first_call_s']:.1f} s; prefill T = {prefill_T:,} {k(prefill)} vs {k(package_prefill)} "
                f"tokens/s ({prefill / package_prefill:.2f}×)"
            )
            kernels_off = "decoder.step (top-p), step kernels off"
            if kernels_off in speed:  # bench_generation --reference-step: the same decoder around the PyTorch step
                on, off = speed["decoder.step (top-p)"], speed[kernels_off]
                cell += f"; decode with the step kernels {on:,.0f} vs {off:,.0f} tokens/s without ({on / off:.2f}×)"
            cells.append(cell)
        rows.append(
            row(
                "RWKV-7 fp16, `generate` at batch 1 (top-p, 128 new tokens) beside the `rwkv` package's x070 loop with "
                "its CUDA kernel on the same weights, in the same run",
                f,
                "; ".join(cells),
            )
        )
    f = "training_speed/rwkv7_421M/training_vs_pythia.csv"
    t = table(f)
    cells = [
        f"{r['size']} ({r['generation']} {r['rwkv_model']} vs {r['pythia_model']}) at T = {r['context']:,}: "
        f"{k(r['rwkv_tokens_per_s'])} vs {k(r['pythia_tokens_per_s'])} tokens/s "
        f"({r['rwkv_tokens_per_s'] / r['pythia_tokens_per_s']:.2f}×), peak {r['rwkv_peak_mem_GiB']:.1f} vs "
        f"{r['pythia_peak_mem_GiB']:.1f} GiB"
        for _, r in t.iterrows()
    ]
    rows.append(row("RWKV-7 training step (bf16) beside the compiled Pythia, same run", f, "; ".join(cells)))
    return rows


def generation_batched():
    """Batched generation end to end for each run with mixed-prompt rows (bench_generation.py), through the same
    summary notebook 02 shows, with which decode step ran (its decoder check)."""
    rows = []
    runs = batched_runs(RESULTS / "inference")
    for name, s in runs.groupby("file", sort=False):
        rel = f"inference/{name}"
        label = "RWKV-7" if s["arch"].iloc[0] == "rwkv7" else "RWKV-4"
        cells = [
            f"B = {r['batch']}: {r['end-to-end tok/s']:,.0f} end to end vs {r['decoder alone tok/s']:,.0f} decoder "
            f"alone ({100 * r['end to end / decoder']:.0f}%"
            + (
                f"; at most {100 * r['end to end / decoder, ceiling']:.0f}% with the prefill at the card's matmul peak"
                if r["end to end / decoder, ceiling"] == r["end to end / decoder, ceiling"]  # not NaN: measured
                else ""
            )
            + f"), prefill {k(r['prefill one pass tok/s'])} tokens/s in "
            f"one pass vs {k(r['prefill one at a time tok/s'])} one at a time; a new batch size "
            f"≤ {r['new batch size, first call s (max)']:.1f} s"
            for _, r in s.iterrows()
        ]
        rows.append(
            row(
                f"{label} {s['size'].iloc[0]} fp16, `generate` of prompts of {s['prompts'].iloc[0]} tokens, 128 new "
                f"tokens each, generated tokens/s; decode step {s['step'].iloc[0]}",
                rel,
                "; ".join(cells),
            )
        )
    return rows


def launch_overlap():
    """The decoder at batch 1 with its step kernels' launches overlapped and not (bench_generation.py
    --compare-overlap), both generations, one run each: what RunConfig.overlapped_launches' "auto" rests on."""
    rows = []
    for label, f in (
        ("RWKV-4", "inference/generation_overlap.csv"),
        ("RWKV-7", "inference/generation_rwkv7_overlap.csv"),
    ):
        t = table(f)
        cells = []
        for size, g in t.groupby("size", sort=False):
            speed = g.set_index("path")["tokens_per_s"].astype(float)
            off = speed["decoder.step (top-p), launches overlapped off"]
            on = speed["decoder.step (top-p), launches overlapped on"]
            cells.append(f"{size}: {off:,.0f} → {on:,.0f} tokens/s ({on / off:.2f}×)")
        what = f"{label} fp16 decoder at batch 1 (top-p), its step kernels' launches plain → overlapped"
        what += " (programmatic dependent launch)"
        rows.append(row(what, f, "; ".join(cells)))
    return rows


def build() -> str:
    rows = [
        equivalence(),
        kernel_check(),
        kernel_check("wkv/wkv_kernel_check_quick.json", "the same check's short cases on the current WKV code: "),
        wkv_forward(),
        wkv_fwd_bwd(),
        wkv_cpu(),
        training_vs_pythia(),
        training_mfu(),
    ]
    rows += [train_compare(), train_speed(), *train_speed_graphed(), *default_model()]
    rows.append(context_effect())
    rows += (
        generation_gpu()
        + launch_overlap()
        + generation_batched()
        + generation_cpu()
        + rwkv7_rows()
        + rwkv7_gpu_rows()
        + lm_eval()
        + dynamics()
    )
    lines = ["| what | where measured | number | file |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md lacks the markers {BEGIN!r} ... {END!r}", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{build()}\n{END}{tail}"
    if args.check:
        if new != readme:
            print(
                "README.md's measured table differs from results/: run python scripts/readme_table.py", file=sys.stderr
            )
            return 1
        return 0
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
