"""Train RWKV-4 (the parallel form) or a matched GPT-NeoX transformer on a corpus, and compare them.

    python -m rwkv_lab.training --arch rwkv --model byte-6x256 --context 512 --tokens 20M --out runs/rwkv
    python -m rwkv_lab.training --arch transformer --model byte-6x256 ...   # same width and depth, SDPA attention

    from rwkv_lab.training import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(model="byte-4x128", tokens=2_000_000), corpus)
    log = trainer.run()                      # pandas DataFrame: loss, val bits-per-byte, tokens/s, FLOPs, memory

Both architectures see the same batches (random windows drawn from the training tokens by a seeded generator),
the same AdamW schedule (linear warm-up, cosine decay) and the same gradient clipping. On CUDA the forward runs
under bf16 autocast, each architecture on its fast path (RWKV's fused blocks, the transformer through
torch.compile); on the CPU in fp32, eager, deterministic for a seed. A checkpoint holds weights, optimizer, step,
the batch generator and the log, so a resumed run continues exactly where it stopped. On one GPU each step
(forward, backward, clipping, AdamW) replays a CUDA graph after a few eager ones (`TrainConfig.cuda_graph`, see
cuda_graph.py): at small widths the host's launches, not the GPU, bounded a step.

The command line writes a run into `--out`, which it checks before the first step and locks while it trains (a
second process training there fails at once); an earlier run there is continued with `--resume` (settings not
given are the saved run's; given ones that differ are printed) or replaced with `--overwrite`, never silently.

Under torchrun: `--parallel ddp` (DistributedDataParallel, a full copy per device) or `--parallel fsdp` (FSDP2's
fully_shard per block: weights, gradients and AdamW state sharded across devices, for models whose AdamW state
does not fit one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import cost
from ..loading.checkpoint import CheckpointError, check_device, save_model, torch_load
from ..loading.tokenizer import load_tokenizer
from ..models import ARCHITECTURES, architecture, architecture_of
from ..models.run_config import check_saved_activations
from ..results import atomic_write, write_table
from .corpus import Corpus, build_corpus
from .cuda_graph import GraphedStep, device_lrs, set_lr
from .loss import lm_loss

ARCHS = tuple(ARCHITECTURES)  # rwkv_lab.models' generations
ALIASES = {"rwkv": "rwkv4"}  # the name of runs (and their checkpoints) from before the second generation
PARALLEL = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    arch: str = "rwkv4"  # 'rwkv4' ('rwkv') | 'rwkv7' | 'transformer' (GPT-NeoX/Pythia block, same width and depth)
    model: str = "byte-6x256"  # a preset or 'byte-<layers>x<width>'
    context: int = 512
    batch_size: int = 32  # sequences per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per process and step (memory: batch_size / (processes * grad_accum))
    tokens: int = 10_000_000  # training tokens (steps = tokens / (batch_size * context), rounded up)
    lr: float = 1e-3
    min_lr: float = 1e-4
    # linear warm-up over this share of the steps, at most warmup_steps (a short run leaves it: see `warmup`)
    warmup_fraction: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1  # matrices only, as nanoGPT and Pythia; not embeddings' decays, mixes, norms
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 250  # steps; also at the end
    eval_tokens: int = 1 << 18  # validation tokens per evaluation (non-overlapping windows from the start)
    log_every: int = 25
    seed: int = 0
    device: str = "auto"  # 'auto': cuda if available
    wkv_backend: str = "auto"
    compile: bool = True  # on CUDA: RWKV's fused blocks, torch.compile of the transformer; False: both eager
    # RWKV's fused blocks: what they keep for the backward (RWKV.saved_activations): 'matmuls', or 'partitioner'
    # with the share of its choice kept (RWKV.activation_memory_budget, below 1 with 'partitioner' only)
    saved_activations: str = "matmuls"
    activation_memory_budget: float = 1.0
    parallel: str = "ddp"  # under torchrun: 'ddp' or 'fsdp'
    # on CUDA, one process, grad_accum 1: each step replays a CUDA graph of forward, backward, clipping and AdamW
    # (rwkv_lab.training.cuda_graph), either architecture; the first steps run eagerly to compile and warm up
    cuda_graph: bool = True
    # > 0: each step's windows are consecutive pieces of random spans this long, so a step sees the tokens a run at
    # context `span` sees, cut into shorter windows (to tell a context's effect from that of fewer, longer draws)
    span: int = 0

    def __post_init__(self):
        self.arch = ALIASES.get(self.arch, self.arch)
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}; got {self.arch!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}; got {self.parallel!r}")
        for name in ("context", "batch_size", "grad_accum", "tokens", "eval_every", "eval_tokens", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0 <= self.warmup_fraction <= 1:
            raise ValueError(
                f"TrainConfig.warmup_steps must be >= 0 and warmup_fraction in [0, 1]; got {self.warmup_steps} "
                f"and {self.warmup_fraction}"
            )
        try:
            architecture(self.arch).get_config(self.model)
        except KeyError as err:  # an unknown size: the valid names, as a setting refused like the others
            raise ValueError(f"TrainConfig.model: {err.args[0]}") from None
        check_saved_activations(self.saved_activations, self.activation_memory_budget, owner="TrainConfig")
        if self.span and (self.span % self.context or (self.batch_size * self.context) % self.span):
            raise ValueError(
                f"TrainConfig.span must be 0 or a multiple of context ({self.context}) that divides the "
                f"{self.batch_size * self.context} tokens of a step; got {self.span}"
            )

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.batch_size * self.context))

    @property
    def warmup(self) -> int:
        """Warm-up steps: warmup_fraction of the run, at most warmup_steps (a 13-step run warms up over 2 steps,
        not 100 it would never leave; from 1000 steps on, warmup_steps)."""
        return min(self.warmup_steps, math.ceil(self.warmup_fraction * self.steps))

    @property
    def model_config(self):
        return architecture(self.arch).get_config(self.model)


def build(cfg: TrainConfig) -> tuple[nn.Module, float]:
    """(model, training FLOPs per token): the generation's official initialisation (RWKV-LM's for RWKV: zeroed
    projections), its fast-path settings from the run's."""
    arch = architecture(cfg.arch)
    mc = cfg.model_config
    model = arch.build(mc, seed=cfg.seed, context=cfg.context)
    if arch.recurrent:
        model.configure(
            backend=cfg.wkv_backend,
            saved_activations=cfg.saved_activations,
            activation_memory_budget=cfg.activation_memory_budget,
        )
    return model, cost.training_flops_per_token(arch.forward_flops_per_token(mc, cfg.context))


def fast_path(model: nn.Module, enabled: bool = True) -> nn.Module:
    """What a training loss should call on CUDA: a recurrent LM on its own fast path (RunConfig.fused_blocks,
    'auto'), a transformer through torch.compile, as a practitioner would run it. Not enabled: both eager.
    Elsewhere (the CPU) both stay eager. `model` may be a DDP wrapper."""
    inner = getattr(model, "module", model)
    if architecture_of(inner).recurrent:
        inner.configure(fused_blocks="auto" if enabled else False)
        return model
    on_cuda = next(inner.parameters()).is_cuda
    return torch.compile(model) if enabled and on_cuda else model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups, each with an `lr_scale` on the schedule's rate: weight decay where the generation's
    `takes_weight_decay` says (the projection matrices, not embeddings, norms, token-shift mixes or decays, as
    nanoGPT, Pythia and RWKV-LM do; RWKV-7 also spares its LoRAs, as RWKV-LM x070 does); the generation's
    `lr_scale` parameters (RWKV-LM's layerwise recipe: RWKV-4's time_decay and time_first, RWKV-7's att.w0) at
    their scale."""
    arch = architecture_of(model)
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        scale = next((s for suffix, s in arch.lr_scale.items() if name.endswith(suffix)), 1.0)
        key = (weight_decay if arch.takes_weight_decay(name, p) else 0.0, scale)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in sorted(groups.items())]


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    return loss / math.log(2) / bytes_per_token


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised (torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains one model on one corpus; under torchrun, one process per device with DistributedDataParallel.

    Every process draws the same global batch of `batch_size` windows from the seeded generator and trains on its
    share, split into `grad_accum` micro-batches; DDP averages the gradients, so a run on N processes follows the
    loss curve of one process with the same global batch (up to the order of float additions). Evaluation runs
    the same windows everywhere; only rank 0 writes checkpoints and logs.
    """

    def __init__(self, cfg: TrainConfig, corpus: Corpus, progress: bool = True):
        if corpus.vocab_size > cfg.model_config.vocab_size:
            raise ValueError(
                f"the corpus was tokenised with {corpus.vocab_size} token ids but model "
                f"{cfg.model!r} has a vocabulary of {cfg.model_config.vocab_size}"
            )
        if len(corpus.train) <= cfg.context + 1 or len(corpus.val) <= cfg.context + 1:
            raise ValueError(
                f"context {cfg.context} is longer than the corpus' train ({len(corpus.train)}) or "
                f"validation ({len(corpus.val)}) tokens"
            )
        self.rank, self.world = distributed()
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} must split evenly over {self.world} processes x grad_accum "
                f"{cfg.grad_accum} micro-batches"
            )
        self.cfg, self.corpus, self.progress = cfg, corpus, progress and self.rank == 0
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and self.world > 1:
            device = f"cuda:{torch.cuda.current_device()}"  # torchrun: main() set this process's device
        self.device = torch.device(device)
        self.model, self.flops_per_token = build(cfg)
        self.model.to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.sharded = self.world > 1 and cfg.parallel == "fsdp"
        self.forward_model = self.model  # what the loss calls: a DDP or compiled wrapper, or the model itself
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            for layer in _layers(self.model):
                fully_shard(layer)
            fully_shard(self.model)
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # the fused blocks call Block.forward directly, past the module hooks FSDP gathers weights in
        recurrent = architecture(cfg.arch).recurrent
        self.forward_model = fast_path(self.forward_model, cfg.compile and not (self.sharded and recurrent))
        # fused AdamW on CUDA; FSDP's sharded parameters take the multi-tensor one
        fused = {"fused": True} if self.device.type == "cuda" and not self.sharded else {}
        graphed = cfg.cuda_graph and self.device.type == "cuda" and self.world == 1 and cfg.grad_accum == 1
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            capturable=graphed,
            **fused,
        )
        # the step as a CUDA graph (cfg.cuda_graph), None where it runs eagerly
        self.graphed_step = GraphedStep(self._update, self.optimizer) if graphed else None
        if graphed:
            device_lrs(self.optimizer, self.device)
        self.train_tokens = corpus.train.to(self.device)
        self.val_windows = self._val_windows()
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.step = 0
        self.log: list[dict] = []
        self.train_seconds = 0.0

    def _val_windows(self) -> torch.Tensor:
        T = self.cfg.context
        n = max(1, min(self.cfg.eval_tokens // T, len(self.corpus.val) // (T + 1)))
        return self.corpus.val[: n * (T + 1)].view(n, T + 1).to(self.device)  # (n, T + 1)

    def lr_at(self, step: int) -> float:
        """The schedule's rate at `step`: linear warm-up over cfg.warmup steps, then cosine decay to min_lr."""
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        T, B = self.cfg.context, self.cfg.batch_size
        span = self.cfg.span or T
        spans = torch.randint(0, len(self.train_tokens) - span - 1, (B * T // span,), generator=self.generator)
        start = (spans[:, None] + torch.arange(0, span, T)).flatten()  # (B,): each span's pieces in order
        idx = start.to(self.device)[:, None] + torch.arange(T + 1, device=self.device)  # (B, T + 1)
        window = self.train_tokens[idx].long()
        return window[:, :-1], window[:, 1:]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.forward_model, x, y)

    def _no_sync(self):
        """No gradient exchange for this micro-batch (all but the last of a step)."""
        if self.sharded:
            return _fsdp_sync_off(self.model)
        return getattr(self.forward_model, "_orig_mod", self.forward_model).no_sync()

    def train_step(self) -> torch.Tensor:
        """One optimizer step on the global batch; returns its mean loss (the same number on every process)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            set_lr(group, self.lr_at(self.step) * group["lr_scale"])
        x, y = self.next_batch()  # (B, T): the global batch, identical on every process
        share = self.cfg.batch_size // self.world
        x, y = x[self.rank * share : (self.rank + 1) * share], y[self.rank * share : (self.rank + 1) * share]
        if self.graphed_step is not None:
            total = self.graphed_step(x, y)
        else:
            total = self._update(x, y)
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= self.world
        return total

    def _update(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of this process's share (B, T) in micro-batches, clipping and the AdamW step; the
        gradients stay in place (a captured step keeps them). Returns the share's mean loss."""
        total = torch.zeros((), device=self.device)
        micro = len(x) // self.cfg.grad_accum
        for i in range(self.cfg.grad_accum):
            last = i == self.cfg.grad_accum - 1
            # DDP averages gradients over processes at the last micro-batch only
            sync = contextlib.nullcontext()
            if not last and self.world > 1:
                sync = self._no_sync()
            with sync:
                loss = self.loss(x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro])
                (loss / self.cfg.grad_accum).backward()
            total += loss.detach() / self.cfg.grad_accum
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return total

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss (nats/token) over the fixed validation windows."""
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        windows = self.val_windows
        for i in range(0, len(windows), self.cfg.batch_size):
            w = windows[i : i + self.cfg.batch_size].long()
            total += self.loss(w[:, :-1], w[:, 1:]).double() * len(w)
        return float(total) / len(windows)

    def _peak_memory(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux: KiB)

    def run(self, steps: int | None = None, checkpoint: str | Path | None = None) -> pd.DataFrame:
        """Train until `steps` (default: the config's) and return the whole log; evaluates every `eval_every`."""
        cfg, end = self.cfg, min(steps or self.cfg.steps, self.cfg.steps)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        bar = tqdm(
            total=end,
            initial=self.step,
            desc=f"{cfg.arch} {cfg.model} T={cfg.context}",
            disable=not self.progress,
            mininterval=2,
        )
        losses, t0, tokens_since = [], time.perf_counter(), 0
        while self.step < end:
            losses.append(self.train_step())
            tokens_since += cfg.batch_size * cfg.context
            last = self.step == end
            if self.step % cfg.log_every == 0 or self.step % cfg.eval_every == 0 or last:
                train_loss = float(torch.stack(losses).float().mean())  # syncs the device once per log
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                row = {
                    "step": self.step,
                    "tokens": self.step * cfg.batch_size * cfg.context,
                    "lr": self.lr_at(self.step - 1),
                    "train_loss": train_loss,
                    "tokens_per_s": tokens_since / seconds,
                    "train_seconds": self.train_seconds,
                    "flops": self.flops_per_token * self.step * cfg.batch_size * cfg.context,
                    "peak_memory_bytes": self._peak_memory(),
                    "val_loss": None,
                    "val_bpb": None,
                }
                if self.step % cfg.eval_every == 0 or last:
                    row["val_loss"] = self.evaluate()
                    row["val_bpb"] = bits_per_byte(row["val_loss"], self.corpus.val_bytes_per_token)
                self.log.append(row)
                bar.set_postfix(
                    loss=f"{train_loss:.3f}",
                    tok_s=f"{row['tokens_per_s']:.3g}",
                    **({"val_bpb": f"{row['val_bpb']:.3f}"} if row["val_bpb"] is not None else {}),
                )
                losses, t0, tokens_since = [], time.perf_counter(), 0
            bar.update(1)
        bar.close()
        if checkpoint is not None:
            self.save(checkpoint)
        return self.frame()

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.log)
        for key, value in {
            "arch": self.cfg.arch,
            "model": self.cfg.model,
            "context": self.cfg.context,
            "batch_size": self.cfg.batch_size,
            "params": self.n_params,
            # whether the steps replayed a CUDA graph (False where it was off or its capture failed, with a warning)
            "cuda_graph": self.graphed_step is not None and self.graphed_step.captured,
        }.items():
            frame[key] = value
        return frame

    def full_state(self) -> tuple[dict, dict]:
        """The model's and the optimizer's whole state dicts; under FSDP gathered from every shard onto rank 0's
        CPU (a collective: every process calls it; the others get empty dicts)."""
        if not self.sharded:
            optimizer = self.optimizer.state_dict()
            for group in optimizer["param_groups"]:  # a captured step's device rates saved as numbers
                group["lr"] = float(group["lr"])
            return self.model.state_dict(), optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (
            get_model_state_dict(self.model, options=full),
            get_optimizer_state_dict(self.model, self.optimizer, options=full),
        )

    def unsharded_model(self) -> nn.Module | None:
        """The trained model as one ordinary module; under FSDP a CPU copy of the gathered weights, on rank 0 only
        (a collective: every process calls it; the others get None)."""
        if not self.sharded:
            return self.model
        weights, _ = self.full_state()
        if self.rank != 0:
            return None
        copy, _ = build(self.cfg)
        copy.load_state_dict(weights)
        return copy

    def save(self, path) -> Path | None:
        """Everything a resumed run needs; loads with torch.load(weights_only=True). Rank 0 writes it."""
        weights, optimizer = self.full_state()
        if self.rank != 0:
            return None
        blob = {
            "config": dataclasses.asdict(self.cfg),
            "model": weights,
            "optimizer": optimizer,
            "step": self.step,
            "generator": self.generator.get_state(),
            "log": self.log,
            "train_seconds": self.train_seconds,
            "corpus_sha256": self.corpus.files_sha256,
        }
        return atomic_write(Path(path), lambda tmp: torch.save(blob, tmp))

    def load(self, path, blob: dict | None = None) -> Trainer:
        """Continue the run saved at `path` (`blob`: its contents, where read_run has read them already)."""
        blob = blob if blob is not None else read_run(path)
        saved = TrainConfig(**blob["config"])  # an old run's arch 'rwkv' reads as 'rwkv4'
        for name in ("arch", "model", "context", "batch_size", "seed"):
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"checkpoint {path} was trained with {name}={getattr(saved, name)!r}, "
                    f"this run has {getattr(self.cfg, name)!r}"
                )
        if blob["corpus_sha256"] != self.corpus.files_sha256:
            raise ValueError(
                f"checkpoint {path} was trained on corpus {blob['corpus_sha256'][:12]}, "
                f"this run's corpus is {self.corpus.files_sha256[:12]}"
            )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, blob["model"], options=full)
            set_optimizer_state_dict(self.model, self.optimizer, blob["optimizer"], options=full)
        else:
            self.model.load_state_dict(blob["model"])
            self.optimizer.load_state_dict(blob["optimizer"])
            if self.graphed_step is not None:  # new optimizer state and rates: capture again, read rates on device
                device_lrs(self.optimizer, self.device)
                self.graphed_step.reset()
        self.step, self.log, self.train_seconds = blob["step"], blob["log"], blob["train_seconds"]
        self.generator.set_state(blob["generator"].cpu())
        return self


RUN_KEYS = ("config", "model", "optimizer", "step", "generator", "log", "train_seconds", "corpus_sha256")


def read_run(path) -> dict:
    """A training checkpoint (Trainer.save) on the CPU, or a one-line error naming the file: missing, not a
    checkpoint, truncated, holding code, or a checkpoint of something else (a model's weights alone)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}; expected the checkpoint.pt of an earlier run")
    blob = torch_load(path)
    missing = [key for key in RUN_KEYS if key not in blob] if isinstance(blob, dict) else list(RUN_KEYS)
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (python -m rwkv_lab.training writes one): it lacks {missing}"
        )
    try:
        TrainConfig(**blob["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its saved settings are not a TrainConfig ({err})") from None
    return blob


def _layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: RWKV's blocks, or GPT-NeoX's layers."""
    return list(model.blocks) if architecture_of(model).recurrent else list(model.gpt_neox.layers)


@contextlib.contextmanager
def _fsdp_sync_off(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def parse_count(text: str) -> int:
    """'20M' -> 20_000_000, '512k' -> 512_000, '1e6' -> 1_000_000."""
    scale = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
    return int(float(text[:-1]) * scale[text[-1]]) if text and text[-1] in scale else int(float(text))


def parse_switch(text: str) -> bool:
    """'on' / 'off' (also true/false, yes/no, 1/0) for a boolean option."""
    value = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected on or off; got {text!r}")
    return value[text.lower()]


# what each TrainConfig setting does, for --help (the defaults are added from TrainConfig)
HELP = {
    "arch": f"architecture: one of {ARCHS} (the transformer: a GPT-NeoX/Pythia block of the same width and depth)",
    "model": "size: a preset or 'byte-<layers>x<width>'",
    "context": "tokens per training window",
    "batch_size": "sequences per optimizer step, over all processes and accumulation steps",
    "grad_accum": "micro-batches per process and step",
    "tokens": "training tokens (20M, 512k, 1e6); steps = tokens / (batch size x context), rounded up",
    "lr": "peak learning rate",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_fraction": "share of the steps the learning rate rises over, linearly (at most --warmup-steps)",
    "warmup_steps": "the most warm-up steps, however long the run",
    "weight_decay": "AdamW weight decay of the projection matrices (not embeddings, norms, mixes, decays)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the gradients' global norm to this (0: no clipping)",
    "eval_every": "steps between evaluations and checkpoints (also at the end)",
    "eval_tokens": "validation tokens per evaluation",
    "log_every": "steps between log rows",
    "seed": "seed of the initial weights and of the batch draws",
    "device": "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'",
    "wkv_backend": "RWKV's WKV implementation ('auto': Triton on CUDA, chunked on the CPU)",
    "compile": "on CUDA: RWKV's fused blocks and torch.compile of the transformer (off: both eager)",
    "saved_activations": "what RWKV's fused blocks keep for the backward: 'matmuls' or 'partitioner'",
    "activation_memory_budget": "with --saved-activations partitioner: the share of activations it keeps",
    "parallel": f"under torchrun: one of {PARALLEL}",
    "cuda_graph": "on CUDA, one process, grad-accum 1: replay each step from a CUDA graph",
    "span": "> 0: a step's windows are consecutive pieces of random spans this long (a multiple of context)",
}
RUN_FILES = ("checkpoint.pt", "log.csv", "log.meta.json", "model.safetensors")  # what a run writes into --out
LOCK_FILE = ".training.lock"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's docstring as written, each option's default after its description."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """Bad usage in one line, exit 2 (argparse would print the 25-line usage before it; --help shows it)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> int:
    parser = Parser(
        prog="python -m rwkv_lab.training", description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False
    )
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind = parse_count if f.name in ("tokens", "eval_tokens") else type(getattr(defaults, f.name))
        kind = parse_switch if kind is bool else kind
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name), help=HELP[f.name]
        )
    parser.add_argument(
        "--data",
        help="a directory (its *.py files, or --pattern) or a text file; default: this interpreter's standard library",
    )
    parser.add_argument("--pattern", default="*.py", help="which files of a --data directory")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="share of files held out for validation")
    parser.add_argument("--tokenizer", default="bytes", help="'bytes' or a tokenizer.json")
    parser.add_argument("--out", required=True, help="folder for checkpoint.pt, log.csv and (RWKV) model.safetensors")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint.pt; settings not given take the saved run's",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out and --overwrite replaces it: give one of them")
    # the settings given on the command line (no abbreviations: allow_abbrev=False), the others are defaults
    given = {a.dest for a in parser._actions for o in a.option_strings for t in argv if t == o or t.startswith(o + "=")}
    try:  # a setting TrainConfig refuses is bad usage: one line, exit 2
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    except ValueError as err:
        parser.error(str(err))
    try:
        return train(cfg, args, given)
    except (OSError, ValueError, TypeError, RuntimeError) as err:  # a failed run: one line, exit 1
        if args.debug:
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1


def check_out(out: Path) -> None:
    """--out must be a folder this process can write, or a path where one can be made: checked before the corpus
    and the first step (the first checkpoint comes an evaluation later), without creating anything."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; expected a folder for the run's files")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"--out {out}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: {existing} is not writable; expected a folder you can write")


def lock_run(out: Path):
    """An exclusive lock on the run folder `out` (made if missing), held while the returned file stays open: the
    operating system releases it when this process exits, however it ends, so a lock is never stale. A second
    process fails at once, naming the holder."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise BlockingIOError(
            f"another training (pid {holder}) is writing to {out}: wait for it to end, or choose another --out"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def earlier_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def resumed_config(cfg: TrainConfig, blob: dict, given: set[str], where: Path) -> TrainConfig:
    """The settings of a resumed run: the saved run's, except those given on the command line; a given setting
    that differs from the saved one is printed (it overrides the saved run's from here on)."""
    saved = blob["config"]
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    changed = [n for n in names if n in given and n in saved and getattr(cfg, n) != saved[n]]
    if changed:
        overrides = ", ".join(f"{n} {saved[n]!r} -> {getattr(cfg, n)!r}" for n in changed)
        print(f"resuming {where}: overriding the saved run's settings: {overrides}", file=sys.stderr)
    kept = {n: saved[n] for n in names if n not in given and n in saved}
    return dataclasses.replace(cfg, **kept)


def train(cfg: TrainConfig, args: argparse.Namespace, given: set[str] = frozenset()) -> int:
    """The command line's run: corpus, trainer, checkpoints at every evaluation, then the log and the export."""
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device != "auto":
        check_device(cfg.device)
    check_out(out)
    lock = lock_run(out) if out.is_dir() and rank == 0 else None  # a run writing there now: fail at once
    blob = None
    if args.resume:
        blob = read_run(out / "checkpoint.pt")
        cfg = resumed_config(cfg, blob, given, out)
        if blob["step"] >= cfg.steps:
            print(
                f"the run in {out} is finished ({blob['step']} of {cfg.steps} steps): nothing to do; give a larger "
                "--tokens to train on, or --overwrite to start again",
                file=sys.stderr,
            )
            return 0
    elif earlier_run(out) and not args.overwrite:
        raise FileExistsError(
            f"--out {out} holds an earlier run ({', '.join(earlier_run(out))}): pass --resume to continue it or "
            "--overwrite to replace it"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: one process per device
        import torch.distributed as dist

        use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    corpus = build_corpus(args.data, load_tokenizer(args.tokenizer), args.val_fraction, args.pattern)
    trainer = Trainer(cfg, corpus)
    if trainer.rank == 0:
        print(corpus.summary(), file=sys.stderr)
        lock = lock or lock_run(out)  # --out made only now, when nothing can fail before the first step
        if args.overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    if blob is not None:
        trainer.load(out / "checkpoint.pt", blob)
    while trainer.step < cfg.steps:  # a checkpoint at every evaluation: an interrupted run loses little
        trainer.run(min(cfg.steps, trainer.step + cfg.eval_every), checkpoint=out / "checkpoint.pt")
    model = trainer.unsharded_model()  # under FSDP a collective: every process takes part
    if trainer.rank == 0:
        params = dataclasses.asdict(cfg) | corpus.summary() | {"processes": trainer.world}
        write_table(out / "log.csv", trainer.frame(), params, trainer.device)
        if architecture(cfg.arch).recurrent:
            save_model(model, out / "model.safetensors")
        print(trainer.frame().dropna(subset=["val_loss"]).to_string(index=False))
    if trainer.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if lock is not None:
        lock.close()
    return 0
