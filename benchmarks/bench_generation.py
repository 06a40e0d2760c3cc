"""Generation and prefill through the public API (`rwkv_lab.generate`, the decoder it uses, `model.prefill`) beside
the `rwkv` package and transformers' `RwkvForCausalLM` on the same weights, in one run.

    python benchmarks/bench_generation.py --device cuda --tokenizer 20B_tokenizer.json     # H100 / H200
    python benchmarks/bench_generation.py --device cuda --arch rwkv7 --tokenizer 20B_tokenizer.json
    python benchmarks/bench_generation.py --device cpu --sizes 169M --batches 1 --prompts 16 --new-tokens 32

Writes results/inference/generation<arch><tag>.csv (<arch>: '' for rwkv4, _rwkv7) (one row per path, size,
batch and prompt length: tokens/s, first-token latency, warm-up, peak memory, the weight-bandwidth roofline on a
GPU) and, on a GPU, results/inference/decoder_check<arch><tag>.json: the captured (compiled) step against the
eager `model.step` in fp32. The decoder runs each generation's step kernels on a GPU (RunConfig.step_kernels);
`--reference-step` measures it at every batch around the PyTorch step too, in the same run; `--compare-overlap`
with its kernels' launches overlapped and not (RunConfig.overlapped_launches).
The `mixed` rows are the batched end to end case: `--mixed-batches` prompts (32 and 128) of lengths drawn from
`--mixed-lengths` (16 to 1,024 tokens), `--new-tokens` each, one generate call (one prefill pass for the batch,
then the decoder), beside the decoder alone at that batch, and the warm-up a new batch size then costs; on a GPU
with the prefill's floor, its matrix FLOPs at the card's measured matrix throughput (an 8192^3 product, recorded
as the run's `matmul_flops_per_s`): the bound on how close end to end can come to the decoder alone.
`--arch` picks the generation (rwkv4: sizes 169M ... 14B; rwkv7: its presets, pile-168M ...). The peers: the
`rwkv` package for both (RWKV-4's `RWKV`, RWKV-7's `RWKV_x070`), transformers' RwkvForCausalLM for RWKV-4, fla's
RWKV7ForCausalLM for RWKV-7 (`--fla-sizes`; its kernels autotune on their first call, in the warm-up).
Weights are random at the released shapes (sampling speed does not depend on them); fp16 on a GPU, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.cost import prefill_flops
from rwkv_lab.inference.decoder import decoder_for, release_decoders, runs_step_kernels
from rwkv_lab.inference.generation import generate, prefill_prompts
from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.loading.tokenizer import encode_batch, load_tokenizer
from rwkv_lab.measure.memory import free_memory
from rwkv_lab.measure.timing import (
    copy_bandwidth,
    cuda_kernels,
    host_seconds,
    matmul_throughput,
    synchronize,
    time_fn,
)
from rwkv_lab.models.rwkv4.model import build_at_size as build_rwkv4_at_size
from rwkv_lab.models.rwkv7.peer import rwkv_package_x070
from rwkv_lab.results import results_dir, write_json, write_table

SAMPLING = {"temperature": 0.8, "top_p": 0.9}
DEFAULT_SIZES = {"rwkv4": "169M,1.5B,7B", "rwkv7": "pile-168M,pile-1.47B"}


def build_at_size(arch: str, size: str, dtype, device):
    """A released shape of either generation with random weights of the official scale, built on the device
    (no orthogonal draws: seconds at billions of parameters)."""
    if arch == "rwkv4":
        return build_rwkv4_at_size(size, dtype, device)
    from rwkv_lab.models.rwkv7 import RWKV7, get_config, init_weights

    with torch.device(device):
        model = RWKV7(get_config(size))
    init_weights(model, zero_projections=False, orthogonal_matrices=False)
    return model.to(dtype).eval()


def prompts_of(tokenizer, batch: int, length: int, seed: int) -> list[str]:
    """`batch` prompts of about `length` tokens (decoded random ids: what matters is the token count)."""
    gen = torch.Generator().manual_seed(seed)
    return [tokenizer.decode(torch.randint(100, 20000, (length,), generator=gen).tolist()) for _ in range(batch)]


def first_then_timed(model, tokenizer, prompts, new_tokens: int, device, sampling) -> tuple:
    """Two `rwkv_lab.generate` calls on `prompts`: the first (4 tokens: capture, compilation) and a second of
    `new_tokens`, timed with the peak memory from a reset. Returns (the first's stats, its seconds, the second's
    stats, its seconds, its texts, its peak GiB on CUDA or None)."""
    first = {}
    t0 = time.perf_counter()
    generate(model, tokenizer, prompts, max_new_tokens=4, seed=0, stats=first, **sampling)
    first_call_s = time.perf_counter() - t0
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = {}
    t0 = time.perf_counter()
    texts = generate(model, tokenizer, prompts, max_new_tokens=new_tokens, seed=1, stats=stats, **sampling)
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return first, first_call_s, stats, total, texts, peak


def ours_generate(model, tokenizer, batch: int, prompt_len: int, new_tokens: int, device, sampling=SAMPLING) -> dict:
    """rwkv_lab.generate: the first call (capture, compilation) and a second, timed one."""
    prompts = prompts_of(tokenizer, batch, prompt_len, seed=prompt_len)
    first, first_call_s, stats, total, texts, peak = first_then_timed(
        model, tokenizer, prompts, new_tokens, device, sampling
    )
    decoded = stats["tokens"] - batch  # the first token of each sequence comes from the prefill's logits
    return {
        "path": f"rwkv_lab.generate ({'greedy' if sampling['temperature'] == 0 else 'top-p'})",
        "tokens_per_s": decoded / stats["decode_s"],
        "end_to_end_tokens_per_s": stats["tokens"] / total,
        "generated_tokens": stats["tokens"],
        "first_token_s": stats["first_token_s"],
        "prefill_s": stats["prefill_s"],
        "warmup_s": first["warmup_s"],
        "first_call_s": first_call_s,
        "warmup_s_second_call": stats["warmup_s"],
        "peak_GiB": peak,
        "chars": sum(len(t) for t in texts),
    }


def mixed_prompts(tokenizer, batch: int, shortest: int, longest: int, seed: int) -> list[str]:
    """`batch` prompts of lengths drawn uniformly from [shortest, longest] tokens (about: decoded random ids)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, longest + 1, (batch,), generator=gen).tolist()
    return [tokenizer.decode(torch.randint(100, 20000, (n,), generator=gen).tolist()) for n in lengths]


def ours_mixed(
    model, tokenizer, batch: int, shortest: int, longest: int, new_tokens: int, device, flops_per_s=None
) -> list[dict]:
    """The batched end to end case: prompts of different lengths, one generate call (one prefill pass, then the
    decoder), beside its prefill alone, the prompts prefilled one after another (the path before the batched
    prefill), the decoder alone at this batch, and what a new batch size costs after it (one in the same bucket,
    one in the next). With `flops_per_s` (the card's measured matrix throughput), the one-pass row's
    `prefill_floor_s`: the prefill's matrix FLOPs at that rate, the least time any prefill of these prompts takes
    here."""
    prompts = mixed_prompts(tokenizer, batch, shortest, longest, seed=batch)
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in prompts)
    base = {"kind": "mixed", "batch": batch, "prompt": f"{shortest}-{longest}", "prompt_tokens": prompt_tokens}
    first, first_call_s, stats, total, _, peak = first_then_timed(
        model, tokenizer, prompts, new_tokens, device, SAMPLING
    )
    rows = [
        base
        | {
            "path": "rwkv_lab.generate, mixed prompts (top-p)",
            "end_to_end_tokens_per_s": stats["tokens"] / total,
            "tokens_per_s": (stats["tokens"] - batch) / stats["decode_s"],
            "generated_tokens": stats["tokens"],
            "total_s": total,
            "prefill_s": stats["prefill_s"],
            "first_token_s": stats["first_token_s"],
            "warmup_s": first["warmup_s"],
            "first_call_s": first_call_s,
            "warmup_s_second_call": stats["warmup_s"],
            "peak_GiB": peak,
        }
    ]
    prefill = lambda: prefill_prompts(model, tokenizer, prompts)  # noqa: E731
    one_pass = time_fn(prefill, device, warmup=1, repeat=3)
    # where the pass's time goes: the host's part (tokenizing, then issuing the launches; a pass whose host part
    # nears its whole time is host-bound) and the tokenizing alone
    host = host_seconds(prefill, device, warmup=1, repeat=3)
    tokenize = time_fn(lambda: encode_batch(tokenizer, prompts), "cpu", warmup=1, repeat=3)
    rows.append(
        base
        | {"path": "prefill_prompts, one pass", "tokens_per_s": prompt_tokens / one_pass, "prefill_s": one_pass}
        | {"prefill_host_s": host, "tokenize_s": tokenize}
        | ({"prefill_floor_s": prefill_flops(model.config, prompt_tokens, batch) / flops_per_s} if flops_per_s else {})
    )
    one_by_one = time_fn(lambda: [prefill_prompts(model, tokenizer, [p]) for p in prompts], device, warmup=1, repeat=1)
    rows.append(base | {"path": "prefill_prompts, one prompt at a time", "tokens_per_s": prompt_tokens / one_by_one})
    rows.append(base | ours_step(model, batch, new_tokens, device))
    for other in (batch - 1, batch + 1):  # the same bucket (a power of two or below), then the next one
        stats = {}
        t0 = time.perf_counter()
        generate(model, tokenizer, prompts[:1] * other, max_new_tokens=4, seed=0, stats=stats, **SAMPLING)
        rows.append(
            base
            | {
                "batch": other,
                "path": "rwkv_lab.generate, first call at a new batch size",
                "first_call_s": time.perf_counter() - t0,
                "warmup_s": stats["warmup_s"],
            }
        )
    return rows


@contextlib.contextmanager
def run_set(model, **changes):
    """Within: the model's RunConfig with `changes` (those None: left as they are), restored after."""
    run_config = model.run
    model.configure(**{name: value for name, value in changes.items() if value is not None})
    try:
        yield
    finally:
        model.run = run_config


def ours_step(
    model, batch: int, steps: int, device, step_kernels: bool | None = None, compile=None, overlap: bool | None = None
) -> dict:
    """The decoder alone (what generate replays per token): token ids in, token ids out. `step_kernels` False: the
    same decoder around the model's PyTorch step (RunConfig.step_kernels off; compiled and captured alike), for the
    kernels' ratio in the same run (the model's decoders dropped before and after: a cached one holds the step it
    captured). `compile`: the decoder's compile level (inference/decoder.py's COMPILE_LEVELS; None its default).
    `overlap`: RunConfig.overlapped_launches (None: as it is), the decoders dropped before and after likewise."""
    fresh = step_kernels is not None or overlap is not None
    if fresh:
        release_decoders(model)
    with run_set(model, step_kernels=step_kernels, overlapped_launches=overlap):
        decoder = decoder_for(model, batch, compile=compile)
        tokens = torch.randint(1, 20000, (batch,), device=device)
        state = model.init_state(batch)
        seeds = torch.arange(batch, device=device)
        step_t = torch.zeros(batch, dtype=torch.int64, device=device)

        def run():
            tok, st = tokens, state
            for _ in range(steps):
                tok, st = decoder.step(tok, st, SAMPLING["temperature"], SAMPLING["top_p"], seeds, step_t)

        seconds = time_fn(run, device, warmup=1, repeat=3)
    if fresh:
        release_decoders(model)
    path = "decoder.step (top-p)" + (
        "" if step_kernels is None else f", step kernels {'on' if step_kernels else 'off'}"
    )
    path += "" if overlap is None else f", launches overlapped {'on' if overlap else 'off'}"
    path += "" if compile is None else f", compiled: {compile or 'nothing'}"
    return {
        "path": path,
        "tokens_per_s": batch * steps / seconds,
        "decoder_warmup_s": decoder.warmup_seconds,
        "decoder_compiled": decoder.compile,
    }


def ours_prefill(model, T: int, device) -> dict:
    tokens = torch.randint(1, 20000, (1, T), device=device)
    seconds = time_fn(lambda: model.prefill(tokens), device, warmup=1, repeat=3)
    return {"path": "model.prefill", "kind": "prefill", "prompt": T, "tokens_per_s": T / seconds}


def package_rows(arch: str, model, size: str, prefill_T: int, steps: int, tmp: Path, device) -> list[dict]:
    """The `rwkv` package (its RWKV-4 `RWKV` or RWKV-7 `RWKV_x070`, its CUDA kernel on a GPU), on the same
    weights: decode loop and prefill."""
    cuda = device.type == "cuda"
    if arch == "rwkv4":
        os.environ.setdefault("RWKV_JIT_ON", "1")
        os.environ.setdefault("RWKV_CUDA_ON", "1" if cuda else "0")
        from rwkv.model import RWKV as PackageRWKV
    else:
        PackageRWKV = rwkv_package_x070(cuda=cuda)

    dtype = torch.float16 if cuda else torch.float32
    pth = save_model(model, tmp / f"{size}.pth", format="pth", dtype=dtype)
    strategy = "cuda fp16" if cuda else "cpu fp32"
    pkg = PackageRWKV(model=str(pth)[:-4], strategy=strategy)
    prompt = torch.randint(100, 20000, (prefill_T,)).tolist()
    seconds = time_fn(lambda: pkg.forward(prompt, None), device, warmup=1, repeat=3)
    rows = [
        {
            "path": "rwkv package forward(prompt)",
            "kind": "prefill",
            "prompt": prefill_T,
            "tokens_per_s": prefill_T / seconds,
        }
    ]
    logits, state = pkg.forward(prompt[:16], None)
    from rwkv.utils import PIPELINE

    choices = {
        "greedy": lambda out: int(out.argmax()),
        # the package's own sampler (what its PIPELINE.generate uses), at the same temperature and top-p as ours
        "top-p": lambda out: PIPELINE.sample_logits(None, out, SAMPLING["temperature"], SAMPLING["top_p"]),
    }
    for label, choose in choices.items():

        def run():
            out, st = logits, [x.clone() for x in state]
            for _ in range(steps):
                out, st = pkg.forward([choose(out)], st)

        seconds = time_fn(run, device, warmup=1, repeat=3)
        rows.append(
            {
                "path": f"rwkv package forward([token]) loop ({label})",
                "batch": 1,
                "prompt": 16,
                "tokens_per_s": steps / seconds,
            }
        )
    pth.unlink()
    free_memory(device)
    return rows


def transformers_rows(model, size: str, prefill_T: int, steps: int, tmp: Path, device) -> list[dict]:
    """transformers' RwkvForCausalLM (its Python loop: the hub kernel is unreachable offline)."""
    from transformers import RwkvForCausalLM

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    save_model(model, tmp / "hf", format="transformers", dtype=dtype)
    hf = RwkvForCausalLM.from_pretrained(tmp / "hf", dtype=dtype).to(device).eval()
    x = torch.randint(100, 20000, (1, prefill_T), device=device)
    with torch.no_grad():
        seconds = time_fn(lambda: hf(x, use_cache=True), device, warmup=1, repeat=2)
        out = hf(x[:, :16], use_cache=True)

        def run():
            o = out
            for _ in range(steps):
                o = hf(o.logits[:, -1:].argmax(-1), state=[s.clone() for s in o.state], use_cache=True)

        step_s = time_fn(run, device, warmup=1, repeat=2)
    free_memory(device)
    return [
        {
            "path": "transformers RwkvForCausalLM",
            "kind": "prefill",
            "prompt": prefill_T,
            "tokens_per_s": prefill_T / seconds,
        },
        {
            "path": "transformers RwkvForCausalLM loop (greedy)",
            "batch": 1,
            "prompt": 16,
            "tokens_per_s": steps / step_s,
        },
    ]


def fla_rows(model, size: str, prefill_T: int, steps: int, tmp: Path, device) -> list[dict]:
    """fla's RWKV7ForCausalLM (flash-linear-attention, the `test` extra) on the same weights, as its users run it:
    our model saved as a transformers folder (fla's layout), loaded with fla's fused norms (its default), a prefill
    of `prefill_T` tokens keeping only the last position's logits (its chunked kernels), then a greedy loop of
    one-token forwards on its cache (its fused recurrent kernels)."""
    from fla.models import RWKV7ForCausalLM

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    save_model(model, tmp / "fla", format="transformers", dtype=dtype)
    fla = RWKV7ForCausalLM.from_pretrained(tmp / "fla", dtype=dtype, fuse_norm=True).to(device).eval()
    x = torch.randint(0, model.config.vocab_size, (1, prefill_T), device=device)
    with torch.no_grad():
        seconds = time_fn(lambda: fla(x, use_cache=True, logits_to_keep=1), device, warmup=1, repeat=3)
        out = fla(x[:, :16], use_cache=True, logits_to_keep=1)

        def run():
            o = out  # its cache advances in place: each run continues the state (the work per token is the same)
            for _ in range(steps):
                o = fla(o.logits[:, -1:].argmax(-1), past_key_values=o.past_key_values, use_cache=True)

        step_s = time_fn(run, device, warmup=1, repeat=3)
    free_memory(device)
    return [
        {"path": "fla RWKV7ForCausalLM", "kind": "prefill", "prompt": prefill_T, "tokens_per_s": prefill_T / seconds},
        {"path": "fla RWKV7ForCausalLM loop (greedy)", "batch": 1, "prompt": 16, "tokens_per_s": steps / step_s},
    ]


def kernel_profile(model, size: str, prefill_T: int, steps: int, device, mixed: list[str] = (), tokenizer=None):
    """Where the time goes: CUDA kernels of `steps` decode steps (batch 1, the captured step), of one prefill of
    `prefill_T` tokens and, given `mixed` prompts, of their prefill in one call (`prefill_prompts`), by total device
    time (torch.profiler)."""
    decoder = decoder_for(model, 1)
    tokens, state = torch.randint(1, 20000, (1,), device=device), model.init_state(1)
    prompt = torch.randint(1, 20000, (1, prefill_T), device=device)
    rows = []
    profiled = [
        ("decode step", lambda: [decoder.step(tokens, state, **SAMPLING) for _ in range(steps)]),
        ("prefill", lambda: model.prefill(prompt)),
    ]
    if mixed:
        profiled.append((f"prefill of {len(mixed)} mixed prompts", lambda: prefill_prompts(model, tokenizer, mixed)))
    for what, fn in profiled:
        kernels = cuda_kernels(fn, device)
        total = sum(e.device_time_total for e in kernels)
        calls = steps if what == "decode step" else 1
        for e in kernels[:25]:
            rows.append(
                {
                    "size": size,
                    "what": what,
                    "kernel": e.key[:90],
                    "count_per_call": e.count / calls,
                    "us_per_call": e.device_time_total / calls,
                    "share": e.device_time_total / total,
                    "kernels_per_call": sum(k.count for k in kernels) / calls,
                    "device_us_per_call": total / calls,
                }
            )
    return rows


def reference_step(model, token, state):
    """model.step as written in PyTorch: the step kernels (RunConfig.step_kernels, on CUDA by default) off."""
    with run_set(model, step_kernels=False):
        return model.step(token, state)


def decoder_check(arch: str, size: str, device, tokenizer, new_tokens: int = 200, overlap: bool | None = None) -> dict:
    """fp32 on the device: the captured, compiled step equals model.step's PyTorch reference (eager; RWKV-7's step
    kernels off); greedy text is identical; a batch of 3 in the decoder of 4 (a padded row) gives the 3 rows' own
    step. Within fp32 rounding of one step (1e-6), or of the network (1e-5) where the decoder runs RWKV-7's step
    kernels, whose op order differs from the reference's. `overlap`: RunConfig.overlapped_launches (None: the
    default)."""
    model = build_at_size(arch, size, torch.float32, device)
    if overlap is not None:
        model.configure(overlapped_launches=overlap)
    tokens = torch.randint(100, 20000, (4, 32), device=device)
    _, state = model.prefill(tokens)
    token = tokens[:, -1]
    decoder = decoder_for(model, 4)
    kernels = runs_step_kernels(model)
    tolerance = 1e-5 if kernels else 1e-6
    worst_logits = worst_state = 0.0
    with torch.no_grad():
        for _ in range(8):
            ref_logits, ref_state = reference_step(model, token, state)
            nxt, new_state, logits = decoder.step(token, state, return_logits=True)
            worst_logits = max(worst_logits, rel_error(logits, ref_logits))
            worst_state = max(worst_state, rel_error(new_state, ref_state))
            token, state = ref_logits.argmax(-1), ref_state
        ref_logits, ref_state = reference_step(model, token[:3], state[:3])
        _, padded_state, padded_logits = decoder_for(model, 3).step(token[:3], state[:3], return_logits=True)
        padded = max(rel_error(padded_logits, ref_logits), rel_error(padded_state, ref_state))
    prompt = "The RWKV model"
    fast = generate(model, tokenizer, prompt, max_new_tokens=new_tokens, temperature=0)
    ids, (logits, st) = [], model.prefill(torch.tensor([tokenizer.encode(prompt)], device=device))
    with torch.no_grad():
        for _ in range(new_tokens):
            t = int(logits[0].argmax())
            if t == tokenizer.eot_id:
                break
            ids.append(t)
            logits, st = reference_step(model, torch.tensor([t], device=device), st)
    eager = tokenizer.decode(ids)
    del model
    free_memory(device)
    return {
        "arch": arch,
        "size": size,
        "dtype": "float32",
        "rel_err_logits": worst_logits,
        "rel_err_state": worst_state,
        "rel_err_padded_batch": padded,
        "greedy_tokens": len(ids),
        "greedy_text_identical": fast == eager,
        "step_kernels": kernels,
        "compiled": decoder.compile,
        "compile_fallbacks": decoder.fallbacks,
        "graphs": decoder.graphs,
        "tolerance": tolerance,
        "ok": max(worst_logits, worst_state, padded) <= tolerance and fast == eager,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="rwkv4", choices=sorted(DEFAULT_SIZES), help="the generation measured")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: per --arch, see DEFAULT_SIZES)")
    parser.add_argument("--batches", default="1,8,32,128", help="batch sizes of the generate curve")
    parser.add_argument("--batch-sizes-for", default="1.5B", help="sizes that get the whole batch curve")
    parser.add_argument("--prompts", default="16,1024", help="prompt lengths (tokens) at batch 1")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--mixed-batches", default="32,128", help="batches of prompts of mixed lengths ('' none)")
    parser.add_argument("--mixed-lengths", default="16,1024", help="shortest,longest prompt of the mixed batches")
    parser.add_argument("--mixed-sizes", default=None, help="sizes that get the mixed batches (default: all)")
    parser.add_argument("--prefill", type=int, default=4096)
    parser.add_argument("--peer-steps", type=int, default=64)
    parser.add_argument("--transformers-sizes", default="169M", help="sizes measured with transformers' RWKV")
    parser.add_argument("--fla-sizes", default="pile-168M", help="RWKV-7 sizes measured with fla's RWKV7ForCausalLM")
    parser.add_argument("--tokenizer", default=None, help="tokenizer.json (default: $RWKV_LAB_TOKENIZER)")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-check", action="store_true", help="skip the fp32 decoder check (GPU)")
    parser.add_argument(
        "--profile-sizes",
        default="169M",
        help="sizes whose decode step, prefill and largest mixed batch's prefill are profiled",
    )
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--reference-step",
        action="store_true",
        help="at every batch, the decoder around the PyTorch step too (kernels off)",
    )
    parser.add_argument(
        "--compare-overlap",
        action="store_true",
        help="at every batch, the decoder with its launches overlapped and not (RunConfig.overlapped_launches)",
    )
    parser.add_argument(
        "--compare-compile",
        default="",
        help="at every batch, the decoder at these compile levels too (comma-separated: step+sample, step, sample, "
        "none); "
        "their warm-up follows the default decoder's, so its one-time costs are not theirs",
    )
    args = parser.parse_args()
    args.sizes = args.sizes or DEFAULT_SIZES[args.arch]
    device = torch.device(args.device)
    tokenizer = load_tokenizer(args.tokenizer)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    matmul = matmul_throughput(device, dtype) if device.type == "cuda" else None
    params = vars(args) | {"sampling": SAMPLING, "dtype": str(dtype), "copy_bandwidth_Bps": bandwidth}
    params["matmul_flops_per_s"] = matmul
    out = results_dir() / "inference"
    args.tag = ("" if args.arch == "rwkv4" else f"_{args.arch}") + args.tag  # RWKV-4's files keep their names
    rows = []
    if device.type == "cuda" and not args.no_check:
        check = decoder_check(args.arch, args.sizes.split(",")[0], device, tokenizer)
        print("decoder check:", check, flush=True)
        write_json(out / f"decoder_check{args.tag}.json", check, params, device=device)
    for size in args.sizes.split(","):
        model = build_at_size(args.arch, size, dtype, device)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        base = {
            "arch": args.arch,
            "size": size,
            "params": model.num_params(),
            "dtype": str(dtype).removeprefix("torch."),
        }
        roofline = bandwidth / weights if bandwidth else None
        jobs = [(1, p) for p in map(int, args.prompts.split(","))]
        if size in args.batch_sizes_for.split(","):
            jobs += [(b, 16) for b in map(int, args.batches.split(",")) if b != 1]
        for batch, prompt_len in jobs:
            row = base | {"kind": "generation", "batch": batch, "prompt": prompt_len}
            rows.append(row | ours_generate(model, tokenizer, batch, prompt_len, args.new_tokens, device))
            rows.append(row | ours_step(model, batch, args.new_tokens, device))
            print(rows[-2], rows[-1], sep="\n", flush=True)
            if args.reference_step:
                rows.append(row | ours_step(model, batch, args.new_tokens, device, step_kernels=False))
                print(rows[-1], flush=True)
            for overlap in (False, True) if args.compare_overlap else ():
                rows.append(row | ours_step(model, batch, args.new_tokens, device, overlap=overlap))
                print(rows[-1], flush=True)
            for level in args.compare_compile.split(",") if args.compare_compile else []:
                level = False if level == "none" else level  # captured, nothing compiled
                rows.append(row | ours_step(model, batch, args.new_tokens, device, compile=level))
                print(rows[-1], flush=True)
            if device.type == "cpu":  # beside the package's greedy loop too
                greedy = {"temperature": 0.0, "top_p": 1.0}
                rows.append(row | ours_generate(model, tokenizer, batch, prompt_len, args.new_tokens, device, greedy))
        if args.mixed_batches and size in (args.mixed_sizes or args.sizes).split(","):
            shortest, longest = map(int, args.mixed_lengths.split(","))
            for batch in map(int, args.mixed_batches.split(",")):
                for r in ours_mixed(model, tokenizer, batch, shortest, longest, args.new_tokens, device, matmul):
                    rows.append(base | r)
                    print(rows[-1], flush=True)
        rows.append(base | {"batch": 1} | ours_prefill(model, args.prefill, device))
        if device.type == "cuda" and size in args.profile_sizes.split(","):
            mixed = []
            if args.mixed_batches and size in (args.mixed_sizes or args.sizes).split(","):
                largest = max(map(int, args.mixed_batches.split(",")))
                mixed = mixed_prompts(tokenizer, largest, *map(int, args.mixed_lengths.split(",")), seed=largest)
            profile = pd.DataFrame(kernel_profile(model, size, args.prefill, 20, device, mixed, tokenizer))
            write_table(out / f"kernel_profile_{size}{args.tag}.csv", profile, params, device=device)
            print(profile.head(12).to_string(), flush=True)
        if not args.no_peers:
            with tempfile.TemporaryDirectory() as tmp:
                for r in package_rows(args.arch, model, size, args.prefill, args.peer_steps, Path(tmp), device):
                    rows.append(base | {"kind": "generation", "batch": 1} | r)
                    print(rows[-1], flush=True)
                if args.arch == "rwkv4" and size in args.transformers_sizes.split(","):  # transformers has RWKV-4 only
                    for r in transformers_rows(model, size, min(args.prefill, 1024), 16, Path(tmp), device):
                        rows.append(base | {"kind": "generation", "batch": 1} | r)
                if args.arch == "rwkv7" and size in args.fla_sizes.split(","):
                    for r in fla_rows(model, size, args.prefill, args.peer_steps, Path(tmp), device):
                        rows.append(base | {"kind": "generation", "batch": 1} | r)
                        print(rows[-1], flush=True)
        for r in rows:
            if r["size"] == size and roofline and r.get("kind") == "generation":
                r["roofline_tokens_per_s"] = roofline * r["batch"]
        del model
        free_memory(device)
        synchronize(device)
        frame = pd.DataFrame(rows)
        write_table(out / f"generation{args.tag}.csv", frame, params, device=device)
        print(frame.to_string(float_format=lambda v: f"{v:.4g}"), flush=True)


if __name__ == "__main__":
    main()
