"""Memory on either device (CUDA allocator, or the process's resident set on the CPU), what a training step
keeps for its backward, and the analytic model of what RWKV and a transformer hold: weights, state or KV cache,
prefill activations."""

from __future__ import annotations

import gc
from pathlib import Path

import torch


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_now(device) -> int:
    """Bytes held: the CUDA caching allocator's allocated bytes, or the process's resident set on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status("VmRSS")


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def memory_peak(device) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status("VmHWM")


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def saved_for_backward(forward, model: torch.nn.Module) -> list[dict]:
    """Every distinct storage autograd keeps while `forward()` runs (it returns the loss, then backpropagated so
    that what was kept was used): shape, dtype and bytes, the model's parameters excluded. Counted through
    saved-tensor hooks, so it sees what compiled graphs (torch.compile's partitioner) and custom operators keep,
    on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, rows = set(), []

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            rows.append(
                {"shape": tuple(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "bytes": storage.nbytes()}
            )
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    loss.backward()
    return rows


def analytic_memory(
    n_params: int,
    dtype_bytes: int,
    d_model: int,
    vocab: int,
    batch: int,
    context: int,
    state_bytes: int = 0,
    cache_bytes_per_token: int = 0,
) -> dict:
    """Bytes by the formulas: weights N·s; per sequence, a constant recurrent state of `state_bytes` (the model's
    `state_bytes`: RWKV-4's 5·C·L numbers, RWKV-7's L·(2C + H·N·N), in fp32) plus a cache growing by
    `cache_bytes_per_token` per token of context (a transformer's KV cache, 2·L·d numbers in its dtype); the
    prefill's transient activations, O(B·T·C), of which the largest live set is about the FFN's 4C hidden plus a
    few C-wide tensors (12 C per token, in the compute dtype) and the last position's logits in fp32."""
    weights = n_params * dtype_bytes
    cache = batch * (state_bytes + context * cache_bytes_per_token)
    activations = batch * context * 12 * d_model * dtype_bytes + batch * vocab * 4
    return {
        "weights_bytes": weights,
        "cache_bytes": cache,
        "held_bytes": weights + cache,
        "prefill_peak_bytes": weights + cache + activations,
    }
