# modelgate: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Every port and path of the native stack; override any of them from the environment.
export MG_ROOT := $(CURDIR)
export MG_VENV ?= $(CURDIR)/.venv
export MG_VAR_DIR ?= $(CURDIR)/var
export MG_SECRETS_DIR ?= $(CURDIR)/secrets
export MG_CERTS_DIR ?= $(CURDIR)/certs
export MG_MODEL_STORE ?= $(CURDIR)/model_store
export MG_HTTPS_PORT ?= 8443
export MG_HTTP_PORT ?= 8080
export MG_REDIS_PORT ?= 6391
export MG_AUTH_PORT ?= 8101
export MG_INFERENCE_PORT ?= 8102
export MG_CRYPTO_PORT ?= 8103
export MG_REDIS_URL ?= redis://127.0.0.1:$(MG_REDIS_PORT)/0

PYTHON ?= python3
VENV_STAMP := $(MG_VENV)/.installed
# sslyze pins cryptography below what the services use, so it gets a venv of its own.
export MG_SSLYZE_VENV ?= $(CURDIR)/.venv-sslyze
SSLYZE_LOCK := tests/security/requirements-sslyze.txt
SSLYZE_STAMP := $(MG_SSLYZE_VENV)/.installed
PY := $(MG_VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-14s %s\n",$$1,$$2}'

$(VENV_STAMP): requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
		{ echo "modelgate needs Python 3.11, 3.12 or 3.13 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(MG_VENV)
	$(MG_VENV)/bin/pip install -q --require-hashes -r requirements-dev.txt
	$(MG_VENV)/bin/pip install -q --no-deps -e .
	@touch $@

.PHONY: venv
venv: $(VENV_STAMP) ## Create the virtual environment from the hash-pinned lock

$(SSLYZE_STAMP): $(SSLYZE_LOCK)
	$(PYTHON) -m venv $(MG_SSLYZE_VENV)
	$(MG_SSLYZE_VENV)/bin/pip install -q --require-hashes -r $(SSLYZE_LOCK)
	@touch $@

.PHONY: sslyze-venv
sslyze-venv: $(SSLYZE_STAMP) ## Create the TLS scanner's own virtual environment (hash-pinned)

.PHONY: system-deps
system-deps: ## Install what the native stack runs: nginx, Redis (apt, when root) or say what to install
	@deploy/system-deps.sh stack

.PHONY: test-deps
test-deps: ## The stack's packages and the tests': PostgreSQL, Chromium, certutil
	@deploy/system-deps.sh test

# Swagger UI's release files for /docs (MG_PUBLIC_DOCS=1): swagger-ui-dist from the npm
# registry, its hash pinned in nginx/docs/package-lock.json and checked by npm ci; install
# scripts off. Not committed: installed into build/ when needed. The CLI image takes them
# from there too (make test-compose, test-swarm: the image build may not reach a registry).
DOCS_UI_DIR := $(CURDIR)/build/docs-ui
DOCS_UI_STAMP := $(DOCS_UI_DIR)/.installed
export MG_SWAGGER_UI_DIR ?= $(DOCS_UI_DIR)/node_modules/swagger-ui-dist
DOCS_ON := $(filter 1 true yes on,$(shell echo '$(MG_PUBLIC_DOCS)' | tr A-Z a-z))

$(DOCS_UI_STAMP): nginx/docs/package.json nginx/docs/package-lock.json
	@deploy/system-deps.sh docs
	rm -rf $(DOCS_UI_DIR) && mkdir -p $(DOCS_UI_DIR)
	cp nginx/docs/package.json nginx/docs/package-lock.json $(DOCS_UI_DIR)/
	cd $(DOCS_UI_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: docs-ui
docs-ui: $(DOCS_UI_STAMP) ## Install Swagger UI's files for /docs (npm ci, hash-pinned)

.PHONY: init
init: venv ## Create missing certificates, secrets and demo models
	$(MG_VENV)/bin/modelgate init

.PHONY: run
run: venv system-deps $(if $(DOCS_ON),docs-ui) ## Run the whole stack in the foreground (Ctrl-C stops it)
	@deploy/stack.sh run

.PHONY: dev
dev: venv system-deps docs-ui ## `make run` with the development profile (deploy/dev.env): Swagger UI at /docs
	@set -a && . deploy/dev.env && set +a && deploy/stack.sh run

.PHONY: up
up: venv system-deps $(if $(DOCS_ON),docs-ui) ## Start the stack in the background; returns once it is ready
	@deploy/stack.sh up

.PHONY: down
down: ## Stop exactly what `make up` started
	@deploy/stack.sh down

.PHONY: status
status: venv ## Show what runs, what is ready, what is degraded
	@$(MG_VENV)/bin/modelgate status

.PHONY: lint
lint: venv ## ruff (lint + format check) and mypy
	$(MG_VENV)/bin/ruff check .
	$(MG_VENV)/bin/ruff format --check .
	$(MG_VENV)/bin/mypy

.PHONY: format
format: venv ## Apply ruff's fixes and formatting
	$(MG_VENV)/bin/ruff check --fix .
	$(MG_VENV)/bin/ruff format .

.PHONY: test-unit
test-unit: venv test-deps ## In-process unit tests only (no stack)
	$(PYTEST) -m "not stack"

.PHONY: test
test: venv sslyze-venv test-deps docs-ui ## Every test: unit, then integration/security/faults against a fresh native stack
	$(PYTEST) -m "not stack"
	@deploy/with-stack.sh $(PYTEST) -m "stack and not compose and not swarm"

.PHONY: test-trixie
test-trixie: venv ## The unit suite on Debian trixie's Python 3.13, then make up/down under a PID 1 that never reaps (docker)
	@deploy/ci/test-trixie.sh

.PHONY: test-compose
test-compose: venv sslyze-venv test-deps docs-ui ## The integration and security suites against the compose stack (builds, starts, tears down)
	@deploy/compose/test-compose.sh

.PHONY: test-swarm
test-swarm: venv sslyze-venv docs-ui ## The suites and the scale-out checks against a Docker Swarm stack (3 inference replicas, PostgreSQL)
	@deploy/swarm/test-swarm.sh

# The benchmark (bench/): MLServer, the peer it is compared with, gets its own
# virtualenv from its own hashed lock so it never touches the stack's.
BENCH_MLSERVER_VENV := bench/.work/mlserver-venv
BENCH_ARGS ?=

$(BENCH_MLSERVER_VENV)/.installed: bench/requirements-mlserver.txt
	$(PYTHON) -m venv $(BENCH_MLSERVER_VENV)
	$(BENCH_MLSERVER_VENV)/bin/pip install -q --require-hashes -r bench/requirements-mlserver.txt
	@touch $@

.PHONY: bench-deps
bench-deps: venv system-deps $(BENCH_MLSERVER_VENV)/.installed
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else echo "the benchmark needs wrk (as root: apt-get install wrk)"; exit 1; fi; }

.PHONY: bench
bench: bench-deps ## Benchmark the stack against the seed app, the insecure ceiling and MLServer (BENCH_ARGS=--help)
	@$(PY) bench/run.py $(BENCH_ARGS)

.PHONY: bench-smoke
bench-smoke: bench-deps ## A short benchmark (seed, ceiling, full stack; 3 s runs) that fails on any non-2xx
	@$(PY) bench/run.py --smoke --only seed,ceiling,full --users 8

.PHONY: bench-up
bench-up: venv system-deps $(if $(DOCS_ON),docs-ui) ## Start the native stack with the benchmark profile (limits raised, still checked)
	@set -a && . bench/profile.env && set +a && deploy/stack.sh up

.PHONY: lock
lock: ## Re-resolve the hash-pinned locks from pyproject.toml
	uv pip compile -q --universal --generate-hashes --python-version 3.11 --no-header pyproject.toml -o requirements.txt
	uv pip compile -q --universal --generate-hashes --python-version 3.11 --no-header --extra dev pyproject.toml -o requirements-dev.txt
	uv pip compile -q --generate-hashes --python-version 3.11 --no-header tests/security/requirements-sslyze.in -o $(SSLYZE_LOCK)

.PHONY: clean
clean: down ## Remove runtime state (var/); keeps secrets, certificates and models
	rm -rf $(MG_VAR_DIR)
