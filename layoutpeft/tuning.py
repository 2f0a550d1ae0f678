"""Per-variant learning-rate tuning on validation: each method at its own best learning rate.

Rankings of PEFT methods flip once each method's learning rate is tuned (PEFT's own method
comparison saw a method go from 0.15 % to 41.6 % by its lr alone), so every studied variant
picks its lr from a grid, by best validation entity F1, on one tuning seed, before its seed
runs. The grid is the variant's own `lr_grid` (absolute values) or `study.lr_grid`
(multiples of the variant's `lr`). The test split is never read here.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from layoutpeft.config import ModelConfig, ParamsError, TrainConfig, get, number_in


@dataclass(frozen=True)
class TuningConfig:
    """`study.tune_lr`, `study.tuning_seed`, `study.lr_grid` — read by the tune@ stages."""
    enabled: bool
    seed: int
    multipliers: tuple[float, ...]

    @classmethod
    def from_params(cls, params: dict) -> "TuningConfig":
        grid = get(params, "study.lr_grid", list)
        if not grid or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in grid):
            raise ParamsError(f"params.yaml: study.lr_grid must be a non-empty list of positive multipliers, got {grid!r}")
        if len(set(grid)) != len(grid):
            raise ParamsError(f"params.yaml: study.lr_grid lists a multiplier twice: {grid!r}")
        return cls(get(params, "study.tune_lr", bool), number_in(params, "study.tuning_seed", 0, 2**31, kind=int),
                   tuple(float(m) for m in grid))

    def as_dict(self) -> dict:
        return asdict(self)


def lr_grid(variant: dict, tuning: TuningConfig) -> list[float]:
    """The learning rates a variant tries: its own lr_grid, else study.lr_grid x its lr (sorted, rounded to 3 digits)."""
    values = variant.get("lr_grid") or [variant["lr"] * m for m in tuning.multipliers]
    return sorted({float(f"{v:.3g}") for v in values})


def tune(name: str, variant: dict, model_cfg: ModelConfig, train_cfg: TrainConfig, tuning: TuningConfig,
         tokenized: Path, scratch: Path | None = None, on_epoch=None) -> dict:
    """Train the variant once per grid lr on the tuning seed; return the choice and every trial.

    on_epoch(lr) -> (record -> None): a per-epoch callback for each trial (progress output)."""
    from layoutpeft import runs

    if not tuning.enabled:
        return {"variant": name, "chosen_lr": variant["lr"], "tuned": False, "trials": [],
                "reason": "study.tune_lr is false: the variant's own lr"}
    trials = []
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f".tune-{name}-") as tmp:
        for lr in lr_grid(variant, tuning):
            start = time.perf_counter()
            log = runs.train(name, tuning.seed, {**variant, "lr": lr}, model_cfg, train_cfg, Path(tmp) / f"lr{lr:g}",
                             tokenized, on_epoch=(lambda _folder, lr=lr: on_epoch(lr)) if on_epoch else None)
            t = log["training"]
            trials.append({"lr": lr, "best_val_f1": t["best_val_f1"], "best_val_loss": t["best_val_loss"],
                           "best_epoch": t["best_epoch"], "epochs_run": t["epochs_run"],
                           "wall_time_s": time.perf_counter() - start,
                           "history": [{k: r[k] for k in ("epoch", "val_f1", "val_loss")} for r in log["history"]]})
    best = choose(trials)
    grid = [t["lr"] for t in trials]
    edge = None
    if len(grid) > 1 and best["lr"] in (grid[0], grid[-1]):
        edge = "lowest" if best["lr"] == grid[0] else "highest"
    return {"variant": name, "chosen_lr": best["lr"], "tuned": True, "seed": tuning.seed, "selected_on": "best_val_f1",
            "grid": grid, "at_grid_edge": edge, "trials": trials,
            "wall_time_s": sum(t["wall_time_s"] for t in trials)}


def choose(trials: list[dict]) -> dict:
    """Best validation F1; ties (within 1e-9) go to the lower validation loss, then the smaller lr."""
    def key(t):
        f1 = t["best_val_f1"] if math.isfinite(t["best_val_f1"]) else -1.0
        return (-round(f1, 9), t["best_val_loss"], t["lr"])

    return min(trials, key=key)
