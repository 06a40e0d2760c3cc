"""What a newcomer meets, as the README shows it: its Python block and every command line it writes run as written
(with small limits, each change printed), the Makefile's commands work on a fresh machine (the browser test's
Chromium installed or one line saying what to install; `make lab` as root), offline lm-eval tasks hold absolute
paths and leave no folder behind, and the warnings a setup or a notebook run would show are gone."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from helpers import REPO, SHARED

README = (REPO / "README.md").read_text()
LM_EVAL_DATA = SHARED / "data" / "lm_eval"
# offline, as CI is: a hub id in the README is mapped to the embedded default model instead
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HUB_ID = re.compile(r"\b(RWKV|BlinkDL)/[\w.-]+")
COMMAND_WORDS = {"make", "python", "python3", "rwkv-lab", "torchrun", "accelerate", "conda", "pip"}


def readme_blocks() -> tuple[list[tuple[str, str]], str]:
    """([(language, text) of each fenced block], the README's text outside them)."""
    blocks, outside, current = [], [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), [])
            else:
                blocks.append((current[0], "\n".join(current[1])))
                current = None
        elif current is not None:
            current[1].append(line)
        else:
            outside.append(line)
    return blocks, "\n".join(outside)


def readme_commands() -> list[str]:
    """Every command line of the README: the lines of its plain fenced blocks (continuations joined, trailing
    comments dropped) and every inline code span that starts with a command and has arguments."""
    blocks, outside = readme_blocks()
    commands = []
    for language, text in blocks:
        if language:
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = re.split(r"\s{2,}#", line)[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    for span in re.findall(r"`([^`\n]+)`", outside):
        if span.split()[0] in COMMAND_WORDS and len(span.split()) > 1:
            commands.append(span)
    return list(dict.fromkeys(commands))


def run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    print("$", shlex.join(argv), f"(in {cwd})")
    env = os.environ | OFFLINE | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{shlex.join(argv)} exited {out.returncode}:\n{out.stdout[-1500:]}\n{out.stderr[-3000:]}"
    )
    print(out.stdout[-600:])
    return out


def offline(argv: list[str]) -> list[str]:
    """Hub ids -> the default model, device=cuda -> cpu where there is no GPU; each change printed."""
    changed = []
    for word in argv:
        new = HUB_ID.sub("default", word)
        if not torch.cuda.is_available():
            new = new.replace("device=cuda", "device=cpu")
        if new != word:
            print(f"  {word!r} -> {new!r} (offline test, no GPU needed: the embedded default model on the CPU)")
        changed.append(new)
    return changed


def python_argv(words: list[str]) -> list[str]:
    return [sys.executable, *words[1:]] if words[0] in ("python", "python3") else words


# --- the rules: each README command is run (or dry-run, or skipped with its reason) by exactly one of them


def dry_run_make(cmd, tmp, commands):
    print("make -n: the target exists and its recipe expands; running it would set up or run the whole project")
    run(["make", "-n", *shlex.split(cmd)[1:]], REPO)


def skip(reason):
    def rule(cmd, tmp, commands):
        print(f"not run: {reason}")

    return rule


def conda_environment(cmd, tmp, commands):
    assert (REPO / "environment.yml").exists(), f"`{cmd}` names environment.yml, which is missing"
    print("not run: conda is not the test's setup (test_project.py checks environment.yml against pyproject)")


def module_named(cmd, tmp, commands):
    module = cmd.split()[-1]
    assert importlib.util.find_spec(module), f"the README names `{cmd}`, but there is no module {module}"
    print(f"{module} is a module (named in prose, run with its arguments by another README line)")


def rwkv_lab_command(cmd, tmp, commands):
    """The CLI as installed by make setup (the venv's rwkv-lab script), on files written here for its examples."""
    from rwkv_lab import load_model, save_model

    model = load_model("default")
    save_model(model, tmp / "in.pth", format="pth")
    save_model(model, tmp / "model.safetensors")
    words = offline(shlex.split(cmd))
    script = Path(sys.executable).parent / "rwkv-lab"
    argv = ([str(script)] if script.exists() else [sys.executable, "-m", "rwkv_lab"]) + words[1:]
    if words[1] == "generate":
        argv += ["--max-new-tokens", "8"]
        print("  + --max-new-tokens 8 (small limit)")
    run(argv, tmp)


def training_command(cmd, tmp, commands):
    words = shlex.split(cmd)
    if "..." in words:  # "..." stands for the options of the line above that this line does not set
        above = shlex.split(next(c for c in commands if c.startswith("python -m rwkv_lab.training --arch rwkv")))
        options = dict(zip(above[3::2], above[4::2]))
        kept = [w for flag, value in options.items() if flag not in words for w in (flag, value)]
        words[words.index("...") : words.index("...") + 1] = kept
        print(f"  ... -> {' '.join(kept)} (the options of the line above)")
    words[words.index("--tokens") + 1] = "512"
    limits = ["--batch-size", "1", "--eval-tokens", "512", "--data", str(REPO / "rwkv_lab")]
    print(f"  --tokens 512 {' '.join(limits)} (small limits: one step on this repository's own code)")
    run(python_argv(words) + limits, tmp)
    out = tmp / words[words.index("--out") + 1]
    assert (out / "log.csv").exists(), f"{cmd}: no log.csv in {out}"


def write_offline_tasks(cmd: str, cwd: Path) -> Path:
    cwd.mkdir(parents=True, exist_ok=True)
    words = [w.replace("DATA_DIR", str(LM_EVAL_DATA)) for w in shlex.split(cmd)]
    print(f"  DATA_DIR -> {LM_EVAL_DATA}")
    run(python_argv(words), cwd)
    return cwd / "my_tasks"


def assert_absolute_data_paths(tasks: Path) -> None:
    yamls = sorted(tasks.glob("*.yaml"))
    assert yamls, f"no task YAMLs in {tasks}"
    for yaml in yamls:
        paths = re.findall(r"^\s+(?:train|validation|test): (.+)$", yaml.read_text(), re.M)
        assert paths, f"{yaml} names no data file"
        for path in paths:
            assert Path(path).is_absolute() and Path(path).exists(), f"{yaml}: data file {path} is not absolute"


def task_yamls_command(cmd, tmp, commands):
    tasks = write_offline_tasks(cmd, tmp / "here")
    assert_absolute_data_paths(tasks)


def lm_eval_command(cmd, tmp, commands):
    """Offline, as the README says: the task YAMLs written by its own line, lm-eval run from another folder."""
    yamls_line = next(c for c in commands if "task_manager('DATA_DIR'" in c)
    tasks = write_offline_tasks(yamls_line, tmp / "yamls")
    extra = ["--limit", "2", "--include_path", str(tasks)]
    print(f"  + {' '.join(extra)} (offline, two documents a task)")
    (tmp / "elsewhere").mkdir()
    out = run(python_argv(offline(shlex.split(cmd))) + extra, tmp / "elsewhere", timeout=600)
    assert "|piqa" in out.stdout, out.stdout[-2000:]


def regenerating_script(cmd, tmp, commands):
    """A script that regenerates a committed file: run as `--check` (the committed file is what it would write),
    which leaves the checkout as it is."""
    print("  + --check (the committed output is what the script writes; nothing is rewritten)")
    run([sys.executable, *shlex.split(cmd)[1:], "--check"], REPO)


RULES = [  # (pattern, rule, slow)
    (r"make (run|test|lab|setup)\b.*", dry_run_make, False),
    (r"conda env create -f environment\.yml", conda_environment, False),
    (r"pip install -e \. --no-deps", skip("it would reinstall the package into the venv running the tests"), False),
    (r"rwkv-lab --debug \.\.\.", skip("a placeholder: --debug before any of the commands above"), False),
    (r"rwkv-lab (generate|convert|info) .*", rwkv_lab_command, False),
    (r"python -m rwkv_lab\.\w+", module_named, False),
    (r"python scripts/(results_index|readme_table)\.py", regenerating_script, False),
    (r'python -c "from rwkv_lab\.evaluation\.tasks import task_manager; .*"', task_yamls_command, False),
    (r"python -m rwkv_lab\.training .*", training_command, True),
    (r"python -m rwkv_lab\.evaluation .*", lm_eval_command, True),
    (r"torchrun --nproc_per_node 8 -m rwkv_lab\.training .*", skip("8 GPUs and a 1.5B model"), False),
    (
        r"(torchrun --nproc_per_node N|accelerate launch) -m rwkv_lab\.evaluation \.\.\.",
        skip("a placeholder; test_lm_eval.py runs lm-eval in two processes under torchrun"),
        False,
    ),
]


def rule_for(cmd: str):
    matches = [(rule, slow) for pattern, rule, slow in RULES if re.fullmatch(pattern, cmd)]
    assert len(matches) == 1, f"README command {cmd!r} matches {len(matches)} rules of tests/test_readme.py: add one"
    return matches[0]


def command_params():
    params = []
    for cmd in readme_commands():
        slow = [s for pattern, _, s in RULES if re.fullmatch(pattern, cmd)]
        params.append(pytest.param(cmd, id=cmd[:60], marks=[pytest.mark.slow] if any(slow) else []))
    return params


@pytest.mark.parametrize("cmd", command_params())
def test_readme_command_runs_as_written(cmd, tmp_path):
    rule, _ = rule_for(cmd)
    rule(cmd, tmp_path, readme_commands())


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert any(c.startswith("rwkv-lab generate") for c in commands) and "make test" in commands, commands
    for cmd in commands:
        rule_for(cmd)


@pytest.mark.slow  # 47 s on two shared cores: the default model checked and generating five times
def test_readme_python_block_runs_as_written(tmp_path):
    blocks = [text for language, text in readme_blocks()[0] if language == "python"]
    assert blocks, "the README has no ```python block"
    for text in blocks:
        assert not HUB_ID.search(text.split("#")[0]), "the Python block loads a hub model: it cannot run offline"
        out = run([sys.executable, "-c", text], tmp_path)
        assert out.stdout.strip(), "the Python block printed nothing"


def test_readme_names_resolve():
    """Every rwkv_lab.x.y the README names is a module or an attribute of one."""
    for name in sorted(set(re.findall(r"\brwkv_lab(?:\.\w+)+", README))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest prefix that imports, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"the README names {name}, which does not exist"
            obj = getattr(obj, attr)


def test_the_cli_is_where_the_readme_says():
    """After make setup the CLI is the venv's bin/rwkv-lab (pip installs pyproject's script there)."""
    assert "`.venv/bin/rwkv-lab`" in README and "source .venv/bin/activate" in README
    assert 'rwkv-lab = "rwkv_lab.__main__:main"' in (REPO / "pyproject.toml").read_text()
    script = Path(sys.executable).parent / "rwkv-lab"
    assert script.exists(), f"{script} is missing: the venv running the tests was not set up by pip install -e"


# --- the Makefile on a fresh machine


def fake_bin(tmp: Path, scripts: dict[str, str], tools=("mkdir",)) -> Path:
    """A folder for PATH holding these shell scripts and links to a few real tools (nothing else is found)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    for tool in tools:
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def make(args: list[str], path: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "RWKV_LAB_CHROMIUM"}
    return subprocess.run(
        [shutil.which("make"), "-s", "-C", str(REPO), *args],
        env=clean | {"PATH": str(path)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def own_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("make: ", "make["))]


# an apt-get that installs a stand-in chromium next to itself, recording its calls
APT_INSTALLS = 'echo "apt-get $*" >> "${0%/*}/calls"\ncase "$*" in *install*) echo "#!/bin/sh" > "${0%/*}/chromium";\n'
APT_INSTALLS += '/bin/chmod +x "${0%/*}/chromium";; esac'


def test_make_test_installs_chromium_when_missing(tmp_path):
    bin_dir = fake_bin(tmp_path, {"apt-get": APT_INSTALLS, "id": "echo 0"})
    out = make(["chromium", f"VENV={tmp_path / 'venv'}"], bin_dir)
    assert out.returncode == 0, out.stderr
    assert "installing Debian's chromium" in out.stdout
    assert (bin_dir / "chromium").exists() and "install -y -qq chromium" in (bin_dir / "calls").read_text()
    again = make(["chromium", f"VENV={tmp_path / 'venv'}"], bin_dir)  # found now: nothing to do
    assert again.returncode == 0 and again.stdout == "" and (bin_dir / "calls").read_text().count("install") == 1


def test_make_test_uses_sudo_when_not_root(tmp_path):
    sudo = 'echo "sudo $*" >> "${0%/*}/sudo_calls"\nexec "$@"'
    bin_dir = fake_bin(tmp_path, {"apt-get": APT_INSTALLS, "id": "echo 1000", "sudo": sudo})
    out = make(["chromium", f"VENV={tmp_path / 'venv'}"], bin_dir)
    assert out.returncode == 0, out.stderr
    assert "sudo apt-get install -y -qq chromium" in (bin_dir / "sudo_calls").read_text()


@pytest.mark.parametrize("apt", ["fails", "absent"])
def test_make_test_says_in_one_line_what_to_install(tmp_path, apt):
    scripts = {"id": "echo 0"} | (
        {"apt-get": "echo 'E: Unable to locate package chromium' >&2; exit 100"} if apt == "fails" else {}
    )
    out = make(["chromium", f"VENV={tmp_path / 'venv'}"], fake_bin(tmp_path, scripts))
    print(out.stderr)
    assert out.returncode != 0
    lines = own_lines(out.stderr)
    assert len(lines) == 1 and "install Debian's chromium" in lines[0] and "RWKV_LAB_CHROMIUM" in lines[0], lines


def test_make_test_takes_the_browser_named_in_the_environment(tmp_path):
    bin_dir = fake_bin(tmp_path, {"apt-get": APT_INSTALLS, "id": "echo 0"})
    out = make(["chromium", f"VENV={tmp_path / 'venv'}"], bin_dir, RWKV_LAB_CHROMIUM="/opt/chromium")
    assert out.returncode == 0 and not (bin_dir / "calls").exists(), out.stderr


def test_make_test_runs_the_chromium_step_unless_slow_tests_are_deselected():
    def dry(*args):
        return subprocess.run(["make", "-n", "test", *args], cwd=REPO, capture_output=True, text=True).stdout

    assert "apt-get install" in dry() and "apt-get install" not in dry("ARGS=-m 'not slow'")


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    commands = [line for line in lines if not line.startswith(("set ", "cd "))]
    assert commands == ["make test"], commands


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_make_lab_allows_root_only_as_root(tmp_path, uid):
    bin_dir = fake_bin(tmp_path, {"id": f"echo {uid}"})
    out = make(["-n", "lab"], bin_dir)
    lab = [line for line in out.stdout.splitlines() if "jupyter lab" in line]
    assert len(lab) == 1, out.stdout + out.stderr
    assert lab[0].endswith("--allow-root") == (uid == "0"), lab[0]


# --- offline lm-eval tasks


def test_offline_task_folders_hold_absolute_paths_and_none_is_left_behind(tmp_path, monkeypatch):
    from rwkv_lab.evaluation import tasks

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    names, _ = tasks.task_manager(LM_EVAL_DATA)
    tasks.task_manager(LM_EVAL_DATA)
    assert names == ["arc_easy", "lambada_openai", "piqa"]
    assert list(system_tmp.iterdir()) == [], "task_manager left a folder in the system's temporary directory"
    cached = list(tasks.tasks_cache_dir().iterdir())
    assert len(cached) == 1, f"two calls on the same data made {len(cached)} task folders: {cached}"
    assert_absolute_data_paths(cached[0])
    tasks.task_manager(LM_EVAL_DATA, "my_tasks")  # a relative folder, as the README writes it
    assert_absolute_data_paths(tmp_path / "my_tasks")


def test_offline_lm_eval_runs_without_datasets_progress_bars(tmp_path, monkeypatch):
    """Offline, datasets' bars only say "Generating validation split: 0 examples", and a notebook keeps each."""
    import datasets
    import lm_eval

    from rwkv_lab.evaluation import backend, tasks

    class Model:  # a stand-in: what is checked is the call around lm-eval's
        def __init__(self, **kwargs):
            pass

    seen = []
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "RWKVLM", Model)
    monkeypatch.setattr(
        lm_eval, "simple_evaluate", lambda **kw: seen.append(datasets.is_progress_bar_enabled()) or {"results": {}}
    )
    datasets.enable_progress_bars()
    tasks.run_lm_eval("default", ["piqa"], data_dir=LM_EVAL_DATA)
    assert seen == [False] and datasets.is_progress_bar_enabled(), "bars on during the call, or left off after it"


# --- what a newcomer reads


def test_setup_raises_no_licence_deprecation_warning():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert not [str(w.message) for w in caught], [str(w.message)[:200] for w in caught]


@pytest.mark.parametrize("source", sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_papermill_parses_every_parameter(source, caplog):
    """papermill's own parser reads each assignment of the parameters cell (a comment with '=' stops it)."""
    import jupytext
    from papermill.translators import PythonTranslator

    cells = [c for c in jupytext.read(source).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{source.name}: {len(cells)} parameters cells"
    assigned = [t.id for node in ast.parse(cells[0].source).body for t in getattr(node, "targets", [])]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        found = [p.name for p in PythonTranslator.inspect(cells[0])]
    assert not caplog.records, f"{source.name}: {[r.getMessage() for r in caplog.records]}"
    assert found == assigned, f"{source.name}: papermill reads {found}, the cell assigns {assigned}"


def test_the_transformer_peer_logs_no_deprecation_warning():
    """The profiler's Pythia prefill and decode (notebook 02) pass the KV cache under the installed transformers'
    name: the old one logs a deprecation warning into the notebook."""
    from transformers.utils import logging as hf_logging

    from rwkv_lab.measure.profiler import transformer_subject
    from rwkv_lab.models.transformer.model import pythia_model

    model = pythia_model(
        "pythia-160m", torch.float32, "cpu", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
        intermediate_size=64, vocab_size=300,
    )  # fmt: skip
    subject = transformer_subject(model, "gpt")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = hf_logging.get_logger("transformers")
    root.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # a warning logged once per process may have gone already
    try:
        _, cache = subject.extend(torch.randint(0, 300, (1, 9)), chunk=4)
        subject.decode(torch.tensor([1]), cache)
    finally:
        root.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]
