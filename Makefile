# medimg: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
ARGS ?=
DATASET ?= ham10000
PYTEST_ARGS ?=

.PHONY: help install train test test-fast lint format tensorboard download benchmark clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install medimg with its dependencies

train: install  ## train on the built-in synthetic data set (CPU, a few minutes); ARGS= adds overrides
	$(PY) -m medimg.train experiment=synthetic $(ARGS)

test: install  ## run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install  ## the tests without the slow end-to-end runs
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff check
	$(VENV)/bin/ruff check medimg tests benchmarks

format: install  ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I medimg tests benchmarks
	$(VENV)/bin/ruff format medimg tests benchmarks

tensorboard: install  ## serve the run folders (outputs/ and multirun/) in TensorBoard
	$(VENV)/bin/tensorboard --logdir . --host 127.0.0.1 --port 6006

download: install  ## download and prepare a Kaggle data set: make download DATASET=ham10000
	$(PY) -m medimg.download dataset=$(DATASET)

clean:  ## remove caches and run folders (keeps .venv and data/)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
