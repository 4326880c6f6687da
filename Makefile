# The project's environment is .venv at the repo root; every target creates/updates it as needed.
# Installing torch is ~5 GB: the stamp file makes `make test` after the first run cost nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
PYTEST_ARGS ?=

.PHONY: install serve export-defaults test test-all lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

export-defaults: $(STAMP)
	$(BIN)/cnnserve export --defaults --missing-only

serve: export-defaults
	$(BIN)/bentoml serve --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/cnnserve bench --model resnet50 --output bench-results/resnet50.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
