"""State tracking: the word problem of a permutation group, trained short and tested long (notebook 06).

The RWKV-7 paper (arXiv 2503.14456, section 4 and its group-multiplication experiment) argues that RWKV-7's state
update, a decay plus a rank-one "delta rule" term with vector-valued in-context learning rates, can track state
that a diagonal recurrence (RWKV-4) or a constant-depth transformer cannot: composing permutations of five
elements (the S5 word problem, the smallest non-solvable group, complete for NC^1) and parity (S2). The test here:

    input   g_1, g_2, ..., g_T          each a permutation of {0, ..., n-1}, drawn uniformly; token = its index
    target  p_t = g_t o ... o g_2 o g_1  the arrangement after applying g_1, then g_2, ..., then g_t (its index)

A causal model answers at every position, so one sequence of length T scores the prefixes of every length 1..T:
trained on sequences of `train_length`, a model is scored at each length up to `test_length`, past what it saw.
Parity is S2 (the identity and the swap: p_t is the XOR of the inputs so far).

    group = word_problem("S5")                                  # or "parity", "S3", ...
    trainer = WordProblemTrainer(TrainConfig(arch="rwkv7", model="byte-2x64", context=16, ...), group)
    trainer.run()                                               # the trainer's own step, schedule, log
    accuracy_by_length(trainer.model, group, length=64, n=256)  # (length, accuracy): past 16 is extrapolation

The models are the trainer's byte-level sizes (256 input ids, of which the group uses its order; the loss is the
trainer's `lm_loss` over the head's columns, the answer read from the group's). Everything else is the trainer's:
AdamW groups, warm-up and cosine schedule, clipping, bf16 autocast and the CUDA graph on a GPU; the batches come
from the task (`WordProblemTrainer.next_batch`, drawn from the trainer's seeded generator, so runs are
deterministic and resume exactly).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
from dataclasses import dataclass

import pandas as pd
import torch

from .corpus import Corpus
from .loss import AUTOCAST_DTYPE, logits_of
from .trainer import TrainConfig, Trainer

VAL_SEED_OFFSET = 1_000_003  # the held-out sequences' generator: seed + this, never the training draws' seed
TEST_SEED_OFFSET = 2_000_003  # the long test sequences' generator
RUN_KEYS = ("task", "arch", "model", "lr", "seed")  # what names one run


@dataclass(frozen=True)
class WordProblem:
    """The word problem of S_n. `elements`: the n! permutations of range(n) in lexicographic order (index 0 the
    identity); `table[a, b]`: the index of "apply a, then b" (elements[b] o elements[a])."""

    name: str
    n: int
    elements: tuple[tuple[int, ...], ...]
    table: torch.Tensor  # (G, G) int64

    @property
    def order(self) -> int:
        return len(self.elements)

    @property
    def chance(self) -> float:
        """The accuracy of a guess that ignores the inputs (the answers are uniform over the group)."""
        return 1 / self.order

    def sample(self, batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` words of `length` uniform elements and their prefix products: x, y (batch, length) int64."""
        if batch < 1 or length < 1:
            raise ValueError(f"a word problem sample needs batch >= 1 and length >= 1; got {batch} and {length}")
        x = torch.randint(0, self.order, (batch, length), generator=generator)  # (B, T)
        return x, self.prefix_products(x)

    def prefix_products(self, x: torch.Tensor) -> torch.Tensor:
        """The answers to words x (B, T) of element indices: y[:, t] the index of x[:, t] o ... o x[:, 0]."""
        table = self.table.to(x.device)
        y = torch.empty_like(x)
        y[:, 0] = x[:, 0]
        for t in range(1, x.shape[1]):  # the scan: T gathers over the batch
            y[:, t] = table[y[:, t - 1], x[:, t]]
        return y


def compose(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation "apply `first`, then `then`": i -> then[first[i]]."""
    return tuple(then[i] for i in first)


def word_problem(name: str) -> WordProblem:
    """'parity' (S2) or 'S<n>' for n in 2..5 (S5: 120 elements; the byte models' 256 ids bound n at 5)."""
    match = re.fullmatch(r"[Ss]([2-5])", name)
    if name != "parity" and not match:
        raise ValueError(f"unknown state-tracking task {name!r}; expected 'parity' or 'S2' ... 'S5'")
    n = 2 if name == "parity" else int(match[1])
    elements = tuple(itertools.permutations(range(n)))
    index = {p: i for i, p in enumerate(elements)}
    table = torch.tensor([[index[compose(a, b)] for b in elements] for a in elements], dtype=torch.int64)
    return WordProblem(name if name == "parity" else f"S{n}", n, elements, table)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """torch's CPU threads set to `n` inside the block, restored after (None: left as they are). At the task's
    shapes (words of tens of elements, widths of 64) an op is too small to split: on this project's two loaded
    cores, two threads trained several times slower than one (the notebook's live run)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def task_corpus(group: WordProblem, length: int, seed: int = 0) -> Corpus:
    """What the trainer's checks and its bits-per-token read: a word's inputs (train) and prefix products (val) as
    token streams, one byte per token (so the log's val_bpb is bits per answer). The batches themselves come from
    WordProblemTrainer, not from these streams."""
    x, y = group.sample(1, 4 * length, torch.Generator().manual_seed(seed))
    return Corpus(
        train=x[0],
        val=y[0],
        source=f"{group.name} word problem",
        files_sha256=hashlib.sha256(f"{group.name} word problem".encode()).hexdigest(),
        n_train_files=0,
        n_val_files=0,
        train_bytes=x.numel(),
        val_bytes=y.numel(),
        tokenizer="group elements",
        vocab_size=group.order,
    )


class WordProblemTrainer(Trainer):
    """The trainer on a word problem: its batches are fresh words of `cfg.context` elements with their prefix
    products as targets, drawn from the trainer's generator; validation is a fixed held-out set of such words
    (`cfg.eval_tokens // cfg.context` of them) at the training length. Everything else is Trainer's."""

    def __init__(self, cfg: TrainConfig, group: WordProblem, progress: bool = False):
        self.group = group  # before Trainer.__init__, which calls _val_windows
        super().__init__(cfg, task_corpus(group, cfg.context, cfg.seed), progress)

    def _val_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(1, self.cfg.eval_tokens // self.cfg.context)
        generator = torch.Generator().manual_seed(self.cfg.seed + VAL_SEED_OFFSET)
        x, y = self.group.sample(n, self.cfg.context, generator)
        return x.to(self.device), y.to(self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.group.sample(self.cfg.batch_size, self.cfg.context, self.generator)
        return x.to(self.device), y.to(self.device)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss (nats per answer) over the held-out words."""
        self.model.eval()
        x, y = self.val_windows
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for i in range(0, len(x), self.cfg.batch_size):
            total += self.loss(x[i : i + self.cfg.batch_size], y[i : i + self.cfg.batch_size]).double() * len(
                x[i : i + self.cfg.batch_size]
            )
        return float(total) / len(x)


@torch.no_grad()
def accuracy_by_length(
    model: torch.nn.Module,
    group: WordProblem,
    length: int,
    n: int = 256,
    seed: int = 0,
    batch: int = 64,
    logits=logits_of,
) -> pd.DataFrame:
    """The share of `n` fresh words (drawn from seed + TEST_SEED_OFFSET) whose prefix of each length 1..`length`
    the model answers right: its argmax over the group's elements at that position (of `logits(model, x)`, (b, T,
    >= order)). Columns length, accuracy."""
    model.eval()
    device = next(model.parameters()).device
    x, y = group.sample(n, length, torch.Generator().manual_seed(seed + TEST_SEED_OFFSET))  # (n, T)
    right = torch.zeros(length, dtype=torch.float64)
    for i in range(0, n, batch):
        xb = x[i : i + batch].to(device)
        with torch.autocast("cuda", dtype=AUTOCAST_DTYPE, enabled=device.type == "cuda"):
            scores = logits(model, xb)  # (b, T, V)
        answer = scores[..., : group.order].argmax(-1).cpu()  # (b, T)
        right += (answer == y[i : i + batch]).double().sum(0)
    return pd.DataFrame({"length": range(1, length + 1), "accuracy": (right / n).numpy()})


def train_word_problem(
    group: WordProblem,
    arch: str,
    model: str,
    train_length: int,
    test_length: int,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
    test_words: int = 256,
    eval_every: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run: `arch` at size `model` trained for `steps` on words of `train_length`, then scored at every
    length up to `test_length`. Returns (the trainer's log, accuracy by length), both tagged with the run's
    task, arch, model, lr, seed and parameter count."""
    if test_length < train_length:
        raise ValueError(f"test_length ({test_length}) must be at least train_length ({train_length})")
    cfg = TrainConfig(
        arch=arch,
        model=model,
        context=train_length,
        batch_size=batch_size,
        tokens=steps * batch_size * train_length,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, steps // 10),
        eval_every=eval_every or max(1, steps // 8),
        eval_tokens=32 * batch_size * train_length // 8,
        log_every=max(1, steps // 8),
        seed=seed,
        device=device,
    )
    trainer = WordProblemTrainer(cfg, group)
    log = trainer.run()
    accuracy = accuracy_by_length(trainer.model, group, test_length, test_words, seed)
    tags = {"task": group.name, "arch": cfg.arch, "model": model, "lr": lr, "seed": seed, "params": trainer.n_params}
    return log.assign(**tags), accuracy.assign(train_length=train_length, **tags)


def generalisation(accuracy: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Per run of `accuracy` (rows of accuracy_by_length tagged by train_word_problem): the mean accuracy over
    the lengths trained on (`within`), over the longer ones (`beyond`), over the longest tenth of the lengths tested
    (`longest_tenth`), and `solved_up_to`, the longest length up to which every prefix scored at least `threshold`
    (0: not even the first)."""
    keys = [k for k in RUN_KEYS + ("params", "train_length") if k in accuracy]
    rows = []
    for key, run in accuracy.groupby(keys, sort=False):
        run = run.sort_values("length")
        trained = run["length"] <= run["train_length"]
        longest = run["length"] > run["length"].max() * 0.9
        below = run.loc[run["accuracy"] < threshold, "length"]
        rows.append(
            dict(zip(keys, key))
            | {
                "within": run.loc[trained, "accuracy"].mean(),
                "beyond": run.loc[~trained, "accuracy"].mean() if (~trained).any() else float("nan"),
                "longest_tenth": run.loc[longest, "accuracy"].mean(),
                "test_length": int(run["length"].max()),
                "solved_up_to": int(below.min() - 1) if len(below) else int(run["length"].max()),
            }
        )
    return pd.DataFrame(rows)


def summarise(logs: pd.DataFrame, accuracy: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """One row per run: `generalisation`, the final validation loss at the training length (nats per answer), the
    median training tokens/s of its second half, its time, and `chosen`, the run of each (task, arch, model, seed)
    with the lowest final validation loss: a learning-rate sweep is decided on the training length's held-out
    words, never on the longer test words."""
    keys = [k for k in RUN_KEYS if k in logs]
    rows = []
    for key, log in logs.groupby(keys, sort=False):
        final = log.dropna(subset=["val_loss"]).iloc[-1]
        steady = log.iloc[len(log) // 2 :]
        rows.append(
            dict(zip(keys, key))
            | {
                "steps": int(final["step"]),
                "val_loss": final["val_loss"],
                "tokens_per_s": float(steady["tokens_per_s"].median()),
                "train_seconds": final["train_seconds"],
            }
        )
    out = generalisation(accuracy, threshold).merge(pd.DataFrame(rows), on=keys)
    out["chosen"] = False
    best = out.groupby(["task", "arch", "model", "seed"])["val_loss"].idxmin()
    out.loc[best.values, "chosen"] = True
    return out
