"""The paper's zero-shot tasks through lm-eval, online (lm-eval's task definitions and hub datasets) or offline
(the same task definitions, read through `include:`, with local data files), and the published tables beside ours.

    tasks, manager = task_manager(data_dir="../shared/data/lm_eval")   # offline: piqa, lambada_openai, arc_easy
    frame, raw = run_lm_eval("default", ["piqa"], data_dir=..., limit=50)
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import tempfile
from pathlib import Path

import pandas as pd

from ..results import REPO_ROOT

# The RWKV paper's zero-shot tasks (lm-eval names); headqa, record and triviaqa where lm-eval has them.
PAPER_TASKS = [
    "lambada_openai",
    "piqa",
    "storycloze_2016",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
    "sciq",
    "copa",
    "headqa_en",
    "record",
    "triviaqa",
]
# lm-eval task -> (metric, column of reference/rwkv4_pile_zero_shot.csv (and rwkv7_pile_model_cards.csv), column of
# pythia_v1_zero_shot.csv)
REFERENCE_COLUMNS = {
    "lambada_openai": [
        ("perplexity", "lambada_ppl", "lambada_openai_ppl"),
        ("acc", "lambada_acc", "lambada_openai_acc"),
    ],
    "piqa": [("acc", "piqa_acc", "piqa_acc")],
    "storycloze_2016": [("acc", "sc2016_acc", None)],
    "hellaswag": [("acc_norm", "hellaswag_acc_norm", None)],
    "winogrande": [("acc", "winogrande_acc", "winogrande_acc")],
    "arc_challenge": [("acc_norm", "arc_c_acc_norm", "arc_challenge_acc_norm")],
    "arc_easy": [("acc", "arc_e_acc", "arc_easy_acc")],
    "headqa_en": [("acc_norm", "headqa_acc_norm", None)],
    "openbookqa": [("acc_norm", "obqa_acc_norm", None)],
    "sciq": [("acc", "sciq_acc", "sciq_acc")],
    "triviaqa": [("exact_match", "triviaqa_acc", None)],
    "record": [("em", "record_em", None)],
    "copa": [("acc", "copa_acc", None)],
}


ENV_DATA = "RWKV_LAB_EVAL_DATA"  # an offline data directory to use by default


def default_data_dir() -> Path | None:
    """$RWKV_LAB_EVAL_DATA, else ../shared/data/lm_eval beside the repository if it exists, else None (online)."""
    import os

    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env)
    beside = REPO_ROOT.parent / "shared" / "data" / "lm_eval"
    return beside if beside.is_dir() else None


@functools.cache
def _lm_eval_yamls(tasks: tuple[str, ...]) -> dict[str, Path]:
    """lm-eval's own YAML of each task. Indexing every lm-eval task parses its ~14k YAMLs (6-10 s, in each process
    that writes task files), so lm-eval indexes only the folders whose YAMLs name one of these tasks (`task: name`,
    found by a text search in under a second); all of them only for a task named another way."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    named = re.compile(r"^task:\s*['\"]?([\w.-]+)['\"]?\s*$", re.M)
    root = Path(lm_eval.tasks.__file__).parent
    folders = {
        str(p.parent) for p in root.rglob("*.yaml") if set(named.findall(p.read_text(errors="replace"))) & set(tasks)
    }
    index = TaskManager(include_path=sorted(folders), include_defaults=False).task_index if folders else {}
    if not set(tasks) <= set(index):
        index = TaskManager().task_index
    paths = {}
    for task in tasks:
        entry = index.get(task)
        path = entry.get("yaml_path") if isinstance(entry, dict) else getattr(entry, "yaml_path", None)
        if not path:
            raise ValueError(f"lm-eval has no task {task!r}")
        paths[task] = Path(path)
    return paths


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"offline data file {path} is missing (see ../shared/data/SOURCES.md for the layout)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def offline_data(data_dir) -> dict[str, dict[str, str | Path]]:
    """The local files of `data_dir` in the hub datasets' schemas: task -> {split: the converted file's text, or the
    absolute path of a local file already in that schema}."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"offline data directory {data_dir} does not exist")
    files = {}
    if (data_dir / "piqa").exists():
        rows = _read_jsonl(data_dir / "piqa" / "valid.jsonl")
        labels_file = data_dir / "piqa" / "valid-labels.lst"
        if not labels_file.exists():
            raise FileNotFoundError(f"offline data file {labels_file} is missing")
        labels = [int(x) for x in labels_file.read_text().split()]
        if len(labels) != len(rows):
            raise ValueError(f"{labels_file} has {len(labels)} labels for {len(rows)} PIQA rows")
        files["piqa"] = {"validation": _jsonl(r | {"label": label} for r, label in zip(rows, labels))}
    if (data_dir / "lambada_openai").exists():
        path = data_dir / "lambada_openai" / "lambada_test.jsonl"
        _read_jsonl(path)
        files["lambada_openai"] = {"test": path.resolve()}
    if (data_dir / "arc_easy").exists():
        rows = _read_jsonl(data_dir / "arc_easy" / "arc_easy.jsonl")
        letters = "ABCDEFGH"
        converted = [
            {
                "question": r["query"].removeprefix("Question: "),
                "choices": {"text": r["choices"], "label": list(letters[: len(r["choices"])])},
                "answerKey": letters[r["gold"]],
            }
            for r in rows
        ]
        files["arc_easy"] = {"test": _jsonl(converted)}
    return files


def _task_files(files: dict[str, dict[str, str | Path]], folder: Path) -> dict[Path, str]:
    """The task YAMLs and converted data files to write in `folder` (an absolute path, which the YAMLs name):
    path -> text. Each YAML is lm-eval's own, included, with `dataset_path: json` and the data files' absolute
    paths, so lm-eval reads them from whatever folder it runs in."""
    out = {}
    yamls = _lm_eval_yamls(tuple(sorted(files)))
    for task, splits in files.items():
        paths = {}
        for split, data in splits.items():
            if isinstance(data, Path):
                paths[split] = data
            else:
                paths[split] = folder / "data" / f"{task}.jsonl"
                out[paths[split]] = data
        yaml_lines = [
            f"include: {yamls[task]}",
            f"task: {task}",
            "tag: []",
            "dataset_path: json",
            "dataset_name: null",
            "dataset_kwargs:",
            "  data_files:",
        ]
        yaml_lines += [f"    {split}: {path}" for split, path in paths.items()]
        for split in ("training_split", "validation_split", "test_split"):
            name = split.removesuffix("_split").replace("training", "train")
            yaml_lines.append(f"{split}: {name if name in splits else 'null'}")
        out[folder / f"{task}.yaml"] = "\n".join(yaml_lines) + "\n"
    return out


def _write(texts: dict[Path, str]) -> None:
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def tasks_cache_dir() -> Path:
    """Where task_manager keeps the task folders it writes itself: $XDG_CACHE_HOME (else ~/.cache)/rwkv_lab."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rwkv_lab" / "lm_eval_tasks"


def _cached_task_folder(files: dict[str, dict[str, str | Path]]) -> Path:
    """One folder per content (the data and the YAMLs, lm-eval's included paths among them), written once and
    reused: a folder per call would pile up, and a folder removed after the call would be gone before lm-eval reads
    its data. Written aside and renamed into place, so processes starting together (torchrun) never see half."""
    import hashlib
    import shutil

    root = tasks_cache_dir()
    placeholder = _task_files(files, Path("/FOLDER"))
    key = hashlib.sha256(json.dumps({str(p): t for p, t in placeholder.items()}, sort_keys=True).encode())
    folder = root / key.hexdigest()[:16]
    if not folder.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            _write({aside / p.relative_to(folder): t for p, t in _task_files(files, folder).items()})
            aside.rename(folder)
        except OSError:
            if not folder.is_dir():  # not another process's rename that won the race
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    return folder


def task_manager(data_dir=None, work_dir=None):
    """(names of the tasks available, an lm-eval TaskManager). Offline (`data_dir` given): each local task is
    lm-eval's own YAML, included, with `dataset_path: json` and absolute `data_files`, under the same name, written
    to `work_dir` (for lm-eval's `--include_path`) or else to one cached folder per content (tasks_cache_dir())."""
    from lm_eval.tasks import TaskManager

    if data_dir is None:
        manager = TaskManager()
        return sorted(manager.all_tasks), manager
    files = offline_data(data_dir)
    if work_dir is None:
        work = _cached_task_folder(files)
    else:
        work = Path(work_dir).resolve()
        _write(_task_files(files, work))
    manager = TaskManager(include_path=str(work), include_defaults=False)
    return sorted(files), manager


def check_tasks(tasks, available) -> None:
    unknown = [t for t in tasks if t not in available]
    if unknown:
        hint = f"; offline, the data directory provides {available}" if len(available) < 20 else ""
        raise ValueError(f"unknown lm-eval task(s) {unknown}{hint}")


def tidy(results: dict) -> pd.DataFrame:
    """lm-eval's results dict -> one row per (task, metric) with value and stderr."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or key.startswith("alias") or "_stderr" in key:
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": value,
                    "stderr": stderr if isinstance(stderr, (int, float)) else None,
                    "n_samples": results.get("n-samples", {}).get(task, {}).get("effective"),
                }
            )
    return pd.DataFrame(rows)


def run_lm_eval(
    model="default",
    tasks=("piqa",),
    limit=None,
    device="cpu",
    dtype="float32",
    data_dir=None,
    batch_size: int = 16,
    cache_dir=None,
    model_args: dict | None = None,
    log_samples: bool = False,
):
    """Evaluate with lm-eval's simple_evaluate: (tidy DataFrame, lm-eval's results dict). `model` is a source
    for rwkv_lab.load_model or an RWKVLM instance."""
    import lm_eval

    from .backend import RWKVLM

    available, manager = task_manager(data_dir)
    check_tasks(list(tasks), available)
    lm = (
        model
        if isinstance(model, RWKVLM)
        else RWKVLM(
            pretrained=model,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            cache_dir=cache_dir,
            **(model_args or {}),
        )
    )
    with quiet_datasets() if data_dir is not None else contextlib.nullcontext():
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            log_samples=log_samples,
            bootstrap_iters=1000,
        )
    return tidy(raw), portable(raw, manager.include_path)


def portable(raw: dict, task_folder) -> dict:
    """lm-eval's results with the offline task folder's paths (a per-machine cache folder) written as
    '<tasks>/...': the same evaluation on another machine records the same configs."""
    if not task_folder:
        return raw
    folders = [str(Path(f)) for f in (task_folder if isinstance(task_folder, (list, tuple)) else [task_folder])]

    def rewrite(value):
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str):
            for folder in folders:
                if value.startswith(folder):
                    return "<tasks>" + value[len(folder) :]
        return value

    return {k: rewrite(v) if k == "configs" else v for k, v in raw.items()}


@contextlib.contextmanager
def quiet_datasets():
    """datasets' progress bars off for the block: offline, they only report local files being split ("Generating
    validation split: 0 examples"), and in a notebook each stays behind as a widget."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def percent(metric: str, value: float) -> float:
    return value if metric == "perplexity" else 100 * value


# The published tables; a comparison takes all its rows from one of them (reference/SOURCES.md: the Pythia rows
# inside the RWKV paper's table are the RWKV authors' runs, not the Pythia paper's numbers).
PUBLISHED_TABLES = {
    "rwkv_paper": ("rwkv4_pile_zero_shot.csv", "RWKV paper (arXiv 2305.13048), Appendix H Tables 3-4"),
    "pythia_paper": ("pythia_v1_zero_shot.csv", "Pythia v1 evals (EleutherAI/pythia evals/pythia-v1, zero-shot)"),
    # the RWKV-7 paper's own table of its Pile models is not in reference/ (reference/SOURCES.md says why): the
    # hub cards' headline numbers are a separate source, compared alone
    "rwkv7_cards": (
        "rwkv7_pile_model_cards.csv",
        "RWKV-7 Pile hub model cards (fla-hub/rwkv7-168M-pile, fla-hub/rwkv7-1.47B-pile), Evaluation",
    ),
}
# the published tables each generation's scores are set beside, each comparison from one table
PUBLISHED_FOR = {"rwkv4": ("rwkv_paper", "pythia_paper"), "rwkv7": ("rwkv7_cards",)}
PYTHIA_NEAR = {
    0.17: "pythia-160m",
    0.43: "pythia-410m",
    1.5: "pythia-1.4b",
    3.0: "pythia-2.8b",
    7.4: "pythia-6.9b",
    14.2: "pythia-12b",
}


def published(size_B: float, table: str = "rwkv_paper") -> pd.DataFrame:
    """The published zero-shot rows of models of about this size from ONE table, long format; the `table` column
    names it. 'rwkv_paper': RWKV-4 and the transformers of that table (Pythia, GPT-Neo, ... as its authors ran
    them); 'pythia_paper': the Pythia model of the matching size, from the Pythia evals; 'rwkv7_cards': the RWKV-7
    Pile model nearest in size, from its hub card (LAMBADA and PIQA only)."""
    if table not in PUBLISHED_TABLES:
        raise ValueError(f"unknown published table {table!r}; expected one of {sorted(PUBLISHED_TABLES)}")
    file, citation = PUBLISHED_TABLES[table]
    ref = pd.read_csv(REPO_ROOT / "reference" / file)
    # which column of REFERENCE_COLUMNS names this table's field (the RWKV-7 cards use the RWKV paper's names)
    column = 2 if table == "pythia_paper" else 1
    rwkv_sizes = pd.read_csv(REPO_ROOT / "reference" / PUBLISHED_TABLES["rwkv_paper"][0])
    rwkv_sizes = rwkv_sizes[rwkv_sizes["model"] == "RWKV-4"]["params_B"]
    nearest = float(rwkv_sizes.iloc[(rwkv_sizes - size_B).abs().argmin()])
    if table == "rwkv_paper":
        # every model of the table at the size nearest to RWKV-4 `nearest` (one row per family)
        near = ref.assign(gap=(ref["params_B"] - nearest).abs())
        near = near.loc[near.groupby("model")["gap"].idxmin()]
        near = near[near["gap"] <= 0.25 * nearest]
        models = [(f"{r['model']} {r['params_B']}B", r) for _, r in near.iterrows()]
    elif table == "rwkv7_cards":
        # the size is the checkpoint name's last part: RWKV-x070-Pile-168M, RWKV-x070-Pile-1.47B
        size = ref["name"].str.extract(r"-([\d.]+)([MB])$")
        sizes = size[0].astype(float) * size[1].map({"M": 1e-3, "B": 1.0})
        r = ref.iloc[int((sizes - size_B).abs().argmin())]
        models = [(r["name"], r)]
    else:
        name = PYTHIA_NEAR.get(nearest)
        models = [(name, r) for _, r in ref[ref["model"] == name].iterrows()]
    rows = []
    for task, cols in REFERENCE_COLUMNS.items():
        for spec in cols:
            metric, field = spec[0], spec[column]
            if field is None or field not in ref.columns:
                continue
            for label, r in models:
                rows.append({"task": task, "metric": metric, "model": label, "published": r[field], "table": citation})
    return pd.DataFrame(rows)


def side_by_side(ours: pd.DataFrame, size_B: float, table: str = "rwkv_paper") -> pd.DataFrame:
    """Our measured rows beside the published ones of the matching size from one table (named in the `table`
    column), with the delta in the table's units."""
    ref = published(size_B, table)
    ours = ours.assign(
        ours=[percent(m, v) for m, v in zip(ours["metric"], ours["value"])],
        ours_stderr=[None if s is None or s != s else percent(m, s) for m, s in zip(ours["metric"], ours["stderr"])],
    )
    merged = ours.merge(ref, on=["task", "metric"], how="inner")
    merged["delta"] = merged["ours"] - merged["published"]
    return merged[["task", "metric", "ours", "ours_stderr", "model", "published", "delta", "n_samples", "table"]]
