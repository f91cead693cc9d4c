# The two commands of the README: `make dev` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: dev test lint unit integration e2e bench format services promtool clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## dev: everything in one process on embedded defaults (SQLite, in-process broker)
dev: $(BIN)/.installed
	$(BIN)/conveyor dev --port $(PORT)

## test: lint, type checks and the whole suite against PostgreSQL, Redis and RabbitMQ
test: lint services promtool
	REQUIRE_PROMTOOL=1 $(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check conveyor tests bench
	$(BIN)/ruff format --check conveyor tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff check --fix conveyor tests bench
	$(BIN)/ruff format conveyor tests bench

## services: fail early, saying how to start whatever is not reachable
services: $(BIN)/.installed
	$(BIN)/python -m tests.services

## promtool: `promtool check metrics` for the metrics tests, from Debian's prometheus package;
## `make test` needs it (its metrics tests fail without it rather than skip)
promtool:
	@command -v promtool >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null && \
		command -v promtool >/dev/null; } || { \
		echo "promtool could not be installed (apt-get failed; run as root?): the" \
			"metrics tests of make test need Debian's prometheus package" >&2; \
		exit 1; }

unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: services
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

e2e: services
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

## bench: end-to-end throughput against the local services
bench: services
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
