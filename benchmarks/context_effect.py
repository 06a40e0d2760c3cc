"""Why a model trained at T = 4096 ends worse than one trained at T = 512 after the same tokens: the context, or the
batch? (issue: the transformer's 2.25 vs 1.71 bits/byte in results/training/summary*.csv.)

    python benchmarks/context_effect.py --size byte-4x128 --tokens 4M

At the same tokens per step, a step at T = 4096 draws 8x fewer independent windows than a step at T = 512. So for
each architecture three runs train on the same number of tokens with the same recipe:
  - `T=512`: independent windows of 512 tokens (the usual run);
  - `T=4096`: independent windows of 4096 tokens;
  - `T=512 from 4096-spans`: the very tokens of the `T=4096` run (TrainConfig.span), cut into 512-token windows.
All three are scored on the same 512-token validation windows (and each on its own context). If the cut run scores
like the `T=512` run, the long context itself slows learning; if it scores like the `T=4096` run, the fewer,
correlated draws per step do. The transformer is causal at T = 4096 (tests/test_train.py), so a masking bug is not
the cause. Writes results/training/context_effect.csv (+ curves) with provenance.
"""

from __future__ import annotations

import argparse

import pandas as pd

from rwkv_lab.results import results_dir, write_table
from rwkv_lab.training.corpus import build_corpus
from rwkv_lab.training.trainer import ARCHS, TrainConfig, Trainer, bits_per_byte, parse_count

SHORT, LONG = 512, 4096
RUNS = {  # name: (context, span)
    f"T={SHORT}": (SHORT, 0),
    f"T={LONG}": (LONG, 0),
    f"T={SHORT} from {LONG}-spans": (SHORT, LONG),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="byte-4x128")
    parser.add_argument("--tokens", type=parse_count, default=parse_count("4M"))
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--archs", default=",".join(ARCHS))
    args = parser.parse_args()
    corpus = build_corpus()
    per_byte = corpus.val_bytes_per_token
    out = results_dir() / "training"
    params = vars(args) | {"corpus": corpus.summary()}
    rows, curves, short_val = [], [], None
    for arch in args.archs.split(","):
        for name, (context, span) in RUNS.items():
            cfg = TrainConfig(
                arch=arch,
                model=args.size,
                context=context,
                span=span,
                batch_size=args.tokens_per_step // context,
                tokens=args.tokens,
                lr=args.lr,
                min_lr=args.lr / 10,
                warmup_steps=args.warmup_steps,
                eval_every=args.eval_every,
            )
            trainer = Trainer(cfg, corpus, progress=True)
            frame = trainer.run()
            if context == SHORT:
                short_val = trainer.val_windows  # the same windows for every run at T = 512
            own = frame.dropna(subset=["val_loss"]).iloc[-1]
            trainer.val_windows = short_val  # set by this architecture's first run
            at_short = trainer.evaluate()
            rows.append(
                {
                    "arch": arch,
                    "run": name,
                    "context": context,
                    "span": span or context,
                    "batch_size": cfg.batch_size,
                    "tokens": args.tokens,
                    "params": trainer.n_params,
                    "val_bpb_own_context": float(own["val_bpb"]),
                    f"val_bpb_at_{SHORT}": bits_per_byte(at_short, per_byte),
                    "tokens_per_s": float(frame["tokens_per_s"].iloc[len(frame) // 2 :].median()),
                }
            )
            curves.append(frame.assign(arch=arch, run=name))
            print(rows[-1], flush=True)
            write_table(out / "context_effect.csv", pd.DataFrame(rows), params, trainer.device)
            write_table(out / "context_effect_curves.csv", pd.concat(curves, ignore_index=True), params)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
