# Every target creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` installs the gateway alone; the test and lint tools come with `make install`.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev

.PHONY: install run test lint typecheck bench bench-scale llama-server screenshots clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml tests/node/package-lock.json | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# The OpenAI Node SDK, for tests/gateway/test_sdk_clients.py (skipped without npm).
	if command -v npm >/dev/null; then cd tests/node && npm ci --no-audit --no-fund --silent; fi
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/llm-gateway serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# llama.cpp's llama-server for the tests under tests/llama/, built once into the user cache.
llama-server: $(STAMP)
	$(BIN)/python tests/llama/build.py

lint: $(STAMP)
	$(BIN)/ruff check gateway registry templates tests bench deploy
	$(BIN)/ruff format --check gateway registry templates tests bench deploy
	$(BIN)/mypy

# The dashboard's screenshots in docs/, taken by its browser tests (needs chromium).
screenshots: $(STAMP)
	GATEWAY_SCREENSHOTS=docs GATEWAY_TEST_BROWSER=required $(BIN)/python -m pytest tests/gateway/test_dashboard.py -q

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
