# INBO Recs. Two commands on a fresh machine with Python 3.11: `make demo`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GX_ANALYTICS_ENABLED := False

.PHONY: install demo airflow test test-fast test-e2e lint format clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned requirements

demo: install ## generate a demo world, run the nightly DAG through Airflow, print recommendations
	$(BIN)/inbo demo

airflow: install ## the Airflow UI (http://localhost:8080, no login) and scheduler on dags/, until Ctrl-C
	$(BIN)/inbo airflow

test: install ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest

test-fast: install ## unit, data and integrity tests: the developer loop (no DAG runs)
	$(BIN)/python -m pytest -m "not e2e"

test-e2e: install ## only the end-to-end tests: DAGs through Airflow, the demo, the closed loops
	$(BIN)/python -m pytest -m e2e

lint: install ## ruff (lint + format check, Airflow 3 rules) and mypy on the library code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## stop the embedded Redis and remove all runtime state under var/
	-@test -x $(BIN)/inbo && $(BIN)/inbo services --stop
	rm -rf var
