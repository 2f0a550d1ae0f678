# Two entry points for a fresh machine: `make study` (set up + run the pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup study test benchmark

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins the tested versions (torch 2.13.0 among them).
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

study: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

benchmark: setup
	$(BIN)/python benchmarks/train_speed.py
