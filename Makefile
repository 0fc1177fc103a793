# Two commands on a fresh machine: `make run` (local fleet) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODES ?= 2
# The local fleet keeps its state (router.yaml with the tenant keys, renders, logs) here.
export MUFLEET_HOME ?= $(CURDIR)/.mufleet

.PHONY: install run model test lint typecheck unit integration bench load clean

install: $(STAMP)

# torch is installed on its own first and pinned: a looser requirement would pull the
# CUDA build. The stamp makes a second `make install` a no-op until pyproject changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

model: install
	$(VENV)/bin/mufleet make-model

run: model
	$(VENV)/bin/mufleet up --nodes $(NODES)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy mufleet router python_backends bench loadtests

unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

test: lint typecheck
	$(PY) -m pytest

bench: model
	$(PY) bench/ensemble_overhead.py

# A Locust scenario against the fleet `make run` started (in another terminal); the report
# folder is printed at the end. E.g. `make load SCENARIO=trace USERS=64 DURATION=120`.
SCENARIO ?= mixed
DURATION ?= 60
load: install
	$(VENV)/bin/mufleet load --scenario $(SCENARIO) --duration $(DURATION) \
		$(if $(USERS),--users $(USERS)) $(LOAD_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
