# Every target bootstraps what it needs from nothing: a fresh clone needs only
# python3 (>= 3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Arguments for `make serve`, e.g. make serve ARGS="--triton 127.0.0.1:8001 --port 9001"
ARGS ?=

.PHONY: dev tools deploy-tools deploy-check deploy-lock serve test lint typecheck protos bench bench-suite bench-profile mlserver clean

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

# System tools the tests use: promtool (Debian's `prometheus` package) checks the
# metrics exposition. Installed only when missing, and only as root.
tools:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	else \
		echo "promtool is missing: run 'sudo apt-get install --no-install-recommends prometheus'" \
			"(its metrics test is skipped locally and fails under CI=true)"; \
	fi

# checkov (deploy-check) lives in a virtual environment of its own, since its
# many exact pins would otherwise decide the versions of the project's tools.
# Like promtool it is installed once per machine (in the user's cache, one
# environment per version), not once per clone: it is large and slow to install.
CHECKOV_VERSION ?= 3.3.30
CHECKOV_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/inference-gateway/checkov-$(CHECKOV_VERSION)

$(CHECKOV_VENV)/.installed:
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

deploy-tools: $(CHECKOV_VENV)/.installed

# deploy/ validated offline: kustomize renders, schemas, yamllint, hadolint,
# compose config, checkov, promtool, and agreement with the code (tests/deploy).
deploy-check: dev tools deploy-tools
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest tests/deploy

# Re-pin the image's run-time dependencies (deploy/docker/requirements.txt) to
# the versions installed in $(VENV), i.e. the ones the tests run with.
deploy-lock: dev
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV)-lock/constraints.txt
	$(VENV)-lock/bin/python -m pip install --quiet --constraint $(VENV)-lock/constraints.txt .
	{ sed -n '1,/^[^#]/{/^#/p}' deploy/docker/requirements.txt; \
		$(VENV)-lock/bin/python -m pip freeze --exclude inference-gateway; } > $(VENV)-lock/requirements.txt
	mv $(VENV)-lock/requirements.txt deploy/docker/requirements.txt
	rm -rf $(VENV)-lock

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

test: dev tools lint typecheck deploy-check
	$(BIN)/python -m pytest --ignore=tests/deploy

bench: dev
	$(BIN)/python -m loadtests.latency

# The benchmark suite with ghz (GHZ=path, or ghz on PATH, or ../shared/tools/ghz):
# every path beside its references, in one run -> loadtests/results/suite.md.
# make bench-suite ARGS=--quick for a 1-minute smoke run.
bench-suite: dev
	$(BIN)/python -m loadtests.suite $(ARGS)

# Where the gateway's CPU goes (py-spy under ghz load): py-spy is installed into
# the venv for this only. make bench-profile ARGS="--path cpu"
bench-profile: dev
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python -m loadtests.suite.profile $(ARGS)

# MLServer, the suite's reference for CPU models, in a venv of its own: never a
# dependency of the gateway or its tests. The suite skips it when this is absent.
MLSERVER_VENV := loadtests/.mlserver-venv
mlserver: $(MLSERVER_VENV)/bin/mlserver
$(MLSERVER_VENV)/bin/mlserver:
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet 'mlserver==1.7.1'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
