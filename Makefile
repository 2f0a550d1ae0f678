# Two entry points for a fresh machine: `make study` (set up + run the pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup study test test-fast benchmark ci-study report
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

# With a GPU params.yaml's study, without one the reference profile; PROFILE=<name> (or params.yaml)
# chooses. It prints its plan (layoutpeft plan) before it trains, then progress per epoch.
study: setup
	$(RUN) $(BIN)/layoutpeft study $(if $(PROFILE),--profile $(PROFILE))

# Everything: lint, type check, every test (the end-to-end DVC studies included). CI runs this.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The edit loop (under 5 min on 2 cores when they are not shared): lint, type check, the unit tests
# (tests/test_toy_method.py among them runs a method through the real stage functions) and one
# end-to-end smoke test through DVC (`dvc repro tokenize` in a fresh tiny project, then a no-op rerun).
SMOKE := tests/test_pipeline_data.py::test_dvc_repro_tokenize
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -m "not slow"
	$(BIN)/python -m pytest -q $(SMOKE)

benchmark: setup
	$(RUN) $(BIN)/dvc repro tokenize
	$(RUN) $(BIN)/python benchmarks/train_speed.py
	$(RUN) $(BIN)/python benchmarks/dvc_noop.py

ci-study: setup
	$(RUN) $(BIN)/layoutpeft profile ci

report: setup
	$(RUN) $(BIN)/layoutpeft report --base $(BASE)
