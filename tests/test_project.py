"""The project's own promises: one dependency list in two files, CI runs the README's test command,
results are written atomically with provenance, and every notebook executes headless."""

import json
import re
import subprocess

import pytest
import tomllib
import yaml
from helpers import REPO

from rwkv_lab.results import provenance, write_json, write_table


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) == declared, (
        f"only in environment.yml: {set(pip) - declared}; only in pyproject: {declared - set(pip)}"
    )


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(make \w+)$", readme, flags=re.M)
    assert "make run" in commands and "make test" in commands
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_results_are_written_atomically_with_provenance(tmp_path):
    import pandas as pd

    path = write_json(tmp_path / "r.json", {"x": 1}, {"p": 2})
    data = json.loads(path.read_text())
    assert data["results"] == {"x": 1} and data["provenance"]["params"] == {"p": 2}
    for key in ("date_utc", "git_commit", "device", "torch", "cuda"):
        assert key in data["provenance"]

    class Broken:
        def to_csv(self, path, index):
            path.write_text("half a ta")
            raise KeyboardInterrupt

    write_table(tmp_path / "t.csv", pd.DataFrame({"a": [1]}))
    with pytest.raises(KeyboardInterrupt):
        write_table(tmp_path / "t.csv", Broken())
    assert (tmp_path / "t.csv").read_text() == "a\n1\n"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "t.csv", "t.meta.json"]
    assert "torch" in json.loads((tmp_path / "t.meta.json").read_text())


def test_provenance_names_the_commit():
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert provenance()["git_commit"] == (git.stdout.strip() if git.returncode == 0 else None)


@pytest.mark.slow
def test_notebooks_execute_headless(tmp_path, monkeypatch):
    from rwkv_lab.run_notebooks import notebook_sources, run_notebooks

    monkeypatch.setenv("RWKV_LAB_RESULTS", str(tmp_path))
    notebooks = notebook_sources()
    assert len(notebooks) == 6
    written = run_notebooks()
    assert [p.name for p in written] == [n.with_suffix(".ipynb").name for n in notebooks]
    report = json.loads((tmp_path / "01_equivalence.json").read_text())
    assert report["results"]["match"] is True
    assert "default" in report["provenance"]["params"]["model"]
    print({k: v for k, v in report["results"].items() if k.startswith("rel_err")})
    assert (tmp_path / "figures" / "01_equivalence.png").stat().st_size > 10_000
