"""Measuring: medians of timed repeats after warm-up, peak memory, and out-of-memory as a data point."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cuda_kernels(fn: Callable[[], object], device="cuda") -> list:
    """The CUDA kernels of one call of `fn` (after one untimed call), by total device time, largest first:
    torch.profiler's averaged events, each with `key`, `count` and `device_time_total` (microseconds)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(kernels, key=lambda e: -e.device_time_total)


def kernel_shares(fn: Callable[[], object], device="cuda") -> list[dict]:
    """cuda_kernels as rows, largest first: each kernel's name, calls, device milliseconds and share of the call's
    device time (`device_ms`, the same in every row)."""
    kernels = cuda_kernels(fn, device)
    total = sum(e.device_time_total for e in kernels)
    return [
        {"kernel": e.key[:100], "calls": e.count, "ms": e.device_time_total / 1e3}
        | {"share": e.device_time_total / total, "device_ms": total / 1e3}
        for e in kernels
    ]


def time_fn(
    fn: Callable[[], object], device="cuda", warmup: int = 3, repeat: int = 10, min_seconds: float = 0.0
) -> float:
    """Median seconds per call. CUDA: device events around each call; CPU: the wall clock.

    A call slower than 0.2 s is repeated only 3 times: the median of a few is enough at that scale.
    """
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    if time.perf_counter() - t0 > 0.2:
        warmup, repeat = 0, min(repeat, 3)
    for _ in range(warmup - 1):
        fn()
    synchronize(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_seconds:
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], device="cuda") -> int | None:
    """Bytes allocated at the peak of one call beyond what was allocated before it (CUDA only)."""
    if torch.device(device).type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(err).lower()


OOM = "oom"  # what `or_oom` returns when the call ran out of memory


def or_oom(fn: Callable[[], object], device="cuda"):
    """fn()'s result, or OOM if it ran out of memory (the allocator's cache is then emptied): running out of
    memory is a result of a sweep, not a failure. Any other error propagates."""
    try:
        return fn()
    except (RuntimeError, MemoryError) as err:
        if not is_oom(err):
            raise
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return OOM


def measure(fn: Callable[[], object], device="cuda", warmup: int = 3, repeat: int = 10) -> dict:
    """{'status': 'ok', 'seconds', 'peak_bytes'} or {'status': 'oom'}."""
    result = or_oom(lambda: (time_fn(fn, device, warmup, repeat), peak_memory(fn, device)), device)
    if result is OOM:
        return {"status": "oom", "seconds": None, "peak_bytes": None}
    return {"status": "ok", "seconds": result[0], "peak_bytes": result[1]}


def host_seconds(fn: Callable[[], object], device="cuda", warmup: int = 3, repeat: int = 20) -> float:
    """Median seconds the host takes to issue one call (CUDA: the device idle before each, so no launch waits on
    it): the part of a call that a CUDA graph's replay removes."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    synchronize(device)
    return statistics.median(times)


def graphed_seconds(fn: Callable[[], object], device="cuda", warmup: int = 3, repeat: int = 10) -> float:
    """Median seconds of one replay of `fn` captured in a CUDA graph: its device work alone, without the host's
    launches (fn must be capturable: no host synchronisation). Warm-up runs on a side stream, as capture needs."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    seconds = time_fn(graph.replay, device, warmup=1, repeat=repeat)
    del graph
    return seconds


def copy_bandwidth(device="cuda", nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device, warmup=3, repeat=20)
    return 2 * nbytes / seconds


def matmul_throughput(device="cuda", dtype=torch.float16, n: int = 8192) -> float:
    """Floating-point operations per second (2 per multiply-add) of an n x n x n matrix product in `dtype` on
    random data: what the card's dense matrix work reaches here, the ceiling of a compute-bound pass."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / time_fn(lambda: a @ b, device, warmup=5, repeat=20)
