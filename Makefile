# feedloop — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
FEEDLOOP := $(VENV)/bin/feedloop
PYTEST := $(VENV)/bin/python -m pytest

.PHONY: help install up down status demo test test-unit test-integration ddl clean-state

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## install what is missing: apt packages, .venv from requirements.lock, JVM jars
	@bash infra/install.sh

up: install ## start every service (supervised, logs in var/log); `make up PROFILE=cluster` for the cluster profile
	@$(FEEDLOOP) up $(if $(PROFILE),--profile $(PROFILE))

down: ## stop every process feedloop started
	@if [ -x $(FEEDLOOP) ]; then $(FEEDLOOP) down; else echo "nothing to stop (no .venv)"; fi

status: ## health of every service
	@$(FEEDLOOP) status

demo: install ## install, start everything, run the walking skeleton once, print where to look
	@$(FEEDLOOP) demo $(ARGS)

test: install ## install, then unit tests and integration tests against real services (`make test-cluster`: the cluster profile's)
	@$(PYTEST) tests/unit -q
	@$(PYTEST) tests/integration -q --durations=15

test-unit: install ## unit tests only (no services)
	@$(PYTEST) tests/unit -q

test-integration: install ## integration tests only (starts and stops the services)
	@$(PYTEST) tests/integration -q --durations=15

test-cluster: install ## the cluster profile's tests only (starts and stops a cluster stack; docs/cluster.md)
	@$(PYTEST) tests/cluster -q --durations=10

ddl: ## apply hive/ddl/*.sql (idempotent)
	@$(FEEDLOOP) ddl

clean-state: down ## stop everything and delete runtime state under var/ (data is lost)
	rm -rf var
