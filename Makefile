# Targets mirror CI: `.ci/run` calls `make lint`, `make test` then `make test-slow`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: install test test-slow lint format bench demo clean

# editable_mode=compat: a .pth file puts this checkout on sys.path, so `import pax` finds the
# package itself even from the checkout's parent folder, where the checkout folder (also named
# pax) would otherwise load as an empty namespace package ahead of the default finder hook.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]" --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

lint: $(STAMP)
	$(PY) -m ruff check pax tests scripts examples
	$(PY) -m ruff format --check pax tests scripts examples
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix pax tests scripts examples
	$(PY) -m ruff format pax tests scripts examples

# Benchmark-only dependencies (Equinox, Flax, matplotlib), pinned to the installed jax stack.
$(BENCH_STAMP): $(STAMP) scripts/requirements-bench.txt
	$(PY) -m pip freeze | grep -iE '^(jax|jaxlib|optax|dm-haiku|numpy)==' > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -r scripts/requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) scripts/bench_overhead.py
	$(PY) scripts/bench_peers.py

demo: $(STAMP)
	$(PY) examples/char_rnn.py --steps 200 --batch-size 32

clean:
	rm -rf $(VENV) build *.egg-info
