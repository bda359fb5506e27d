# JoinedUp developer tasks. `make` (or `make help`) lists them.
#
# Integration tests and the benchmark need PostgreSQL and Kafka: `make up` starts them (Docker
# when an engine answers, local processes otherwise) and writes their addresses to
# .cache/infra.env, which `make test` and `make bench` export.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# uv from PATH; on a fresh machine `make install` pip-installs it and we call it as a module.
UV ?= $(if $(shell command -v uv 2>/dev/null),uv,python3 -m uv)
# --frozen: run exactly what uv.lock pins, and never rewrite uv.lock.
RUN := $(UV) run --frozen
ARGS ?=
INFRA_ENV := .cache/infra.env
# Runs a command with the variables of .cache/infra.env exported.
WITH_INFRA = set -a && . ./$(INFRA_ENV) && set +a &&

.PHONY: help install run up down lint format typecheck openapi test test-unit bench clean distclean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  %-12s %s\n", $$1, $$2 }'

install: ## install uv if missing, then every workspace package with the dev tools
	@if ! $(UV) --version >/dev/null 2>&1; then \
		echo "uv not found: pip install uv"; \
		python3 -m pip install uv || python3 -m pip install --break-system-packages uv; \
	fi
	$(UV) sync --frozen --all-packages

run: install ## run JoinedUp in embedded mode (make run ARGS="--port 8080")
	$(RUN) joinedup run $(ARGS)

up: ## start PostgreSQL and Kafka (deploy/local/up.sh)
	bash deploy/local/up.sh

down: ## stop PostgreSQL and Kafka (deploy/local/down.sh)
	bash deploy/local/down.sh

lint: ## ruff check and ruff format --check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: ## ruff format, then ruff check --fix
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

typecheck: ## mypy over the library, the services and the CLI
	$(RUN) mypy libs/fhir_common/src services/*/src src

openapi: install ## write each service's OpenAPI document to docs/openapi/ (a test checks they are current)
	$(RUN) joinedup openapi

test: install up lint typecheck ## everything: lint, typecheck, all tests against real infrastructure
	$(WITH_INFRA) $(RUN) pytest $(ARGS)

test-unit: ## tests that need no infrastructure
	$(RUN) pytest -m "not integration" $(ARGS)

bench: install up ## benchmark against real infrastructure (python -m joinedup.bench)
	$(WITH_INFRA) $(RUN) python -m joinedup.bench $(ARGS)

clean: ## remove caches and build outputs (keeps .venv, var/ and the infrastructure)
	rm -rf .mypy_cache .ruff_cache .pytest_cache dist bench-results
	find . -path ./.venv -prune -o -path ./.cache -prune -o \
		\( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +

distclean: clean down ## also stop the infrastructure and delete .cache (Kafka jars and data)
	rm -rf .cache
