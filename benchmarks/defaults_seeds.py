"""Multi-seed A/B of a train.* default that changes numerics, decided on validation entity F1.

    python benchmarks/defaults_seeds.py --study results/reference-minilm --variant lora \
        --arms "" loss=token_mean group_by_length=false --seeds 0 1 2 --out benchmarks/results/defaults-lora
    python benchmarks/defaults_seeds.py --out benchmarks/results/defaults-lora --report

Each arm trains the variant at the lr its study's tune@ stage chose, with the study's own
params.yaml (model, schedule, batch, precision) plus the arm's train.* overrides, once per seed,
then scores it on validation (which decides) and test (for information only). `--every-arm`
changes the study's train.* for all arms alike (say precision=fp32 on a CPU without bf16 units).
The arm "" is the baseline: where the study holds a run record that is exactly what the baseline
would train (same variant settings and lr, train params with --every-arm's, model, library
versions, threads, and training code unchanged since that run's commit), the record is reused
instead of retraining it.

Every finished (arm, seed) is one JSON in --out: the script is resumable, and two processes with
disjoint --seeds, or disjoint --arms (leave "" out of one), share the work. `--report` prints
the table from whatever is there: per arm the mean validation F1 with its 95 % t-interval, the
paired difference with the baseline over shared seeds (CI, p), test F1, best epochs and seconds
per epoch.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_study_options, argument_parser

import yaml

from layoutpeft.atomic import write_json
from layoutpeft.config import EvaluateConfig, ModelConfig, TrainConfig, load_params
from layoutpeft.hardware import simd_flags
from layoutpeft.provenance import describe
from layoutpeft.study import stats
from layoutpeft.study.formatting import p_value
from layoutpeft.train import runs
from layoutpeft.train.tuning import code_files, environment_key
from layoutpeft.train.variants import studied_variants

BASELINE = "baseline"
LIBRARIES = ("torch", "transformers", "peft")


def arm_overrides(text: str) -> dict:
    """'loss=token_mean,group_size=8' -> {'loss': 'token_mean', 'group_size': 8} (YAML-typed values)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise SystemExit(f"--arms: {part!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def arm_name(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or BASELINE


def train_config(params: dict, overrides: dict) -> TrainConfig:
    """The study's train section with the overrides, checked as params.yaml is (one-line errors)."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise SystemExit(f"--arms: train.{unknown[0]} is not a train setting")
    return TrainConfig.from_params({**params, "train": {**params["train"], **overrides}})


def training_code_unchanged(commit: str | None) -> bool:
    """Whether the training code (the tune stage's deps) is what it was at `commit`."""
    if not commit:
        return False
    paths = [str(p.relative_to(ROOT)) for p in code_files()]
    return subprocess.run(["git", "diff", "--quiet", commit, "--", *paths], cwd=ROOT).returncode == 0


def reusable(record: dict, variant: dict, cfg: TrainConfig, model_cfg: ModelConfig, threads: int) -> bool:
    env = record.get("train_environment") or record.get("environment") or {}
    key = environment_key()  # the versions a tuning trial's key holds too
    here = {lib: key[lib] for lib in LIBRARIES}
    same_variant = {k: v for k, v in record["variant_params"].items() if k != "lr_grid"} == {
        k: v for k, v in variant.items() if k != "lr_grid"
    }
    # a record from before model.architecture existed was built as auto (from the checkpoint) does now
    same_model = all(record["model"].get(k, "auto" if k == "architecture" else None) == v for k, v in model_cfg.as_dict().items())
    # read back as params.yaml is, so a key added later with a neutral default still compares equal
    same_train = TrainConfig.from_params({"train": record["train_params"]}) == cfg
    return (
        same_variant
        and same_model
        and same_train
        and all(env.get(k) == here[k] for k in here)
        and env.get("cpu_threads") == threads
        and training_code_unchanged(env.get("git_commit"))
    )


def same_cpu_as_earlier(out: Path) -> None:
    """Stop, in one line, when --out holds results trained on a CPU with other SIMD flags: the
    matmul kernels (and so the numerics and the speed) differ, and the difference between arms
    would mix the CPU in with the setting."""
    here = simd_flags()
    for path in sorted(out.glob("*.json")):
        flags = (json.loads(path.read_text()).get("environment") or {}).get("cpu_flags")
        if flags is not None and flags != here:
            raise SystemExit(
                f"{path}: trained on a CPU with flags {' '.join(flags)}; this one has "
                f"{' '.join(here) or 'none of them'}: continue on such a CPU, or start a new --out"
            )


def same_every_arm_as_earlier(out: Path, every_arm: dict) -> None:
    """Stop, in one line, when --out holds results trained with other --every-arm settings."""
    for path in sorted(out.glob("*.json")):
        earlier = json.loads(path.read_text()).get("every_arm", {})
        if earlier != every_arm:
            raise SystemExit(
                f"{path}: trained with --every-arm {arm_name(earlier) if earlier else 'none'}, "
                f"not {arm_name(every_arm) if every_arm else 'none'}: pass the same, or start a new --out"
            )


def arm_result(name: str, overrides: dict, args, seed: int, variant: dict, training: dict, test_f1: float, **extra) -> dict:
    """One (arm, seed) result file: what was trained, its validation choice and test F1, and `extra`
    (where it came from: reused_from or wall_time_s, and the environment)."""
    return {
        "arm": name,
        "overrides": overrides,
        "every_arm": args.every_arm_overrides,
        "seed": seed,
        "variant": args.variant,
        "lr": variant["lr"],
        "best_val_f1": training["best_val_f1"],
        "best_epoch": training["best_epoch"],
        "epoch_time_s": training["epoch_time_s"],
        "test_f1": test_f1,
        **extra,
    }


def run_arm(args, params: dict, variant: dict, overrides: dict, seed: int, out: Path) -> None:
    import torch

    cfg, model_cfg = train_config(params, overrides), ModelConfig.from_params(params, check_source=False)
    name = arm_name(overrides)
    record_path = Path(args.study) / "runs" / f"{args.variant}-{seed}.json"
    if not overrides and record_path.is_file():
        record = json.loads(record_path.read_text())
        if reusable(record, variant, cfg, model_cfg, torch.get_num_threads()):
            t = record["training"]
            write_json(
                out,
                arm_result(
                    name,
                    overrides,
                    args,
                    seed,
                    variant,
                    t,
                    record["scores"]["f1"],
                    reused_from=str(record_path),
                    environment=record.get("environment"),
                ),
            )
            print(f"{name} seed {seed}: reused {record_path}", flush=True)
            return
        print(
            f"{name} seed {seed}: {record_path} is not what this arm trains (settings, versions, threads "
            "or training code differ): training it",
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="defaults-seeds-") as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        log = runs.train(f"{args.variant}[{name}]", seed, variant, model_cfg, cfg, run_dir, Path(args.tokenized))
        scored = runs.evaluate(
            run_dir,
            dataclasses.replace(EvaluateConfig.from_params(params), timing_repeats=1),
            Path(args.tokenized),
            Path(tmp) / "record.json",
        )
    t = log["training"]
    write_json(
        out,
        arm_result(
            name,
            overrides,
            args,
            seed,
            variant,
            t,
            scored["scores"]["f1"],
            wall_time_s=time.perf_counter() - start,
            environment=describe(torch.device("cpu")),
        ),
    )
    print(
        f"{name} seed {seed}: validation F1 {t['best_val_f1']:.4f} (epoch {t['best_epoch']}), "
        f"test F1 {scored['scores']['f1']:.4f}",
        flush=True,
    )


def report(out_dir: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))]
    if not results:
        raise SystemExit(f"{out_dir}: no finished (arm, seed) yet")
    arms: dict[str, list[dict]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)
    base = {r["seed"]: r for r in arms.get(BASELINE, [])}
    first = results[0]
    every_arm = first.get("every_arm") or {}
    lines = [
        f"{first['variant']} at lr {first['lr']:g}"
        + (f" with {arm_name(every_arm)} in every arm" if every_arm else "")
        + "; validation F1 decides, test F1 for information "
        "(mean ± 95 % t half-width over seeds; Δ paired with the baseline over shared seeds, in points)",
        "",
        "| arm | seeds | val F1 | Δ val F1 vs baseline | test F1 | Δ test F1 | best epochs | s/epoch |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]

    def cell(values):
        s = stats.seed_stats(values)
        half = stats.half_width(s)
        return f"{100 * s['mean']:.1f}" + (f" ± {100 * half:.1f}" if half is not None else "")

    def delta(rows, key):
        if not rows or rows[0]["arm"] == BASELINE:
            return "–"
        c = stats.paired_comparison({r["seed"]: r[key] for r in rows}, {s: r[key] for s, r in base.items()})
        if not c or c["ci95_low"] is None:
            return "n/a" if not c else f"{100 * c['mean_diff']:+.1f}"
        return f"{100 * c['mean_diff']:+.1f} [{100 * c['ci95_low']:+.1f}, {100 * c['ci95_high']:+.1f}], {p_value(c['p_value'])}"

    for name in sorted(arms, key=lambda a: (a != BASELINE, a)):
        rows = sorted(arms[name], key=lambda r: r["seed"])
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in rows)} | {cell([r['best_val_f1'] for r in rows])} | "
            f"{delta(rows, 'best_val_f1')} | {cell([r['test_f1'] for r in rows])} | {delta(rows, 'test_f1')} | "
            f"{', '.join(str(r['best_epoch']) for r in rows)} | "
            f"{sum(r['epoch_time_s'] for r in rows) / len(rows):.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    add_study_options(parser, "per-(arm, seed) results")
    parser.add_argument("--variant", default="lora")
    parser.add_argument("--arms", nargs="+", default=[""], help='train.* overrides per arm; "" is the baseline')
    parser.add_argument("--every-arm", default="", help="train.* overrides for all arms, the baseline too")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(out))
        return
    study = Path(args.study)
    params = load_params(study / "params.yaml")
    variants = studied_variants(params, check_runtime=False)
    if args.variant not in variants:
        raise SystemExit(f"{study / 'params.yaml'}: study.variants has no {args.variant!r}")
    lr_file = study / "lr" / f"{args.variant}.json"
    if not lr_file.is_file():
        raise SystemExit(f"{lr_file}: missing (the variant's tune@ stage has not finished in that study)")
    variant = {**variants[args.variant], "lr": json.loads(lr_file.read_text())["chosen_lr"]}
    args.every_arm_overrides = arm_overrides(args.every_arm)
    train_config(params, args.every_arm_overrides)
    params = {**params, "train": {**params["train"], **args.every_arm_overrides}}
    arms = [arm_overrides(text) for text in args.arms]
    for overrides in arms:
        train_config(params, overrides)  # every arm checked before any training
    out.mkdir(parents=True, exist_ok=True)
    same_cpu_as_earlier(out)
    same_every_arm_as_earlier(out, args.every_arm_overrides)
    for seed in args.seeds:
        for overrides in arms:
            path = out / f"{arm_name(overrides).replace('=', '-').replace(',', '+')}-seed{seed}.json"
            if path.is_file():
                print(f"{arm_name(overrides)} seed {seed}: finished earlier ({path})")
                continue
            run_arm(args, params, variant, overrides, seed, path)
    print(report(out))


if __name__ == "__main__":
    main()
