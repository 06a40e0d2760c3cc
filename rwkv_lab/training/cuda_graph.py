"""One optimizer step replayed from a CUDA graph: the host launches a step once instead of kernel by kernel.

A training step of a small model, or of RWKV-4's fused blocks at 169M, is a thousand-odd kernels whose launches
(Python, the compiled blocks' guards and wrappers, autograd, the optimizer) can take longer than the GPU work
itself: `benchmarks/bench_training.py --profile` puts a step's device time beside its wall time. Captured once,
the whole step (forward, backward, clipping, AdamW) is one graph launch per step, for either architecture.

    step = GraphedStep(update, optimizer)  # update(x, y) -> loss: forward, backward, clip, optimizer.step()
    loss = step(x, y)                      # the first `warmup` calls run eagerly, the next captures, then replays

What a captured step needs, and how it is met here (PyTorch's whole-network capture recipe):
- static memory: inputs are copied into buffers the graph reads; gradients are left in place between steps (the
  backward of a replay writes them, as it did while capturing from None), so `update` must not zero them;
- the learning rate read on the device: each param group's rate is its own device tensor (`device_lrs`), which
  the schedule fills before the replay; the optimizer is AdamW with `capturable=True`;
- no host synchronisation inside the step (lm_loss calls the model without its token checks);
- warm-up outside the capture, on the capture's stream: compilation, autotuning and lazy allocations happen there.
A capture that fails (an operation that cannot be captured) warns and leaves the step eager: speed, not results.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

WARMUP = 3  # eager steps before the capture: compile, autotune, allocate


def device_lrs(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Give each param group its own learning-rate tensor on the device, which a captured step reads (a Python
    float would be baked into the graph). Idempotent; also after optimizer.load_state_dict, which puts back the
    saved rates."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def set_lr(group: dict, value: float) -> None:
    """Set a param group's rate, in place when it is a device tensor (see device_lrs)."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


class GraphedStep:
    """Calls `update(x, y)`: eagerly for the first `warmup` calls (then setting gradients to None), captured into
    a CUDA graph at the next, replayed from then on. `update` runs forward, backward, clipping and
    `optimizer.step()`, leaves the gradients in place and returns the loss; inputs keep their shape and dtype."""

    def __init__(self, update: Callable, optimizer: torch.optim.Optimizer, warmup: int = WARMUP):
        self.update, self.optimizer, self.warmup = update, optimizer, warmup
        self.stream = torch.cuda.Stream()
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None  # why the capture failed: the step then stays eager
        self.static: tuple[torch.Tensor, ...] = ()
        self.loss: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def reset(self) -> None:
        """Forget the graph (it holds the addresses of the optimizer's state, which loading a checkpoint replaces):
        the next call captures again."""
        self.graph, self.static, self.loss = None, (), None
        self.calls = min(self.calls, self.warmup)  # warmed up already: capture at the next call

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.graph is None and (self.failed or self.calls <= self.warmup or not self._capture(x, y)):
            return self._eager(x, y)
        self.static[0].copy_(x)
        self.static[1].copy_(y)
        self.graph.replay()
        return self.loss.clone()  # the next replay overwrites the static loss

    def _eager(self, x, y) -> torch.Tensor:
        # on the capture's stream, so that what the warm-up initialises lazily is there for the capture
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            loss = self.update(x, y)
            self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(self.stream)
        return loss

    def _capture(self, x, y) -> bool:
        """Capture one step (recording, not running it); False if that failed."""
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it then keeps
        # buffers with the inputs' strides: a compiled model guards on strides, and one that saw a view of the
        # batch while warming up would recompile, inside the capture, for a contiguous copy
        static = tuple(torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device) for t in (x, y))
        static[0].copy_(x)
        static[1].copy_(y)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                loss = self.update(*static)
        except RuntimeError as err:
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            message = f"the training step could not be captured in a CUDA graph, it stays eager ({self.failed})"
            warnings.warn(message, stacklevel=3)
            torch.cuda.synchronize()
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.graph, self.static, self.loss = graph, static, loss.detach()
        return True
