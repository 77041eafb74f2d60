# Two commands do all set-up: `make demo` and `make test` create .venv and install what they need.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck unit bench schemas ops readme clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nextbest demo

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

schemas: $(STAMP)
	$(BIN)/python -m schemas.jsonschema --write
	$(BIN)/python -m features.segments.schema --write
	$(BIN)/python -m decisions.schema --write

# the chart's Grafana dashboard and Prometheus rules (helm/nextbest/files), generated from ops/
ops: $(STAMP)
	$(BIN)/python -m ops.dashboard --write
	$(BIN)/python -m ops.alerts --write

readme: $(STAMP)
	$(BIN)/python -m nextbest.settings

clean:
	rm -rf $(VENV) .nextbest .pytest_cache .mypy_cache .ruff_cache build *.egg-info
