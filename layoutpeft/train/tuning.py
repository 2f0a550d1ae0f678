"""Per-variant learning-rate tuning on validation: each method at its own best learning rate.

Rankings of PEFT methods flip once each method's learning rate is tuned (PEFT's own method
comparison saw a method go from 0.15 % to 41.6 % by its lr alone), so every studied variant
picks its lr from a grid, by best validation entity F1, on one tuning seed, before its seed
runs. The grid is the variant's own `lr_grid` (absolute values) or `study.lr_grid`
(multiples of the variant's `lr`). A best lr at an end of the grid is not a tuned lr (the optimum
may lie beyond), so up to `study.extend_grid` more lrs are tried past that end, one grid step
each, until the best is interior. The test split is never read here.

A tune@ stage is long (one full training per grid value) and DVC keeps nothing of a stage that
is killed, so each finished trial is also memoised in a trial cache (TRIAL_CACHE_ENV, default
~/.cache/layoutpeft/trials): one JSON per trial, named by a fingerprint of everything that decides
it (variant settings and lr, model and train params, tuning seed, the tokenized data's bytes, the
source of the modules the stage depends on, library versions, device and CPU threads). A rerun of the stage
after an interruption reuses the finished trials and trains only the rest; any change to that code,
data or settings gives new fingerprints, so a stale trial is never reused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig, ParamsError, TrainConfig, get, number_in

TRIAL_CACHE_ENV = "LAYOUTPEFT_TRIAL_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TuningConfig:
    """`study.tune_lr`, `study.tuning_seed`, `study.lr_grid`, `study.extend_grid` — read by the tune@ stages."""
    enabled: bool
    seed: int
    multipliers: tuple[float, ...]
    extend: int = 0  # at most this many lrs tried past the end of the grid where the best one lies

    @classmethod
    def from_params(cls, params: dict) -> "TuningConfig":
        grid = get(params, "study.lr_grid", list)
        if not grid or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in grid):
            raise ParamsError(f"params.yaml: study.lr_grid must be a non-empty list of positive multipliers, got {grid!r}")
        if len(set(grid)) != len(grid):
            raise ParamsError(f"params.yaml: study.lr_grid lists a multiplier twice: {grid!r}")
        return cls(get(params, "study.tune_lr", bool), number_in(params, "study.tuning_seed", 0, 2**31, kind=int),
                   tuple(float(m) for m in grid), number_in(params, "study.extend_grid", 0, 10, kind=int))

    def as_dict(self) -> dict:
        return asdict(self)


def lr_grid(variant: dict, tuning: TuningConfig) -> list[float]:
    """The learning rates a variant tries: its own lr_grid, else study.lr_grid x its lr (sorted, rounded to 3 digits)."""
    values = variant.get("lr_grid") or [variant["lr"] * m for m in tuning.multipliers]
    return sorted({rounded(v) for v in values})


def rounded(lr: float) -> float:
    return float(f"{lr:.3g}")


def grid_edge(trials: list[dict]) -> str | None:
    """'highest' or 'lowest' when the best trial is at that end of the lrs tried (None: interior, or one lr)."""
    lrs = sorted(t["lr"] for t in trials)
    best = choose(trials)["lr"]
    if len(lrs) < 2 or best not in (lrs[0], lrs[-1]):
        return None
    return "highest" if best == lrs[-1] else "lowest"


def next_lr(trials: list[dict]) -> float | None:
    """One grid step past the end where the best trial lies (the step: the ratio of the two lrs at
    that end), or None when the best is interior."""
    edge, lrs = grid_edge(trials), sorted(t["lr"] for t in trials)
    if edge == "highest":
        return rounded(lrs[-1] * lrs[-1] / lrs[-2])
    if edge == "lowest":
        return rounded(lrs[0] * lrs[0] / lrs[1])
    return None


def tune(name: str, variant: dict, model_cfg: ModelConfig, train_cfg: TrainConfig, tuning: TuningConfig,
         tokenized: Path, scratch: Path | None = None, on_epoch=None) -> dict:
    """Train the variant once per grid lr on the tuning seed; return the choice and every trial.

    on_epoch(lr) -> (record -> None): a per-epoch callback for each trial (progress output)."""
    from layoutpeft.train import runs

    if not tuning.enabled:
        return {"variant": name, "chosen_lr": variant["lr"], "tuned": False, "trials": [],
                "reason": "study.tune_lr is false: the variant's own lr"}
    trials = []
    cache = trial_cache()
    # A trial trains {**variant, "lr": lr}: its key is that, so a widened grid or a moved centre lr
    # retrains only the lrs not tried before (the grid itself decides nothing inside a trial).
    trained_settings = {k: v for k, v in variant.items() if k not in ("lr", "lr_grid")}
    common = {"variant": trained_settings, "model": model_cfg.as_dict(), "train": train_cfg.as_dict(), "seed": tuning.seed,
              "tokenized": tree_digest(tokenized), "code": code_digest(), "environment": environment_key()}
    declared = lr_grid(variant, tuning)
    extended: list[float] = []
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f".tune-{name}-") as tmp:
        def trial(lr: float) -> None:
            memo = cache / f"{fingerprint({**common, 'lr': lr})}.json" if cache else None
            if memo is not None and memo.is_file():
                trials.append({**json.loads(memo.read_text()), "resumed_from": str(memo)})
                print(f"  lr {lr:<8g} finished earlier: reused {memo}", flush=True)
                return
            start = time.perf_counter()
            log = runs.train(name, tuning.seed, {**variant, "lr": lr}, model_cfg, train_cfg, Path(tmp) / f"lr{lr:g}",
                             tokenized, on_epoch=(lambda _folder, lr=lr: on_epoch(lr)) if on_epoch else None)
            t = log["training"]
            trials.append({"lr": lr, "best_val_f1": t["best_val_f1"], "best_val_loss": t["best_val_loss"],
                           "best_epoch": t["best_epoch"], "epochs_run": t["epochs_run"],
                           "stop_reason": t.get("stop_reason"), "wall_time_s": time.perf_counter() - start,
                           "history": [{k: r[k] for k in ("epoch", "val_f1", "val_loss")} for r in log["history"]]})
            if memo is not None:
                write_json(memo, trials[-1])

        for lr in declared:
            trial(lr)
        while len(extended) < tuning.extend and (wider_lr := next_lr(trials)) is not None:
            print(f"  best lr at the {grid_edge(trials)} end of the grid: extending it to {wider_lr:g}", flush=True)
            extended.append(wider_lr)
            trial(wider_lr)
    trials.sort(key=lambda t: t["lr"])
    best = choose(trials)
    return {"variant": name, "chosen_lr": best["lr"], "tuned": True, "seed": tuning.seed, "selected_on": "best_val_f1",
            "grid": [t["lr"] for t in trials], "declared_grid": declared, "extended_by": extended,
            "at_grid_edge": grid_edge(trials), "trials": trials,
            "wall_time_s": sum(t["wall_time_s"] for t in trials)}


def choose(trials: list[dict]) -> dict:
    """Best validation F1; ties (within 1e-9) go to the lower validation loss, then the smaller lr."""
    def key(t):
        f1 = t["best_val_f1"] if math.isfinite(t["best_val_f1"]) else -1.0
        return (-round(f1, 9), t["best_val_loss"], t["lr"])

    return min(trials, key=key)


def trial_cache() -> Path | None:
    """Where finished trials are memoised: $LAYOUTPEFT_TRIAL_CACHE ('' or 'off': nowhere), else
    ~/.cache/layoutpeft/trials."""
    value = os.environ.get(TRIAL_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value)
    return Path.home() / ".cache" / "layoutpeft" / "trials"


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes under folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def code_files() -> list[Path]:
    """The Python source the tune stage depends on: its `.py` deps in dvc.yaml (which
    tests/test_dvc_yaml.py holds equal to its imports), else every module and stage. Unrelated code
    (predict, export, ...) may change while a tune is interrupted without costing its trials."""
    pipeline = REPO_ROOT / "dvc.yaml"
    if pipeline.is_file():
        import yaml

        deps = (yaml.safe_load(pipeline.read_text()).get("stages", {}).get("tune", {}) or {}).get("deps", [])
        listed = [REPO_ROOT / dep for dep in deps if str(dep).endswith(".py")]
        if listed and all(path.is_file() for path in listed):
            return sorted(listed)
    return sorted(path for folder in ("layoutpeft", "stages") for path in (REPO_ROOT / folder).rglob("*.py"))


def code_digest() -> str:
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def environment_key() -> dict:
    """What else changes a training's numbers on the same code and data."""
    from importlib import metadata

    import torch

    from layoutpeft.provenance import cpu_model

    return {**{p: metadata.version(p) for p in ("torch", "transformers", "peft")}, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()}
