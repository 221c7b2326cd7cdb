# Conveyor: every target has a help line; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install lint test unit integration chaos bench demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install Conveyor with its development tools

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev,bench]'
	touch $(BENCH_STAMP)

lint: $(BENCH_STAMP) ## ruff, mypy --strict (the packages, the tests and the benchmarks) and the import contract between the layers
	$(BIN)/ruff check .
	$(BIN)/ruff format --check conveyor workers tasks api_shim tests bench
	$(BIN)/mypy conveyor workers tasks api_shim tests bench
	$(BIN)/lint-imports

test: $(STAMP) ## the whole suite: unit, integration (real Redis/PostgreSQL/workers), chaos but the longest fault scenarios
	CONVEYOR_CHAOS_JOBS=$${CONVEYOR_CHAOS_JOBS:-1500} CONVEYOR_CHAOS_POOL_SIZE=$${CONVEYOR_CHAOS_POOL_SIZE:-6} $(BIN)/pytest -n $(PYTEST_WORKERS) -m "not long_chaos" tests/unit tests/integration tests/chaos

unit: $(STAMP) ## unit tests only (no services)
	$(BIN)/pytest tests/unit

integration: $(STAMP) ## integration tests against real Redis, PostgreSQL and worker processes
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests/integration

chaos: $(STAMP) ## every fault-injection scenario: kills, Redis and database faults, restarts (seed printed; CONVEYOR_CHAOS_SEED replays)
	$(BIN)/pytest -s tests/chaos

bench: $(BENCH_STAMP) ## every benchmark against its baseline in the same run, about 10 minutes (bench/README.md)
	@date +%s > $(VENV)/.bench-started
	$(BIN)/python bench/broker_ceiling.py --requests 200000 --clients 50
	$(BIN)/python bench/latency.py --jobs 300
	$(BIN)/python bench/enqueue.py --duration 5
	$(BIN)/python bench/io_concurrency.py --jobs 1000 --delay 1 --concurrency 500 --repeat 2
	$(BIN)/python bench/cpu_spin.py --jobs 200 --milliseconds 50 --processes 2
	$(BIN)/python bench/thumbnails.py --images 200 --concurrency 2 --repeat 2
	$(BIN)/python bench/noop_drain.py --jobs 4000
	$(BIN)/python bench/ledger_ceiling.py --jobs 10000 --processes 1,2
	$(BIN)/python bench/peers.py --jobs 2000
	$(BIN)/python bench/memory.py --jobs 20000
	$(BIN)/python bench/retention_pressure.py --backlog 30000 --rate 200 --alternate 5
	@echo "make bench took $$(( $$(date +%s) - $$(cat $(VENV)/.bench-started) )) s"

demo: $(STAMP) ## a mixed workload through both pools on embedded defaults, with a summary
	$(BIN)/conveyor demo $(DEMO_ARGS)

clean: ## remove the virtualenv, caches and local state
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
