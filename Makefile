# The two commands of the README:
#   make tour   run the tour notebook (notebooks/tour.py) headless (installs what it needs first)
#   make test   install everything the tests need, lint, type-check, build the docs and run the
#               whole suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
PY310 := $(firstword $(wildcard $(PYENV_ROOT)/versions/3.10*/bin/python3.10))
PY313 := $(firstword $(wildcard $(PYENV_ROOT)/versions/3.13*/bin/python3.13))
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: test tour lab lint typecheck unit engines smoke bench bench-cluster clean browser-deps \
	docs docs-build docs-notebooks

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -U pip
	$(BIN)/pip install $(PIP_FLAGS) -e '.[test,bench,ray,dask,docs]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check nbpool tests benchmarks tools notebooks docs/hooks.py
	$(BIN)/ruff format --check nbpool tests benchmarks tools notebooks docs/hooks.py

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed browser-deps
	$(BIN)/pytest

# The engine parity suite on a real Ray head and on a real Dask cluster (each started on
# 127.0.0.1 by the tests), with each engine's own tests: one pytest run per engine, so the
# core run never imports Ray or Dask, and neither imports the other.
engines: $(BIN)/.installed
	$(BIN)/pytest -p no:cacheprovider tests/parity tests/ray --engines=ray
	$(BIN)/pytest -p no:cacheprovider tests/parity tests/dask --engines=dask

# The browser tests (tests/browser) drive Debian's Chromium through Playwright. We install the
# distribution's package rather than `playwright install`, which downloads its own browser build.
# Not root and no sudo: nothing is installed, and the browser tests skip themselves.
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "chromium not found and not root: the browser tests will be skipped"; exit 0; fi; \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

# A quick smoke run of the core on the oldest and newest supported Pythons.
.venv-%/.installed: pyproject.toml
	@py=$(if $(filter 310,$*),$(PY310),$(PY313)); \
	test -n "$$py" || { echo "python for $* not found under $(PYENV_ROOT)"; exit 1; }; \
	test -x .venv-$*/bin/python || $$py -m venv .venv-$*; \
	.venv-$*/bin/pip install $(PIP_FLAGS) -U pip; \
	.venv-$*/bin/pip install $(PIP_FLAGS) -e '.[dill]' pytest pytest-timeout numpy; \
	touch $@

smoke: .venv-310/.installed .venv-313/.installed
	.venv-310/bin/pytest -m smoke -p no:cacheprovider -q tests/unit tests/integration
	.venv-313/bin/pytest -m smoke -p no:cacheprovider -q tests/unit tests/integration

test: lint typecheck docs-build unit engines smoke

tour: $(BIN)/.installed
	$(BIN)/python tools/run_notebook.py notebooks/tour.py

# The tour in JupyterLab, to watch the dashboard live (the browser opens it; Ctrl-C stops).
# The notebooks are text (jupytext percent .py); `jupytext --sync` makes each one's .ipynb twin
# (ignored by git), and jupytext's server extension keeps the two in step when Lab saves.
lab: $(BIN)/.installed
	$(BIN)/jupytext --sync notebooks/*.py
	$(BIN)/jupyter lab --ip=127.0.0.1 notebooks/tour.ipynb

# run.py also writes results/latest.json and draws results/ratios.png; plot.py redraws it from
# that JSON (the table and the plot show the same numbers).
bench: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/dashboard.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/plot.py

# nbpool against Ray's Pool and Dask's client.map on a Ray head and a Dask cluster it starts on 127.0.0.1.
bench-cluster: $(BIN)/.installed
	$(BIN)/python benchmarks/cluster.py

# The documentation site (mkdocs.yml, pages in docs/): `make docs` serves it on
# http://127.0.0.1:8000 and rebuilds on every change; `make docs-build` builds it into site/ with
# --strict, so a broken link, anchor or reference, or a warning from mkdocstrings, fails it.
# (NO_MKDOCS_2_WARNING: Material for MkDocs prints a ten-line notice about its end of life on
# every build; it is not about this site.)
docs: $(BIN)/.installed docs-notebooks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

docs-build: $(BIN)/.installed docs-notebooks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# The site shows each notebook with its outputs: run them (two at a time) into docs/notebooks/,
# each dashboard as its saved static HTML (a static page cannot run the widget's JavaScript).
docs-notebooks: $(BIN)/.installed
	ls notebooks/*.py | xargs -P 2 -I NB sh -c \
	  '$(BIN)/python tools/run_notebook.py --quiet --static NB --output docs/notebooks/$$(basename NB .py).ipynb'


clean:
	rm -rf $(VENV) .venv-310 .venv-313 .pytest_cache .mypy_cache .ruff_cache site docs/notebooks
