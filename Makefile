# Targets mirror CI: `.ci/run` calls `make test` then `make test-slow`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint format bench demo clean

$(STAMP): setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	$(PY) -m ruff check pax tests scripts examples
	$(PY) -m ruff format --check pax tests scripts examples

format: $(STAMP)
	$(PY) -m ruff check --fix pax tests scripts examples
	$(PY) -m ruff format pax tests scripts examples

bench: $(STAMP)
	$(PY) scripts/bench_overhead.py

demo: $(STAMP)
	$(PY) examples/char_rnn.py --steps 200 --batch-size 32

clean:
	rm -rf $(VENV) build *.egg-info
