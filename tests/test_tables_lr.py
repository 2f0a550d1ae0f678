"""benchmarks/tables_lr.py: its arms, when it reuses the study's tune@ trial, its table (no training)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from layoutpeft.config import load_params

from fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("tables_lr", REPO_ROOT / "benchmarks" / "tables_lr.py")
tables_lr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables_lr)

STUDY = REPO_ROOT / "results" / "reference-minilm"


def test_arms_set_the_tables_lr_or_freeze_the_tables():
    params = load_params(STUDY / "params.yaml")
    assert tables_lr.arm_model(params, "5e-5").tables_lr == 5e-5
    assert tables_lr.arm_model(params, "5e-5").new_tables == "train"
    frozen = tables_lr.arm_model(params, "frozen")
    assert frozen.new_tables == "frozen" and frozen.checkpoint == params["model"]["checkpoint"]


def test_the_study_trial_is_reused_only_where_it_is_exactly_the_arm(monkeypatch):
    params = load_params(STUDY / "params.yaml")
    record = json.loads((STUDY / "runs" / "lora-0.json").read_text())["train_environment"]
    monkeypatch.setattr(tables_lr, "simd_flags", lambda: record["cpu_flags"])
    monkeypatch.setattr(tables_lr, "environment_key", lambda: {lib: record[lib] for lib in tables_lr.LIBRARIES})
    monkeypatch.setattr(tables_lr, "training_code_unchanged", lambda commit: commit == record["git_commit"])
    trial = tables_lr.study_trial(STUDY, "lora", params, "1.5e-4", {})
    tuned = json.loads((STUDY / "lr" / "lora.json").read_text())
    assert trial["lr"] == tuned["chosen_lr"] == 0.003 and trial["best_val_f1"] == pytest.approx(0.4992, abs=1e-4)
    assert tables_lr.study_trial(STUDY, "lora", params, "4.5e-4", {}) is None  # another arm
    assert tables_lr.study_trial(STUDY, "lora", params, "frozen", {}) is None
    assert tables_lr.study_trial(STUDY, "lora", params, "1.5e-4", {"precision": "fp32"}) is None  # not the study's
    monkeypatch.setattr(tables_lr, "simd_flags", lambda: ["avx2", "fma"])
    assert tables_lr.study_trial(STUDY, "lora", params, "1.5e-4", {}) is None  # another CPU


def test_report_tabulates_what_has_finished(tmp_path):
    for variant, arm, f1, reused in (
        ("vera", "1.5e-4", 0.386, True),
        ("vera", "4.5e-4", 0.41, False),
        ("vera", "frozen", 0.30, False),
        ("head", "5e-5", 0.20, False),
    ):
        (tmp_path / f"{variant}-tables-{arm}.json").write_text(
            json.dumps({"variant": variant, "arm": arm, "best_val_f1": f1, **({"reused_from": "x"} if reused else {})})
        )
    text = tables_lr.report(tmp_path)
    assert "| Variant | tables 5e-5 | tables 1.5e-4 | tables 4.5e-4 | tables frozen | spread (points) |" in text
    assert "| vera | – | 38.6 (reused) | 41.0 | 30.0 | 11.0 |" in text


def arm_rows(values: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    return {v: {a: {"best_val_f1": f1} for a, f1 in arms.items()} for v, arms in values.items()}


def test_the_decision_weighs_each_gain_against_the_variants_seed_noise():
    arms = ["5e-5", "1.5e-4", "4.5e-4", "frozen"]
    noise = {v: tables_lr.seed_noise(STUDY, v) for v in ("head", "vera", "lora")}
    # the reference study's validation F1 across its 3 seeds: head 22.5 / 23.2 / 22.6, vera 38.7 / 39.0 / 40.6
    assert noise["head"] == pytest.approx(0.94, abs=0.01) and noise["vera"] == pytest.approx(3.0, abs=0.05)
    flat = {"5e-5": 0.22, "1.5e-4": 0.228, "4.5e-4": 0.225, "frozen": 0.221}
    within = arm_rows({"head": flat, "vera": {"5e-5": 0.38, "1.5e-4": 0.391, "4.5e-4": 0.41, "frozen": 0.30}})
    decision = tables_lr.decide(within, arms, 1.5e-4, STUDY)
    assert (
        decision[-1] == "Decision: keep the shared model.tables_lr 1.5e-4: no method gains beyond seed noise from another value."
    )
    assert "- vera: best arm 4.5e-4, +1.9 points over the shared 1.5e-4" in decision[1]
    beyond = arm_rows({"head": {**flat, "4.5e-4": 0.25}, "vera": {"5e-5": 0.38, "1.5e-4": 0.391, "4.5e-4": 0.39, "frozen": 0.45}})
    assert tables_lr.decide(beyond, arms, 1.5e-4, STUDY)[-1] == (
        "Decision: tune model.tables_lr per method: head prefers 4.5e-4, vera prefers frozen beyond noise."
    )
    assert tables_lr.decide(arm_rows({"head": flat, "vera": {"1.5e-4": 0.39}}), arms, 1.5e-4, STUDY)[-1].startswith(
        "Decision: undecided"
    )
    # a covered variant with no finished arm yet keeps the decision open (it used to be left out)
    partial = tables_lr.decide(within, arms, 1.5e-4, STUDY, ["head", "vera", "lora"])
    assert "- lora: undecided (0 of 4 arms finished)" in partial and partial[-1].startswith("Decision: undecided")
