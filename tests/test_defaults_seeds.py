"""benchmarks/defaults_seeds.py: its arms, its refusal to reuse a run that is not the baseline, its table."""

from __future__ import annotations

import importlib.util
import json

import pytest

from layoutpeft.config import ParamsError, TrainConfig, load_params

from fixtures import REPO_ROOT

spec = importlib.util.spec_from_file_location("defaults_seeds", REPO_ROOT / "benchmarks" / "defaults_seeds.py")
defaults_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(defaults_seeds)


def test_arms_are_typed_and_checked_like_params_yaml():
    assert defaults_seeds.arm_overrides("loss=token_mean,group_size=8,group_by_length=false") == {
        "loss": "token_mean",
        "group_size": 8,
        "group_by_length": False,
    }
    assert defaults_seeds.arm_name({}) == defaults_seeds.BASELINE
    with pytest.raises(SystemExit, match="is not key=value"):
        defaults_seeds.arm_overrides("loss")
    params = load_params(REPO_ROOT / "params.yaml")
    assert defaults_seeds.train_config(params, {"group_size": 8}).group_size == 8
    with pytest.raises(SystemExit, match="train.lossy is not a train setting"):
        defaults_seeds.train_config(params, {"lossy": "x"})
    with pytest.raises(ParamsError, match="train.loss"):
        defaults_seeds.train_config(params, {"loss": "sum"})


def test_a_study_run_is_reused_only_when_it_is_what_the_baseline_trains(monkeypatch):
    params = load_params(REPO_ROOT / "params.yaml")
    cfg = TrainConfig.from_params(params)
    model_cfg = defaults_seeds.ModelConfig.from_params(params, check_source=False)
    variant = {"method": "lora", "r": 16, "lr": 3e-3, "lr_grid": [1e-3, 3e-3]}
    key = defaults_seeds.environment_key()
    env = {**{lib: key[lib] for lib in defaults_seeds.LIBRARIES}, "cpu_threads": 1, "git_commit": "abc"}
    record = {
        "variant_params": {**variant, "lr_grid": [3e-3]},
        "model": {**model_cfg.as_dict(), "source_type": "bert"},
        "train_params": cfg.as_dict(),
        "train_environment": env,
    }
    monkeypatch.setattr(defaults_seeds, "training_code_unchanged", lambda commit: commit == "abc")
    assert defaults_seeds.reusable(record, variant, cfg, model_cfg, threads=1)  # the grid decides nothing in a run
    assert not defaults_seeds.reusable(record, {**variant, "lr": 1e-3}, cfg, model_cfg, threads=1)
    assert not defaults_seeds.reusable(
        record, variant, defaults_seeds.dataclasses.replace(cfg, loss="token_mean"), model_cfg, threads=1
    )
    assert not defaults_seeds.reusable(record, variant, cfg, model_cfg, threads=2)
    assert not defaults_seeds.reusable(
        {**record, "train_environment": {**env, "git_commit": "def"}}, variant, cfg, model_cfg, threads=1
    )


def test_report_pairs_each_arm_with_the_baseline_over_shared_seeds(tmp_path):
    rows = [
        ("baseline", 0, 0.50, 0.45),
        ("baseline", 1, 0.52, 0.46),
        ("baseline", 2, 0.48, 0.44),
        ("loss=token_mean", 0, 0.52, 0.46),
        ("loss=token_mean", 1, 0.53, 0.45),
    ]
    for arm, seed, val, test in rows:
        (tmp_path / f"{arm}-{seed}.json").write_text(
            json.dumps(
                {
                    "arm": arm,
                    "seed": seed,
                    "variant": "lora",
                    "lr": 3e-3,
                    "best_val_f1": val,
                    "test_f1": test,
                    "best_epoch": 30,
                    "epoch_time_s": 40.0,
                }
            )
        )
    table = defaults_seeds.report(tmp_path)
    baseline_row = next(line for line in table.splitlines() if line.startswith("| baseline"))
    arm_row = next(line for line in table.splitlines() if line.startswith("| loss=token_mean"))
    assert "| 0, 1, 2 | 50.0 ± 5.0 | – |" in baseline_row
    # seeds 0 and 1 only: differences +2 and +1 points, mean +1.5
    assert "| 0, 1 | 52.5 ± 6.4 | +1.5 [-4.9, +7.9], p=0.20 |" in arm_row
    with pytest.raises(SystemExit, match="no finished"):
        defaults_seeds.report(tmp_path / "empty")


def test_results_from_a_cpu_with_other_flags_stop_the_run_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(defaults_seeds, "simd_flags", lambda: ["avx2", "fma"])
    (tmp_path / "baseline-seed0.json").write_text(json.dumps({"environment": {}}))  # flags not recorded: no say
    (tmp_path / "arm-seed0.json").write_text(json.dumps({"environment": {"cpu_flags": ["avx2", "fma"]}}))
    defaults_seeds.same_cpu_as_earlier(tmp_path)
    (tmp_path / "arm-seed1.json").write_text(json.dumps({"environment": {"cpu_flags": ["avx2", "fma", "avx512_bf16"]}}))
    with pytest.raises(
        SystemExit,
        match=r"arm-seed1.json: trained on a CPU with flags avx2 fma avx512_bf16; "
        r"this one has avx2 fma",
    ):
        defaults_seeds.same_cpu_as_earlier(tmp_path)


def test_every_arm_settings_head_the_table_and_are_not_mixed_in_one_folder(tmp_path):
    (tmp_path / "baseline-seed0.json").write_text(
        json.dumps(
            {
                "arm": "baseline",
                "seed": 0,
                "variant": "lora",
                "lr": 3e-3,
                "best_val_f1": 0.5,
                "test_f1": 0.45,
                "best_epoch": 30,
                "epoch_time_s": 40.0,
                "every_arm": {"precision": "fp32"},
            }
        )
    )
    assert defaults_seeds.report(tmp_path).startswith("lora at lr 0.003 with precision=fp32 in every arm;")
    defaults_seeds.same_every_arm_as_earlier(tmp_path, {"precision": "fp32"})
    with pytest.raises(SystemExit, match=r"baseline-seed0.json: trained with --every-arm precision=fp32, not none"):
        defaults_seeds.same_every_arm_as_earlier(tmp_path, {})


def test_an_arm_without_its_baseline_yet_reports_no_difference(tmp_path):
    """A process may train an arm alone (another trains the baseline): until the baseline is there, no Δ."""
    (tmp_path / "group_by_length-False-seed2.json").write_text(
        json.dumps(
            {
                "arm": "group_by_length=False",
                "seed": 2,
                "variant": "lora",
                "lr": 3e-3,
                "best_val_f1": 0.5,
                "test_f1": 0.45,
                "best_epoch": 30,
                "epoch_time_s": 80.0,
            }
        )
    )
    row = defaults_seeds.report(tmp_path).splitlines()[-1]
    assert row.startswith("| group_by_length=False | 2 | 50.0 | n/a | 45.0 | n/a |"), row
