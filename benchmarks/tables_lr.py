"""How much the new 2-D tables' lr (model.tables_lr) moves each method, on validation, tuning seed.

    python benchmarks/tables_lr.py --study results/reference-minilm --tokenized data/tokenized \
        --variants head vera lora --arms 5e-5 1.5e-4 4.5e-4 frozen --out benchmarks/results/<date>-tables-lr
    python benchmarks/tables_lr.py --out benchmarks/results/<date>-tables-lr --report

On a BERT checkpoint every method trains the new x/y/h/w position tables, at model.tables_lr for
all (the reference study: 1.5e-4, set once); for head, prompt tuning, IA3, VeRA and BitFit they
are 98-99.8 % of what trains. Each arm trains the variant at the lr its study's tune@ chose, on
the study's tuning seed, with the study's params.yaml, the tables at the arm's lr ("frozen":
model.new_tables frozen, zero-initialised tables that never train), and records its best
validation entity F1 (test is never looked at: this decides a setting).

The arm equal to the study's own tables_lr is exactly the tune@ trial at the chosen lr: its
result is taken from the study's lr/<variant>.json when this machine would train it the same way
(no --every-arm, the study's CPU flags, library versions and training code unchanged since the
study's runs), else trained. Every finished (variant, arm) is one JSON in --out: the script is
resumable, and processes with disjoint --variants or --arms share the work.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from _common import add_study_options, argument_parser

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig, load_params
from layoutpeft.hardware import simd_flags
from layoutpeft.provenance import describe
from layoutpeft.train import runs
from layoutpeft.train.tuning import environment_key
from layoutpeft.train.variants import studied_variants

from defaults_seeds import (
    LIBRARIES,
    arm_overrides,
    same_cpu_as_earlier,
    same_every_arm_as_earlier,
    train_config,
    training_code_unchanged,
)

FROZEN = "frozen"


def arm_model(params: dict, arm: str) -> ModelConfig:
    """The study's model settings with the tables at the arm's lr, or frozen."""
    model = dict(params["model"])
    if arm == FROZEN:
        model.update(new_tables="frozen", tables_lr=None)
    else:
        model.update(new_tables="train", tables_lr=float(arm))
    return ModelConfig.from_params({**params, "model": model}, check_source=False)


def study_trial(study: Path, variant: str, params: dict, arm: str, every_arm: dict) -> dict | None:
    """The study's tune@ trial that is exactly this arm, when this machine would train it the same way."""
    if (
        every_arm
        or arm == FROZEN
        or params["model"].get("new_tables", "train") != "train"
        or float(arm) != params["model"].get("tables_lr")
    ):
        return None
    tuned = json.loads((study / "lr" / f"{variant}.json").read_text())
    trial = next((t for t in tuned["trials"] if t["lr"] == tuned["chosen_lr"]), None)
    record_path = study / "runs" / f"{variant}-{study_seeds(params)[0]}.json"
    if trial is None or not record_path.is_file():
        return None
    env = json.loads(record_path.read_text()).get("train_environment") or {}
    here = environment_key()
    same = (
        env.get("cpu_flags") == simd_flags()
        and all(env.get(lib) == here[lib] for lib in LIBRARIES)
        and training_code_unchanged(env.get("git_commit"))
    )
    return (
        {**trial, "reused_from": f"{study / 'lr' / f'{variant}.json'} (trial at lr {trial['lr']:g})", "environment": env}
        if same
        else None
    )


def study_seeds(params: dict) -> list[int]:
    return list(params["study"]["seeds"])


def run_arm(args, params: dict, name: str, variant: dict, arm: str, out: Path) -> None:
    import torch

    seed = params["study"]["tuning_seed"]
    common = {"variant": name, "arm": arm, "lr": variant["lr"], "seed": seed, "every_arm": args.every_arm_overrides}
    reused = study_trial(Path(args.study), name, params, arm, args.every_arm_overrides)
    if reused is not None:
        write_json(
            out,
            {
                **common,
                "best_val_f1": reused["best_val_f1"],
                "best_epoch": reused["best_epoch"],
                "epochs_run": reused["epochs_run"],
                "wall_time_s": reused["wall_time_s"],
                "history": reused.get("history"),
                "reused_from": reused["reused_from"],
                "environment": reused["environment"],
            },
        )
        print(f"{name} tables {arm}: reused {reused['reused_from']}", flush=True)
        return
    cfg = train_config(params, {})
    with tempfile.TemporaryDirectory(prefix="tables-lr-") as tmp:
        start = time.perf_counter()
        log = runs.train(
            f"{name}[tables {arm}]", seed, variant, arm_model(params, arm), cfg, Path(tmp) / "run", Path(args.tokenized)
        )
    t = log["training"]
    write_json(
        out,
        {
            **common,
            "best_val_f1": t["best_val_f1"],
            "best_epoch": t["best_epoch"],
            "epochs_run": t["epochs_run"],
            "wall_time_s": time.perf_counter() - start,
            "history": [{k: r[k] for k in ("epoch", "val_f1", "val_loss")} for r in log["history"]],
            "parameters": log["parameters"],
            "environment": describe(torch.device("cpu")),
        },
    )
    print(f"{name} tables {arm}: validation F1 {t['best_val_f1']:.4f} (epoch {t['best_epoch']})", flush=True)


def seed_noise(study: Path, variant: str) -> float | None:
    """Points of validation F1 by which two single runs of the variant differ by chance (95 %): 2 x sqrt(2)
    x the SD of the study's best validation F1 across its seeds; None without two seeds."""
    f1 = [
        r["training"]["best_val_f1"]
        for r in (json.loads(p.read_text()) for p in sorted((study / "runs").glob(f"{variant}-*.json")))
        if r.get("variant") == variant
    ]
    return 100 * 2 * math.sqrt(2) * statistics.stdev(f1) if len(f1) > 1 else None


def decide(
    rows: dict[str, dict[str, dict]], arms: list[str], shared_lr: float, study: Path, variants: list[str] | None = None
) -> list[str]:
    """Per variant: the best arm, and whether it beats the shared tables_lr (the study's) by more than seed noise.
    `variants`: every variant the measurement covers (one with no finished arm keeps the decision open)."""
    shared = next((a for a in arms if a != FROZEN and float(a) == shared_lr), f"{shared_lr:g}")
    lines, beyond = [], {}
    rows = {**{name: {} for name in variants or []}, **rows}
    for name, by_arm in rows.items():
        if set(arms) - set(by_arm) or shared not in by_arm:
            lines.append(f"- {name}: undecided ({len(by_arm)} of {len(arms)} arms finished)")
            continue
        best = max(arms, key=lambda a: by_arm[a]["best_val_f1"])
        gain = 100 * (by_arm[best]["best_val_f1"] - by_arm[shared]["best_val_f1"])
        noise = seed_noise(study, name)
        if noise is not None and gain > noise:
            beyond[name] = best
        lines.append(
            f"- {name}: best arm {best}, {gain:+.1f} points over the shared {shared} "
            f"(seed noise of one run against another: {'n/a' if noise is None else f'{noise:.1f}'} points): "
            + ("beyond noise" if name in beyond else "within noise")
        )
    if any(line.endswith("arms finished)") for line in lines):
        verdict = "undecided until every arm of every variant has finished"
    elif not beyond:
        verdict = f"keep the shared model.tables_lr {shared}: no method gains beyond seed noise from another value"
    elif len(set(beyond.values())) == 1 and len(beyond) == len(rows):
        verdict = f"change the shared model.tables_lr to {next(iter(beyond.values()))}: every method gains beyond noise there"
    else:
        verdict = f"tune model.tables_lr per method: {', '.join(f'{n} prefers {a}' for n, a in beyond.items())} beyond noise"
    return [*lines, "", f"Decision: {verdict}."]


def report(
    out: Path,
    study: Path | None = None,
    shared_lr: float | None = None,
    expected: list[str] | None = None,
    variants: list[str] | None = None,
) -> str:
    rows: dict[str, dict[str, dict]] = {}
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["variant"], {})[r["arm"]] = r
    arms = sorted({a for by_arm in rows.values() for a in by_arm}, key=lambda a: (a == FROZEN, a != FROZEN and float(a)))
    lines = [
        "| Variant | " + " | ".join(f"tables {a}" for a in arms) + " | spread (points) |",
        "|---|" + "---:|" * (len(arms) + 1),
    ]
    for name, by_arm in rows.items():
        f1 = [by_arm[a]["best_val_f1"] for a in arms if a in by_arm]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{100 * by_arm[a]['best_val_f1']:.1f}" + (" (reused)" if by_arm[a].get("reused_from") else "")
                if a in by_arm
                else "–"
                for a in arms
            )
            + f" | {100 * (max(f1) - min(f1)):.1f} |"
        )
    return "\n".join(
        [
            "Best validation entity F1 (%) on the tuning seed, each variant at its tuned lr:",
            "",
            *lines,
            "",
            "One seed: differences within about 1-2 points are within seed noise (the study's "
            "validation F1 spread across seeds).",
            *(
                ["", *decide(rows, expected or arms, shared_lr, study, variants)]
                if study is not None and shared_lr is not None
                else []
            ),
        ]
    )


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    add_study_options(parser, "per-(variant, arm) results")
    parser.add_argument("--variants", nargs="+", default=["head", "vera", "lora"])
    parser.add_argument(
        "--arms", nargs="+", default=["5e-5", "1.5e-4", "4.5e-4", FROZEN], help="model.tables_lr values, or 'frozen'"
    )
    parser.add_argument("--every-arm", default="", help="train.* overrides for all arms (e.g. precision=fp32)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    study = Path(args.study)
    params = load_params(study / "params.yaml")
    shared_lr = float(params["model"]["tables_lr"])
    if args.report:
        print(report(out, study, shared_lr, args.arms, args.variants))
        return
    variants = studied_variants(params, check_runtime=False)
    for arm in args.arms:
        if arm != FROZEN:
            try:
                float(arm)
            except ValueError:
                raise SystemExit(f"--arms: {arm!r} is neither a learning rate nor {FROZEN!r}") from None
    chosen = {}
    for name in args.variants:
        lr_file = study / "lr" / f"{name}.json"
        if name not in variants or not lr_file.is_file():
            raise SystemExit(f"{lr_file}: missing (no tuned lr for {name!r} in {study})")
        chosen[name] = {**variants[name], "lr": json.loads(lr_file.read_text())["chosen_lr"]}
    args.every_arm_overrides = arm_overrides(args.every_arm)
    train_config(params, args.every_arm_overrides)
    params = {**params, "train": {**params["train"], **args.every_arm_overrides}}
    out.mkdir(parents=True, exist_ok=True)
    same_cpu_as_earlier(out)
    same_every_arm_as_earlier(out, args.every_arm_overrides)
    for name, variant in chosen.items():
        for arm in args.arms:
            path = out / f"{name}-tables-{arm}.json"
            if path.is_file():
                print(f"{name} tables {arm}: finished earlier ({path})")
                continue
            run_arm(args, params, name, variant, arm, path)
    print(report(out, study, shared_lr, args.arms, args.variants))


if __name__ == "__main__":
    main()
