# madrec — common tasks. Two commands set up a fresh machine and test it:
#   make setup && make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch unless a GPU is present; override e.g. TORCH_SPEC="torch==2.13.0"
# TORCH_INDEX=https://download.pytorch.org/whl/cpu on a laptop without a local wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
GPUS ?= 1

.PHONY: help setup test test-fast lint-infra train train-gpu evaluate run submit compile-pipeline \
        build-images push-images bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv and install madrec with its test dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test]'
	@$(BIN)/python -c "import torch, madrec; print('madrec', madrec.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

test:  ## run the whole test suite
	$(BIN)/pytest -q

test-fast:  ## the suite without tests marked slow
	$(BIN)/pytest -q -m "not slow"

clean:  ## remove build and run outputs (keeps .venv)
	rm -rf runs outputs .pytest_cache build dist
