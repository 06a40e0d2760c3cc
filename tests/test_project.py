"""The project's own promises: one dependency list in two files, CI runs the README's test command,
results are written atomically with provenance, and make run executes a notebook headless."""

import hashlib
import json
import os
import re
import subprocess
import sys

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
    diff = subprocess.run(["git", "diff", "HEAD", "--", ".", ":!results"], cwd=REPO, capture_output=True, text=True)
    expected = hashlib.sha256(diff.stdout.encode()).hexdigest() if diff.stdout else None
    assert provenance()["git_diff_sha256"] == expected


def test_a_result_records_the_code_its_process_started_with(tmp_path):
    """A long run outlives edits of the tree: what it writes names the code state it was started with."""
    script = (
        "import os; from rwkv_lab.results import write_json; "
        "os.environ['RWKV_LAB_GIT_COMMIT'] = 'edited-meanwhile'; "  # the tree's state changes during the run
        f"write_json({str(tmp_path / 'r.json')!r}, {{}})"
    )
    env = os.environ | {"RWKV_LAB_GIT_COMMIT": "at-start", "RWKV_LAB_GIT_DIFF_SHA256": "d" * 64}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    recorded = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert recorded["git_commit"] == "at-start" and recorded["git_diff_sha256"] == "d" * 64


def test_notebooks_execute_headless(tmp_path, monkeypatch):
    """make run's path (papermill, the parameters injected) on notebook 04, whose widgets it switches off. Every
    notebook runs in full in tests/test_browser.py, through JupyterLab, which also checks the report 01 writes
    (running 01 here too took ~40 s, for the same report)."""
    from rwkv_lab.run_notebooks import notebook_sources, run_notebooks

    monkeypatch.setenv("RWKV_LAB_RESULTS", str(tmp_path))
    assert len(notebook_sources()) == 6
    notebooks = [n for n in notebook_sources() if n.name.startswith("04_")]
    written = run_notebooks(notebooks)
    assert [p.name for p in written] == [n.with_suffix(".ipynb").name for n in notebooks]
    # headless, the widget cells are off (nbclient can block on them): 04 declares the switch for its sliders
    assert re.search(r"^interactive = ", notebooks[0].read_text(), re.M)
    assert json.loads(written[0].read_text())["metadata"]["papermill"]["parameters"]["interactive"] is False


# the layers of rwkv_lab, lowest first (ARCHITECTURE.md): a module imports from its own layer or lower ones only
LAYERS = [
    ["triton_launch"],
    ["ops"],
    ["models"],
    ["results", "cost"],
    ["loading"],
    ["inference"],
    ["training"],
    ["measure"],
    ["evaluation"],
    ["analysis"],
    ["run_notebooks", "__main__", "__init__"],
]


def import_graph() -> dict[str, set[str]]:
    """rwkv_lab module -> the rwkv_lab modules it imports (absolute or relative, at any depth of the file)."""
    import ast

    package = REPO / "rwkv_lab"
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]  # the package a relative import starts from
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ((base,) if base else ()))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                where = package.parent / t.replace(".", "/")
                if t.startswith("rwkv_lab") and (where.with_suffix(".py").exists() or (where / "__init__.py").exists()):
                    deps.add(t)
        graph[name] = deps - {name}
    return graph


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_layers_import_only_downwards_and_without_cycles():
    graph = import_graph()
    upward = [(m, d) for m, deps in graph.items() for d in deps if d != "rwkv_lab" and layer_of(d) > layer_of(m)]
    assert not upward, f"modules importing from a higher layer: {upward}"
    # a cycle through rwkv_lab modules (a package's __init__ importing its own modules is not one)
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            if d == "rwkv_lab" or m.startswith(d + "."):
                continue
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [d])}")
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} internal imports, no cycle, none upward")


def test_readme_measured_table_is_what_the_results_hold():
    """README.md's "Measured so far" is written by scripts/readme_table.py from results/; a hand edit or a new
    result without the rerun fails here."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_table.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
