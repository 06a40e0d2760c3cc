# Two commands do everything on a fresh machine (Python 3.10+ with pip; a GPU is optional):
#   make run    set up .venv, then execute every notebook headless (CPU, embedded default model) into results/
#   make test   set up .venv, then lint (ruff) and run the tests
# On a GPU machine: make run ARGS="-p device cuda -p model_source RWKV/rwkv-4-169m-pile"
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned, so pip never swaps it for another build; set TORCH= to keep the venv's own.
TORCH ?= torch==2.13.0
ARGS ?=
PY := $(VENV)/bin/python

.PHONY: setup run test test-gpu lab clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(PY) -m rwkv_lab.run_notebooks $(ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(ARGS)

# The GPU correctness checks (the gpu-marked tests, tests/test_gpu.py) on a CUDA machine; each writes its results
# file under results/gpu_checks/. Without a GPU they are skipped, with one line saying so.
test-gpu: setup
	$(PY) -m pytest -q -m gpu $(ARGS); status=$$?; \
	echo "gpu checks' results: $${RWKV_LAB_RESULTS:-results}/gpu_checks/"; exit $$status

# JupyterLab on the notebooks with the project's kernel, rwkv-lab, which run_notebooks --pair registers in the venv;
# each notebook is paired with its jupytext source, so an edit in JupyterLab updates the .py that is reviewed
lab: setup
	$(PY) -m rwkv_lab.run_notebooks --pair
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) .pytest_cache
