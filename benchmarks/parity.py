"""F1 parity of a numerics-changing train setting (default: fp32 vs bf16 autocast), paired over seeds.

    python benchmarks/parity.py --variant full --seeds 0 1 2 --epochs 8 --batch-size 8 \
        --setting precision --values fp32 bf16

Each seed trains every value in turn (seed-major, so a cut-short run still leaves complete
pairs) through engine.fit with params.yaml's train settings, except: max_epochs = --epochs,
patience = --epochs (no early stopping: every run sees the same schedule), batch = --batch-size,
and the setting under test. The best validation epoch is restored (as the train stage does) and
scored on the test split. Results are appended to --out (JSON) after every run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from _common import argument_parser

import torch

from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.data.batching import load_meta, load_windows
from layoutpeft.labels import LEGACY_LABELS  # the benchmarks measure FUNSD's three types
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.device import resolve_precision
from layoutpeft.train.methods import Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.variants import expand_sweeps, resolve


def parse_value(text: str):
    return {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)


def main(argv=None) -> None:
    parser = argument_parser(__doc__, training=True)
    parser.add_argument("--variant", default="full")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--setting", default="precision")
    parser.add_argument("--values", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", default="benchmarks/results/parity.json")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    base = TrainConfig.from_params(params)
    variant = validate_variant(args.variant, resolve(args.variant, expand_sweeps(params["variants"], params.get("sweeps") or {})))
    mp = ModelConfig(args.checkpoint, "zero")
    device = torch.device("cpu")
    meta, train, val, test = load_meta(), load_windows("train"), load_windows("validation"), load_windows("test")
    pad = meta["pad_token_id"]
    per_epoch = engine.steps_per_epoch(len(train), args.batch_size)
    schedule = Schedule(total_steps=args.epochs * per_epoch, steps_per_epoch=per_epoch)
    out = Path(args.out)
    record = {
        "command": "python " + " ".join(sys.argv),
        "environment": describe(device),
        "variant": args.variant,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "setting": args.setting,
        "runs": [],
    }
    for seed in args.seeds:
        for value in args.values:
            cfg = dataclasses.replace(
                base,
                max_epochs=args.epochs,
                patience=args.epochs,
                batch_size=args.batch_size,
                **{args.setting: parse_value(value)},
            )
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            load = open("/proc/loadavg").read().split()[:3]
            engine.seed_everything(seed)
            model, source = engine.build_model(mp, variant, device, schedule, cfg.attention, labels=LEGACY_LABELS)
            start = time.perf_counter()
            result = engine.fit(
                model,
                variant,
                cfg,
                train,
                val,
                pad,
                device,
                seed,
                total_steps=schedule.total_steps,
                on_epoch=lambda r: print(f"  epoch {r['epoch']}: val F1 {r['val_f1']:.4f}, {r['epoch_time_s']:.0f}s", flush=True),
                tables_lr=engine.new_tables_lr(variant, mp, source),
            )
            dtype = resolve_precision(cfg.precision, device)
            scores = engine.evaluate_windows(model, test, 32, pad, device, n_virtual_tokens(variant), dtype)["scores"]
            run = {
                "seed": seed,
                "value": value,
                "test_f1": scores["f1"],
                "best_epoch": result.best_epoch,
                "best_val_loss": result.best_val_loss,
                "val_f1": [h["val_f1"] for h in result.history],
                "epoch_time_s": [h["epoch_time_s"] for h in result.history],
                "wall_s": time.perf_counter() - start,
                "loadavg_start": load,
            }
            record["runs"].append(run)
            print(
                f"seed {seed} {args.setting}={value}: test F1 {scores['f1']:.4f} (best epoch {result.best_epoch}), "
                f"{run['wall_s']:.0f}s, load {' '.join(load)}",
                flush=True,
            )
            out.write_text(json.dumps(record, indent=2) + "\n")
    pairs: dict = {}
    for run in record["runs"]:
        pairs.setdefault(run["seed"], {})[run["value"]] = run["test_f1"]
    complete = [p for p in pairs.values() if all(v in p for v in args.values)]
    ref = args.values[0]
    for value in args.values[1:]:
        diffs = [p[value] - p[ref] for p in complete]
        if diffs:
            record.setdefault("paired_difference", {})[value] = {
                "vs": ref,
                "pairs": len(diffs),
                "mean": statistics.mean(diffs),
                "values": diffs,
                "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
            }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record.get("paired_difference"), indent=2))


if __name__ == "__main__":
    main()
