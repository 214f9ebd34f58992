# Every target bootstraps what it needs from nothing: a fresh clone needs only
# python3 (>= 3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Arguments for `make serve`, e.g. make serve ARGS="--triton 127.0.0.1:8001 --port 9001"
ARGS ?=

.PHONY: dev serve test lint typecheck protos bench clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The wheel is wanted only for the real `tritonserver` binary and Python
	# backend it ships (the tests start it); its own pins would downgrade ours.
	$(BIN)/python -m pip install --quiet --no-deps 'nvidia-pytriton==0.7.0'
	touch $@

dev: $(VENV)/.installed

serve: dev
	$(BIN)/inference-gateway serve $(ARGS)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd protos && ../$(BIN)/buf lint

typecheck: dev
	$(BIN)/mypy

protos: dev
	$(BIN)/python protos/generate.py

test: dev lint typecheck
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python -m loadtests.latency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
