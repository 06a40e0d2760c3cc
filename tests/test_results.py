"""results/ as data: every file carries provenance, the index is generated from it, current files are apart from
history (no headline reads a superseded run), a rerun that measures the same numbers leaves the files untouched,
and every number in a notebook's prose is one the notebook printed."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from rwkv_lab import results
from rwkv_lab.results import (
    data_files,
    index_text,
    meta_path,
    provenance_of,
    record_file,
    save_figure,
    write_json,
    write_table,
)
from rwkv_lab.run_notebooks import keep_if_unchanged
from rwkv_lab.training.report import unfinished_runs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"


def test_every_results_file_has_provenance_that_describes_it():
    files = data_files(RESULTS)
    assert len(files) > 100
    missing, stale, null_dirty = [], [], []
    for path in files:
        meta = provenance_of(path)
        if meta is None:
            missing.append(path)
            continue
        recorded = meta.get("data_sha256")
        if recorded is not None and recorded != results._sha256(path):
            stale.append(path)
        if "git_dirty" in meta and meta["git_dirty"] is None:
            null_dirty.append(path)
    print(f"{len(files)} files, each with provenance")
    assert not missing, f"no provenance: {missing}"
    assert not stale, f"provenance of other contents (rerun what wrote them): {stale}"
    assert not null_dirty, f"git_dirty null (say why it is unknown): {null_dirty}"


def test_results_index_is_generated_from_the_provenance():
    assert (RESULTS / "README.md").read_text() == index_text(), "run python scripts/results_index.py"


def test_no_headline_reads_a_superseded_run():
    """README's measured table, the notebooks' code and readme_table read current files only."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- measured:begin", 1)[1].split("<!-- measured:end -->", 1)[0]
    assert "results/history" not in table
    for source in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")):
        code = [line for line in source.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if "history" in line], source.name
    with pytest.raises(ValueError, match="superseded"):
        sys.path.insert(0, str(REPO / "scripts"))
        import readme_table

        readme_table.table("history/training_speed/training_mfu_graphed.csv")


def test_git_dirty_is_never_null(tmp_path, monkeypatch):
    """A copy of the tree without .git, told nothing or only its commit, says why the diff is unknown. code_state()
    reads the environment and runs git when called, so this process stands in for that copy (a fresh one per case
    would import rwkv_lab, ~3 s each)."""
    for name in [k for k in os.environ if k.startswith("RWKV_LAB_GIT")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-git"))  # the git that code_state() runs finds no repository
    assert results.code_state()["git_dirty"].startswith("unknown: no .git")
    monkeypatch.setenv("RWKV_LAB_GIT_COMMIT", "abc")
    assert results.code_state()["git_dirty"].startswith("unknown: no .git; the commit passed in")
    monkeypatch.setenv("RWKV_LAB_GIT_DIFF_SHA256", "")
    assert results.code_state()["git_dirty"] is False


def _state(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_rerun_with_the_same_numbers_leaves_the_files_untouched(tmp_path, monkeypatch):
    frame = pd.DataFrame({"T": [1, 2], "loss": [0.5, 0.25], "seconds": [0.1, 0.2]})
    write_table(tmp_path / "t.csv", frame, {"p": 1}, volatile=("seconds",))
    write_json(tmp_path / "r.json", {"err": 1e-7, "seconds": 3.0}, {"p": 1}, volatile=("seconds",))
    before = _state(tmp_path)
    # a later run: another date (a second passes), other timings, the same numbers
    monkeypatch.setattr(results, "provenance", lambda *a, **k: {"date_utc": "later", "params": {"p": 1}})
    write_table(tmp_path / "t.csv", frame.assign(seconds=[0.3, 0.1]), {"p": 1}, volatile=("seconds",))
    write_json(tmp_path / "r.json", {"err": 1e-7, "seconds": 2.5}, {"p": 1}, volatile=("seconds",))
    assert _state(tmp_path) == before
    # a number changed: data and provenance rewritten, the description kept
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    (tmp_path / "t.meta.json").write_text(json.dumps(meta | {"description": "what t holds"}))
    write_table(tmp_path / "t.csv", frame.assign(loss=[0.5, 0.2]), {"p": 1}, volatile=("seconds",))
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    assert meta["date_utc"] == "later" and meta["description"] == "what t holds"
    assert pd.read_csv(tmp_path / "t.csv")["loss"].tolist() == [0.5, 0.2]
    write_json(tmp_path / "r.json", {"err": 2e-7, "seconds": 2.5}, {"p": 1}, volatile=("seconds",))
    assert json.loads((tmp_path / "r.json").read_text())["provenance"]["date_utc"] == "later"


def test_a_figure_of_timings_is_rewritten_only_when_what_it_shows_changes(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(times):
        fig, ax = plt.subplots()
        ax.plot([1, 2], times)
        return fig

    save_figure(figure([0.1, 0.2]), tmp_path / "f.png", drawn_from=pd.DataFrame({"T": [1, 2]}))
    before = _state(tmp_path)
    save_figure(figure([0.3, 0.1]), tmp_path / "f.png", drawn_from=pd.DataFrame({"T": [1, 2]}))
    assert _state(tmp_path) == before
    save_figure(figure([0.3, 0.1]), tmp_path / "f.png", drawn_from=pd.DataFrame({"T": [1, 4]}))
    assert _state(tmp_path) != before
    plt.close("all")


def test_record_file_gives_any_file_provenance_once(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("step 1\n")
    meta = record_file(log, {"p": 1}, command="python bench.py")
    assert meta == meta_path(log) == tmp_path / "run.log.meta.json"
    first = meta.read_bytes()
    record_file(log, {"p": 1}, command="python bench.py")
    assert meta.read_bytes() == first  # unchanged file: provenance untouched
    log.write_text("step 2\n")
    record_file(log, {"p": 1}, command="python bench.py")
    assert json.loads(meta.read_text())["data_sha256"] == results._sha256(log)


def test_an_executed_notebook_is_kept_when_only_its_timings_changed(tmp_path):
    def notebook(timing: str, value: str) -> dict:
        cells = [
            {"cell_type": "code", "metadata": {"tags": ["timings"]}, "source": "t()", "outputs": [{"text": timing}]},
            {
                "cell_type": "code",
                "metadata": {"papermill": {"duration": timing}},
                "source": "v()",
                "outputs": [{"text": value}],
            },
        ]
        return {"cells": cells, "metadata": {"papermill": {"start_time": timing, "parameters": {"device": "cpu"}}}}

    old = tmp_path / "nb.ipynb"
    old.write_text(json.dumps(notebook("1.0 s", "0.5")))
    new = tmp_path / "new.ipynb"
    new.write_text(json.dumps(notebook("2.0 s", "0.5")))
    assert keep_if_unchanged(new, old) is False and "1.0 s" in old.read_text() and not new.exists()
    new.write_text(json.dumps(notebook("2.0 s", "0.6")))
    assert keep_if_unchanged(new, old) is True and "0.6" in old.read_text()


def test_unfinished_runs_counts_the_planned_runs_without_a_row():
    summary = pd.DataFrame(
        {
            "arch": ["rwkv", "transformer"],
            "model": ["m", "m"],
            "context": [512, 512],
            "lr": [1e-3, 1e-3],
            "status": ["ok", "oom"],
        }
    )
    missing = unfinished_runs(summary, {"sizes": "m", "contexts": "512", "lrs": "1e-3,3e-3", "arch_lrs": ""})
    assert sorted(zip(missing["arch"], missing["lr"], missing["status"])) == [
        ("rwkv4", 3e-3, "not run"),  # the registry's name of the old runs' 'rwkv'
        ("transformer", 1e-3, "oom"),
        ("transformer", 3e-3, "not run"),
    ]


# A number in a notebook's prose (markdown) must be one the notebook printed (an output, or its parameters): a
# sentence that states a measured number and is not formatted from it drifts when the data change. Numbers that
# are definitions rather than measurements (a study's inputs, formula constants) are written as code, in
# backticks; list markers, the notebooks' own numbers (01 to 06) and a citation's year are not claims.
NUMBER = re.compile(r"(?<![\w.\-·/^²])\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?(?![a-wyzA-Z_\d²·])")  # 2.2x: a ratio


def prose_numbers(markdown: str) -> list[str]:
    text = re.sub(r"`[^`]*`", " ", markdown)  # code: definitions
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"^\s*\d+\.\s", " ", text, flags=re.M)  # list markers
    text = re.sub(r"\(\d{4}\)", " ", text)  # a citation's year
    text = re.sub(r"\b0\d\b", " ", text)  # the notebooks' numbers
    return [m.group(0).rstrip(".,") for m in NUMBER.finditer(text)]


def printed_numbers(nb: dict) -> set[str]:
    texts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            texts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts += ["".join(v) for k, v in out.get("data", {}).items() if k.startswith("text")]
    found = set(re.findall(r"\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?", "\n".join(texts)))
    return {n.rstrip(".,") for n in found} | {n.replace(",", "") for n in found}


def test_prose_numbers_checker_catches_a_stale_number():
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "", "outputs": [{"text": "ratio 0.90x\n"}]}]}
    assert set(prose_numbers("the ratio is 2.2x, at `T = 4096`;\n1. first")) - printed_numbers(nb) == {"2.2"}
    assert set(prose_numbers("the ratio is 0.90x")) <= printed_numbers(nb)


@pytest.mark.parametrize("path", sorted((RESULTS / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_number_in_a_notebooks_prose_is_one_it_printed(path):
    nb = json.loads(path.read_text())
    printed = printed_numbers(nb)
    unbacked = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            md = "".join(cell["source"])
            unbacked += [
                (n, md[max(0, md.find(n) - 60) : md.find(n) + 20])
                for n in prose_numbers(md)
                if n not in printed and n.replace(",", "") not in printed
            ]
    assert not unbacked, f"numbers in {path.name}'s prose that no output shows: {unbacked}"


def test_progress_bars_and_styled_table_ids_do_not_count_as_a_change(tmp_path):
    """Two identical runs differ in tqdm's rates on stderr, in the random id of each pandas-styled table and in its
    plain-text fallback's address."""

    def notebook(rate: str, table_id: str, value: str) -> dict:
        outputs = [
            {"output_type": "stream", "name": "stderr", "text": f"100%|##| 40/40 [00:00<00:00, {rate}it/s]\n"},
            {
                "output_type": "display_data",
                "data": {
                    "text/html": f'<table id="T_{table_id}">\n<td>{value}</td>',
                    "text/plain": f"<pandas.io.formats.style.Styler at 0x7fd3{table_id}>",
                },
            },
        ]
        return {"cells": [{"cell_type": "code", "metadata": {}, "source": "show()", "outputs": outputs}]}

    old, new = tmp_path / "nb.ipynb", tmp_path / "new.ipynb"
    old.write_text(json.dumps(notebook("1315.41", "5b789", "0.5")))
    new.write_text(json.dumps(notebook("1315.66", "0440d", "0.5")))
    assert keep_if_unchanged(new, old) is False and "5b789" in old.read_text()
    new.write_text(json.dumps(notebook("1315.66", "0440d", "0.6")))
    assert keep_if_unchanged(new, old) is True and "0.6" in old.read_text()
