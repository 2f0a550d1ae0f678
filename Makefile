# Two entry points for a fresh machine: `make study` (set up + run the pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup study test benchmark ci-study report
BASE   ?= main
# Stages run `python -m stages.<name>` through the shell: put the venv first on PATH.
# `layoutpeft` is the venv's console script (pyproject [project.scripts]).
RUN    := PATH="$(abspath $(BIN)):$$PATH" HF_HUB_DISABLE_TELEMETRY=1

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins the tested versions (torch 2.13.0 among them).
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

study: setup
	$(RUN) $(BIN)/dvc repro

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

benchmark: setup
	$(RUN) $(BIN)/dvc repro tokenize
	$(RUN) $(BIN)/python benchmarks/train_speed.py
	$(RUN) $(BIN)/python benchmarks/dvc_noop.py

ci-study: setup
	$(RUN) $(BIN)/layoutpeft profile ci

report: setup
	$(RUN) $(BIN)/layoutpeft report --base $(BASE)
