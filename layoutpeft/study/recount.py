"""Recount what a recorded run trained, split into the method's own weights and the shared parts,
for run records made before training recorded the split (no retraining: the model is rebuilt from
the record's `model` and `variant_params`, untrained, and counted).

    python -m layoutpeft.study.recount results/reference-minilm/runs

adds `parameters.{method, head, new_tables, full_trainable, method_share, method_bytes,
shared_bytes}` and `parameters.recounted` (how) to each record that lacks them, and fixes
`trainable_share` to be of full fine-tuning's count. It refuses (and writes nothing) when the
rebuilt model's trainable count differs from the recorded one: then the record is not what the
code rebuilds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig
from layoutpeft.errors import LayoutpeftError, run_main
from layoutpeft.labels import labels_of_record
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.methods import Schedule
from layoutpeft.train.probes import count_parameters

PARTS = ("method", "head", "new_tables", "full_trainable", "method_share", "method_bytes", "shared_bytes")


def recount(record: dict) -> dict:
    """The record's `parameters` with the parts, from an untrained rebuild of its model."""
    model_cfg = ModelConfig(
        **{k: record["model"][k] for k in ("checkpoint", "position_init", "new_tables", "tables_lr") if k in record["model"]}
    )
    training = record.get("training") or {}
    steps, epochs = int(training.get("optimizer_steps") or 1), int(training.get("epochs_run") or 1)
    schedule = Schedule(total_steps=steps, steps_per_epoch=max(1, steps // epochs))  # AdaLoRA's budget only
    engine.seed_everything(int(record.get("seed", 0)))
    model, source_type = engine.build_model(
        model_cfg,
        record["variant_params"],
        torch.device("cpu"),
        schedule,
        (record.get("train_params") or {}).get("attention", "sdpa"),
        labels=labels_of_record(record),
    )
    counts = count_parameters(model, engine.trains_new_tables(model_cfg, source_type), model.full_trainable)
    recorded = (record.get("parameters") or {}).get("trainable")
    if recorded != counts["trainable"]:
        raise LayoutpeftError(
            f"{record.get('variant')}-{record.get('seed')}: the rebuilt model trains "
            f"{counts['trainable']:,} weights, the record says {recorded}: not recounted"
        )
    return {**record["parameters"], **{k: counts[k] for k in PARTS}, "trainable_share": counts["trainable_share"]}


def recount_folder(runs_dir: Path) -> list[Path]:
    """Recount every record in `runs_dir` lacking the parts; all are checked before any is written."""
    paths = sorted(Path(runs_dir).glob("*.json"))
    if not paths:
        raise LayoutpeftError(f"{runs_dir}: no run record (*.json)")
    updated, cache = {}, {}
    for path in paths:
        record = json.loads(path.read_text())
        if "method" in (record.get("parameters") or {}):
            continue
        # Every seed of a variant builds the same shapes: count once per (model, variant).
        key = json.dumps([record["model"], record["variant_params"]], sort_keys=True)
        if key not in cache:
            cache[key] = recount(record)
        parameters = {**record["parameters"], **{k: cache[key][k] for k in (*PARTS, "trainable_share")}}
        if parameters["trainable"] != cache[key]["trainable"]:
            raise LayoutpeftError(f"{path}: trainable {parameters['trainable']} differs from its variant's other seeds")
        env = describe(torch.device("cpu"))
        parameters["recounted"] = (
            f"split recounted from this record's model and variant_params on an untrained "
            f"rebuild (layoutpeft.study.recount, commit {str(env.get('git_commit'))[:8]})"
        )
        updated[path] = {**record, "parameters": parameters}
    for path, record in updated.items():
        write_json(path, record)
    return list(updated)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m layoutpeft.study.recount", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path)
    args = parser.parse_args(argv)
    done = recount_folder(args.runs_dir)
    print(f"recount: {len(done)} record(s) updated in {args.runs_dir}")


if __name__ == "__main__":
    sys.exit(run_main("recount", main))
