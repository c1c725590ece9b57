# Quick start: `make demo` runs the default federated job, `make test` runs the tests.
# Both set everything up first: Debian's Fashion-MNIST files and a virtual environment.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo test test-fast clean-runs

setup: data $(VENV)/.installed

# The Debian package holds the real Fashion-MNIST idx files (31 MB).
data:
	@if [ ! -f $(FASHION_MNIST) ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/fedgraft simulate

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean-runs:
	rm -rf runs
