"""The state-tracking task (rwkv_lab.training.state_tracking): the groups, the answers against an independent
composition of permutations, the trainer on the task, the scoring by length and the choice of a sweep's run."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rwkv_lab.models import ARCHITECTURES
from rwkv_lab.training import TrainConfig
from rwkv_lab.training.state_tracking import (
    WordProblemTrainer,
    accuracy_by_length,
    cpu_threads,
    generalisation,
    summarise,
    train_word_problem,
    word_problem,
)


def test_the_tables_are_the_symmetric_groups():
    """S_n's n! elements, the identity first, every row and column of the table a permutation (a Latin square),
    and the table associative (all triples of S3, random ones of S5), checked against composing the tuples."""
    for name, order in (("parity", 2), ("S3", 6), ("S5", 120)):
        group = word_problem(name)
        assert group.order == order and group.elements[0] == tuple(range(group.n))
        assert (group.table[0] == torch.arange(order)).all() and (group.table[:, 0] == torch.arange(order)).all()
        for line in (*group.table, *group.table.T):
            assert sorted(line.tolist()) == list(range(order))
    s3 = word_problem("S3").table
    for a, b, c in itertools.product(range(6), repeat=3):
        assert s3[s3[a, b], c] == s3[a, s3[b, c]]
    s5 = word_problem("S5")
    a, b, c = torch.randint(0, 120, (3, 2000), generator=torch.Generator().manual_seed(0))
    assert (s5.table[s5.table[a, b], c] == s5.table[a, s5.table[b, c]]).all()


def test_the_answers_are_the_permutations_applied_so_far():
    """Each target is the arrangement after applying the inputs in order, composed here as lists (an independent
    reference); parity's are the running XOR of its bits."""
    group = word_problem("S5")
    x, y = group.sample(16, 40, torch.Generator().manual_seed(1))
    for word, answers in zip(x.tolist(), y.tolist()):
        arrangement = list(range(5))
        for element, answer in zip(word, answers):
            arrangement = [group.elements[element][i] for i in arrangement]  # apply the element after the rest
            assert group.elements[answer] == tuple(arrangement)
    bits, xor = word_problem("parity").sample(8, 100, torch.Generator().manual_seed(2))
    assert (xor == bits.cumsum(1) % 2).all()


def test_bad_task_settings_are_refused():
    for name in ("S6", "A5", "", "parity2"):
        with pytest.raises(ValueError, match="unknown state-tracking task"):
            word_problem(name)
    with pytest.raises(ValueError, match="batch >= 1 and length >= 1"):
        word_problem("S3").sample(4, 0, torch.Generator())
    with pytest.raises(ValueError, match="test_length .* at least train_length"):
        train_word_problem(word_problem("parity"), "rwkv4", "byte-1x32", train_length=8, test_length=4, steps=1)


def test_the_trainer_draws_task_batches_and_is_deterministic():
    """Every architecture trains on the task through the trainer: its batches are words and their answers, fresh
    each step, its validation words fixed and apart from them, two runs of a seed the same."""
    group = word_problem("S3")
    for arch in ARCHITECTURES:
        # eight validation words (the default eval_tokens would make 43,690, evaluated 4 at a time)
        cfg = TrainConfig(
            arch=arch,
            model="byte-1x32",
            context=6,
            batch_size=4,
            tokens=4 * 6 * 3,
            eval_every=3,
            eval_tokens=8 * 6,
            device="cpu",
        )
        runs = []
        for _ in range(2):
            trainer = WordProblemTrainer(cfg, group)
            x, y = trainer.next_batch()
            assert x.shape == y.shape == (4, 6) and (y == group.prefix_products(x)).all()
            assert not torch.equal(x, trainer.next_batch()[0])
            val_x, val_y = trainer.val_windows
            assert (val_y == group.prefix_products(val_x)).all() and not torch.equal(val_x[:4], x)
            runs.append(trainer.run()["val_loss"].dropna().tolist())
        assert runs[0] == runs[1] and len(runs[0]) == 1, (arch, runs)


def test_accuracy_is_scored_at_every_length():
    """An oracle that answers right for the first k elements and repeats its last answer after scores 1 up to k,
    about chance past it (the answers are uniform), and generalisation reads solved_up_to = k from it."""
    group, k = word_problem("S3"), 10

    def oracle(model, x):
        y = group.prefix_products(x)
        y[:, k:] = y[:, k - 1 : k]
        return F.one_hot(y, 256).float()  # (B, T, 256)

    acc = accuracy_by_length(torch.nn.Linear(1, 1), group, 200, n=512, logits=oracle)
    assert acc["length"].tolist() == list(range(1, 201))
    assert (acc["accuracy"][:k] == 1).all()
    past = acc["accuracy"][k + 5 :].mean()
    print(f"oracle right for {k}: mean accuracy past it {past:.3f}, chance {group.chance:.3f}")
    assert abs(past - group.chance) < 0.02
    tagged = acc.assign(task="S3", arch="oracle", model="-", lr=0.0, seed=0, params=0, train_length=k)
    row = generalisation(tagged).iloc[0]
    assert row["solved_up_to"] == k and row["within"] == 1 and row["test_length"] == 200


def test_a_sweep_is_chosen_on_the_training_length_not_the_test():
    """Of two rates, the one with the lower final validation loss is chosen even where the other generalises
    further (the longer words are the test, never the choice)."""
    keys = {"task": "parity", "arch": "rwkv7", "model": "m", "seed": 0}
    logs = pd.DataFrame(
        [
            keys | {"lr": lr, "step": s, "val_loss": v, "tokens_per_s": 1.0, "train_seconds": s}
            for lr, s, v in [(1e-3, 1, 0.5), (1e-3, 2, 0.1), (3e-3, 1, 0.4), (3e-3, 2, 0.2)]
        ]
    )
    lengths = range(1, 9)
    acc = pd.DataFrame(
        [
            keys | {"lr": lr, "params": 1, "train_length": 4, "length": n, "accuracy": a(n)}
            for lr, a in [(1e-3, lambda n: 1.0 if n <= 4 else 0.5), (3e-3, lambda n: 1.0)]
            for n in lengths
        ]
    )
    table = summarise(logs, acc).set_index("lr")
    assert table.loc[1e-3, "chosen"] and not table.loc[3e-3, "chosen"]
    assert table.loc[1e-3, "solved_up_to"] == 4 and table.loc[3e-3, "solved_up_to"] == 8
    assert table.loc[1e-3, "beyond"] == 0.5 and table.loc[1e-3, "val_loss"] == 0.1


def test_cpu_threads_are_restored():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1  # a count the block changes, whatever the count the tests start with
    with pytest.raises(RuntimeError), cpu_threads(other):
        assert torch.get_num_threads() == other
        raise RuntimeError  # restored however the block ends
    assert torch.get_num_threads() == before
