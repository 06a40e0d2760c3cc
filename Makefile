# Two commands do everything on a fresh machine (Python 3.10+ with pip; a GPU is optional):
#   make run    set up .venv, then execute every notebook headless (CPU, embedded default model) into results/
#   make test   set up .venv (and Chromium for the browser test), then lint (ruff) and run the tests
# On a GPU machine: make run ARGS="-p device cuda -p rwkv4_source RWKV/rwkv-4-169m-pile"
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned, so pip never swaps it for another build; set TORCH= to keep the venv's own.
TORCH ?= torch==2.13.0
ARGS ?=
PY := $(VENV)/bin/python
AS_ROOT := $(filter 0,$(shell id -u))

.PHONY: setup run test test-gpu chromium lab clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(PY) -m rwkv_lab.run_notebooks $(ARGS)

# the browser test (tests/test_browser.py, marked slow) needs Chromium; ARGS="-m 'not slow'" deselects it
test: setup $(if $(findstring not slow,$(ARGS)),,chromium)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(ARGS)

# The GPU correctness checks (the gpu-marked tests, tests/test_gpu.py) on a CUDA machine; each writes its results
# file under results/gpu_checks/. Without a GPU they are skipped, with one line saying so.
test-gpu: setup
	$(PY) -m pytest -q -m gpu $(ARGS); status=$$?; \
	echo "gpu checks' results: $${RWKV_LAB_RESULTS:-results}/gpu_checks/"; exit $$status

# Debian's Chromium, which the browser test drives through Playwright (the test extra): installed with apt-get when it
# is missing (with sudo when not root); elsewhere the one line printed says what to install. $RWKV_LAB_CHROMIUM
# names another browser and skips this.
SUDO ?= $(if $(AS_ROOT),,sudo)
CHROMIUM_LOG := $(VENV)/chromium-install.log
chromium:
	@[ -n "$$RWKV_LAB_CHROMIUM" ] || command -v chromium >/dev/null || { \
		command -v apt-get >/dev/null && mkdir -p $(VENV) && \
		echo "Chromium is missing: installing Debian's chromium for the browser test (apt-get install chromium$(if $(SUDO), with sudo))" && \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; } \
			>$(CHROMIUM_LOG) 2>&1 && command -v chromium >/dev/null; \
	} || { echo "make test needs Chromium for tests/test_browser.py and found none it could install (apt-get's log: \
	$(CHROMIUM_LOG)): install Debian's chromium, or set RWKV_LAB_CHROMIUM to a Chromium executable" >&2; exit 1; }

# JupyterLab on the notebooks with the project's kernel, rwkv-lab, which run_notebooks --pair registers in the venv;
# each notebook is paired with its jupytext source, so an edit in JupyterLab updates the .py that is reviewed
# (Jupyter refuses to run as root, common in containers, unless told so)
lab: setup
	$(PY) -m rwkv_lab.run_notebooks --pair
	$(VENV)/bin/jupyter lab notebooks $(if $(AS_ROOT),--allow-root)

clean:
	rm -rf $(VENV) .pytest_cache
