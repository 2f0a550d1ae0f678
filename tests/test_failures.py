"""Bad input under DVC, as a user sees it: one line naming the key, then `dvc checkout` restores.

- A stage that fails on a bad params value prints one `layoutpeft <stage>: error: ...` line (no
  traceback) and DVC keeps the previous dvc.lock; `dvc checkout` brings back every earlier
  output byte for byte (every output is cached; a `cache: false` one would not come back).
- Duplicate seeds, an unstudied reference and an empty checkpoint folder fail in the variants /
  tokenize stage, before any training.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from fixtures import git, run_dvc

pytestmark = pytest.mark.slow

# A one-variant, one-seed, one-epoch study. The tiny windows leave 8 positions for virtual
# tokens (fixtures.TINY_DATA_SETTINGS), and the variants stage checks every defined variant,
# studied or not: the prompt methods' 20 virtual tokens would not fit.
HEAD_STUDY = {
    "study.variants": ["head"],
    "study.reference": "head",
    "study.seeds": [0],
    "train.max_epochs": 1,
    "variants.prompt_tuning.virtual_tokens": 8,
    "variants.p_tuning.virtual_tokens": 8,
}
# Every output of the pipeline for that study (dvc.yaml), relative to the project.
OUTPUTS = [
    "data/raw",
    "data/tokenized",
    "data/variants",
    "metrics/data.json",
    "models/head-0",
    "metrics/runs/head-0.json",
    "data/lr/head.json",
    "metrics/study.json",
    "metrics/summary.json",
    "metrics/summary.md",
    "metrics/summary.csv",
    "plots",
]


def snapshot(project: Path) -> dict[str, str]:
    """{relative path: md5} of every file of the pipeline's outputs."""
    files = {}
    for name in OUTPUTS:
        path = project / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[file.relative_to(project).as_posix()] = hashlib.md5(file.read_bytes()).hexdigest()
    return files


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("layoutpeft ")]


def test_failed_stage_is_one_line_and_checkout_restores_every_output(make_tiny_project):
    project = make_tiny_project(HEAD_STUDY)
    run_dvc(project, "repro")
    before = snapshot(project)
    for name in OUTPUTS:  # each output is there and not empty
        assert any(path == name or path.startswith(name + "/") for path in before), name
    lock = (project / "dvc.lock").read_text()
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "study")

    # A later stage fails: tune@ (the first stage reading train.*) rejects the value in one line naming the key.
    proc = run_dvc(project, "exp", "run", "-S", "train.batch_size=0", check=False)
    assert proc.returncode != 0
    assert "Stage 'tokenize' didn't change, skipping" in proc.stdout
    assert "Running stage 'evaluate@" not in proc.stdout
    assert error_lines(proc.stderr) == [
        "layoutpeft tune: error: params.yaml: key 'train.batch_size' must be in [1, 4096], got 0"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "data" / "lr" / "head.json").exists()  # DVC removed the stage's output before running it
    assert (project / "dvc.lock").read_text() == lock

    # Back to the committed params; dvc checkout restores what the failed run removed.
    git(project, "checkout", "params.yaml")
    run_dvc(project, "checkout")
    assert snapshot(project) == before
    assert "Data and pipelines are up to date." in run_dvc(project, "status").stdout

    # Every output is cached: all of them come back from the cache, not only the one removed.
    for name in OUTPUTS:
        path = project / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dvc(project, "checkout")
    assert snapshot(project) == before
    assert "Data and pipelines are up to date." in run_dvc(project, "status").stdout


# What `dvc exp run -S ...` prints on stderr for three bad inputs (the DVC lines verbatim).
BAD_INPUTS = [
    (
        "study.seeds=[0,0]",
        "variants",
        "layoutpeft variants: error: params.yaml: study.seeds lists seed 0 more than once (DVC would merge the duplicate runs)",
    ),
    (
        "study.reference=nope",
        "variants",
        "layoutpeft variants: error: params.yaml: study.reference 'nope' is not in study.variants ['head']",
    ),
    (
        "model.checkpoint={empty}",
        "tokenize",
        "layoutpeft tokenize: error: model.checkpoint: {empty} is not a model folder (no config.json in {empty})",
    ),
]


def test_bad_inputs_fail_before_training_with_one_line(make_tiny_project, tmp_path):
    project = make_tiny_project(HEAD_STUDY)
    empty = tmp_path / "empty checkpoint"
    empty.mkdir()
    for override, stage, message in BAD_INPUTS:
        override, message = override.format(empty=empty), message.format(empty=empty)
        proc = run_dvc(project, "exp", "run", "-S", override, check=False)
        assert proc.returncode != 0, override
        assert f"Running stage '{stage}':" in proc.stdout, override
        assert "Running stage 'train@" not in proc.stdout, override
        assert error_lines(proc.stderr) == [message], proc.stderr
        assert (
            f"ERROR: failed to reproduce '{stage}': failed to run: python -m stages.{stage}, exited with 2"
            in proc.stderr.splitlines()
        )
        assert "Traceback" not in proc.stderr
        assert not any((project / "models").rglob("*")), override  # no run started
        git(project, "checkout", "params.yaml")
