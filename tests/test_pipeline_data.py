"""End to end: `dvc repro tokenize` in a fresh tiny project (download + tokenize), then a no-op rerun."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from fixtures import run


@pytest.mark.slow
def test_dvc_repro_tokenize(tiny_project, run_dvc):
    from datasets import load_from_disk

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    assert params["data"]["max_length"] == 64 and params["study"]["variants"] == ["full", "lora"]

    # The stages DVC runs are the project's copy, not this checkout's (even with an editable install).
    where = run([sys.executable, "-c", "import stages.tokenize as t; print(t.__file__)"], cwd=tiny_project)
    assert where.stdout.strip() == str(tiny_project / "stages" / "tokenize.py")

    first = run_dvc(tiny_project, "repro", "tokenize")
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'tokenize'" in first.stdout
    assert "tokenize: test: 3 documents, 77 words, 4 windows" in first.stdout

    report = json.loads((tiny_project / "metrics" / "data.json").read_text())
    assert report["train"]["documents"] + report["validation"]["documents"] == 8
    assert report["validation"]["documents"] == 1
    assert report["train"]["words"] + report["validation"]["words"] == 123
    assert report["train"]["windows"] + report["validation"]["windows"] == 9
    assert report["test"]["documents"] == 3 and report["test"]["words"] == 77 and report["test"]["windows"] == 4
    assert report["window_length"] == 56
    assert report["unk_share"] == pytest.approx(1 / 303)

    dataset = load_from_disk(str(tiny_project / "data" / "tokenized"))
    assert {name: dataset[name].num_rows for name in dataset} == {"train": 8, "validation": 1, "test": 4}
    meta = json.loads((tiny_project / "data" / "tokenized" / "meta.json").read_text())
    assert meta["val_documents"] == ["train_04"]
    assert sorted(p.name for p in (tiny_project / "data" / "raw").iterdir()) == ["testing_data", "training_data"]

    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "tokenize"}
    assert lock["stages"]["tokenize"]["params"]["params.yaml"]["data.max_length"] == 64

    second = run_dvc(tiny_project, "repro", "tokenize")
    assert "Running stage" not in second.stdout
    assert "didn't change" in second.stdout
    status = run_dvc(tiny_project, "status", "tokenize")
    assert "changed" not in status.stdout

    # A tokenize parameter change reruns tokenize only.
    text = (tiny_project / "params.yaml").read_text().replace("split_seed: 0", "split_seed: 1")
    (tiny_project / "params.yaml").write_text(text)
    third = run_dvc(tiny_project, "repro", "tokenize")
    assert "Running stage 'tokenize'" in third.stdout and "Running stage 'download'" not in third.stdout
    meta = json.loads((tiny_project / "data" / "tokenized" / "meta.json").read_text())
    assert meta["val_documents"] == ["train_03"]  # random.Random(1)
    report = json.loads((tiny_project / "metrics" / "data.json").read_text())
    assert report["validation"]["windows"] == 2 and report["train"]["windows"] == 7
