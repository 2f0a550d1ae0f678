"""`layoutpeft profile` on a tiny study, end to end: interrupted (SIGINT, SIGTERM) it leaves no
stale DVC lock entry and no staging folder; after a failed experiment, `layoutpeft profile
--restore` brings back the profile's params.yaml and every output (exit 0), where the
committed params.yaml with `dvc checkout` cannot."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures import git, run_dvc, subprocess_env

pytestmark = pytest.mark.slow

# The committed study: head, seed 0. The profiles change what the matrix expands to.
BASE = {
    "study.variants": ["head"],
    "study.reference": "head",
    "study.seeds": [0],
    "train.max_epochs": 1,
    "variants.prompt_tuning.virtual_tokens": 8,
    "variants.p_tuning.virtual_tokens": 8,
}
PROFILES = {
    "seed1": {"study.seeds": [1], "train.max_epochs": 1},  # sets max_epochs too: an interrupted run leaves 3000
    "long": {"train.max_epochs": 3000, "train.patience": 0},  # long enough to be interrupted mid-training
}
OUTPUTS = [
    "data/raw",
    "data/tokenized",
    "data/variants",
    "metrics/data.json",
    "models/head-1",
    "metrics/runs/head-1.json",
    "data/lr/head.json",
    "metrics/study.json",
    "metrics/summary.json",
    "metrics/summary.md",
    "metrics/summary.csv",
    "plots",
]
STALE_LOCK = "had been killed. Auto removed it from the lock file"


@pytest.fixture
def project(make_tiny_project):
    project = make_tiny_project(BASE)
    (project / "profiles.yaml").write_text(yaml.safe_dump(PROFILES, sort_keys=False))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "tiny profiles")
    return project


def layoutpeft(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m layoutpeft ...` in the project (its copy of the package), as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "layoutpeft", *args],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def snapshot(project: Path) -> dict[str, str]:
    files = {}
    for name in OUTPUTS:
        path = project / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[file.relative_to(project).as_posix()] = hashlib.md5(file.read_bytes()).hexdigest()
    return files


def staging_folders(project: Path) -> list[Path]:
    return [p for p in project.rglob(".*.staging.*") if p.is_dir()]


def test_restore_after_a_failed_experiment_following_a_profile_run(project):
    proc = layoutpeft(project, "profile", "seed1")
    assert proc.returncode == 0, proc.stderr
    assert "recorded as experiment seed1-" in proc.stderr
    assert "No file hash info found" not in proc.stderr  # first run: DVC's lines for outputs not made yet
    before, params = snapshot(project), (project / "params.yaml").read_text()
    assert "models/head-1/train_log.json" in before

    failed = run_dvc(project, "exp", "run", "-S", "train.batch_size=0", check=False)
    assert failed.returncode != 0 and "key 'train.batch_size' must be in [1, 4096]" in failed.stderr
    # The committed params.yaml describes seed 0, which dvc.lock does not: the old recipe fails.
    git(project, "checkout", "params.yaml")
    assert run_dvc(project, "checkout", check=False).returncode != 0

    proc = layoutpeft(project, "profile", "--restore")
    assert proc.returncode == 0, proc.stderr
    assert (project / "params.yaml").read_text() == params
    assert snapshot(project) == before
    assert "Data and pipelines are up to date." in run_dvc(project, "status").stdout


def test_restore_without_a_recorded_run_is_one_line(project):
    proc = layoutpeft(project, "profile", "--restore")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "layoutpeft profile: error: .dvc/tmp/layoutpeft-profile.json: no successful `layoutpeft profile` run "
        "recorded here; after a plain `dvc exp run`, go back with `git checkout params.yaml && dvc checkout`"
    ]


def interrupt_during_training(project: Path, sig: int) -> tuple[int, str]:
    """Start `layoutpeft profile long`, send `sig` to it (only to it, as `kill` does) once the train
    stage has its staging folder, and return (exit status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "layoutpeft", "profile", "long"],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not list((project / "models").glob(".head-0.staging.*/live")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the train stage never started"
        time.sleep(0.2)
    time.sleep(1.0)  # a few epochs in
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_profile_leaves_no_stale_lock_or_staging_folder(project, sig):
    status, err = interrupt_during_training(project, sig)
    assert status == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"layoutpeft profile: profile long interrupted ({name}); dvc stopped the running stage" in err
    assert "layoutpeft train: interrupted (SIGINT)" in err  # the stage got one SIGINT and cleaned up
    assert "Traceback" not in err
    assert staging_folders(project) == []
    assert not (project / "models" / "head-0").exists()

    proc = layoutpeft(project, "profile", "seed1")
    assert proc.returncode == 0, proc.stderr
    assert STALE_LOCK not in proc.stderr, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("WARNING:")], proc.stderr  # DVC's
    assert staging_folders(project) == []
