# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -f demo.db demo.db-wal demo.db-shm
	$(BIN)/statemachine --db sqlite:///demo.db demo

test: $(STAMP)
	$(BIN)/ruff check statemachine machines tests bench
	$(BIN)/mypy statemachine
	$(BIN)/pytest -n 3

lint: $(STAMP)
	$(BIN)/ruff check statemachine machines tests bench
	$(BIN)/mypy statemachine

bench: $(STAMP)
	$(BIN)/python -m bench

# The long chaos run (not part of `make test` or CI): 300 s of worker SIGKILLs, a SIGSTOP, injected
# 40001s, two PostgreSQL restarts, a 30 s stop and terminated connections, on a throw-away cluster.
# Prints the figures docs/explanation/reliability.md quotes. CHAOS_ARGS="--duration 60" for less.
CHAOS_ARGS ?= --duration 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) demo.db demo.db-wal demo.db-shm .pytest_cache .mypy_cache .ruff_cache
