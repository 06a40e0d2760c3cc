"""The fused blocks (RWKV.fused_blocks: torch.compile with the Triton WKV, the default on CUDA) against the eager
blocks at released sizes on the GPU: the full-size counterpart of the CPU tests in tests/test_train.py.

    python benchmarks/check_fused.py [--sizes 169M,1.5B] [--context 1024]

For each size, from a random non-empty state: one training step's loss, final state and every parameter's
gradient (fp32 weights; fp32 math, then bf16 autocast as training runs, where both paths are also set against the
fp32 step); the training loss (lm_loss, compiled cross-entropy) against the eager one; and a prefill's last
logits in fp16.
Writes results/training/fused_check.json; prints each relative error.
"""

from __future__ import annotations

import argparse

import torch

from rwkv_lab.analysis.equivalence import rel_error
from rwkv_lab.models.rwkv4.model import build_at_size
from rwkv_lab.results import results_dir, write_json
from rwkv_lab.training.loss import lm_loss


def training_step(model, x, state, fused: bool, autocast: bool):
    model.configure(fused_blocks=fused)
    model.zero_grad(set_to_none=True)
    state = state.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits, new_state = model(x[:, :-1], state)
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    (loss + 1e-3 * new_state.packed[:, :, 1].sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()} | {"state": state.packed.grad}
    return loss.detach(), new_state.detach(), grads


def loss_check(model, x, size: str) -> dict:
    """The training loss as the trainer computes it (lm_loss: the padded head kept, the compiled cross-entropy
    over its first V columns) against the eager cross-entropy of the sliced logits, bf16 autocast, fused blocks
    in both: loss and every parameter's gradient."""
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
        runs.append((loss.detach(), None, {n: p.grad.detach().clone() for n, p in model.named_parameters()}))
    row = {"size": size, "what": "lm_loss (compiled cross-entropy, padded head) vs eager", "autocast": "bf16"}
    row["rel_err_loss"] = rel_error(runs[0][0], runs[1][0])
    row["rel_err_worst_grad"], row["worst_grad"] = worst_grad(runs[0], runs[1])
    return row


def worst_grad(run, reference) -> tuple[float, str]:
    """The largest relative error over every gradient of a training step, and whose it is."""
    return max((rel_error(run[2][n], g), n) for n, g in reference[2].items())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="169M,1.5B")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (the chunked WKV instead of Triton)")
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        model = build_at_size(size, torch.float32, args.device).train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, model.config.vocab_size, (args.batch, args.context + 1), generator=gen).to(args.device)
        with torch.no_grad():
            model.configure(fused_blocks=False)
            _, state = model(x[:, :37])  # a reachable, non-empty state
        runs = {
            (fused, autocast): training_step(model, x, state, fused, autocast)
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
    write_json(results_dir() / "training" / "fused_check.json", rows, vars(args), device=args.device)


if __name__ == "__main__":
    main()
