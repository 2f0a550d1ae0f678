"""benchmarks/schedule_length.py (its decision rule, its plan), benchmarks/study_cost.py (params, plan) and
benchmarks/rank_convention.py (its arms, its decision rule)."""

from __future__ import annotations

import importlib.util

from fixtures import REPO_ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


schedule_length = load("schedule_length")
study_cost = load("study_cost")
rank_convention = load("rank_convention")


def result(length, seed, f1):
    overrides = {} if length == 30 else {"max_epochs": length}
    return {"overrides": overrides, "seed": seed, "best_val_f1": f1, "test_f1": f1, "best_epoch": length, "epoch_time_s": 40.0}


def test_the_shortest_length_not_measurably_worse_for_every_variant_is_chosen():
    base = {0: 0.50, 1: 0.52, 2: 0.51}
    same = {
        "full": [result(30, s, f) for s, f in base.items()]
        + [result(15, s, f - 0.03 - 0.001 * s) for s, f in base.items()]
        + [result(20, s, f + (0.002, -0.004, 0.001)[s]) for s, f in base.items()],
        "lora": [result(30, s, f) for s, f in base.items()]
        + [result(15, s, f + 0.001 * s) for s, f in base.items()]
        + [result(20, s, f - 0.001 * s) for s, f in base.items()],
    }
    decision = schedule_length.decide(same, [15, 20, 30], 30, [0, 1, 2], margin=1.0)
    assert decision["table"]["full"]["15"]["verdict"] == "measurably worse"
    assert decision["table"]["lora"]["15"]["verdict"] == "not measurably worse"
    assert decision["max_epochs"] == 20
    # a loss hidden by three noisy seeds is still refused when its mean is beyond the margin
    noisy = {
        "full": [result(30, s, f) for s, f in base.items()]
        + [result(15, s, f + d) for (s, f), d in zip(base.items(), (-0.05, 0.01, -0.02), strict=False)]
        + [result(20, s, f) for s, f in base.items()]
    }
    verdict = schedule_length.decide(noisy, [15, 20, 30], 30, [0, 1, 2], margin=1.0)["table"]["full"]["15"]["verdict"]
    assert verdict == "worse by more than the 1-point margin"
    # a missing seed leaves the decision open rather than deciding on fewer pairs
    partial = {"full": same["full"][:-1]}
    assert schedule_length.decide(partial, [20, 30], 30, [0, 1, 2], margin=1.0)["max_epochs"] is None
    assert "Decision: 20" in schedule_length.report(decision, 30, 1.0)


def test_a_length_one_complete_variant_fails_is_refused_before_the_others_finish():
    base = {0: 0.50, 1: 0.52, 2: 0.51}
    runs = {
        "lora": [result(30, s, f) for s, f in base.items()] + [result(15, s, f - 0.08) for s, f in base.items()],
        "vera": [result(30, s, f) for s, f in base.items()] + [result(15, 0, 0.50)],  # 15: one seed of three
    }
    decision = schedule_length.decide(runs, [15, 20, 30], 30, [0, 1, 2], margin=1.0)
    assert decision["table"]["vera"]["15"]["verdict"] == "undecided"
    assert decision["max_epochs"] is None  # 20 has no seeds yet
    assert decision["reason"].startswith("15 epochs refused: lora measurably worse; 20 epochs: not every variant")
    for variant in runs:  # 20 epochs, every seed, no loss: chosen although vera's 15 is still open
        runs[variant] += [result(20, s, f) for s, f in base.items()]
    assert schedule_length.decide(runs, [15, 20, 30], 30, [0, 1, 2], margin=1.0)["max_epochs"] == 20
    # a variant still open at 15 while nobody has failed it keeps the decision open
    open_runs = {"lora": runs["lora"][:3] + [result(15, s, f) for s, f in base.items()], "vera": runs["vera"]}
    assert schedule_length.decide(open_runs, [15, 20, 30], 30, [0, 1, 2], margin=1.0)["max_epochs"] is None


def test_plans_use_the_reference_runs_and_the_halving_rule():
    study = REPO_ROOT / "results" / "reference-minilm"
    plan = schedule_length.plan(study, ["full"], [15, 20, 30], [0, 1, 2])
    assert plan["epochs"] == 3 * 65 and 30 < plan["rows"][0]["s_per_epoch"] < 80
    params = study_cost.study_params(study, ["train.max_epochs=20"])
    assert params["train"]["max_epochs"] == 20 and params["study"]["halving"] == {"rungs": [10], "keep": 2}
    rows = study_cost.planned(study, study_cost.study_params(study, []), ["full", "vera"])
    assert rows["full"]["epochs"] == 3 * 10 + 2 * 20 + 3 * 30 and rows["vera"]["epochs"] == 5 * 10 + 2 * 20 + 3 * 30


def test_study_cost_runs_a_tiny_subset_end_to_end(tiny_checkpoint, tiny_tokenized, tmp_path, monkeypatch):
    """The reference's records with a tiny model and data: tune (halving on), seeds, the result JSON."""
    import json
    import shutil

    study = tmp_path / "study"
    shutil.copytree(REPO_ROOT / "results" / "reference-minilm", study, ignore=shutil.ignore_patterns("plots"))
    out = tmp_path / "out"
    study_cost.main(
        [
            "--study",
            str(study),
            "--variants",
            "head",
            "--out",
            str(out),
            "--tokenized",
            str(tiny_tokenized / "data" / "tokenized"),
            "--set",
            "train.max_epochs=2",
            "--set",
            "study.halving={rungs: [1], keep: 1}",
            "--set",
            "study.seeds=[0]",
            "--set",
            "variants.head.lr_grid=[0.001, 0.01, 0.1]",
            "--set",
            "study.extend_grid=0",
            "--set",
            "train.precision=fp32",
            "--set",
            "train.batch_size=4",
            "--set",
            f"model.checkpoint={tiny_checkpoint}",
            "--set",
            "model.position_init=zero",
        ]
    )
    result = json.loads((out / "study_cost.json").read_text())
    head = result["variants"]["head"]
    assert result["complete"] and head["tuning_epochs"] == 3 + 1 and head["seeds"] == [0]
    assert head["committed_lr"] == 0.081 and head["same_lr"] == (head["chosen_lr"] == 0.081)
    assert result["cpu_hours"] == result["subset_cpu_hours"] * result["reference_cpu_hours"] / head["reference_hours"]
    assert 25 < result["reference_cpu_hours"] < 26
    # epochs, the machine-independent cost: 4 tuning epochs + 1 seed x 2 against 6 trials + 3 seeds of 30
    assert (head["epochs"], head["reference_epochs"]) == (6, 270) and result["epoch_ratio"] == 6 / 270
    tuned = json.loads((out / "lr" / "head.json").read_text())
    assert len(tuned["halving"]["stopped"]) == 2


def test_rank_convention_arms_take_alpha_from_their_convention():
    study = REPO_ROOT / "results" / "reference-minilm"
    params = study_cost.study_params(study, [])
    arms = {c: rank_convention.arm_variant(params, study, 64, c) for c in ("alpha_2r", "alpha_fixed", "rslora")}
    assert {c: v["alpha"] for c, v in arms.items()} == {"alpha_2r": 128, "alpha_fixed": 32, "rslora": 8}
    # LoRA's own grid, as the ablation profile's lora_r64 inherits it
    assert all(v["r"] == 64 and v["lr_grid"] == [3e-4, 1e-3, 3e-3, 9e-3] for v in arms.values())


def tuned(lr, f1):
    return {"chosen_lr": lr, "trials": [{"lr": lr, "best_val_f1": f1}, {"lr": lr * 3, "best_val_f1": f1 - 0.05}]}


def test_rank_convention_keeps_alpha_2r_unless_another_keeps_one_lr_at_no_loss():
    decide = rank_convention.decide
    moves = {(1, "alpha_2r"): tuned(9e-3, 0.40), (64, "alpha_2r"): tuned(1e-3, 0.50)}
    steady = {(1, "rslora"): tuned(3e-3, 0.40), (64, "rslora"): tuned(3e-3, 0.495)}
    worse = {(1, "alpha_fixed"): tuned(3e-3, 0.30), (64, "alpha_fixed"): tuned(3e-3, 0.50)}
    conventions = ["alpha_2r", "alpha_fixed", "rslora"]
    assert decide({**moves, **steady}, [1, 64], conventions, 1.0)["decision"].startswith("undecided")
    assert decide({**moves, **steady, **worse}, [1, 64], conventions, 1.0)["decision"].startswith("rslora:")
    assert decide({**moves, **steady, **worse}, [1, 64], conventions, 0.4)["decision"].startswith("alpha_2r stays: no other")
    same = {(1, "alpha_2r"): tuned(3e-3, 0.40), (64, "alpha_2r"): tuned(3e-3, 0.50)}
    assert decide({**same, **steady, **worse}, [1, 64], conventions, 1.0)["decision"].startswith("alpha_2r stays: its tuned lr")
