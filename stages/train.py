"""Stage `train@<variant>-<seed>`: fine-tune one method variant with one seed.

Reads data/variants/<variant>.json, the lr chosen in data/lr/<variant>.json, the `model` and
`train` sections of params.yaml and the tokenized train/validation splits (never the test split). Writes models/<variant>-<seed>/:
what the method trains, `train_log.json` (what was used and measured) and `live/` (DVCLive
curves). See layoutpeft.train.runs.
"""

from __future__ import annotations

import json
import sys

from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.errors import run_main
from layoutpeft.paths import LR_DIR, MODELS_DIR, TOKENIZED_DIR, run_key
from layoutpeft.train import runs
from layoutpeft.train.variants import load_variant
from stages.per_run import run_args


def live_logger(folder):
    """Per-epoch callback logging to DVCLive in `folder` (its own dir: matrix stages must not share one)."""
    from dvclive import Live

    live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, report=None)

    def log_epoch(record: dict) -> None:
        for key in ("train_loss", "val_loss", "val_f1"):
            live.log_metric(key.replace("_", "/", 1), record[key])
        live.next_step()
        print(
            f"  epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}"
            f"  val F1 {record['val_f1']:.4f}  ({record['epoch_time_s']:.1f}s)",
            flush=True,
        )

    return log_epoch


def read_params(params: dict) -> tuple[ModelConfig, TrainConfig]:
    return ModelConfig.from_params(params), TrainConfig.from_params(params)


def main(argv: list[str]) -> None:
    args = run_args(argv, __doc__)
    model_cfg, train_cfg = read_params(load_params())
    variant = load_variant(args.variant)
    tuned = json.loads((LR_DIR / f"{args.variant}.json").read_text())
    variant = {**variant, "lr": tuned["chosen_lr"]}  # the lr the tune@ stage chose on validation
    key = run_key(args.variant, args.seed)
    log = runs.train(
        args.variant, args.seed, variant, model_cfg, train_cfg, MODELS_DIR / key, TOKENIZED_DIR, on_epoch=live_logger
    )
    t = log["training"]
    print(
        f"train: {key}: best epoch {t['best_epoch']} of {t['epochs_run']}, {t['wall_time_s']:.0f}s, "
        f"peak memory {log['memory']['peak_bytes'] / 2**20:.0f} MiB ({log['memory']['kind']})"
    )


if __name__ == "__main__":
    sys.exit(run_main("train", main))
