# The two commands of the README:  `make demo`  and  `make test`.
# Both create the virtual environment (.venv) on first use and install everything into it.
# `make tensorboard` opens the demo's runs (LOGDIR=... for another directory, PORT=... for another port).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := lightning_init tests examples benchmarks
LOGDIR ?= demo_runs
PORT ?= 6006

.PHONY: demo test tensorboard lint typecheck pytest venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,benchmarks,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lightning-init demo

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir $(LOGDIR) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy lightning_init

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache .mypy_cache .ruff_cache
