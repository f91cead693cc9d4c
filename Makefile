# The two commands of the README: `make dev` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
PYTEST_ARGS ?=
# Test processes of `make test` (pytest-xdist; each has its own database, vhost and key
# prefix, and whole test files go to one process, so a file's servers are started once).
JOBS ?= 3

.PHONY: dev test lint unit integration e2e browser bench format services promtool browser-deps clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## dev: everything in one process on embedded defaults (SQLite, in-process broker)
dev: $(BIN)/.installed
	$(BIN)/conveyor dev --port $(PORT)

## test: lint, type checks and the whole suite against PostgreSQL, Redis and RabbitMQ
test: lint services promtool browser-deps
	REQUIRE_PROMTOOL=1 REQUIRE_BROWSER=1 $(BIN)/pytest -n $(JOBS) --dist loadfile $(PYTEST_ARGS)

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

## browser-deps: what the browser tests need: Debian's chromium (Playwright drives it; its
## own browser downloads are never used) and axe-core from npm, under .cache/ (git-ignored)
AXE := .cache/npm/node_modules/axe-core/axe.min.js
browser-deps: $(BIN)/.installed
	@command -v chromium >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null && \
		command -v chromium >/dev/null; } || { \
		echo "chromium could not be installed (apt-get failed; run as root?): the" \
			"browser tests of make test need Debian's chromium package" >&2; \
		exit 1; }
	@test -f $(AXE) || { \
		{ command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends npm >/dev/null; }; } && \
		npm install --silent --no-audit --no-fund --prefix .cache/npm axe-core@4 >/dev/null && \
		test -f $(AXE); } || { \
		echo "axe-core could not be installed from the npm registry: the accessibility" \
			"checks of the browser tests need it (npm install --prefix .cache/npm axe-core@4)" >&2; \
		exit 1; }

## browser: the browser tests alone (headless Chromium against real processes)
browser: services browser-deps
	REQUIRE_BROWSER=1 $(BIN)/pytest tests/e2e/browser $(PYTEST_ARGS)

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
