# Every target creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench bench-scale screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/llm-gateway serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
