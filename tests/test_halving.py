"""Successive halving in lr tuning: the replay of the reference study's trials, pause and resume,
and a tiny tune@ with halving on (stopped trials, the trial cache, a resumed tune)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layoutpeft.config import ModelConfig, ParamsError, load_yaml
from layoutpeft.train.methods import validate_variant
from layoutpeft.train.tuning import TuningConfig, at_epoch, lr_grid, planned_epochs, replay, trial_epochs
from layoutpeft.train.variants import resolve

from fixtures import REPO_ROOT, cpu_train_config

REFERENCE = REPO_ROOT / "results" / "reference-minilm"


def reference_tuning(halving: dict) -> tuple[dict, TuningConfig]:
    """The committed reference study's params with the reference profile's tuning settings and `halving`."""
    params = load_yaml(REFERENCE / "params.yaml")
    profile = load_yaml(REPO_ROOT / "profiles.yaml")["reference"]
    study = {**params["study"], "extend_grid": profile["study.extend_grid"], "halving": halving}
    return params, TuningConfig.from_params({**params, "study": study})


def replay_reference(halving: dict) -> dict[str, dict]:
    """Each variant's committed trials through the halving rule: {variant: committed, replayed, epochs}."""
    params, tuning = reference_tuning(halving)
    out = {}
    for path in sorted((REFERENCE / "lr").glob("*.json")):
        committed = json.loads(path.read_text())
        declared = lr_grid(resolve(committed["variant"], params["variants"]), tuning)
        assert declared == committed["grid"], path  # the grid the reference study tried
        result = replay(committed["trials"], declared, tuning, params["train"]["max_epochs"], params["train"]["select_on"])
        out[committed["variant"]] = {
            "committed": committed["chosen_lr"],
            "replayed": result["chosen_lr"],
            "epochs": result["epochs"],
            "exhaustive": sum(t["epochs_run"] for t in committed["trials"]),
        }
    return out


def test_the_reference_profiles_halving_keeps_all_nine_reference_choices():
    """The rule the reference profile uses, replayed over the committed 30-epoch trial histories (validation
    F1 per epoch) through the selection code tune@ runs: the same nine lrs, 480 of 1,260 epochs saved."""
    halving = load_yaml(REPO_ROOT / "profiles.yaml")["reference"]["study.halving"]
    rows = replay_reference(halving)
    assert len(rows) == 9
    assert {v: r["replayed"] for v, r in rows.items()} == {v: r["committed"] for v, r in rows.items()}
    saved = sum(r["exhaustive"] - r["epochs"] for r in rows.values())
    assert (saved, sum(r["exhaustive"] for r in rows.values())) == (480, 1260)


def test_a_too_early_rung_changes_a_reference_choice():
    """The replay can fail: keeping 2 trials at epoch 5 judges prompt tuning's high lrs before they have
    annealed and picks 0.09 instead of 0.27 (short-horizon bias)."""
    rows = replay_reference({"rungs": [5], "keep": 2})
    changed = {v: (r["committed"], r["replayed"]) for v, r in rows.items() if r["committed"] != r["replayed"]}
    assert changed == {"prompt_tuning": (0.27, 0.09)}


def test_a_rung_ranks_by_the_best_epoch_so_far():
    trial = {
        "lr": 1e-3,
        "best_val_f1": 0.6,
        "best_val_loss": 0.5,
        "best_epoch": 4,
        "epochs_run": 4,
        "stop_reason": None,
        "history": [
            {"epoch": e, "val_f1": f1, "val_loss": loss, "elapsed_s": 10.0 * e}
            for e, f1, loss in [(1, 0.2, 0.9), (2, 0.4, 0.7), (3, 0.3, 0.6), (4, 0.6, 0.5)]
        ],
    }
    early = at_epoch(trial, 3)
    assert (early["best_val_f1"], early["best_epoch"], early["epochs_run"], early["wall_time_s"]) == (0.4, 2, 3, 30.0)
    assert at_epoch(trial, 3, "loss")["best_epoch"] == 3
    assert at_epoch(trial, 9) is trial


def test_planned_epochs():
    tuning = TuningConfig(True, 0, (1.0,), rungs=(10,), keep=2)
    assert planned_epochs(5, tuning, 30) == 5 * 10 + 2 * 20
    assert planned_epochs(5, TuningConfig(True, 0, (1.0,), rungs=(10, 20), keep=0.5), 30) == 50 + 3 * 10 + 2 * 10
    assert planned_epochs(5, TuningConfig(True, 0, (1.0,)), 30) == 150
    # each trial's share, as `layoutpeft plan` counts it: survivors first, then the latest-dropped
    assert trial_epochs(5, TuningConfig(True, 0, (1.0,), rungs=(10, 20), keep=0.5), 30) == [30, 30, 20, 10, 10]
    assert trial_epochs(3, TuningConfig(True, 0, (1.0,), rungs=(10,), keep=2), 30) == [30, 30, 10]
    assert trial_epochs(2, TuningConfig(True, 0, (1.0,)), 30) == [30, 30]


@pytest.mark.parametrize(
    "halving, message",
    [
        ({"rungs": [10, 5], "keep": 2}, "increasing"),
        ({"rungs": [0], "keep": 2}, "increasing"),
        ({"rungs": [30], "keep": 2}, "before train.max_epochs"),
        ({"rungs": [10], "keep": 0}, "keep"),
        ({"rungs": [10], "keep": 1.5}, "keep"),
        ({"rungs": [10], "keep": True}, "keep"),
        ({"rungs": [10], "keep": 2, "eta": 3}, "unknown keys"),
    ],
)
def test_halving_params_are_checked(halving, message):
    params = {
        "train": {"max_epochs": 30},
        "study": {"tune_lr": True, "tuning_seed": 0, "lr_grid": [1.0], "extend_grid": 0, "halving": halving},
    }
    with pytest.raises(ParamsError, match=message):
        TuningConfig.from_params(params)


def test_a_paused_and_resumed_training_gives_the_numbers_of_a_straight_one(tiny_checkpoint, tiny_tokenized, tmp_path):
    """LoRA with dropout (the RNG state matters), AdamW moments, the schedule's position: all carried over."""
    from layoutpeft.train import runs

    variant = validate_variant(
        "lora", {"method": "lora", "r": 2, "dropout": 0.1, "targets": ["query", "value"], "lr": 5e-3}, prompt_reserve=8
    )
    model_cfg, cfg = ModelConfig(str(tiny_checkpoint), "zero"), cpu_train_config(max_epochs=3)
    tokenized = tiny_tokenized / "data" / "tokenized"
    straight = runs.train("lora", 0, variant, model_cfg, cfg, tmp_path / "straight", tokenized)
    state = tmp_path / "paused.pt"
    first = runs.train("lora", 0, variant, model_cfg, cfg, tmp_path / "first", tokenized, pause_after=1, checkpoint=state)
    assert first["training"]["paused"] and first["training"]["epochs_run"] == 1 and state.is_file()
    rest = runs.train("lora", 0, variant, model_cfg, cfg, tmp_path / "rest", tokenized, checkpoint=state)
    assert rest["training"]["resumed_at_epoch"] == 1 and not rest["training"]["paused"]

    def numbers(log):
        return [(r["epoch"], r["train_loss"], r["val_loss"], r["val_f1"], r["lr"]) for r in log["history"]]

    assert numbers(rest) == numbers(straight)
    assert rest["training"]["best_epoch"] == straight["training"]["best_epoch"]
    assert rest["training"]["optimizer_steps"] == straight["training"]["optimizer_steps"]


class Killed(Exception):
    pass


def test_a_tune_with_halving_stops_trials_at_the_rung_and_resumes_only_unfinished_ones(
    tiny_checkpoint, tiny_tokenized, tmp_path, monkeypatch
):
    from layoutpeft.train import runs, tuning

    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, str(tmp_path / "trials"))
    variant = validate_variant("head", {"method": "head", "lr": 1e-2, "lr_grid": [1e-3, 1e-2, 1e-1]}, prompt_reserve=8)
    model_cfg, train_cfg = ModelConfig(str(tiny_checkpoint), "zero"), cpu_train_config(max_epochs=3)
    tokenized = tiny_tokenized / "data" / "tokenized"
    real_train, calls, kill = runs.train, [], [True]

    def counting_train(name, seed, settings, *args, pause_after=None, checkpoint=None, **kwargs):
        resumed_at = torch_epoch(checkpoint)
        calls.append((settings["lr"], resumed_at, pause_after))
        if kill and resumed_at == 1 and pause_after is None:
            kill.pop()
            raise Killed  # the stage is killed while the survivor runs the rest of its schedule
        return real_train(name, seed, settings, *args, pause_after=pause_after, checkpoint=checkpoint, **kwargs)

    def tune(rungs=(1,), keep=1) -> dict:
        config = TuningConfig(enabled=True, seed=0, multipliers=(1.0,), rungs=rungs, keep=keep)
        return tuning.tune("head", variant, model_cfg, train_cfg, config, tokenized, scratch=tmp_path)

    monkeypatch.setattr(runs, "train", counting_train)
    with pytest.raises(Killed):
        tune()
    # every lr trained to the rung (epoch 1) and paused there; the best one was continuing when killed
    assert [c[1:] for c in calls] == [(None, 1)] * 3 + [(1, None)]
    survivor = calls[-1][0]
    del calls[:]
    result = tune()
    assert calls == [(survivor, 1, None)]  # the resumed tune trains only the unfinished trial, from its rung
    stopped = [t for t in result["trials"] if t.get("stop_reason") == "halving"]
    assert len(stopped) == 2 and all(t["epochs_run"] == 1 and t["stopped_at_epoch"] == 1 for t in stopped)
    assert result["chosen_lr"] == survivor and result["halving"]["finalists"] == [survivor]
    assert result["epochs_trained"] == 3 + 2 and result["wall_time_s"] == sum(t["wall_time_s"] for t in result["trials"])
    assert len(list((tmp_path / "trials").glob("*.pt"))) == 2  # the stopped trials' paused states, kept

    del calls[:]
    again = tune()  # all from the cache, the same answer
    assert calls == [] and again["chosen_lr"] == result["chosen_lr"] and without_cache_paths(again) == without_cache_paths(result)
    # a larger `keep` continues the runner-up from its paused state; halving off, the last one too
    kept_two = tune(keep=2)
    runner_up = calls[0][0]
    assert calls == [(runner_up, 1, None)] and len(kept_two["halving"]["stopped"]) == 1
    del calls[:]
    exhaustive = tune(rungs=())
    assert [c[1:] for c in calls] == [(1, None)] and exhaustive["halving"] is None
    assert not list((tmp_path / "trials").glob("*.pt"))
    # continued trials give the numbers of trials trained straight through (no cache)
    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, "off")
    straight = tune(rungs=())
    assert [t["history"] for t in strip_times(straight)] == [t["history"] for t in strip_times(exhaustive)]
    assert straight["chosen_lr"] == exhaustive["chosen_lr"]
    # without a cache, halving still works (paused states live in the stage's scratch folder)
    del calls[:]
    uncached = tune()
    assert uncached["chosen_lr"] == result["chosen_lr"] and len(calls) == 4
    assert [t["best_val_f1"] for t in uncached["trials"]] == [t["best_val_f1"] for t in result["trials"]]


def torch_epoch(checkpoint: Path | None) -> int | None:
    """The epoch a paused-state file holds (None: no file)."""
    import torch

    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    return torch.load(checkpoint, weights_only=True)["epoch"]


def strip_times(result: dict) -> list[dict]:
    return [{**t, "history": [{k: v for k, v in r.items() if k != "elapsed_s"} for r in t["history"]]} for t in result["trials"]]


def without_cache_paths(result: dict) -> list[dict]:
    return [{k: v for k, v in t.items() if k != "resumed_from"} for t in result["trials"]]


def test_a_shard_plan_counts_the_epochs_halving_trains():
    from layoutpeft.config import load_params
    from layoutpeft.scale import shards

    params = load_params(REPO_ROOT / "params.yaml")
    params = {
        **params,
        "train": {**params["train"], "max_epochs": 30},
        "study": {**params["study"], "variants": ["vera"], "reference": "vera", "seeds": [0], "tune_lr": True},
    }
    exhaustive = shards.units(params)[0].cost
    halved = shards.units({**params, "study": {**params["study"], "halving": {"rungs": [10], "keep": 2}}})[0].cost
    step = shards.method_cost("vera")
    assert exhaustive - halved == pytest.approx(step * (150 - 90) / 30)  # 5 lrs: 150 epochs -> 90


def test_halving_with_grid_extension_scripted(tmp_path, monkeypatch):
    """Validation F1 rises with the epoch and peaks at lr 2.7e-2 (scripted, no training). Keep 1 at
    epoch 2 of 4: each extended lr goes through the rung against every lr tried; the one it
    outranks there has already finished (kept in the record, no finalist). The tune chooses what a
    replay of the same histories chooses."""
    import math

    from layoutpeft.train import runs, tuning

    def f1(lr, epoch):
        return (0.5 - 0.1 * abs(math.log10(lr / 2.7e-2))) * epoch / 4

    def scripted_train(
        name, seed, settings, model_cfg, cfg, out_dir, tokenized, on_epoch=None, pause_after=None, checkpoint=None
    ):
        lr = settings["lr"]
        start = int(checkpoint.read_text()) if checkpoint is not None and checkpoint.is_file() else 0
        end = pause_after or cfg.max_epochs
        calls.append((lr, start, end))
        if pause_after:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(str(end))
        history = [{"epoch": e, "val_f1": f1(lr, e), "val_loss": 1 - f1(lr, e), "elapsed_s": float(e)} for e in range(1, end + 1)]
        return {
            "training": {
                "best_val_f1": history[-1]["val_f1"],
                "best_val_loss": history[-1]["val_loss"],
                "best_epoch": end,
                "epochs_run": end,
                "paused": bool(pause_after),
                "resumed_at_epoch": start or None,
            },
            "history": history,
        }

    calls = []
    monkeypatch.setattr(runs, "train", scripted_train)
    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, str(tmp_path / "trials"))
    (tmp_path / "tokenized").mkdir()
    config = TuningConfig(enabled=True, seed=0, multipliers=(1.0, 3.0), extend=2, rungs=(2,), keep=1)
    result = tuning.tune(
        "head",
        {"method": "head", "lr": 1e-3},
        ModelConfig(str(tmp_path), "zero"),
        cpu_train_config(max_epochs=4),
        config,
        tmp_path / "tokenized",
        scratch=tmp_path,
    )
    assert calls == [(1e-3, 0, 2), (3e-3, 0, 2), (3e-3, 2, 4), (9e-3, 0, 2), (9e-3, 2, 4), (2.7e-2, 0, 2), (2.7e-2, 2, 4)]
    assert result["extended_by"] == [9e-3, 2.7e-2] and result["chosen_lr"] == 2.7e-2
    assert result["halving"]["finalists"] == [2.7e-2] and result["halving"]["stopped"] == [1e-3]
    assert [t["epochs_run"] for t in result["trials"]] == [2, 4, 4, 4]
    assert result["at_grid_edge"] == "highest"
    full = [
        {**t, "history": [{"epoch": e, "val_f1": f1(t["lr"], e), "val_loss": 1 - f1(t["lr"], e)} for e in range(1, 5)]}
        for t in result["trials"]
    ]
    assert replay(full, [1e-3, 3e-3], config, 4)["chosen_lr"] == result["chosen_lr"]


@pytest.mark.slow
def test_the_tune_stage_with_halving_under_dvc(make_tiny_project, tmp_path):
    """study.halving through params.yaml and dvc.yaml: stopped trials in data/lr/<variant>.json; a
    changed `keep` reruns the stage, which continues the runner-up from its rung and reuses the rest."""

    from fixtures import edit_params, run_dvc

    repo = make_tiny_project(
        {
            "study.variants": ["head"],
            "study.reference": "head",
            "study.tune_lr": True,
            "variants.head.lr_grid": [1e-3, 1e-2, 1e-1],
            "study.extend_grid": 0,
            "study.halving": {"rungs": [1], "keep": 1},
        }
    )
    env = {"LAYOUTPEFT_TRIAL_CACHE": str(tmp_path / "trials")}  # added to subprocess_env's (venv first on PATH)
    run_dvc(repo, "repro", "tune@head", env=env)
    tuned = json.loads((repo / "data" / "lr" / "head.json").read_text())
    stopped = [t for t in tuned["trials"] if t.get("stop_reason") == "halving"]
    assert len(stopped) == 2 and {t["epochs_run"] for t in stopped} == {1}
    assert tuned["halving"]["finalists"] == [tuned["chosen_lr"]] and tuned["epochs_trained"] == 3 + 1
    edit_params(repo / "params.yaml", {"study.halving": {"rungs": [1], "keep": 2}})
    out = run_dvc(repo, "repro", "tune@head", env=env).stdout
    assert out.count("continues from epoch 1") == 1 and out.count("reused") == 3
    assert len(json.loads((repo / "data" / "lr" / "head.json").read_text())["halving"]["stopped"]) == 1
