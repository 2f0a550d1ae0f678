"""Shared fixtures: a tiny BERT checkpoint, a tiny FUNSD zip and a tiny DVC project.

- tiny_checkpoint (session): Path of a folder with a random 2-layer BERT (fixtures.TINY_BERT: hidden 64,
  as bitsandbytes 4-bit blocks need multiples of 64) and its tokenizer (fixtures.VOCAB, TOKEN_ID).
- tiny_funsd_zip (session): (zip Path, md5 str) of an 8 + 3 form FUNSD-layout zip (fixtures.default_forms).
- tiny_tokenized (session): Path of a folder holding data/raw, data/tokenized and metrics/data.json
  made by the download and tokenize stage functions from the two fixtures above, with
  fixtures.TINY_DATA_SETTINGS (max_length 64, prompt_reserve 8, val_fraction 0.15, seed 0).
  Read-only: copy it (shutil.copytree) before changing anything in it.
- tiny_project (function): Path of a fresh git + DVC repo with this repo's stages/, dvc.yaml and
  params.yaml, params pointed at the two fixtures above (fixtures.tiny_overrides).
- make_tiny_project (function): callable(overrides: dict | None = None, name="project") -> Path,
  the same with dotted-key overrides, e.g. make_tiny_project({"study.variants": ["head"]}).
- run_dvc: fixtures.run_dvc(project, *args, env=None, check=True) -> CompletedProcess.

Builders for broken inputs live in tests/fixtures.py (`from fixtures import make_funsd_zip`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import (
    OFFLINE_ENV,
    REPO_ROOT,
    TINY_DATA_SETTINGS,
    make_checkpoint,
    make_funsd_zip,
    make_project,  # noqa: E402
)
from fixtures import run_dvc as _run_dvc  # noqa: E402

# No test may reach the network: set before transformers / datasets / huggingface_hub are imported.
os.environ.update(OFFLINE_ENV)
# Tuning trials are not memoised across tests (tests/test_protocol.py turns the cache on where it tests it).
os.environ["LAYOUTPEFT_TRIAL_CACHE"] = "off"
# Stage modules are imported from this checkout (also when the package is not installed).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# Benchmark helpers (benchmarks/flops.py, benchmarks/_common.py) import as they do when a benchmark script runs.
if str(REPO_ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random BERT checkpoint (model_type bert) with its tokenizer, saved with save_pretrained."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "bert")


@pytest.fixture(scope="session")
def tiny_funsd_zip(tmp_path_factory) -> tuple[Path, str]:
    """(path, md5) of the default tiny FUNSD zip: 8 training forms, 3 test forms."""
    return make_funsd_zip(tmp_path_factory.mktemp("tiny_funsd") / "dataset.zip")


@pytest.fixture(scope="session")
def tiny_tokenized(tmp_path_factory, tiny_funsd_zip, tiny_checkpoint) -> Path:
    """Folder with data/raw, data/tokenized, metrics/data.json of the tiny fixture (do not modify)."""
    from layoutpeft.data.download import download
    from layoutpeft.data.windows import tokenize

    root = tmp_path_factory.mktemp("tiny_tokenized")
    zip_path, md5 = tiny_funsd_zip
    download(str(zip_path), md5, root / "data" / "raw")
    tokenize(
        root / "data" / "raw",
        root / "data" / "tokenized",
        root / "metrics" / "data.json",
        {**TINY_DATA_SETTINGS, "checkpoint": str(tiny_checkpoint)},
    )
    return root


@pytest.fixture
def make_tiny_project(tmp_path, tiny_funsd_zip, tiny_checkpoint):
    """Factory: make_tiny_project(overrides=None, name="project") -> Path of a fresh tiny project."""
    zip_path, md5 = tiny_funsd_zip

    def factory(overrides: dict | None = None, name: str = "project") -> Path:
        return make_project(tmp_path / name, zip_path, md5, tiny_checkpoint, overrides=overrides)

    return factory


@pytest.fixture
def tiny_project(make_tiny_project) -> Path:
    """A fresh git + DVC repo set up for the tiny fixtures (see fixtures.tiny_overrides)."""
    return make_tiny_project()


@pytest.fixture
def run_dvc():
    """The fixtures.run_dvc helper: run_dvc(project, "repro", "tokenize") -> CompletedProcess."""
    return _run_dvc
