# Meridian: the two set-up commands are `make demo` and `make test`; each creates .venv
# and installs everything (Debian packages through scripts/install-system-deps.sh).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo up test lint bench clean system-deps

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meridian demo

# Run a network in the foreground: `make up NETWORK=./network` (4 nodes, created if missing).
NETWORK ?= network
up: $(STAMP)
	$(BIN)/meridian --network $(NETWORK) up

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/meridian bench --nodes 1 --output docs/benchmarks.md
	$(BIN)/meridian bench --nodes 4 --output docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
