"""The lm-eval backend: agreement with lm-eval's `hf` backend (transformers RwkvForCausalLM) on the same random
weights and real task data, the context/continuation batching, rolling log-likelihood, the cache, bad input."""

import shutil

import pytest
import torch
from helpers import NEOX_TOKENIZER, REPO, SHARED, random_model, torchrun

from rwkv_lab.evaluation.backend import RWKVLM
from rwkv_lab.evaluation.tasks import published, run_lm_eval, side_by_side, task_manager
from rwkv_lab.loading.checkpoint import save_model
from rwkv_lab.models.rwkv4.config import RWKVConfig

DATA = SHARED / "data" / "lm_eval"
CONFIG = RWKVConfig(n_layer=2, n_embd=64, vocab_size=50277, name="neox-2x64")
pytestmark = pytest.mark.skipif(not NEOX_TOKENIZER.exists(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """Random weights in transformers format, with the GPT-NeoX-20B tokenizer beside them."""
    folder = tmp_path_factory.mktemp("rwkv_hf")
    save_model(
        random_model(CONFIG, seed=3, dtype=torch.float32), folder, format="transformers", tokenizer_file=NEOX_TOKENIZER
    )
    return folder


def ours(folder, **kw):
    return RWKVLM(pretrained=str(folder), tokenizer=str(NEOX_TOKENIZER), batch_size=4, **kw)


def test_loglikelihoods_equal_lm_evals_hf_backend(hf_folder):
    import lm_eval

    tasks = ["piqa", "arc_easy", "lambada_openai"]
    _, manager = task_manager(DATA)
    kw = dict(tasks=tasks, task_manager=manager, limit=6, log_samples=True, bootstrap_iters=0)
    a = lm_eval.simple_evaluate(model=ours(hf_folder), **kw)
    b = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_folder},dtype=float32", device="cpu", batch_size=4, **kw
    )
    worst, n = 0.0, 0
    for task in tasks:
        for sa, sb in zip(a["samples"][task], b["samples"][task], strict=True):
            assert sa["doc_id"] == sb["doc_id"]
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip((r[0] for r in sa["resps"]), (r[0] for r in sb["resps"])):
                worst = max(worst, abs(ll_a - ll_b) / max(1.0, abs(ll_b)))
                assert greedy_a == greedy_b
                n += 1
    print(f"{n} requests: worst relative difference of log-likelihood {worst:.2e}")
    assert n >= 6 * (2 + 4 + 1) and worst <= 1e-4


@torch.no_grad()
def naive(lm, ctx, cont):
    """log p(cont | ctx) by one forward pass over the whole sequence."""
    ids = torch.tensor([ctx + cont])
    logits, _ = lm.model(ids[:, :-1])
    lp = torch.log_softmax(logits[0].double(), -1)[len(ctx) - 1 :]
    target = torch.tensor(cont)
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


def test_shared_contexts_and_shared_continuations_batch_exactly(hf_folder):
    lm = ours(hf_folder)
    ctx_a, ctx_b, ctx_c = [5, 6, 7], [8, 9, 10], [11, 12]
    reqs = [
        (("", ""), ctx_a, [20]),
        (("", ""), ctx_a, [21, 22, 23]),
        (("", ""), ctx_a, [24, 25]),  # one context
        (("", ""), ctx_b, [30, 31]),
        (("", ""), ctx_c, [30, 31]),
        (("", ""), [0], [40, 41]),
    ]  # one continuation
    got = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    for (_, ctx, cont), (ll, greedy) in zip(reqs, got):
        ref_ll, ref_greedy = naive(lm, ctx, cont)
        assert abs(ll - ref_ll) <= 1e-4 * max(1, abs(ref_ll)) and greedy == ref_greedy


def test_rolling_loglikelihood_carries_the_state(hf_folder):
    lm = ours(hf_folder, chunk=7)
    tokens = list(range(100, 150))
    windows = lm.rolling_logprob(tokens)
    whole, _ = naive(lm, [0], tokens)
    print(f"rolling (windows of 7) {windows:.6f}, one pass {whole:.6f}")
    assert abs(windows - whole) <= 1e-5 * abs(whole)


def test_generate_until_stops_at_stop_strings(hf_folder):
    from lm_eval.api.instance import Instance

    lm = ours(hf_folder)
    free = lm.greedy("Hello", [], 8)
    assert len(lm.tok_encode(free)) >= 1
    stop = free[len(free) // 2 :] or free
    req = Instance("generate_until", {}, ("Hello", {"until": [stop], "max_gen_toks": 8}), 0)
    (text,) = lm.generate_until([req], disable_tqdm=True)
    assert stop not in text and free.startswith(text)


def test_cache_resumes_and_refuses_another_model(hf_folder, tmp_path):
    lm = ours(hf_folder, cache_dir=str(tmp_path))
    reqs = [(("", ""), [5, 6], [7, 8])]
    first = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    again = ours(hf_folder, cache_dir=str(tmp_path))
    again.model = None  # a cache hit must not touch the model
    assert again._loglikelihood_tokens(reqs, disable_tqdm=True) == first
    (cache_file,) = tmp_path.glob("*.jsonl")
    other = RWKVLM(pretrained="default", cache_dir=str(tmp_path))  # a different model: a different file
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    shutil.copy(cache_file, other.cache.path)
    with pytest.raises(ValueError, match="another model"):
        RWKVLM(pretrained="default", cache_dir=str(tmp_path))


def test_bad_input_is_refused(hf_folder, tmp_path):
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['hellaswag'\]"):
        run_lm_eval(RWKVLM(pretrained="default"), ["hellaswag"], data_dir=DATA)
    (tmp_path / "piqa").mkdir()
    with pytest.raises(FileNotFoundError, match="valid.jsonl is missing"):
        task_manager(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task_manager(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has 50277 tokens but the model's vocabulary has only 257"):
        RWKVLM(pretrained="default", tokenizer=str(NEOX_TOKENIZER))
    with pytest.raises(ValueError, match="empty continuation"):
        ours(hf_folder)._loglikelihood_tokens([(("a", ""), [5], [])], disable_tqdm=True)


def test_empty_context_is_end_of_text(hf_folder):
    from lm_eval.api.instance import Instance

    lm = ours(hf_folder)
    ((ll, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("", "Hello world"), 0)], disable_tqdm=True)
    ref, _ = naive(lm, [0], lm.tok_encode("Hello world"))
    assert abs(ll - ref) <= 1e-4 * abs(ref)


def test_published_comparisons_take_every_row_from_one_table():
    import pandas as pd

    ref = published(0.17)
    assert ref["table"].nunique() == 1 and ref["table"].iloc[0].startswith("RWKV paper")
    piqa = ref[ref["task"] == "piqa"].set_index("model")["published"]
    assert piqa["RWKV-4 0.17B"] == 65.07 and piqa["Pythia 0.16B"] == 62.68  # both from the RWKV paper's table
    ppl = ref[(ref["task"] == "lambada_openai") & (ref["metric"] == "perplexity")].set_index("model")["published"]
    assert ppl["Pythia 0.16B"] < ppl["RWKV-4 0.17B"]  # 24.38 vs 29.33: the table's own order, not flipped
    pythia = published(0.17, "pythia_paper")
    assert pythia["table"].nunique() == 1 and set(pythia["model"]) == {"pythia-160m"}
    for size in (0.17, 0.43, 1.5, 3.0, 7.4, 14.2):
        for table in ("rwkv_paper", "pythia_paper"):
            assert published(size, table)["table"].nunique() <= 1
    ours_rows = pd.DataFrame([{"task": "piqa", "metric": "acc", "value": 0.6, "stderr": 0.01, "n_samples": 10}])
    merged = side_by_side(ours_rows, 0.17)
    assert merged["table"].nunique() == 1
    assert merged.loc[merged["model"] == "RWKV-4 0.17B", "delta"].item() == pytest.approx(60 - 65.07)


def test_rwkv7_cards_are_their_own_comparison():
    import pandas as pd

    cards = pd.read_csv(REPO / "reference" / "rwkv7_pile_model_cards.csv").set_index("name")
    for size, name in ((0.168, "RWKV-x070-Pile-168M"), (0.005, "RWKV-x070-Pile-168M"), (1.5, "RWKV-x070-Pile-1.47B")):
        ref = published(size, "rwkv7_cards")
        assert set(ref["model"]) == {name} and ref["table"].nunique() == 1, size
        assert ref["table"].iloc[0].startswith("RWKV-7 Pile hub model cards")
        got = ref.set_index(["task", "metric"])["published"]
        # the card's numbers as written, each under the metric lm-eval reports
        assert got["lambada_openai", "perplexity"] == cards.loc[name, "lambada_ppl"]
        assert got["lambada_openai", "acc"] == cards.loc[name, "lambada_acc"]
        assert got["piqa", "acc"] == cards.loc[name, "piqa_acc"]
        assert len(got) == 3
    ours_rows = pd.DataFrame([{"task": "piqa", "metric": "acc", "value": 0.6, "stderr": 0.01, "n_samples": 10}])
    merged = side_by_side(ours_rows, 0.168, "rwkv7_cards")
    assert merged["delta"].item() == pytest.approx(60 - 65.5) and merged["table"].nunique() == 1


@pytest.mark.slow
def test_the_lm_eval_command_line_knows_the_backend(tmp_path):
    import os
    import subprocess
    import sys

    task_manager(DATA, tmp_path / "tasks")  # offline task YAMLs for --include_path
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rwkv_lab.evaluation",
            "--model",
            "rwkv_lab",
            "--model_args",
            "pretrained=default,device=cuda",  # as the README writes it: device in model_args and --device too
            "--device",
            "cpu",
            "--tasks",
            "piqa",
            "--limit",
            "2",
            "--include_path",
            str(tmp_path / "tasks"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "|piqa" in out.stdout and "acc" in out.stdout
    assert "got multiple values" not in out.stderr


@pytest.mark.slow
def test_data_parallel_processes_give_the_one_process_result(tmp_path):
    """Two processes (torchrun, gloo on the CPU) each score their share of the documents; lm-eval gathers them."""
    import os
    import subprocess
    import sys

    task_manager(DATA, tmp_path / "tasks")
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = [
        "-m",
        "rwkv_lab.evaluation",
        "--model",
        "rwkv_lab",
        "--model_args",
        "pretrained=default",
        "--device",
        "cpu",
        "--tasks",
        "piqa",
        "--limit",
        "6",
        "--include_path",
        str(tmp_path / "tasks"),
    ]
    tables = []
    for launcher in ([sys.executable], torchrun(2)):
        out = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-8000:]
        tables.append([line for line in out.stdout.splitlines() if line.startswith("|")])
    assert tables[0] and tables[0] == tables[1]


def test_offline_results_record_no_machine_paths(hf_folder, tmp_path, monkeypatch):
    """The task folder is a per-machine cache: the saved configs name it as '<tasks>', so the same evaluation on
    another machine (or another user) writes the same results file."""
    import json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _, raw = run_lm_eval(ours(hf_folder), ["piqa"], limit=2, data_dir=DATA)
    text = json.dumps(raw["configs"])
    assert str(tmp_path) not in text and "<tasks>/" in text, text[:500]
