# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick chaos diagrams clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -f demo.db demo.db-wal demo.db-shm
	$(BIN)/statemachine --db sqlite:///demo.db demo

# Bytecode compiled up front: the suite starts hundreds of `statemachine` processes, and where
# PYTHONDONTWRITEBYTECODE is set each would compile the package again.
test: $(STAMP)
	$(BIN)/ruff check statemachine machines tests bench
	$(BIN)/mypy statemachine
	$(BIN)/python -m compileall -q statemachine machines tests bench
	$(BIN)/pytest -n 4

lint: $(STAMP)
	$(BIN)/ruff check statemachine machines tests bench
	$(BIN)/mypy statemachine

# Every machine in machines/ drawn to docs/machines/diagrams/<machine>.md (a test checks they
# are current: run this after changing a machine).
diagrams: $(STAMP)
	$(BIN)/statemachine graph --package machines --out docs/machines/diagrams

# Everything (docs/performance.md quotes its report). `bench-quick` is a developer's loop under
# 2 minutes: the ratios at 4 and 8 workers on small runs (medians of 3), latency, SQLite at 4.
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

# The long chaos run (not part of `make test` or CI): 300 s of worker SIGKILLs, a SIGSTOP, injected
# 40001s, two PostgreSQL restarts, a 30 s stop and terminated connections, on a throw-away cluster.
# Prints the figures docs/explanation/reliability.md quotes. CHAOS_ARGS="--duration 60" for less.
CHAOS_ARGS ?= --duration 300
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) demo.db demo.db-wal demo.db-shm .pytest_cache .mypy_cache .ruff_cache
