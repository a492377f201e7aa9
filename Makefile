# onnx-serve: `make serve` runs the server on models/, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve install dev test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

serve: install
	$(BIN)/onnx-serve serve --models models --host $(HOST) --port $(PORT)

lint: dev
	$(BIN)/ruff check app tests bench models
	$(BIN)/ruff format --check app tests bench models

typecheck: dev
	$(BIN)/mypy

pytest: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
