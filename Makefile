# The two commands a newcomer types: `make demo` and `make test`.
# Each creates .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.PHONY: demo test lint typecheck pytest thorough bench clean browser postgresql lock

# Every install takes the exact versions in constraints.txt (native wheels included: tenseal,
# gmpy2, psycopg), so a fresh clone builds the environment the suite was last run with.
CONSTRAINTS := constraints.txt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $(VENV)/.installed $@

# Regenerate constraints.txt: the newest versions pyproject.toml allows, resolved in a throwaway
# venv (never the working one, whose leftovers would be frozen too). Review the diff, run
# `make test`, commit both.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' $(CONSTRAINTS); $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } \
	  > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

demo: $(VENV)/.installed
	$(BIN)/trusted-space demo

test: lint typecheck browser pytest

# The console's browser tests drive Chromium and chromedriver from the distribution's packages
# (Debian: chromium, chromium-driver); installed here when missing, nothing downloaded at run time.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver for the console's browser tests"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# The test suite starts a throwaway PostgreSQL server of its own (tests/_postgres.py) from the
# distribution's package (Debian: postgresql), installed here when no initdb is found.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  echo "installing postgresql for the store's tests"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq postgresql >/dev/null; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev browser postgresql
	$(BIN)/python -m pytest -q

thorough: $(VENV)/.installed-dev browser postgresql
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/crypto_bench.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis
