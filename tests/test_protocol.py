"""The fair-study protocol: batches vary across seeds, AdaLoRA as specified, lr chosen on validation, memory kinds."""

from __future__ import annotations

import pytest
import torch

from layoutpeft.config import ModelConfig, ParamsError
from layoutpeft.data.batching import batch_order, load_windows
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train import engine
from layoutpeft.train.methods import Schedule, adalora_ranks, validate_variant
from layoutpeft.train.probes import peak_memory, start_memory_window
from layoutpeft.train.tuning import TuningConfig, choose, lr_grid

from fixtures import cpu_train_config


def memberships(order):
    return {frozenset(b) for b in order}


def test_batches_differ_across_seeds_and_epochs():
    lengths = [(i * 37) % 200 + 20 for i in range(128)]  # 128 training windows, as FUNSD at batch 16
    a = batch_order(lengths, 16, shuffle=True, group_by_length=True, seed=1)
    b = batch_order(lengths, 16, shuffle=True, group_by_length=True, seed=2)
    assert memberships(a) != memberships(b)
    # the old single mega-batch (50 batches) gave the same members every epoch and seed
    old_a = batch_order(lengths, 16, shuffle=True, group_by_length=True, seed=1, group_size=50)
    old_b = batch_order(lengths, 16, shuffle=True, group_by_length=True, seed=2, group_size=50)
    assert memberships(old_a) == memberships(old_b)
    assert sorted(i for batch in a for i in batch) == list(range(128))


@pytest.fixture(scope="module")
def windows(tiny_tokenized):
    folder = tiny_tokenized / "data" / "tokenized"
    return load_windows("train", folder), load_windows("validation", folder)


def adalora(tiny_checkpoint, total_steps):
    variant = validate_variant(
        "ada", {"method": "adalora", "r": 2, "init_r": 6, "targets": ["query", "value"], "lr": 1e-2}, prompt_reserve=8
    )
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint)),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=total_steps, steps_per_epoch=2),
        labels=LEGACY_LABELS,
    )
    return model, variant


def test_adalora_loss_includes_its_orthogonal_regulariser(tiny_checkpoint, windows):
    from layoutpeft.data.batching import collate

    model, _ = adalora(tiny_checkpoint, 10)
    batch = collate(windows[0][:2], 0)
    output = engine.model_output(model, batch, with_labels=True)
    plain = engine.token_loss(output.logits, batch["labels"])
    assert float(output.loss - plain) > 1e-6  # orth_reg_weight x ||AA^T - I|| + ||B^T B - I||


def test_adalora_reaches_its_target_rank_within_the_schedule(tiny_checkpoint, windows):
    train, val = windows
    epochs = 4
    cfg = cpu_train_config(max_epochs=epochs, batch_size=2)
    steps = epochs * engine.steps_per_epoch(len(train), cfg.batch_size)
    model, variant = adalora(tiny_checkpoint, steps)
    assert sum(adalora_ranks(model).values()) == 6 * 2 * 2  # init_r x 2 targets x 2 layers
    engine.fit(model, variant, cfg, train, val, 0, torch.device("cpu"), seed=0, total_steps=steps)
    assert sum(adalora_ranks(model).values()) <= 2 * 2 * 2  # the target budget: r x adapted matrices


def test_choose_takes_the_best_validation_f1_then_lower_loss():
    trials = [
        {"lr": 1e-4, "best_val_f1": 0.50, "best_val_loss": 0.9},
        {"lr": 3e-4, "best_val_f1": 0.62, "best_val_loss": 1.1},
        {"lr": 1e-3, "best_val_f1": 0.62, "best_val_loss": 1.0},
        {"lr": 3e-3, "best_val_f1": float("nan"), "best_val_loss": 9},
    ]
    assert choose(trials)["lr"] == 1e-3


def test_lr_grid_from_multipliers_or_the_variants_own_list():
    tuning = TuningConfig(enabled=True, seed=0, multipliers=(0.3, 1.0, 3.0))
    assert lr_grid({"lr": 1e-3}, tuning) == [3e-4, 1e-3, 3e-3]
    assert lr_grid({"lr": 1e-3, "lr_grid": [5e-3, 1e-4]}, tuning) == [1e-4, 5e-3]


def test_cpu_training_memory_excludes_what_came_before(tmp_path):
    device = torch.device("cpu")
    window = start_memory_window(device)
    memory = peak_memory(device, window)
    if not window.get("reset"):
        pytest.skip("no /proc/self/clear_refs here: the whole-process peak is reported, with its own kind")
    assert memory["kind"] == "cpu_peak_rss_training"
    ballast = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    ballast += 1
    grown = peak_memory(device, window)
    assert grown["peak_bytes"] - memory["peak_bytes"] >= 60 * 2**20
    assert grown["baseline_bytes"] == memory["baseline_bytes"]


class Killed(Exception):
    pass


def test_an_interrupted_tune_reuses_finished_trials_and_only_those(tiny_checkpoint, tiny_tokenized, tmp_path, monkeypatch):
    from layoutpeft.train import runs, tuning

    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, str(tmp_path / "trials"))
    variant = validate_variant("head", {"method": "head", "lr": 1e-3}, prompt_reserve=8)
    model_cfg, train_cfg = ModelConfig(str(tiny_checkpoint), "zero"), cpu_train_config(max_epochs=1)
    grid = TuningConfig(enabled=True, seed=0, multipliers=(1.0, 3.0))
    tokenized = tiny_tokenized / "data" / "tokenized"
    real_train, trained, kill = runs.train, [], [True]

    def counting_train(name, seed, settings, *args, **kwargs):
        trained.append(settings["lr"])
        if settings["lr"] == 3e-3 and kill:
            kill.pop()
            raise Killed  # the stage is killed during its second trial
        return real_train(name, seed, settings, *args, **kwargs)

    monkeypatch.setattr(runs, "train", counting_train)
    with pytest.raises(Killed):
        tuning.tune("head", variant, model_cfg, train_cfg, grid, tokenized, scratch=tmp_path)
    assert len(list((tmp_path / "trials").glob("*.json"))) == 1
    resumed = tuning.tune("head", variant, model_cfg, train_cfg, grid, tokenized, scratch=tmp_path)
    assert trained == [1e-3, 3e-3, 3e-3]  # the finished lr is not trained again
    assert "resumed_from" in resumed["trials"][0] and "resumed_from" not in resumed["trials"][1]

    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, "off")
    fresh = tuning.tune("head", variant, model_cfg, train_cfg, grid, tokenized, scratch=tmp_path)
    assert [t["best_val_f1"] for t in fresh["trials"]] == [t["best_val_f1"] for t in resumed["trials"]]
    # any change to what decides a trial (here the train params) gives new fingerprints
    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, str(tmp_path / "trials"))
    del trained[:]
    tuning.tune("head", variant, model_cfg, cpu_train_config(max_epochs=2), grid, tokenized, scratch=tmp_path)
    assert trained == [1e-3, 3e-3]
    # a widened grid (the variant's own list, or a moved centre lr) trains only the new lrs
    del trained[:]
    wider = tuning.tune(
        "head", {**variant, "lr_grid": [1e-3, 3e-3, 9e-3]}, model_cfg, train_cfg, grid, tokenized, scratch=tmp_path
    )
    assert trained == [9e-3] and [t["lr"] for t in wider["trials"]] == [1e-3, 3e-3, 9e-3]
    del trained[:]
    tuning.tune("head", {**variant, "lr": 3e-3}, model_cfg, train_cfg, grid, tokenized, scratch=tmp_path)
    assert trained == []  # 3e-3 and 9e-3: both tried


def test_a_best_lr_at_an_end_of_the_grid_extends_the_grid_past_it(tmp_path, monkeypatch):
    """Validation F1 peaks at lr 2.7e-2 (scripted, no training): from the grid 1e-3, 3e-3 the tune
    steps up one grid step (x3) at a time while the best lr is the highest tried."""
    import math

    from layoutpeft.train import runs, tuning

    def scripted_train(name, seed, settings, *args, **kwargs):
        trained.append(settings["lr"])
        f1 = 0.5 - 0.1 * abs(math.log10(settings["lr"] / peak))
        return {
            "training": {"best_val_f1": f1, "best_val_loss": 1 - f1, "best_epoch": 1, "epochs_run": 1},
            "history": [{"epoch": 1, "val_f1": f1, "val_loss": 1 - f1}],
        }

    monkeypatch.setattr(runs, "train", scripted_train)
    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, str(tmp_path / "trials"))
    model_cfg, train_cfg = ModelConfig(str(tmp_path), "zero"), cpu_train_config(max_epochs=1)
    variant, tokenized = {"method": "head", "lr": 1e-3}, tmp_path / "tokenized"
    tokenized.mkdir()

    def tune(extend: int) -> dict:
        config = TuningConfig(enabled=True, seed=0, multipliers=(1.0, 3.0), extend=extend)
        return tuning.tune("head", variant, model_cfg, train_cfg, config, tokenized, scratch=tmp_path)

    peak, trained = 2.7e-2, []
    capped = tune(extend=2)  # two steps up, and the best is still the highest lr tried
    assert trained == [1e-3, 3e-3, 9e-3, 2.7e-2] and capped["extended_by"] == [9e-3, 2.7e-2]
    assert capped["declared_grid"] == [1e-3, 3e-3] and capped["grid"] == [1e-3, 3e-3, 9e-3, 2.7e-2]
    assert capped["chosen_lr"] == 2.7e-2 and capped["at_grid_edge"] == "highest"
    del trained[:]
    interior = tune(extend=3)  # the trials tried before come from the trial cache: only 8.1e-2 trains
    assert trained == [8.1e-2] and interior["chosen_lr"] == 2.7e-2 and interior["at_grid_edge"] is None
    assert interior["extended_by"] == [9e-3, 2.7e-2, 8.1e-2]
    del trained[:]
    assert tune(extend=0)["at_grid_edge"] == "highest" and trained == []  # off: the declared grid only

    peak, trained = 1e-4, []
    monkeypatch.setenv(tuning.TRIAL_CACHE_ENV, "off")
    downwards = tune(extend=3)
    assert trained == [1e-3, 3e-3, 3.33e-4, 1.11e-4, 3.7e-5] and downwards["chosen_lr"] == 1.11e-4
    assert downwards["grid"] == sorted(trained) and downwards["at_grid_edge"] is None


def test_extend_grid_is_checked():
    params = {"study": {"tune_lr": True, "tuning_seed": 100, "lr_grid": [0.3, 1.0, 3.0], "extend_grid": 2}}
    assert TuningConfig.from_params(params).extend == 2
    for bad in (-1, 11, 1.5, True):
        with pytest.raises(ParamsError, match="study.extend_grid"):
            TuningConfig.from_params({"study": {**params["study"], "extend_grid": bad}})


def test_trial_fingerprints_cover_the_tune_stages_code_only():
    from layoutpeft.train import tuning

    names = {path.relative_to(tuning.REPO_ROOT).as_posix() for path in tuning.code_files()}
    assert {"stages/tune.py", "layoutpeft/train/tuning.py", "layoutpeft/train/engine.py", "layoutpeft/train/methods.py"} <= names
    assert "layoutpeft/use/predict.py" not in names and "layoutpeft/use/export.py" not in names


@pytest.mark.parametrize("method", [{"method": "lora", "r": 2, "targets": ["query", "value"]}, {"method": "full"}])
def test_tables_lr_gives_the_new_2d_tables_their_own_learning_rate(tiny_checkpoint, method):
    from layoutpeft.modeling import TABLES_2D

    variant = validate_variant("v", {**method, "lr": 1e-3, "tables_lr": 2e-5}, prompt_reserve=8)
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint)),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=4, steps_per_epoch=2),
        labels=LEGACY_LABELS,
    )
    optimizer = engine.make_optimizer(model, variant["lr"], 0.01, "foreach", variant["tables_lr"])
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tables = [n for n in named if any(f"{t}." in n for t in TABLES_2D)]
    assert len(tables) == 4 and all(lr_of[id(named[n])] == 2e-5 for n in tables)
    assert {lr_of[id(p)] for n, p in named.items() if n not in tables} == {1e-3}
    assert len(lr_of) == len(named)  # every trainable parameter in exactly one group
    # without it: today's two groups (decay, no decay) at the method's lr, in the same order
    plain = engine.make_optimizer(model, variant["lr"], 0.01, "foreach")
    assert [g["weight_decay"] for g in plain.param_groups] == [0.01, 0.0]
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


@pytest.mark.parametrize(
    "collapse_epochs, patience, epochs_run, reason",
    [
        (3, 0, 7, "collapsed"),  # zeros at 2-3 reset by 0.2 at epoch 4; zeros at 5-7 stop it
        (0, 0, 10, None),  # off: the whole schedule
        (4, 3, 7, "patience"),  # no better F1 at 5-7: patience stops first (three zeros, not four)
    ],
)
def test_a_run_whose_validation_f1_stays_zero_stops_as_collapsed(
    tiny_checkpoint, windows, monkeypatch, collapse_epochs, patience, epochs_run, reason
):
    train, val = windows
    f1s = iter([0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(engine, "evaluate_windows", lambda *a, **k: {"loss": 1.0, "scores": {"f1": next(f1s)}})
    variant = validate_variant("head", {"method": "head", "lr": 1e-3}, prompt_reserve=8)
    cfg = cpu_train_config(max_epochs=10, batch_size=4, collapse_epochs=collapse_epochs, patience=patience)
    steps = cfg.max_epochs * engine.steps_per_epoch(len(train), cfg.batch_size)
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint)),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=steps, steps_per_epoch=steps // cfg.max_epochs),
        labels=LEGACY_LABELS,
    )
    result = engine.fit(model, variant, cfg, train, val, 0, torch.device("cpu"), seed=0, total_steps=steps)
    assert (result.epochs_run, result.stop_reason, result.stopped_early) == (epochs_run, reason, reason is not None)
    assert result.best_epoch == 4 and result.best_val_f1 == 0.2  # the epoch before the collapse is the one kept


def test_collapse_epochs_is_checked_and_absent_from_old_params_means_never():
    from layoutpeft.config import TrainConfig, load_params

    params = load_params()
    assert TrainConfig.from_params(params).collapse_epochs == 5
    old = {**params, "train": {k: v for k, v in params["train"].items() if k != "collapse_epochs"}}
    assert TrainConfig.from_params(old).collapse_epochs == 0
    with pytest.raises(ParamsError, match="train.collapse_epochs"):
        TrainConfig.from_params({**params, "train": {**params["train"], "collapse_epochs": -1}})


def test_the_collapse_evidence_script_finds_where_a_default_would_stop_and_any_recovery():
    import importlib.util

    from fixtures import REPO_ROOT

    spec = importlib.util.spec_from_file_location("zero_f1_runs", REPO_ROOT / "benchmarks" / "zero_f1_runs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    f1s = [0.0, 0.1, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0]
    assert script.zero_streak(f1s) == (3, 3, True)
    assert script.zero_streak([0.1, 0.0, 0.0]) == (2, 2, False)
    assert script.zero_streak([0.1, 0.2]) == (0, None, False)
    assert script.stop_epoch(f1s, 3) == 5 and script.stop_epoch(f1s, 4) is None and script.stop_epoch(f1s, 0) is None
