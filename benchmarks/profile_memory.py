"""Memory and speed of RWKV-7, RWKV-4 and the size-matched Pythia across contexts, in one process on one card,
each on the path a user takes today; one results file (notebook 02 draws it).

    PYTHONPATH=$PWD python benchmarks/profile_memory.py --sizes 169M --budget-s 300
    PYTHONPATH=$PWD python benchmarks/profile_memory.py --sizes 430M,1.5B --budget-s 450

`--sizes` names the Pile shapes by their RWKV-4 size (rwkv_lab.measure.profiler.PILE_SIZES): 169M is RWKV-4
169M, RWKV-7 Pile 168M and pythia-160m; 430M and 1.5B likewise. `--models` lists specs instead (any generation
of the registry: 'rwkv7:pile-168M', 'transformer:pythia-160m'). Random weights at the released shapes, each
generation's official initialisation at its scale (Gaussian draws for the orthogonal ones): speed and memory do
not depend on the values. bf16 for inference. Per model: prefill contexts 512 to --prefill-max in one parallel
call (`model.prefill`, the transformer's forward with SDPA); generation contexts 1k to --gen-max (1M) built up in
16k-token chunks, decoding through the library's decoder as `generate` does (compiled step in a CUDA graph;
`--decode-graph-only`: the graph without the compiler), the transformer through its KV cache; end-to-end
generation, a prompt of 1k to --e2e-max tokens prefilled then --e2e-new-tokens decoded, timed together;
training, forward + backward under bf16 autocast with fp32 weights, 512 to --train-max, through the trainer's
fast path (`fast_path`: the recurrent models' fused blocks, Pythia through torch.compile). The models run one
after another, each freed before the next is built. Out of memory is a row (status 'oom'); `--budget-s` shares
that many seconds among the models and their series, and what it left unmeasured is a row too (status
'skipped (time)'); a context whose build would pass the deadline is not started, and a run stopped by SIGTERM
(`timeout`) records what it had not measured likewise. Writes
results/profile/memory_profile_pile_<sizes><tag>.csv (+ .meta.json, with the card's memory and measured copy
bandwidth) after every series.
"""

from __future__ import annotations

import argparse

import torch

from rwkv_lab.measure.profiler import PILE_SIZES, sweep
from rwkv_lab.measure.timing import copy_bandwidth
from rwkv_lab.results import results_dir, write_table


def doubling(lo: int, hi: int) -> list[int]:
    out = []
    while lo <= hi:
        out.append(lo)
        lo *= 2
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="169M", help=f"comma-separated, of {sorted(PILE_SIZES)}")
    parser.add_argument("--models", default="", help="comma-separated specs '<generation>:<size>' instead of --sizes")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prefill-min", type=int, default=512)
    parser.add_argument("--prefill-max", type=int, default=16384)
    parser.add_argument("--gen-min", type=int, default=1024)
    parser.add_argument("--gen-max", type=int, default=2**20)
    parser.add_argument("--e2e-max", type=int, default=8192, help="longest prompt of the end-to-end generation")
    parser.add_argument("--e2e-new-tokens", type=int, default=32, help="tokens generated per end-to-end call")
    parser.add_argument("--train-min", type=int, default=512)
    parser.add_argument("--train-max", type=int, default=4096)
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for the whole sweep (default: none)")
    parser.add_argument(
        "--decode-graph-only",
        action="store_true",
        help="RWKV decodes through a CUDA graph of the eager step (not `generate`'s default, the compiled step)",
    )
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (give small sizes and contexts)")
    parser.add_argument("--tag", default="", help="appended to the file's name")
    args = parser.parse_args()
    if args.models:
        specs, label = args.models.split(","), "models"
    else:
        sizes = args.sizes.split(",")
        unknown = [s for s in sizes if s not in PILE_SIZES]
        if unknown:
            parser.error(f"--sizes {unknown} unknown; expected some of {sorted(PILE_SIZES)}")
        specs, label = [spec for size in sizes for spec in PILE_SIZES[size]], "_".join(sizes)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    bandwidth = copy_bandwidth(device) if cuda else None
    params = vars(args) | {
        "specs": specs,
        "copy_bandwidth_Bps": bandwidth,
        "gpu_total_bytes": torch.cuda.get_device_properties(device).total_memory if cuda else None,
        "weights": "random at the released shapes (each generation's official initialisation, at its scale)",
        "description": "notebook 02's sweep, one card: RWKV-7, RWKV-4 and Pythia at matched Pile shapes (prefill, "
        "generation through the library's decoder to 1M tokens or out of memory, end-to-end generation, training "
        "on the trainer's fast path); rows 'skipped (time)' were left unmeasured by the time budget",
    }
    if cuda:
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    out = results_dir() / "profile" / f"memory_profile_pile_{label}{args.tag}.csv"

    def save(frame):
        write_table(out, frame, params, device=device)

    frame = sweep(
        specs,
        args.batch,
        prefill_contexts=doubling(args.prefill_min, args.prefill_max),
        generation_contexts=doubling(args.gen_min, args.gen_max),
        training_contexts=doubling(args.train_min, args.train_max),
        end_to_end_contexts=doubling(args.gen_min, args.e2e_max),
        decode_steps=args.decode_steps,
        new_tokens=args.e2e_new_tokens,
        dtype=dtype,
        device=device,
        compile=False if args.decode_graph_only else None,  # None: the decoder's default, as generate's
        seconds=args.budget_s,
        on_rows=save,
    )
    save(frame)
    shown = ["model", "kind", "context", "status", "seconds", "tokens_per_s", "memory_GiB"]
    print(frame[shown].to_string(), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
