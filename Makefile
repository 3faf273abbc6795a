# The newcomer's entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
DEV_VENV := $(ROOT)/.venv-dev
export MLOPS_CACHE_DIR ?= $(ROOT)/.cache
LOGS := $(MLOPS_CACHE_DIR)/logs
# Debian release of the test hosts: bookworm (CI) or trixie.
export MLOPS_TEST_RELEASE ?= bookworm
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR := false
export PY_COLORS := 0
export NO_COLOR := 1

# Every molecule scenario: each role's own, then the stack scenarios.
SCENARIOS ?= $(sort $(patsubst %/molecule/default/molecule.yml,%,$(wildcard roles/*/molecule/default/molecule.yml))) \
             $(filter-out molecule/shared,$(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: up
up: venv docker ## The whole platform as local containers: MLflow, Prefect, the web app on 127.0.0.1
	@playbooks/demo/run up

.PHONY: down
down: venv ## Remove the demo containers
	@playbooks/demo/run down

.PHONY: test
test: ## Install what is missing, lint, run pytest and every molecule scenario
	@tools/run-tests

.PHONY: venv
venv: ## Controller virtualenv (ansible, molecule, linters, pytest)
	@tools/bootstrap-venv $(VENV) requirements/controller.txt

.PHONY: venv-dev
venv-dev: venv ## Development virtualenv: flows, web app, MLflow and Prefect servers, torch, test tools
	@tools/bootstrap-venv $(DEV_VENV) requirements/dev.txt -e serving/uploads -e flows -e serving
	@tools/ensure-dev-packages

.PHONY: docker
docker: ## Make sure a Docker engine runs (installs docker.io when none)
	@tools/ensure-docker

.PHONY: images
images: docker ## Build the local test-host image for MLOPS_TEST_RELEASE
	@tools/build-host-image $(MLOPS_TEST_RELEASE)

.PHONY: lint
lint: venv ## yamllint, ansible-lint (production profile), ruff
	yamllint --strict .
	ansible-lint --offline
	ruff check .
	ruff format --check .

# Generated uploads per fuzz run in make test (the test's own default, for a
# standalone run: 10,000; at about 60 ms each that is 10 minutes of CI).
MLOPS_FUZZ_EXAMPLES ?= 2000
export MLOPS_FUZZ_EXAMPLES

.PHONY: pytest
pytest: venv venv-dev ## Unit and integration tests (the flows and the web app against real services)
	@mkdir -p $(LOGS)
	pytest tests --junitxml=$(LOGS)/pytest-repository.xml
	$(DEV_VENV)/bin/pytest flows/tests serving/tests --junitxml=$(LOGS)/pytest-platform.xml --durations=10

# The inner loop: what needs no running platform service and no big scenario.
QUICK_SCENARIOS := roles/binary_install roles/postgresql

.PHONY: test-quick
test-quick: venv venv-dev docker ## Lint, the unit tests and the smallest scenarios (a few minutes)
	@$(MAKE) --no-print-directory lint
	pytest tests
	$(DEV_VENV)/bin/pytest flows/tests serving/tests -m "not services"
	@for scenario in $(QUICK_SCENARIOS); do tools/molecule-test "$$scenario"; done

.PHONY: wheelhouse
wheelhouse: venv-dev ## PyTorch wheels for test hosts that cannot reach PyTorch's index
	@tools/fill-wheelhouse

.PHONY: molecule
molecule: venv venv-dev docker wheelhouse ## Every molecule scenario, or SCENARIO=roles/postgresql
	@for scenario in $(or $(SCENARIO),$(SCENARIOS)); do \
	  tools/molecule-test "$$scenario"; \
	done

.PHONY: suite
suite: venv venv-dev docker wheelhouse ## pytest and every scenario, in two lanes side by side (what make test runs)
	@tools/test-lanes $(SCENARIOS)

.PHONY: clean
clean: ## Remove test containers left behind (keeps caches and the venv)
	-docker ps -aq --filter label=owner=molecule | xargs -r docker rm -f
	-docker network ls -q --filter label=owner=molecule | xargs -r docker network rm
