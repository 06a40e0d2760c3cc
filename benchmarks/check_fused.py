"""The fused blocks (RunConfig.fused_blocks: torch.compile around the Triton operator, the default when training on
CUDA) against the eager blocks at released sizes on the GPU, for RWKV-4 or RWKV-7 (`--arch`): the full-size
counterpart of the CPU tests in tests/test_train.py (RWKV-4) and tests/test_rwkv7_fast_path.py (RWKV-7).

    python benchmarks/check_fused.py [--sizes 169M,1.5B] [--context 1024]
    python benchmarks/check_fused.py --arch rwkv7 [--sizes pile-168M,pile-1.47B]

For each size, from a random non-empty state: one training step's loss, final state and every parameter's
gradient, the incoming state's included (fp32 weights; fp32 math, then bf16 autocast as training runs, where both
paths are also set against the fp32 step); the training loss (lm_loss, compiled cross-entropy; RWKV-4's over its
padded head) against the eager one; and a prefill's last logits in fp16.
Writes results/training/fused_check.json (RWKV-4), fused_check_rwkv7.json (RWKV-7); prints each relative error.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.measure.profiler import model_at
from rwkv_lab.models.rwkv4.model import build_at_size
from rwkv_lab.results import results_dir, write_json
from rwkv_lab.training.loss import lm_loss

# per generation: its default sizes, how a size is built (random weights at the official scale), and the part of the
# final state a training step's loss also reads (so the state's path carries a gradient): RWKV-4's slot a (the
# WKV's numerators), RWKV-7's S
ARCHS = {
    "rwkv4": (
        "169M,1.5B",
        lambda size, device: build_at_size(size, torch.float32, device),
        lambda s: s.packed[:, :, 1],
    ),
    "rwkv7": (
        "pile-168M,pile-1.47B",
        lambda size, device: model_at(f"rwkv7:{size}", torch.float32, device),
        lambda s: s.wkv,
    ),
}


def training_step(model, x, state, fused: bool, autocast: bool, state_part):
    model.configure(fused_blocks=fused)
    model.zero_grad(set_to_none=True)
    state = type(state)(*(t.detach().clone().requires_grad_(True) for t in state.tensors()))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits, new_state = model(x[:, :-1], state)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    (loss + 1e-3 * state_part(new_state).sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    grads |= {f"state.{f.name}": t.grad for f, t in zip(dataclasses.fields(state), state.tensors())}
    return loss.detach(), new_state.detach(), grads


def loss_check(model, x, size: str) -> dict:
    """The training loss as the trainer computes it (lm_loss: the compiled cross-entropy, over the first V columns
    of RWKV-4's padded head) against the eager cross-entropy of the logits, bf16 autocast, fused blocks in both:
    loss and every parameter's gradient."""
    model.configure(fused_blocks="auto")
    runs = []
    for fused_loss in (True, False):
        model.zero_grad(set_to_none=True)
        if fused_loss:
            loss = lm_loss(model, x[:, :-1], x[:, 1:])
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits, _ = model(x[:, :-1], check=False)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        runs.append((loss.detach(), None, grads))
    row = {"size": size, "what": "lm_loss (compiled cross-entropy) vs eager", "autocast": "bf16"}
    row["rel_err_loss"] = rel_error(runs[0][0], runs[1][0])
    row["rel_err_worst_grad"], row["worst_grad"] = worst_grad(runs[0], runs[1])
    return row


def worst_grad(run, reference) -> tuple[float, str]:
    """The largest relative error over every gradient of a training step, and whose it is."""
    return max((rel_error(run[2][n], g), n) for n, g in reference[2].items())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="rwkv4")
    parser.add_argument("--sizes", default=None, help="default: 169M,1.5B (RWKV-4), pile-168M,pile-1.47B (RWKV-7)")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (the chunked WKV instead of Triton)")
    args = parser.parse_args()
    default_sizes, build, state_part = ARCHS[args.arch]
    args.sizes = args.sizes or default_sizes
    rows = []
    for size in args.sizes.split(","):
        model = build(size, args.device).train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, model.config.vocab_size, (args.batch, args.context + 1), generator=gen).to(args.device)
        with torch.no_grad():
            model.configure(fused_blocks=False)
            _, state = model(x[:, :37])  # a reachable, non-empty state
        runs = {
            (fused, autocast): training_step(model, x, state, fused, autocast, state_part)
            for autocast in (False, True)
            for fused in (False, True)
        }
        reference = runs[False, False]  # eager, fp32 math
        for autocast in (False, True):
            eager, fused = runs[False, autocast], runs[True, autocast]
            row = {"size": size, "what": "training step", "autocast": "bf16" if autocast else "none"}
            row |= {"rel_err_loss": rel_error(fused[0], eager[0]), "rel_err_state": rel_error(fused[1], eager[1])}
            row["rel_err_worst_grad"], row["worst_grad"] = worst_grad(fused, eager)
            if autocast:
                # bf16 rounds differently in the two paths: each against the fp32 step tells whether the fused
                # path loses more than the eager one does
                row["fused_vs_fp32_worst_grad"], row["fused_vs_fp32_which"] = worst_grad(fused, reference)
                row["eager_vs_fp32_worst_grad"], row["eager_vs_fp32_which"] = worst_grad(eager, reference)
            rows.append(row)
            print(row, flush=True)
        rows.append(loss_check(model, x, size))
        print(rows[-1], flush=True)
        model = model.half().eval()
        with torch.no_grad():
            model.configure(fused_blocks=False)
            ref, _ = model.prefill(x, state)
            model.configure(fused_blocks=True)
            out, _ = model.prefill(x, state)
        rows.append({"size": size, "what": "prefill logits, fp16", "rel_err_logits": rel_error(out, ref)})
        print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    name = "fused_check.json" if args.arch == "rwkv4" else f"fused_check_{args.arch}.json"
    write_json(results_dir() / "training" / name, rows, vars(args), device=args.device)


if __name__ == "__main__":
    main()
