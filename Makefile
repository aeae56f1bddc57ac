# Targets mirror CI: `.ci/run` calls `make lint`, `make test` then `make test-slow`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: install test test-slow lint format bench demo clean package wheel-test docs

# An editable install plus a .pth file of our own that puts this checkout on sys.path, so
# `import pax` finds the package itself even from the checkout's parent folder, where the
# checkout folder (also named pax) would otherwise load as an empty namespace package ahead of
# the editable finder hook. (No reliance on setuptools' transitional editable_mode=compat.)
$(STAMP): pyproject.toml setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/pax_checkout.pth"
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

# The documentation site (mkdocs.yml, docs/), strict: warnings and broken links are errors. No
# network at build time: the API reference reads the docstrings, no inventories are fetched.
$(DOCS_STAMP): $(STAMP) setup.cfg
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site

demo: $(STAMP)
	$(PY) examples/char_rnn.py --steps 200 --batch-size 32 --checkpoint ""

# A wheel and an sdist; the wheel installed (not editable) into a clean virtual environment,
# imported and used by an example from outside the checkout.
package: $(STAMP)
	rm -rf build/dist
	$(PY) -m pip wheel --quiet --no-deps . -w build/dist
	$(PY) -m build --sdist --outdir build/dist .

wheel-test: package
	rm -rf build/wheel-venv
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install --quiet build/dist/pax-*.whl tqdm  # tqdm: the example's progress bar
	cd "$$(mktemp -d)" && $(CURDIR)/build/wheel-venv/bin/python -c \
		"import pax, sys; assert 'site-packages' in pax.__file__, pax.__file__; print('pax', pax.__version__, 'from', pax.__file__)"
	cd "$$(mktemp -d)" && $(CURDIR)/build/wheel-venv/bin/python $(CURDIR)/examples/char_rnn.py \
		--steps 3 --batch-size 4 --seq-len 16 --embed-dim 8 --hidden-dim 16 --sample-every 0 \
		--sample-length 8 --checkpoint "" --no-progress

clean:
	rm -rf $(VENV) build *.egg-info
