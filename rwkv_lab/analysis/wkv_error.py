"""How exact is each formulation of a generation's operator, in each dtype, as the sequence grows?

Error = ||y - y_ref|| / ||y_ref|| against the float64 recurrence on the float64 inputs, so a bf16 row includes the
rounding of its inputs (what a user of that dtype gets). One `Operator` per generation: RWKV-4's WKV (`WKV4`) and
RWKV-7's state update (`WKV7`), each with two input families:

- RWKV-4: 'official' (decays and bonuses as the official initialisation spreads them over channels, keys
  ~ N(0, 1)) and 'extreme' (|k| up to 80, decays 1e-4..1e3, bonuses up to +-80).
- RWKV-7: 'official' (as the model forms them: log_w = -e^-0.5 sigmoid(z), z ~ N(0, 1), a unit-norm removal key
  kappa, a = -kappa, b = kappa * iclr with iclr ~ U(0, 1), r, k, v ~ N(0, 1)) and 'extreme' (every channel's decay
  at one end of RWKV-7's range, e^-e^-0.5 or 1 - 1e-9, iclr 0 or 1, |r|, |k|, |v| up to 10).

The T x T form is run only where its T^2 memory stays small.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..ops import rwkv4, rwkv7
from .equivalence import rel_error

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION_MAX_BYTES = 1 << 30  # the T x T form's largest tensor, per call
RWKV7_HEAD_SIZE = 64  # the released models' N; narrower studies use one head of C


@dataclass(frozen=True)
class Operator:
    """What the study needs of one generation's operator: its forms, its float64 reference, its inputs, how a dtype
    is applied to them, how its state is compared, and the T x T form's memory."""

    name: str
    backends: dict[str, Callable]
    reference: Callable
    inputs: Callable  # (T, C, kind, seed=0, batch=1, generator=None) -> float64 inputs
    to_dtype: Callable  # (inputs, dtype) -> the inputs a caller in that dtype passes
    state_error: Callable  # (state, reference state) -> relative error
    attention_bytes: Callable  # (T, C) -> bytes of the T x T form's largest tensor
    study_file: str  # the committed CPU study, under results/ (benchmarks/wkv_numerics.py)
    kernel_check_file: str  # the GPU kernel's check against float64, under results/ (the operator's GPU benchmark)
    kernel_rows: Callable  # (that file's "results" list) -> DataFrame (inputs, T, rel_err_y): its fp32 rows

    def kernel_check(self, results: list[dict]) -> pd.DataFrame:
        """The GPU check's fp32 rows as the study's kinds: inputs, T, rel_err_y (the largest over its cases)."""
        rows = self.kernel_rows(pd.DataFrame(results))
        return rows.groupby(["inputs", "T"], as_index=False)["rel_err_y"].max()


# ---- RWKV-4: wkv(w, u, k, v) ---------------------------------------------------------------------------------------


def study_inputs(T: int, C: int, kind: str, seed: int = 0, batch: int = 1, generator: torch.Generator | None = None):
    """RWKV-4's w, u, k, v in float64 from a fixed seed (or from `generator`, which then goes on to draw more)."""
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


def _wkv4_to_dtype(inputs, dtype):
    w, u, k, v = inputs
    param = torch.float64 if dtype == torch.float64 else torch.float32  # the decays and bonuses are fp32 parameters
    return w.to(param), u.to(param), k.to(dtype), v.to(dtype)


def _wkv4_state_error(s, s_ref) -> float:
    # a, b are compared as true sums relative to the reference's exponent, p directly
    return rel_error(s[:, :2] * torch.exp(s[:, 2:] - s_ref[:, 2:]), s_ref[:, :2])


WKV4 = Operator(
    name="RWKV-4 wkv",
    backends=rwkv4.BACKENDS,
    reference=rwkv4.wkv_recurrent,
    inputs=study_inputs,
    to_dtype=_wkv4_to_dtype,
    state_error=_wkv4_state_error,
    attention_bytes=lambda T, C: T * T * C * 8,
    study_file="numerics/wkv_numerics.csv",
    kernel_check_file="wkv/wkv_kernel_check.json",
    # benchmarks/bench_wkv.py's inputs 'official-init' and 'extreme...' are the study's two families
    kernel_rows=lambda f: f[f["dtype"] == "fp32"].assign(inputs=lambda f: f["inputs"].str.split("-").str[0]),
)


# ---- RWKV-7: wkv7(r, log_w, k, v, a, b) ----------------------------------------------------------------------------


def study_inputs7(T: int, C: int, kind: str, seed: int = 0, batch: int = 1, generator: torch.Generator | None = None):
    """RWKV-7's r, log_w, k, v, a, b (B, T, H, N) in float64, heads of 64 (one head of C when C < 64)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    N = min(C, RWKV7_HEAD_SIZE)
    if C % N:
        raise ValueError(f"RWKV-7's study needs C a multiple of {RWKV7_HEAD_SIZE} (or below it); got C = {C}")
    shape = (batch, T, C // N, N)
    randn = lambda: torch.randn(shape, generator=gen, dtype=torch.float64)  # noqa: E731
    bound = -math.exp(-0.5)  # RWKV-7's fastest decay: log_w = -e^-0.5 sigmoid(z)
    if kind == "official":
        r, k, v = randn(), randn(), randn()
        log_w = bound * torch.sigmoid(randn())
        iclr = torch.rand(shape, generator=gen, dtype=torch.float64)
    elif kind == "extreme":
        r, k, v = (20 * torch.rand(shape, generator=gen, dtype=torch.float64) - 10 for _ in range(3))
        at_bound = torch.rand(shape[-2:], generator=gen) < 0.5  # per channel: the fastest decay, or none
        ends = torch.tensor([-1e-9, bound], dtype=torch.float64)  # float64: the bound itself, not its fp32 rounding
        log_w = ends[at_bound.long()].expand(shape)
        iclr = (torch.rand(shape, generator=gen) < 0.5).to(torch.float64)
    else:
        raise ValueError(f"unknown input kind {kind!r}; expected 'official' or 'extreme'")
    kappa = F.normalize(randn(), dim=-1)
    return r, log_w, k, v, -kappa, kappa * iclr


def _wkv7_to_dtype(inputs, dtype):
    r, log_w, k, v, a, b = inputs
    param = torch.float64 if dtype == torch.float64 else torch.float32  # the model forms log_w in fp32 at least
    return r.to(dtype), log_w.to(param), k.to(dtype), v.to(dtype), a.to(dtype), b.to(dtype)


WKV7 = Operator(
    name="RWKV-7 wkv7",
    backends=rwkv7.BACKENDS,
    reference=rwkv7.wkv7_recurrent,
    inputs=study_inputs7,
    to_dtype=_wkv7_to_dtype,
    state_error=rel_error,
    attention_bytes=lambda T, C: T * T * (C // min(C, RWKV7_HEAD_SIZE)) * 8,  # alpha (B, H, T, T)
    study_file="numerics/wkv7_numerics.csv",
    kernel_check_file="wkv7/wkv7_kernel_check.json",
    # benchmarks/bench_wkv7.py's case 'rwkv' is the 'official' family; its 'decay_at_bound' is neither family
    kernel_rows=lambda f: f[(f["dtype"] == "float32") & (f["case"] == "rwkv")].assign(inputs="official"),
)

# the operator of each generation, by its registry name
OPERATORS = {"rwkv4": WKV4, "rwkv7": WKV7}


def run_study(
    lengths,
    backends=("recurrent", "chunked", "attention"),
    dtypes=tuple(DTYPES),
    kinds=("official", "extreme"),
    channels: int = 64,
    device="cpu",
    operator: Operator = WKV4,
) -> pd.DataFrame:
    """One row per (kind, T, backend, dtype): relative errors of y and of the final state, and non-finite counts."""
    unknown = [b for b in backends if b not in operator.backends]
    if unknown:
        raise ValueError(f"{operator.name} has no backend {unknown}; expected some of {sorted(operator.backends)}")
    rows = []
    jobs = [(kind, T) for kind in kinds for T in lengths]
    for kind, T in tqdm(jobs, desc=f"{operator.name} numerics"):
        inputs = [x.to(device) for x in operator.inputs(T, channels, kind)]
        with torch.no_grad():
            y_ref, s_ref = operator.reference(*inputs)
        for backend in backends:
            for name in dtypes:
                row = {"inputs": kind, "T": T, "C": channels, "backend": backend, "dtype": name}
                if backend == "attention" and operator.attention_bytes(T, channels) > ATTENTION_MAX_BYTES:
                    rows.append(row | {"status": "skipped: T x T memory"})
                    continue
                with torch.no_grad():
                    y, s = operator.backends[backend](*operator.to_dtype(inputs, DTYPES[name]))
                rows.append(
                    row
                    | {
                        "status": "ok",
                        "rel_err_y": rel_error(y, y_ref),
                        "rel_err_state": operator.state_error(s, s_ref),
                        "nonfinite": int((~torch.isfinite(y)).sum() + (~torch.isfinite(s)).sum()),
                    }
                )
    return pd.DataFrame(rows)


def plot_study(frame: pd.DataFrame, kernel_check: pd.DataFrame | None = None, title: str = "", axes=None):
    """Relative error of y vs T, one panel per input family, one line per backend and dtype; `kernel_check`
    (`Operator.kernel_check`: inputs, T, rel_err_y) drawn as squares; `axes` a row of panels to draw into."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(frame["inputs"]))
    if axes is None:
        fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), sharey=True, squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    styles = {"recurrent": "-", "chunked": "--", "attention": ":", "triton": "-."}
    colors = {"fp64": "C0", "fp32": "C1", "bf16": "C2", "fp16": "C3"}
    ok = frame[frame["status"] == "ok"]
    for ax, kind in zip(axes, kinds):
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
            kc = kernel_check[kernel_check["inputs"] == kind]
            ax.loglog(kc["T"], kc["rel_err_y"], "s", color="k", ms=5, label="triton fp32 (GPU check)")
        ax.set_title(f"{title}{': ' if title else ''}{kind} inputs", fontsize=9)
        ax.set_xlabel("sequence length T")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("relative error of y vs fp64 recurrence\n(the reference itself is drawn at 1e-17)")
    axes[-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
