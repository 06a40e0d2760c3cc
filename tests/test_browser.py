"""The notebooks as a user meets them: JupyterLab in headless Chromium, every cell run through the UI.

A JupyterLab server (127.0.0.1, a random port, a token) serves the notebooks, made from their jupytext sources
into a temporary folder as make lab makes them: paired, with the rwkv-lab kernel registered, which they must open
with. Playwright drives Debian's Chromium: it runs every cell as the menu's Run > Run All Cells does and saves; the
saved notebook must hold no error output and its figures as images, and the page must show them. The widgets of
04 and 05 are used as a user would (in each explorer, a dropdown changed, a slider moved with the keyboard) and
each must change what that explorer shows: 04 has one explorer, 05 two (RWKV-4's channels, RWKV-7's matrix state).
A screenshot of each notebook after its run goes to the temporary folder, or to results/ui/ with
RWKV_LAB_SCREENSHOTS=1 (the committed pictures are refreshed on purpose, so a test run leaves the checkout as it
was). What the notebooks write goes to the temporary folder, never over the committed results.

Needs Chromium (/usr/bin/chromium or $RWKV_LAB_CHROMIUM; make test installs Debian's when it is missing) and
Playwright (the test extra). Where they are missing the test fails and says so: it never skips.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO

from rwkv_lab.results import record_file
from rwkv_lab.run_notebooks import KERNEL, install_kernel, notebook_sources, to_notebook

pytestmark = pytest.mark.slow
NOTEBOOKS = [p.stem for p in notebook_sources()]
COMMITTED_SCREENSHOTS = REPO / "results" / "ui"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def chromium_path() -> str:
    path = os.environ.get("RWKV_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(
            f"no Chromium at {path}: install Debian's chromium (apt-get install chromium; make test does) "
            "or set RWKV_LAB_CHROMIUM",
            pytrace=False,
        )
    return path


# The browser test checks what a reader meets (every cell runs, figures and tables drawn, widgets live), not the
# models' numbers: the heaviest live work runs smaller than the defaults, which `make run` executes (and the
# committed screenshots, RWKV_LAB_SCREENSHOTS=1, show)
BROWSER_PARAMETERS = {
    # the numerics study and the speed timings to T = 256 and 64 rather than 1024 and 256: the same cells and figures
    "01_equivalence": {"study_lengths": [1, 16, 256], "speed_lengths": [1, 4, 16, 64]},
    "02_memory_profile": {"live_seconds": 15.0},
    "03_lm_eval": {"limit": 12},
    "05_state_dynamics": {"n_bytes": 3000, "matrix_tokens": 384, "influence_position": 1200},
    "06_training": {"live_tokens": 20_000, "tracking_steps": 150, "sample_tokens": 100},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    # as make lab sets them up: the rwkv-lab kernel registered (here in a folder of the test's), notebooks paired
    install_kernel(work / "jupyter-data")
    committed_screenshots = os.environ.get("RWKV_LAB_SCREENSHOTS") == "1"
    for source in notebook_sources():
        parameters = None if committed_screenshots else BROWSER_PARAMETERS.get(source.stem)
        to_notebook(source, work / source.with_suffix(".ipynb").name, paired=True, parameters=parameters)
    settings = work / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = secrets.token_hex(16)
    env = os.environ | {
        "RWKV_LAB_RESULTS": str(work / "results"),
        "JUPYTER_CONFIG_DIR": str(work / ".jupyter"),
        "JUPYTER_PATH": str(work / "jupyter-data" / "share" / "jupyter"),
        "JUPYTERLAB_SETTINGS_DIR": str(work / ".settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / ".workspaces"),
        # the notebooks compile into an on-disk cache of their own: sharing the test process's, torch's AOT-autograd
        # cache later segfaulted while saving an entry in the test process (pickling it; torch 2.11, reproduced by
        # this file then tests/test_rwkv7_fast_path.py::test_fused_blocks_match_the_eager_blocks, fresh caches)
        "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache"),
    }
    log = open(work / "lab.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--allow-root",
            # the page's own command registry, which the menus call: a test runs cells as the menu would
            "--LabApp.expose_app_in_browser=True",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(work / 'lab.log').read_text()[-2000:]}", pytrace=False)
            time.sleep(0.5)
    yield url, token, work
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -e '.[test]' (make test does)", pytrace=False)
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        except Exception as err:  # noqa: BLE001 - whatever stops the browser, the message says what it was
            pytest.fail(f"Chromium did not start: {err}", pytrace=False)
        yield chromium
        chromium.close()


# the notebook panel of one file, found by its path (a restored layout may hold others)
PANEL = """(path) => { const app = window.jupyterapp;
    for (const w of app.shell.widgets('main')) { if (w.context && w.context.path === path) return w; } return null; }"""
CELLS = f"""(path) => {{ const w = ({PANEL})(path);
    const cells = w.content.widgets.filter(c => c.model.type === 'code');
    return {{counts: cells.map(c => c.model.executionCount), status: w.sessionContext.session.kernel.status}}; }}"""
KERNEL_NAME = f"(path) => ({PANEL})(path).sessionContext.session.kernel.name"


def run_all(page, name: str, timeout_s: float = 900) -> None:
    """Run > Run All Cells (the command the menu item calls), then wait until every code cell has an execution
    count and the kernel is idle."""
    path = f"{name}.ipynb"
    page.evaluate(
        f"""(path) => {{ const w = ({PANEL})(path); window.jupyterapp.shell.activateById(w.id);
        return window.jupyterapp.commands.execute('notebook:run-all-cells'); }}""",
        path,
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state = page.evaluate(CELLS, path)
        if all(c is not None for c in state["counts"]) and state["status"] == "idle":
            return
        time.sleep(1)
    raise AssertionError(f"{name}: not finished after {timeout_s:.0f} s: {page.evaluate(CELLS, path)}")


def saved(work, name: str) -> dict:
    return json.loads((work / f"{name}.ipynb").read_text())


def open_notebook(browser, lab, name):
    url, token, work = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: no layout restored from earlier
    path = f"{name}.ipynb"
    page.wait_for_function(f"(path) => window.jupyterapp && ({PANEL})(path) !== null", arg=path, timeout=90_000)
    page.evaluate(
        f"async (path) => {{ const w = ({PANEL})(path); await w.context.ready; await w.sessionContext.ready; }}", path
    )
    return page


# how many explorers (ipywidgets interact boxes) a notebook shows
EXPLORERS = {"04": 1, "05": 2}


def changed_output(output, act) -> tuple[str, str]:
    """Does `act` (a user's action on a widget), then waits until the output (a locator) shows something else;
    returns the output's HTML before and after."""
    before = output.inner_html()
    act()
    deadline = time.time() + 60
    while time.time() < deadline and output.inner_html() == before:
        time.sleep(0.5)
    return before, output.inner_html()


def pick_other_option(box) -> None:
    """Picks another option of the first dropdown in `box` (a page or one explorer), as a user would."""
    select = box.locator(".widget-dropdown select").first
    # by position: ipywidgets shows an option's spaces as non-breaking ones, so its text is not its value
    current = select.evaluate("s => s.selectedIndex")
    # the option before the current one: after 04's H100 comes the H200, whose peak dense bf16 FLOP/s is the same
    # (its cost too); before it, the A100
    select.select_option(index=(current - 1) % select.locator("option").count())


def move_first_slider(box) -> None:
    """Moves the first slider in `box` one step to the right with the keyboard, as a user would (its handle takes
    focus)."""
    handle = box.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    handle.press("ArrowRight")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_notebook_runs_in_jupyterlab(browser, lab, name):
    url, token, work = lab
    page = open_notebook(browser, lab, name)
    kernel = page.evaluate(KERNEL_NAME, f"{name}.ipynb")
    assert kernel == KERNEL["name"], f"{name}: opened with the kernel {kernel!r}, not the project's {KERNEL['name']!r}"
    started = time.time()
    run_all(page, name)
    seconds = time.time() - started
    widget_check = ""
    if name[:2] in EXPLORERS:
        # 04: the first slider is the parameter count, the output the cost; 05: in both explorers the first slider
        # is the layer (RWKV-4's channels, RWKV-7's matrix state)
        boxes = page.locator(".widget-interact")
        assert boxes.count() == EXPLORERS[name[:2]], f"{name}: {boxes.count()} explorers, not {EXPLORERS[name[:2]]}"
        for i in range(boxes.count()):
            box = boxes.nth(i)
            box.locator(".widget-dropdown select").first.scroll_into_view_if_needed()
            output = box.locator(".widget-output").first
            for what, act in (("the dropdown", pick_other_option), ("a slider", move_first_slider)):
                before, after = changed_output(output, lambda: act(box))
                assert before != after, f"{name}: in explorer {i}, changing {what} changed nothing that is shown"
        widget_check = f"; in each of its {boxes.count()} explorers the dropdown and a slider changed the output"
    page.evaluate(f"(path) => ({PANEL})(path).context.save()", f"{name}.ipynb")
    time.sleep(1)
    nb = saved(work, name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{name}: {errors}"

    def cells_with(mime):
        return [i for i, c in enumerate(nb["cells"]) if any(mime in o.get("data", {}) for o in c.get("outputs", []))]

    if name == "01_equivalence":  # the report it writes (make run's headless path runs 04: tests/test_project.py)
        report = json.loads((work / "results" / "01_equivalence.json").read_text())
        assert report["results"]["match"] is True
        assert report["provenance"]["params"]["models"]["rwkv4"].startswith("default")
        for arch, errors in report["results"]["per_position"].items():
            print(arch, {k: v for k, v in errors.items() if k.startswith("rel_err")})
        assert (work / "results" / "figures" / "01_equivalence.png").stat().st_size > 10_000
    draws = "plt." in (REPO / "notebooks" / f"{name}.py").read_text()
    with_figure = cells_with("image/png")
    assert with_figure or not draws, f"{name}: draws figures but none is in the saved notebook"
    shown = with_figure or cells_with("text/html")  # a notebook of tables: its first table
    assert shown, f"{name}: no output to show"
    # the page too: scroll to the first figure (or table), as a reader would, and find it drawn
    page.evaluate(
        f"async ([path, i]) => {{ await ({PANEL})(path).content.scrollToItem(i, 'end'); }}",
        [f"{name}.ipynb", shown[0]],
    )
    drawn = ".jp-RenderedImage img" if with_figure else ".jp-RenderedHTMLCommon table"
    page.wait_for_selector(drawn, timeout=30_000)
    page.locator(drawn).first.evaluate("e => e.scrollIntoView({block: 'center'})")
    time.sleep(0.5)
    shots = COMMITTED_SCREENSHOTS if os.environ.get("RWKV_LAB_SCREENSHOTS") == "1" else work / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"))
    if shots == COMMITTED_SCREENSHOTS:
        record_file(
            shots / f"{name}.png",
            command="RWKV_LAB_SCREENSHOTS=1 python -m pytest tests/test_browser.py",
            description=f"notebooks/{name}.py in JupyterLab in headless Chromium after all its cells ran",
        )
    print(
        f"{name}: ran in the browser in {seconds:.0f} s, {len(with_figure)} cells with figures{widget_check}; "
        f"screenshot {shots / f'{name}.png'}"
    )
    page.close()
