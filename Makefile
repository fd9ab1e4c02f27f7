# tinylm: `make demo` trains a small model on tiny Shakespeare and prints a sample;
# `make test` runs the test suite. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned because an unpinned `torch` on a machine without it resolves to the newest CUDA build
# (several GB). 2.13.0 is the release this project is tested with; on a Linux GPU machine PyPI's
# build of it includes CUDA. Override for another build: make setup TORCH=torch==2.x.y
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench-cpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m tinylm demo

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) models build *.egg-info
