"""Do the two formulations compute the same function? Measured per position on a real model and prompt."""

from __future__ import annotations

import pandas as pd
import torch

from ..measure.timing import time_fn
from ..models import RecurrentState


def _flat(value) -> torch.Tensor:
    if isinstance(value, RecurrentState):
        return torch.cat([t.flatten().double() for t in value.tensors()])
    return value


def rel_error(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64: the one error measure every check in this project reports. Tensors, or
    two states of one generation (all their tensors as one vector)."""
    x, ref = (_flat(v).detach().double() for v in (x, ref))
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))


@torch.no_grad()
def step_all(model, tokens: torch.Tensor, state=None):
    """The RNN form over a whole sequence: one `model.step` per token. tokens (B, T) -> logits (B, T, V)."""
    logits = []
    for t in range(tokens.shape[1]):
        out, state = model.step(tokens[:, t], state)
        logits.append(out)
    return torch.stack(logits, dim=1), state


@torch.no_grad()
def compare_formulations(
    model, tokens: torch.Tensor, prefill: int | None = None, backend: str | None = None, reference=None
) -> dict:
    """Parallel form vs token-by-token RNN form vs parallel prefill of `prefill` tokens then steps.

    Returns per-position max |delta logit| (lists over T) and the relative errors of logits and final states,
    all measured against the RNN form (`reference`: its (logits, state) on these tokens if already computed).
    """
    T = tokens.shape[1]
    prefill = T // 2 if prefill is None else prefill
    if not 1 <= prefill <= T:
        raise ValueError(f"prefill must be in [1, T] = [1, {T}]; got {prefill}")
    par_logits, par_state = model(tokens, backend=backend)
    rec_logits, rec_state = step_all(model, tokens) if reference is None else reference
    pre_logits, pre_state = model(tokens[:, :prefill], backend=backend)
    if prefill < T:
        rest_logits, pre_state = step_all(model, tokens[:, prefill:], pre_state)
        pre_logits = torch.cat([pre_logits, rest_logits], dim=1)
    return {
        "T": T,
        "prefill": prefill,
        "max_abs_dlogit_parallel": (par_logits - rec_logits).abs().amax(dim=(0, 2)).tolist(),
        "max_abs_dlogit_prefill": (pre_logits - rec_logits).abs().amax(dim=(0, 2)).tolist(),
        "rel_err_logits_parallel": rel_error(par_logits, rec_logits),
        "rel_err_logits_prefill": rel_error(pre_logits, rec_logits),
        "rel_err_state_parallel": rel_error(par_state, rec_state),
        "rel_err_state_prefill": rel_error(pre_state, rec_state),
    }


@torch.no_grad()
def compare_backends(model, tokens: torch.Tensor, backends, reference=None) -> pd.DataFrame:
    """The parallel form with each backend of its operator ('recurrent', 'chunked', 'attention', 'triton' on a
    GPU) against the RNN form (`reference`: its (logits, state) if already computed), one row each: the relative
    errors of the logits and of the final state."""
    rec_logits, rec_state = step_all(model, tokens) if reference is None else reference
    rows = []
    for backend in backends:
        logits, state = model(tokens, backend=backend)
        rows.append(
            {
                "backend": backend,
                "T": tokens.shape[1],
                "rel_err_logits": rel_error(logits, rec_logits),
                "rel_err_state": rel_error(state, rec_state),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def time_formulations(model, lengths, batch: int = 1, repeat: int = 3) -> pd.DataFrame:
    """Seconds to process T tokens: one parallel call vs T recurrent steps, on the model's device."""
    rows = []
    for T in lengths:
        gen = torch.Generator().manual_seed(T)
        tokens = torch.randint(0, model.config.vocab_size, (batch, T), generator=gen).to(model.device)
        parallel = time_fn(lambda: model(tokens), model.device, warmup=1, repeat=repeat)
        recurrent = time_fn(lambda: step_all(model, tokens), model.device, warmup=1, repeat=repeat)
        rows.append(
            {
                "T": T,
                "batch": batch,
                "parallel_s": parallel,
                "recurrent_s": recurrent,
                "parallel_tokens_per_s": batch * T / parallel,
                "recurrent_tokens_per_s": batch * T / recurrent,
            }
        )
    return pd.DataFrame(rows)
