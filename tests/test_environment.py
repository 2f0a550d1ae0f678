"""Run records say which code produced them, including uncommitted edits to it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from layoutpeft import hardware
from layoutpeft.provenance import code_modified, describe, git_commit


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_code_edits_are_flagged_but_params_edits_are_not(tmp_path, monkeypatch):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("train: {lr: 1}\n")
    git("add", ".", cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert code_modified() is False
    (tmp_path / "params.yaml").write_text("train: {lr: 2}\n")  # what `dvc exp run -S` does
    assert code_modified() is False
    (tmp_path / "stages" / "train.py").write_text("x = 2\n")
    assert code_modified() is True
    info = describe(torch.device("cpu"))
    assert info["code_modified"] is True and info["git_commit"] == git_commit() and len(info["git_commit"]) == 40
    assert info["cpu_model"] and info["device_name"] == info["cpu_model"]
    assert isinstance(info["cpu_flags"], list) and set(info["cpu_flags"]) <= hardware.cpu_flags()


def test_outside_a_repository_nothing_is_claimed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() is None and code_modified() is None


def test_one_version_string():
    """pyproject.toml takes its version from layoutpeft.__version__ (setuptools dynamic), never a copy."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import layoutpeft

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "layoutpeft.__version__"}
    assert layoutpeft.__version__.count(".") == 2
