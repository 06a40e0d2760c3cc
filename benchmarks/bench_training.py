"""Measured training cost: one optimizer step (forward + backward + AdamW, bf16 autocast) of RWKV-4, of RWKV-7 at
the matching Pile shape (169M: pile-168M, 430M: pile-421M, 1.5B: pile-1.47B) and of the size-matched Pythia
transformer (transformers GPTNeoXForCausalLM, SDPA), on one GPU, the same tokens per step.

    python benchmarks/bench_training.py [--sizes 169M,430M,1.5B] [--contexts 1024,8192] [--tokens-per-step 16384]
    python benchmarks/bench_training.py --configs 169M:1024,430M:1024,1.5B:1024,1.5B:8192   # chosen pairs only

Each model runs on the path a training run takes (rwkv_lab.training.trainer.fast_path): RWKV-4 and RWKV-7 with their
fused blocks (torch.compile around the Triton operator), Pythia through torch.compile; RWKV-7 also with its fused blocks
around the chunked kernels (backend "triton_chunked", "RWKV-7 chunked kernels"); and, for the record, RWKV-4, RWKV-7 and
Pythia eager (`--variants`). Every configuration is measured `--repeats` times (default 3), in rounds: each round
builds, compiles and times every configuration once, so a drift of the machine reaches all of them alike. Writes, after
every measurement (an interrupted run keeps what it measured), results/training_speed/training_mfu_runs.csv (+
.meta.json): every run; training_mfu.csv: per configuration the median run's tokens/s with the min and max over the
runs; training_vs_pythia.csv: per size and context and generation (RWKV-4, RWKV-7), the RWKV on its fast path against
the faster of Pythia's two paths (medians), with the rounds each side won. MFU = model FLOPs per second (rwkv_lab.cost:
3 x each model's forward FLOPs per token, RWKV-4's 2 (V D + 13 D^2 L), RWKV-7's RWKV7Config.forward_flops_per_token, the
transformer's 2 (V D + 12 D^2 L) + 4 L D T) over (a) the measured bf16 matmul peak and (b) the datasheet peak. The first
steps (compilation) are warm-up, not timed. `--profile` adds results/training_speed/training_kernels.csv (first round):
each step's CUDA kernels by device time, grouped by kind (matmul, WKV, LayerNorm + mixes, attention, fused elementwise,
...). `--norm-mix-kernels off` leaves RWKV's LayerNorms and mixes to inductor instead of rwkv_lab.ops.norm_mix's
kernels. `--saved-activations` sets what RWKV-4's and RWKV-7's fused blocks keep for the backward
(RunConfig.saved_activations: 'matmuls', the default, or 'partitioner', the compiler's choice) and `--memory-budget` the
share of it the partitioner may keep (RunConfig.activation_memory_budget), e.g. `--saved-activations partitioner
--memory-budget 0.5 --tag _budget0.5` beside a default run. Each step replays a CUDA graph of the whole step, as the
trainer's does (rwkv_lab.training.cuda_graph; the `cuda_graph` column says whether the capture held); `--cuda-graph off
--tag _ungraphed` launches it kernel by kernel instead."""

from __future__ import annotations

import argparse
import traceback

import pandas as pd
import torch
from tqdm import tqdm

from rwkv_lab import cost
from rwkv_lab.measure.profiler import PILE_SIZES, model_at
from rwkv_lab.measure.timing import OOM, kernel_shares, matmul_throughput, or_oom, time_fn
from rwkv_lab.models.run_config import SAVED_ACTIVATIONS
from rwkv_lab.models.rwkv4 import fast_path as rwkv4_fast_path
from rwkv_lab.models.rwkv4.model import build_at_size
from rwkv_lab.models.rwkv7 import fast_path as rwkv7_fast_path
from rwkv_lab.models.transformer.model import PYTHIA_FOR, pythia_model
from rwkv_lab.models.transformer.model import forward_flops_per_token as transformer_flops
from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.cuda_graph import WARMUP as GRAPH_WARMUP
from rwkv_lab.training.cuda_graph import GraphedStep, device_lrs
from rwkv_lab.training.loss import lm_loss
from rwkv_lab.training.trainer import TrainConfig, fast_path, parse_switch

VARIANTS = ("RWKV-4", "RWKV-4 eager", "RWKV-7", "RWKV-7 chunked kernels", "RWKV-7 eager", "Pythia", "Pythia compiled")
# the fast-path variants set beside Pythia in training_vs_pythia.csv
GENERATIONS = ("RWKV-4", "RWKV-7", "RWKV-7 chunked kernels")


def model_name(variant: str, size: str) -> str:
    """The model a variant runs at an RWKV-4 size name: RWKV-7's Pile shape of that size, Pythia's match."""
    if variant.startswith("RWKV-4"):
        return size
    if variant.startswith("RWKV-7"):
        return PILE_SIZES[size][1].partition(":")[2]
    return PYTHIA_FOR[size]


def build(
    variant: str,
    name: str,
    device,
    context: int,
    saved: str = "matmuls",
    memory_budget: float = 1.0,
    norm_mix_kernels: bool = True,
):
    """(model, what the loss calls, vocabulary, training FLOPs per token) of a variant at size `name`, fp32
    weights on the device."""
    fast = not variant.endswith("eager") and variant != "Pythia"
    if variant.startswith("RWKV-4"):
        model = build_at_size(name, torch.float32, device).train()
        model.configure(saved_activations=saved, activation_memory_budget=memory_budget)
        model.configure(norm_mix_kernels=norm_mix_kernels)
        flops = cost.training_flops_per_token(model.config.forward_flops_per_token)
        return model, fast_path(model, fast), model.config.vocab_size, flops
    if variant.startswith("RWKV-7"):
        model = model_at(f"rwkv7:{name}", torch.float32, device).train()
        model.configure(saved_activations=saved, activation_memory_budget=memory_budget)
        if variant == "RWKV-7 chunked kernels":  # its fused blocks around the chunked operator, forward and backward
            model.configure(backend="triton_chunked")
        flops = cost.training_flops_per_token(model.config.forward_flops_per_token)
        return model, fast_path(model, fast), model.config.vocab_size, flops
    model = pythia_model(name, torch.float32, device, max_positions=max(2048, context)).train()
    L, D, V = model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size
    flops = cost.training_flops_per_token(transformer_flops(L, D, V, context))
    return model, fast_path(model, fast), V, flops


def step_time(model, forward, vocab, batch, context, device, graph: bool, profile: list | None = None):
    """(median seconds of one optimizer step, whether it replayed a CUDA graph): the library's training loss (bf16
    autocast), backward, clipping and fused AdamW, as the trainer's step (rwkv_lab.training: one process, one
    micro-batch, `cuda_graph` on or off). `profile`, a list, receives the step's kernels (step_profile)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=graph)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, context + 1), generator=gen).to(device)

    def update(x, y):
        loss = lm_loss(forward, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainConfig.grad_clip)
        opt.step()
        return loss.detach()

    if graph:
        device_lrs(opt, device)
        graphed = GraphedStep(update, opt)
        step = lambda: graphed(tokens[:, :-1], tokens[:, 1:])  # noqa: E731
    else:
        graphed = None

        def step():
            update(tokens[:, :-1], tokens[:, 1:])
            opt.zero_grad(set_to_none=True)

    for _ in range(GRAPH_WARMUP + 1):  # compile, warm up and (graph) capture before the timed steps
        step()
    seconds = time_fn(step, device, warmup=1, repeat=5)
    if profile is not None:
        profile.extend(step_profile(step, device))
    return seconds, graphed is not None and graphed.captured


# kernel name -> what it does, for the breakdown of a training step (first match wins)
KERNEL_KINDS = (
    ("WKV (Triton)", ("_fwd_chunk_summary", "_scan_chunks", "_fwd_output", "_bwd_chunk", "_bwd_finish", "_wkv7_")),
    ("LayerNorm + mixes (Triton)", ("_norm_mix_",)),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")),
    ("optimizer", ("adam", "multi_tensor")),
    ("fused elementwise (inductor)", ("triton_",)),
)


def kernel_kind(name: str) -> str:
    lower = name.lower()
    for kind, keys in KERNEL_KINDS:
        if any(key in lower for key in keys):
            return kind
    return "other (eager elementwise, loss, copies)"


def step_profile(step, device) -> list[dict]:
    """Where one optimizer step's GPU time goes: its CUDA kernels by total device time (torch.profiler)."""
    return [{"kernel": r["kernel"], "kind": kernel_kind(r["kernel"])} | r for r in kernel_shares(step, device)]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (variant, size, context) from its runs: the median run's tokens/s, step time and
    MFU, the min and max tokens/s over the runs that ran (`runs_ok` of `runs`), the largest peak memory; a
    configuration none of whose runs ran keeps its first run's status."""
    rows = []
    for _, group in runs.groupby(["variant", "size", "context"], sort=False):
        ok = group[group["status"] == "ok"]
        if not len(ok):
            rows.append(group.iloc[0].drop("run").to_dict() | {"runs": len(group), "runs_ok": 0})
            continue
        # the median run: for an even count, the slower of the two middle ones
        median = ok.sort_values("tokens_per_s").iloc[(len(ok) - 1) // 2]
        row = median.drop("run").to_dict() | {"runs": len(group), "runs_ok": len(ok)}
        row |= {"tokens_per_s_min": ok["tokens_per_s"].min(), "tokens_per_s_max": ok["tokens_per_s"].max()}
        row["tokens_per_s_spread"] = (row["tokens_per_s_max"] - row["tokens_per_s_min"]) / row["tokens_per_s"]
        row["peak_mem_GiB"] = ok["peak_mem_GiB"].max()
        rows.append(row)
    return pd.DataFrame(rows)


def versus(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (size, context) and generation measured (GENERATIONS): the RWKV on its fast path against the faster of
    Pythia's paths (by median), same tokens per step, from `summarize`'s medians; `rwkv_won_rounds` /
    `rounds_compared`: the rounds (one run of each side, measured one after the other) in which the RWKV was the
    faster, so a ratio near 1 shows how often each side won."""
    ok = summary[summary["status"] == "ok"]
    rows = []
    for (size, T), group in summary.groupby(["size", "context"], sort=False):
        pythia = ok[(ok["size"] == size) & (ok["context"] == T) & ok["variant"].str.startswith("Pythia")]
        best = pythia.sort_values("tokens_per_s").iloc[-1] if len(pythia) else None
        for generation in [g for g in GENERATIONS if (group["variant"] == g).any()]:
            rwkv = ok[(ok["size"] == size) & (ok["context"] == T) & (ok["variant"] == generation)]
            row = {"generation": generation, "size": size, "context": T}
            row |= {"rwkv_model": group[group["variant"] == generation]["model"].iloc[0]}
            row |= {"tokens_per_step": int(group["tokens_per_step"].iloc[0])}
            row["rwkv_status"] = "ok" if len(rwkv) else group[group["variant"] == generation]["status"].iloc[0]
            if best is not None:
                row |= {"pythia_model": best["model"], "pythia_variant": best["variant"]}
                row |= {"pythia_tokens_per_s": best["tokens_per_s"], "pythia_peak_mem_GiB": best["peak_mem_GiB"]}
                row |= {"pythia_tokens_per_s_min": best["tokens_per_s_min"]}
                row |= {"pythia_tokens_per_s_max": best["tokens_per_s_max"]}
                row["pythia_mfu_vs_measured_peak"] = best["mfu_vs_measured_peak"]
            if len(rwkv):
                r = rwkv.iloc[0]
                row |= {"rwkv_tokens_per_s": r["tokens_per_s"], "rwkv_peak_mem_GiB": r["peak_mem_GiB"]}
                row |= {"rwkv_tokens_per_s_min": r["tokens_per_s_min"]}
                row |= {"rwkv_tokens_per_s_max": r["tokens_per_s_max"]}
                row["rwkv_mfu_vs_measured_peak"] = r["mfu_vs_measured_peak"]
                if best is not None:
                    row["speed_ratio"] = r["tokens_per_s"] / row["pythia_tokens_per_s"]
                    row["memory_ratio"] = r["peak_mem_GiB"] / row["pythia_peak_mem_GiB"]
                    mine = runs[(runs["size"] == size) & (runs["context"] == T) & (runs["status"] == "ok")]
                    a = mine[mine["variant"] == generation].set_index("run")["tokens_per_s"]
                    b = mine[mine["variant"] == best["variant"]].set_index("run")["tokens_per_s"]
                    both = pd.DataFrame({"rwkv": a, "pythia": b}).dropna()
                    row |= {"rounds_compared": len(both)}
                    row |= {"rwkv_won_rounds": int((both["rwkv"] > both["pythia"]).sum())}
            rows.append(row)
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="169M,430M,1.5B")
    parser.add_argument("--contexts", default="1024,8192")
    parser.add_argument("--configs", default="", help="size:context pairs, instead of every size x context")
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration (rounds), at least 1")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--tag", default="", help="suffix of the output files (a run split over several devices)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", action="store_true", help="also break each step down by kernel")
    parser.add_argument("--saved-activations", default="matmuls", choices=SAVED_ACTIVATIONS)
    parser.add_argument("--memory-budget", type=float, default=1.0, help="RunConfig.activation_memory_budget, 0 to 1")
    parser.add_argument(
        "--norm-mix-kernels",
        type=parse_switch,
        default=True,
        help="on (the default): RWKV's fused blocks run the LayerNorms and mixes in rwkv_lab.ops.norm_mix's kernels; "
        "off: inductor fuses them (RWKV.norm_mix_kernels)",
    )
    parser.add_argument(
        "--cuda-graph",
        type=parse_switch,
        default=True,
        help="on (the trainer's default): every variant's step replays a CUDA graph; off: launched kernel by kernel",
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    if not 0.0 <= args.memory_budget <= 1.0:
        parser.error(f"--memory-budget must be in [0, 1]; got {args.memory_budget}")
    if args.memory_budget != 1.0 and args.saved_activations != "partitioner":
        parser.error("--memory-budget below 1 needs --saved-activations partitioner")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {VARIANTS}")
    device = torch.device(args.device)
    peak = matmul_throughput(device, torch.bfloat16)
    datasheet = cost.H200 if "H200" in torch.cuda.get_device_name(device) else cost.H100
    print(f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; datasheet {datasheet.peak_flops / 1e12:.0f}")
    params = vars(args) | {
        "measured_peak_flops": peak,
        "datasheet": datasheet.name,
        "datasheet_peak_flops": datasheet.peak_flops,
    }
    rows, kernels = [], []
    pairs = [pair.split(":") for pair in args.configs.split(",")] if args.configs else None
    if pairs is None:
        pairs = [(size, T) for size in args.sizes.split(",") for T in args.contexts.split(",")]
    jobs = [(v, size, int(T)) for size, T in pairs for v in variants]
    out = results_dir() / "training_speed"
    failed = set()  # configurations that did not run (out of memory, an error): not tried again in later rounds
    rounds = [(r, job) for r in range(1, args.repeats + 1) for job in jobs]
    for run, (variant, size, T) in tqdm(rounds, desc="training step"):
        batch = max(1, args.tokens_per_step // T)
        name = model_name(variant, size)
        row = {"run": run, "variant": variant, "arch": variant.split()[0], "size": size, "model": name, "context": T}
        row |= {"batch": batch, "tokens_per_step": batch * T}
        if (variant, size, T) in failed:
            continue

        def measure():
            model, forward, vocab, flops_per_token = build(
                variant, name, device, T, args.saved_activations, args.memory_budget, args.norm_mix_kernels
            )
            torch.cuda.reset_peak_memory_stats(device)
            profile = [] if args.profile and run == 1 else None
            seconds, captured = step_time(model, forward, vocab, batch, T, device, args.cuda_graph, profile)
            for k in profile or []:
                kernels.append({"variant": variant, "size": size, "context": T} | k)
            tps = batch * T / seconds
            # the fused blocks fall back to the eager ones (with a warning) if the compiler fails: say which ran
            run_config = getattr(model, "run", None)  # a recurrent model's RunConfig; Pythia has none
            blocks = None if run_config is None else run_config.fused_blocks
            # what the fused blocks keep is either generation's setting, their LayerNorm + mix kernels RWKV-4's
            rwkv4 = run_config if variant.startswith("RWKV-4") else None
            policy = run_config and run_config.saved_activations
            kept_ops = (rwkv4_fast_path if rwkv4 else rwkv7_fast_path).KEPT_OPS
            return {
                "status": "ok",
                "rwkv_blocks": None if blocks is None else ("eager" if blocks is False else "fused"),
                "saved_activations": policy,
                "activation_memory_budget": run_config and run_config.activation_memory_budget,
                "norm_mix_kernels": rwkv4 and rwkv4.norm_mix_kernels,
                # the ops whose outputs the "matmuls" policy keeps (the generation's fast_path.KEPT_OPS)
                "kept_ops": " ".join(sorted(kept_ops)) if policy == "matmuls" else None,
                "cuda_graph": captured,  # False also where a capture failed (warned): the step ran eagerly
                "params": sum(p.numel() for p in model.parameters()),
                "step_ms": seconds * 1e3,
                "tokens_per_s": tps,
                "train_flops_per_token": flops_per_token,
                "mfu_vs_measured_peak": cost.mfu(tps, flops_per_token, peak),
                "mfu_vs_datasheet": cost.mfu(tps, flops_per_token, datasheet.peak_flops),
                "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30,
            }

        try:
            result = or_oom(measure, device)
            row |= {"status": "oom"} if result is OOM else result
        except Exception as err:  # noqa: BLE001 - a failed configuration is a recorded outcome, the sweep goes on
            traceback.print_exc()
            row |= {"status": f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
        if row["status"] != "ok":
            failed.add((variant, size, T))
        torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
        runs = pd.DataFrame(rows)
        summary = summarize(runs)
        write_table(out / f"training_mfu_runs{args.tag}.csv", runs, params, device=device)
        write_table(out / f"training_mfu{args.tag}.csv", summary, params, device=device)
        write_table(out / f"training_vs_pythia{args.tag}.csv", versus(summary, runs), params, device=device)
        if kernels:
            write_table(out / f"training_kernels{args.tag}.csv", pd.DataFrame(kernels), params, device=device)
    runs = pd.DataFrame(rows)
    print(versus(summarize(runs), runs).to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
