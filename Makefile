# The two quick-start commands are `make demo` and `make test`; everything installs into .venv/ here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: help venv demo test lint typecheck unit services-up services-down bench-solve bench-stream bench-audit clean

help:
	@echo "make demo         the simulated session, allocator against naive sizing, report in demo-report/ (no services)"
	@echo "make test         start PostgreSQL and Kafka on 127.0.0.1, run ruff, mypy, the layer contracts and pytest, stop them"
	@echo "make unit         the tests that need no services (services tests skip)"
	@echo "make bench-solve  the solver benchmark (a table of medians and ratios)"
	@echo "make bench-stream fold, serve and replay throughput on the real services (starts them)"
	@echo "make bench-audit  the audit on a process pool and a Dask LocalCluster, 1 and 2 workers (a table)"
	@echo "make services-up / services-down   start or stop the real services by hand"

# Re-install when the project's metadata or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; set PYTHON=...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/allocator demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The services are started here and stopped on the way out, pass or fail; a failing run shows the broker's log.
test: $(STAMP)
	@set -euo pipefail; \
	start=$$(date +%s); \
	trap 'infra/services.sh down' EXIT; \
	infra/services.sh up; \
	eval "$$(infra/services.sh env)"; \
	export REQUIRE_SERVICES=1; \
	status=0; \
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/lint-imports && $(BIN)/pytest || status=$$?; \
	if [ $$status -ne 0 ]; then echo "--- tests failed: the broker's log ends with ---"; infra/kafka.sh logs || true; fi; \
	echo "make test: $$(( $$(date +%s) - start )) s"; \
	exit $$status

bench-stream: $(STAMP)
	@set -euo pipefail; \
	infra/services.sh up; \
	eval "$$(infra/services.sh env)"; \
	$(BIN)/python -m benchmarks.bench_stream

services-up: $(STAMP)
	infra/services.sh up

services-down:
	infra/services.sh down

bench-audit: $(STAMP)
	$(BIN)/python -m benchmarks.bench_audit

bench-solve: $(STAMP)
	$(BIN)/python -m benchmarks.bench_solve
	$(BIN)/python -m benchmarks.bench_decision

clean:
	rm -rf $(VENV) demo-report .pytest_cache .mypy_cache .ruff_cache .hypothesis
