# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
# Test processes: most tests run torch on one thread, so two workers halve the suite on 2 cores.
# Whole files go to one worker (their module fixtures train once); TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
export APPLIANCE_HOME ?= $(HOME)/.audit-appliance

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the local CPU build first so nothing pulls CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@echo "appliance home: $(APPLIANCE_HOME)"
	$(VENV)/bin/appliance serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check appliance crypto enclave models tests benchmarks
	$(VENV)/bin/mypy appliance crypto enclave models
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
