# Every target creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml tests/node/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# The OpenAI Node SDK, for tests/gateway/test_sdk_clients.py (skipped without npm).
	if command -v npm >/dev/null; then cd tests/node && npm ci --no-audit --no-fund --silent; fi
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/llm-gateway serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway registry templates tests bench deploy
	$(BIN)/ruff format --check gateway registry templates tests bench deploy
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
