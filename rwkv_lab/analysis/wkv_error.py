"""How exact is each WKV formulation, in each dtype, as the sequence grows?

Error = ||y - y_ref|| / ||y_ref|| against the float64 recurrence on the float64 inputs, so a bf16 row includes the
rounding of its inputs (what a user of that dtype gets). Two input families: 'official' (decays and bonuses as the
official initialisation spreads them over channels, keys ~ N(0, 1)) and 'extreme' (|k| up to 80, decays 1e-4..1e3,
bonuses up to +-80). The T x T form is run only where its T^2 C memory stays small.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..ops.rwkv4 import BACKENDS, wkv_recurrent
from .equivalence import rel_error

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION_MAX_BYTES = 1 << 30  # the T x T form's score tensor, per call


def study_inputs(T: int, C: int, kind: str, seed: int = 0, batch: int = 1, generator: torch.Generator | None = None):
    """w, u, k, v in float64 from a fixed seed (or from `generator`, which then goes on to draw more)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    h = torch.arange(C, dtype=torch.float64)
    if kind == "official":
        w = torch.exp(-5 + 8 * (h / max(C - 1, 1)) ** 1.35)
        u = math.log(0.3) + ((h + 1) % 3 - 1) * 0.5
        k = torch.randn(batch, T, C, generator=gen, dtype=torch.float64)
    elif kind == "extreme":
        w = torch.exp(math.log(1e-4) + torch.rand(C, generator=gen, dtype=torch.float64) * math.log(1e7))
        u = 160 * torch.rand(C, generator=gen, dtype=torch.float64) - 80
        k = 160 * torch.rand(batch, T, C, generator=gen, dtype=torch.float64) - 80
    else:
        raise ValueError(f"unknown input kind {kind!r}; expected 'official' or 'extreme'")
    v = torch.randn(batch, T, C, generator=gen, dtype=torch.float64)
    return w, u, k, v


def run_study(
    lengths,
    backends=("recurrent", "chunked", "attention"),
    dtypes=tuple(DTYPES),
    kinds=("official", "extreme"),
    channels: int = 64,
    device="cpu",
) -> pd.DataFrame:
    """One row per (kind, T, backend, dtype): relative errors of y and of the final state, and non-finite counts."""
    rows = []
    jobs = [(kind, T) for kind in kinds for T in lengths]
    for kind, T in tqdm(jobs, desc="WKV numerics"):
        w, u, k, v = (x.to(device) for x in study_inputs(T, channels, kind))
        with torch.no_grad():
            y_ref, s_ref = wkv_recurrent(w, u, k, v)
        for backend in backends:
            for name in dtypes:
                dtype = DTYPES[name]
                row = {"inputs": kind, "T": T, "C": channels, "backend": backend, "dtype": name}
                if backend == "attention" and T * T * channels * 8 > ATTENTION_MAX_BYTES:
                    rows.append(row | {"status": "skipped: T x T memory"})
                    continue
                param = torch.float64 if dtype == torch.float64 else torch.float32
                with torch.no_grad():
                    y, s = BACKENDS[backend](w.to(param), u.to(param), k.to(dtype), v.to(dtype))
                rows.append(
                    row
                    | {
                        "status": "ok",
                        "rel_err_y": rel_error(y, y_ref),
                        # a, b are compared as true sums relative to the reference's exponent, p directly
                        "rel_err_state": rel_error(s[:, :2] * torch.exp(s[:, 2:] - s_ref[:, 2:]), s_ref[:, :2]),
                        "nonfinite": int((~torch.isfinite(y)).sum() + (~torch.isfinite(s)).sum()),
                    }
                )
    return pd.DataFrame(rows)


def plot_study(frame: pd.DataFrame, kernel_check: pd.DataFrame | None = None):
    """Relative error of y vs T, one panel per input family, one line per backend and dtype."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(frame["inputs"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), sharey=True, squeeze=False)
    styles = {"recurrent": "-", "chunked": "--", "attention": ":"}
    colors = {"fp64": "C0", "fp32": "C1", "bf16": "C2", "fp16": "C3"}
    ok = frame[frame["status"] == "ok"]
    for ax, kind in zip(axes[0], kinds):
        part = ok[ok["inputs"] == kind]
        for (backend, dtype), g in part.groupby(["backend", "dtype"], sort=False):
            g = g.sort_values("T")
            ax.loglog(
                g["T"],
                g["rel_err_y"].clip(lower=1e-17),
                styles.get(backend, "-"),
                color=colors.get(dtype),
                marker="o",
                ms=3,
                label=f"{backend} {dtype}",
            )
        if kernel_check is not None:
            kc = kernel_check[(kernel_check["dtype"] == "fp32") & (kernel_check["inputs"].str.startswith(kind[:5]))]
            kc = kc.groupby("T")["rel_err_y"].max().reset_index()
            ax.loglog(kc["T"], kc["rel_err_y"], "s", color="k", ms=5, label="triton fp32 (GPU check)")
        ax.set_title(f"{kind} inputs")
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("relative error of y vs fp64 recurrence\n(the reference itself is drawn at 1e-17)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
