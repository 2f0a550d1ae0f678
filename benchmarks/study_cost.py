"""Study cost: the CPU-hours to reproduce the reference study's answer under the new defaults.

    python benchmarks/study_cost.py --plan          # planned epochs and hours; trains nothing
    python benchmarks/study_cost.py --out benchmarks/results/2026-12-07-study-cost
    python benchmarks/study_cost.py --out benchmarks/results/2026-12-07-study-cost --set train.max_epochs=20
    python benchmarks/study_cost.py --out benchmarks/results/2026-12-07-study-cost --report

The reference study (results/reference-minilm: nine variants, lr tuned on validation, 3 seeds,
30 epochs) took 25.8 h of one-thread training. This script reruns a representative subset of it
(default full, lora, vera) end to end under the reference profile of profiles.yaml (successive
halving in tuning included) plus any --set overrides (say the schedule length decided by
benchmarks/schedule_length.py): each variant's tune (the project's tune(), its trial cache in
--out/trials) and then its seeds at the chosen lr, trained and scored as train@/evaluate@ do.
Everything finished is kept in --out (lr/<variant>.json, runs/<variant>-<seed>.json): resumable.

cpu_hours (in study_cost.json): the subset's training hours (tuning trials, stopped ones included,
plus the seeds' trainings; evaluation is not counted, as in the 25.8 h) x torch threads, scaled to
the nine variants by the subset's share of the reference's hours. Beside it: each variant's chosen lr
and test F1 against the committed ones (is the new F1 inside the committed 95 % interval?).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from pathlib import Path

from _common import ROOT, add_study_options, argument_parser

import yaml

from layoutpeft.atomic import write_json, write_text
from layoutpeft.config import EvaluateConfig, ModelConfig, TrainConfig, load_params
from layoutpeft.provenance import describe
from layoutpeft.train import runs, tuning
from layoutpeft.train.device import emulated_bf16_warning, resolve_device
from layoutpeft.train.variants import studied_variants

PROFILE = "reference"


def set_dotted(params: dict, dotted: str, value) -> dict:
    out = json.loads(json.dumps(params))
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def study_params(study: Path, overrides: list[str]) -> dict:
    """The committed study's params.yaml with the reference profile's values and --set key=value on top."""
    params = load_params(study / "params.yaml")
    profile = yaml.safe_load((ROOT / "profiles.yaml").read_text())[PROFILE]
    for key, value in profile.items():
        if not key.startswith(("data.", "model.checkpoint")):  # the study's own data and model stay
            params = set_dotted(params, key, value)
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep:
            raise SystemExit(f"--set {text!r}: expected key=value, e.g. train.max_epochs=20")
        params = set_dotted(params, key, yaml.safe_load(value))
    return params


@functools.cache
def committed_records(study: Path, variant: str) -> tuple[dict, list[dict]]:
    """The committed study's tune record and seed runs of one variant, read once per process."""
    tune = json.loads((study / "lr" / f"{variant}.json").read_text())
    runs_ = [json.loads(p.read_text()) for p in sorted((study / "runs").glob(f"{variant}-*.json"))]
    return tune, [r for r in runs_ if r["variant"] == variant]  # the glob also matches e.g. lora_qkvo_ffn


def reference_hours(study: Path, variant: str) -> float:
    """The committed study's training hours of one variant: its tuning trials plus its seeds' trainings."""
    tune, seeds = committed_records(study, variant)
    return (tune["wall_time_s"] + sum(r["training"]["wall_time_s"] for r in seeds)) / 3600


def reference_epochs(study: Path, variant: str) -> int:
    """The committed study's epochs of one variant (tuning trials plus seeds): a cost no CPU speed changes."""
    tune, seeds = committed_records(study, variant)
    return sum(t["epochs_run"] for t in tune["trials"]) + sum(r["training"]["epochs_run"] for r in seeds)


def seconds_per_epoch(study: Path, variant: str) -> float:
    _, seeds = committed_records(study, variant)
    return sum(r["training"]["wall_time_s"] / r["training"]["epochs_run"] for r in seeds) / len(seeds)


def planned(study: Path, params: dict, names: list[str]) -> dict:
    """Epochs under the params' rule (no trial stopping on its own, no grid extension) x the committed s/epoch."""
    variants = studied_variants(params, check_runtime=False)
    tuning_cfg = tuning.TuningConfig.from_params(params)
    max_epochs, seeds = params["train"]["max_epochs"], len(params["study"]["seeds"])
    rows = {}
    for name in names:
        trials = len(tuning.lr_grid(variants[name], tuning_cfg))
        epochs = tuning.planned_epochs(trials, tuning_cfg, max_epochs) + seeds * max_epochs
        rows[name] = {"trials": trials, "epochs": epochs, "hours": epochs * seconds_per_epoch(study, name) / 3600}
    return rows


def tune_variant(name: str, variant: dict, params: dict, tokenized: Path, out: Path) -> dict:
    path = out / "lr" / f"{name}.json"
    if path.is_file():
        print(f"tune {name}: finished earlier ({path})", flush=True)
        return json.loads(path.read_text())
    result = tuning.tune(
        name,
        variant,
        ModelConfig.from_params(params, check_source=False),
        TrainConfig.from_params(params),
        tuning.TuningConfig.from_params(params),
        tokenized,
        scratch=out,
    )
    write_json(path, result)
    print(
        f"tune {name}: lr {result['chosen_lr']:g} ({result['epochs_trained']} epochs, {result['wall_time_s'] / 3600:.2f} h)",
        flush=True,
    )
    return result


def run_seed(name: str, seed: int, variant: dict, params: dict, tokenized: Path, out: Path) -> dict:
    path = out / "runs" / f"{name}-{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-{seed}-") as tmp:
        log = runs.train(
            name,
            seed,
            variant,
            ModelConfig.from_params(params, check_source=False),
            TrainConfig.from_params(params),
            Path(tmp) / "run",
            tokenized,
        )
        # one timed inference pass: the speed is not what this benchmark measures
        evaluate_cfg = dataclasses.replace(EvaluateConfig.from_params(params), timing_repeats=1)
        scored = runs.evaluate(Path(tmp) / "run", evaluate_cfg, tokenized, Path(tmp) / "record.json")
    record = {
        "variant": name,
        "seed": seed,
        "lr": variant["lr"],
        "training": log["training"],
        "test_f1": scored["scores"]["f1"],
        "environment": scored["environment"],
    }
    write_json(path, record)
    print(f"{name}-{seed}: test F1 {record['test_f1']:.4f} ({log['training']['wall_time_s'] / 3600:.2f} h)", flush=True)
    return record


def summarise(study: Path, params: dict, names: list[str], out: Path, threads: int) -> dict:
    committed = json.loads((study / "summary.json").read_text())["variants"]
    all_names = list(committed)
    reference_total = sum(reference_hours(study, n) for n in all_names)
    rows, measured, epochs, done = {}, 0.0, 0, True
    for name in names:
        lr_path = out / "lr" / f"{name}.json"
        seeds = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"{name}-*.json"))]
        tuned = json.loads(lr_path.read_text()) if lr_path.is_file() else None
        done = done and tuned is not None and len(seeds) == len(params["study"]["seeds"])
        hours = ((tuned or {}).get("wall_time_s", 0) + sum(r["training"]["wall_time_s"] for r in seeds)) / 3600
        measured += hours * threads
        variant_epochs = (tuned or {}).get("epochs_trained", 0) + sum(r["training"]["epochs_run"] for r in seeds)
        epochs += variant_epochs
        f1s = [r["test_f1"] for r in seeds]
        ref = committed[name]["f1"]
        mean = sum(f1s) / len(f1s) if f1s else None
        rows[name] = {
            "chosen_lr": (tuned or {}).get("chosen_lr"),
            "committed_lr": committed_records(study, name)[0]["chosen_lr"],
            "tuning_epochs": (tuned or {}).get("epochs_trained"),
            "seeds": [r["seed"] for r in seeds],
            "test_f1_mean": mean,
            "committed_test_f1": {k: ref[k] for k in ("mean", "ci95_low", "ci95_high")},
            "inside_committed_interval": None if mean is None else ref["ci95_low"] <= mean <= ref["ci95_high"],
            "cpu_hours": hours * threads,
            "reference_hours": reference_hours(study, name),
            "epochs": variant_epochs,
            "reference_epochs": reference_epochs(study, name),
        }
        rows[name]["same_lr"] = rows[name]["chosen_lr"] == rows[name]["committed_lr"] if tuned else None
    subset_reference = sum(rows[n]["reference_hours"] for n in names)
    subset_reference_epochs = sum(rows[n]["reference_epochs"] for n in names)
    return {
        "complete": done,
        "variants": rows,
        "threads": threads,
        "subset_cpu_hours": measured,
        "subset_reference_hours": subset_reference,
        "reference_cpu_hours": reference_total,
        # no figure from a subset still running: a partial sum would read as a cheap study
        "cpu_hours": measured * reference_total / subset_reference if done and subset_reference else None,
        "extrapolation": "subset CPU-hours x (nine variants' reference hours / the subset's reference hours)",
        # hours compare machines as well as methods (the reference ran on another CPU); epochs do not
        "subset_epochs": epochs,
        "subset_reference_epochs": subset_reference_epochs,
        "epoch_ratio": epochs / subset_reference_epochs if done and subset_reference_epochs else None,
        "planned": planned(study, params, all_names),
        "goal_cpu_hours": reference_total / 3,
    }


def report(result: dict) -> str:
    lines = [
        "| variant | lr (committed) | same lr | tuning epochs | seeds | test F1 (committed 95 % CI) | inside "
        "| CPU-h (reference) | epochs (reference) |",
        "|---|---|---|---:|---|---|---|---:|---:|",
    ]
    for name, r in result["variants"].items():
        ref = r["committed_test_f1"]
        f1 = "–" if r["test_f1_mean"] is None else f"{100 * r['test_f1_mean']:.1f}"
        shown = {k: "–" if r[k] is None else r[k] for k in ("chosen_lr", "same_lr", "tuning_epochs", "inside_committed_interval")}
        lines.append(
            f"| {name} | {shown['chosen_lr']} ({r['committed_lr']}) | {shown['same_lr']} | {shown['tuning_epochs']} | "
            f"{', '.join(map(str, r['seeds'])) or '–'} | {f1} "
            f"({100 * ref['ci95_low']:.1f}–{100 * ref['ci95_high']:.1f}) | "
            f"{shown['inside_committed_interval']} | {r['cpu_hours']:.2f} ({r['reference_hours']:.2f}) | "
            f"{r['epochs']} ({r['reference_epochs']}) |"
        )
    ratio = result["epoch_ratio"]
    cpu = result["cpu_hours"]
    lines += [
        "",
        f"Subset: {result['subset_cpu_hours']:.2f} CPU-hours ({result['threads']} thread(s)) against "
        f"{result['subset_reference_hours']:.2f} h in the reference; nine variants, extrapolated: "
        f"**{'–' if cpu is None else f'{cpu:.1f}'} CPU-hours** against {result['reference_cpu_hours']:.1f} h "
        f"(goal ≤ {result['goal_cpu_hours']:.1f})" + ("" if result["complete"] else " — not complete yet") + ".",
        f"Epochs, which no CPU speed changes (hours compare this machine with the reference's too): "
        f"{result['subset_epochs']} against {result['subset_reference_epochs']}"
        + ("" if ratio is None else f", {ratio:.2f} of the reference's")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def results_folder(args, params: dict) -> Path:
    """--out, checked; unless --report, made (the tunes' and seeds' scratch folders live in it) with its
    trial cache in it, after refusing a bf16 run this CPU would emulate."""
    if not args.out:
        raise SystemExit("--out is required (or --plan)")
    out = Path(args.out)
    if not args.report:
        train_cfg = TrainConfig.from_params(params)
        if warning := emulated_bf16_warning(train_cfg.precision, resolve_device(train_cfg.device)):
            raise SystemExit(f"{warning}; measure on a CPU like the reference's, or --set train.precision=fp32")
        out.mkdir(parents=True, exist_ok=True)
        os.environ[tuning.TRIAL_CACHE_ENV] = str(out / "trials")
    return out


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    add_study_options(parser, "results", plan=True)
    parser.add_argument("--variants", nargs="+", default=["full", "lora", "vera"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params key=value on top")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the reference ran one-thread workers)")
    args = parser.parse_args(argv)
    study = Path(args.study)
    params = study_params(study, args.overrides)
    variants = studied_variants(params, check_runtime=False)
    unknown = [n for n in args.variants if n not in variants]
    if unknown:
        raise SystemExit(f"--variants: {unknown[0]!r} is not a variant of {study / 'params.yaml'}")
    if args.plan:
        rows = planned(study, params, list(variants))
        for name, r in rows.items():
            mark = " *" if name in args.variants else ""
            print(f"{name}{mark}: {r['trials']} lrs, {r['epochs']} epochs = {r['hours']:.1f} h")
        subset = sum(rows[n]["hours"] for n in args.variants)
        print(
            f"subset (*): {subset:.1f} h of one-thread training; nine variants: {sum(r['hours'] for r in rows.values()):.1f} h "
            "(s/epoch of the committed runs; no trial stopping on its own, no grid extension)"
        )
        return
    out = results_folder(args, params)
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        tokenized = Path(args.tokenized)
        for name in args.variants:
            start = time.perf_counter()
            chosen = tune_variant(name, variants[name], params, tokenized, out)["chosen_lr"]
            for seed in params["study"]["seeds"]:
                run_seed(name, seed, {**variants[name], "lr": chosen}, params, tokenized, out)
            print(f"{name}: done in {(time.perf_counter() - start) / 3600:.2f} h here", flush=True)
    result = {
        **summarise(study, params, args.variants, out, args.threads),
        "overrides": args.overrides,
        "profile": PROFILE,
        "environment": describe(resolve_device("cpu")),
    }
    write_json(out / "study_cost.json", result)
    text = report(result)
    write_text(out / "study_cost.md", text)
    print(text)


if __name__ == "__main__":
    main()
