"""Stage `tune@<variant>`: choose the variant's learning rate on validation (layoutpeft.train.tuning).

Trains the variant once per lr of its grid on `study.tuning_seed` and keeps the lr with the best
validation entity F1, extending the grid past its end while the best lr lies there (at most
study.extend_grid more lrs). With study.halving rungs, only the best trials at each rung epoch go
on to the whole schedule (docs/tuning.md). Writes data/lr/<variant>.json (the choice and every trial); the
train@<variant>-<seed> stages read the chosen lr from it. With study.tune_lr false it writes
the variant's own lr without training.
"""

from __future__ import annotations

import argparse
import sys

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.errors import run_main
from layoutpeft.paths import LR_DIR, TOKENIZED_DIR
from layoutpeft.train.tuning import TuningConfig, tune
from layoutpeft.train.variants import load_variant


def read_params(params: dict) -> tuple[ModelConfig, TrainConfig, TuningConfig]:
    return ModelConfig.from_params(params), TrainConfig.from_params(params), TuningConfig.from_params(params)


def progress(lr: float):
    def show(record: dict) -> None:
        print(
            f"  lr {lr:<8g} epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  val F1 {record['val_f1']:.4f}  ({record['epoch_time_s']:.1f}s)",
            flush=True,
        )

    return show


def stop_note(trial: dict) -> str:
    reason = trial.get("stop_reason")
    return f" ({reason}, stopped at epoch {trial['epochs_run']})" if reason in ("collapsed", "halving") else ""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    args = parser.parse_args(argv)
    model_cfg, train_cfg, tuning = read_params(load_params())
    result = tune(
        args.variant,
        load_variant(args.variant),
        model_cfg,
        train_cfg,
        tuning,
        TOKENIZED_DIR,
        scratch=LR_DIR.parent,
        on_epoch=progress,
    )
    write_json(LR_DIR / f"{args.variant}.json", result)
    trials = ", ".join(f"{t['lr']:g}: {t['best_val_f1']:.4f}" + stop_note(t) for t in result["trials"]) or "not tuned"
    extended = ", ".join(f"{lr:g}" for lr in result.get("extended_by") or [])
    print(
        f"tune: {args.variant}: lr {result['chosen_lr']:g} (validation F1 per lr: {trials})"
        + (f"; the grid extended by {extended}" if extended else "")
        + (
            f"; WARNING: best at the {result['at_grid_edge']} lr of the grid: widen the variant's lr_grid or raise "
            "study.extend_grid"
            if result.get("at_grid_edge")
            else ""
        )
    )


if __name__ == "__main__":
    sys.exit(run_main("tune", main))
