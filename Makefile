# The project's environment is .venv at the repo root; every target creates/updates it as needed.
# Installing torch is ~5 GB: the stamp file makes `make test` after the first run cost nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
PYTEST_ARGS ?=

.PHONY: install serve export-defaults test test-all lint format bench bento clean browser-deps

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

# The page's browser tests (tests/test_browser.py) drive Debian's chromium through chromium-driver (Selenium).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver are installed"; \
	else \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver; \
	fi

# Layers and cycles (import-linter, contracts in pyproject.toml), checked on the package laid out as the wheel
# installs it: models/, export/ and service/ inside cnnserve/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/layers && mkdir -p build/layers/cnnserve
	cp -r cnnserve/. build/layers/cnnserve/ && for p in models export service; do cp -r $$p build/layers/cnnserve/$$p; done
	rm -f build/layers/cnnserve/__init__.py && cp cnnserve/__init__.py build/layers/cnnserve/__init__.py
	cd build/layers && ../../$(BIN)/lint-imports ../../pyproject.toml --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/cnnserve bench

# The torch-free serving bento with the default set inside (CNNSERVE_MODELS=a,b picks others); docs/deploy.md.
bento: export-defaults
	$(BIN)/cnnserve bento

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
