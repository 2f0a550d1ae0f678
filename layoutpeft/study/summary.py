"""The seed study's summary: run files in, summary dict, Markdown table, CSV and compact metrics out.

Reads metrics/runs/<variant>-<seed>.json for exactly the studied variants x seeds (files of other
variants or seeds are ignored, and listed as stale). A missing or unreadable run file is never
averaged away silently: its variant lists the seed in `missing_seeds`, `Study.warnings()` names
the file and the Markdown table shows "2/3, missing: 1". Shapes: docs/result-files.md.
Nothing here writes files (the aggregate stage does, atomically). MB is 10^6 bytes.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from layoutpeft.study import formatting as fmt
from layoutpeft.study.decision import which_to_pick
from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.stats import half_width, paired_comparison, seed_stats

MB = 1e6

# summary key -> dotted path inside a run file; averaged over seeds, per-seed values kept. Per entity
# type, f1_<type> follows recall: the types are the data's (seed_metrics).
SEED_METRICS: dict[str, str] = {
    "f1": "scores.f1",
    "precision": "scores.precision",
    "recall": "scores.recall",
    "train_time_s": "training.wall_time_s",
    "epoch_time_s": "training.epoch_time_s",
    "epochs_run": "training.epochs_run",
    "best_epoch": "training.best_epoch",
    "peak_memory_mb": "memory.peak_bytes",          # divided by MB on reading
    "inference_tokens_per_s": "inference.tokens_per_s",
    "merged_inference_tokens_per_s": "inference.merged_tokens_per_s",
}
# summary key -> dotted path; the same for every seed of a variant (the first run's value is kept).
CONSTANTS: dict[str, str] = {
    "lr": "variant_params.lr",                      # the lr the runs used (chosen by tune@ when tuning)
    "trainable_params": "parameters.trainable",
    "total_params": "parameters.total",
    "trainable_share": "parameters.trainable_share",
    "saved_bytes": "saved_bytes",
}
REQUIRED = ("scores.f1", "scores.precision", "scores.recall")
# A variant's keys in summary.json, in the order of docs/result-files.md.
ENTRY_KEYS = ("method", "params", "n_seeds", "seeds", "missing_seeds",
              "f1", "precision", "recall",
              "lr", "lr_tuning", "trainable_params", "total_params", "trainable_share", "saved_bytes",
              "train_time_s", "epoch_time_s", "epochs_run", "best_epoch", "peak_memory_mb", "memory_kind",
              "inference_tokens_per_s", "merged_inference_tokens_per_s", "vs_reference")
STAT_KEYS = ("mean", "std", "ci95_low", "ci95_high")
LIBRARIES = ("python", "torch", "transformers", "peft", "bitsandbytes", "seqeval")


class AggregateError(LayoutpeftError):
    """Nothing to aggregate (no run file of the study could be read)."""


# --------------------------------------------------------------------------- reading runs

def dig(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def number(node: Any, dotted: str) -> float | None:
    """A finite number at `dotted`, else None (absent, null, bool, text, NaN)."""
    value = dig(node, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


ABSENT = "missing"  # read_run's reason for a run file that does not exist (yet)


def run_path(runs_dir: Path, variant: str, seed: int) -> Path:
    return Path(runs_dir) / f"{variant}-{seed}.json"


def read_run(path: Path, variant: str, seed: int) -> tuple[dict | None, str | None]:
    """(run, None) or (None, why it cannot be used)."""
    if not path.is_file():
        return None, ABSENT
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"unreadable ({err.__class__.__name__}: {err})"
    if not isinstance(run, dict):
        return None, "unreadable (not a JSON object)"
    if run.get("variant", variant) != variant or run.get("seed", seed) != seed:
        return None, f"unreadable (holds variant {run.get('variant')!r} seed {run.get('seed')!r})"
    absent = [key for key in REQUIRED if number(run, key) is None]
    if absent:
        return None, f"unreadable (no numeric {', '.join(absent)})"
    return run, None


@dataclass
class Study:
    """The readable runs of a study ({variant: {seed: run}}), what is wrong with the others
    ({variant: {seed: why}}) and run files outside the study (names)."""
    runs_dir: Path
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    reference: str | None
    runs: dict[str, dict[int, dict]] = field(default_factory=dict)
    problems: dict[str, dict[int, str]] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        out = []
        for variant, by_seed in self.problems.items():
            if by_seed:
                files = ", ".join(f"{run_path(self.runs_dir, variant, s)} ({why})" for s, why in sorted(by_seed.items()))
                out.append(f"{variant}: {len(self.seeds) - len(by_seed)}/{len(self.seeds)} seeds usable; "
                           f"left out: {files}")
        if self.reference is not None and not self.runs.get(self.reference):
            out.append(f"reference {self.reference!r} has no readable run: no paired comparison")
        return out


def read_study(runs_dir: Path, variants: Sequence[str], seeds: Sequence[int], reference: str | None) -> Study:
    """Every run file of variants x seeds; AggregateError (naming the folder) when none is readable."""
    study = Study(Path(runs_dir), tuple(variants), tuple(seeds), reference)
    for variant in variants:
        study.runs[variant], study.problems[variant] = {}, {}
        for seed in seeds:
            run, problem = read_run(run_path(runs_dir, variant, seed), variant, seed)
            if run is None:
                study.problems[variant][seed] = problem
            else:
                study.runs[variant][seed] = run
    if not any(study.runs.values()):
        raise AggregateError(f"{runs_dir}: no run file could be read for any of the {len(variants)} studied variants "
                             f"x {len(seeds)} seeds (expected e.g. {run_path(runs_dir, variants[0], seeds[0])}; "
                             "run the evaluate stages first)")
    if study.runs_dir.is_dir():
        expected = {run_path(runs_dir, v, s).name for v in variants for s in seeds}
        study.stale = sorted(p.name for p in study.runs_dir.glob("*.json") if p.name not in expected)
    return study


# --------------------------------------------------------------------------- the summary

def per_seed_stats(values: dict[int, float | None]) -> dict | None:
    """seed_stats over the values, with the values themselves under `per_seed` ({"<seed>": value})."""
    kept = {seed: v for seed, v in values.items() if v is not None}
    stats = seed_stats(kept.values())
    if stats is None:
        return None
    return {**stats, "per_seed": {str(seed): v for seed, v in kept.items()}}


def entity_types_of(runs: Iterable[dict]) -> list[str]:
    """The entity types the runs were scored on (their per_type keys: the data's schema), first seen first."""
    types: list[str] = []
    for run in runs:
        types += [t for t in (dig(run, "scores.per_type") or {}) if t not in types]
    return types


def seed_metrics(types: Sequence[str]) -> dict[str, str]:
    """SEED_METRICS with f1_<type> for each entity type after recall."""
    keys = list(SEED_METRICS.items())
    return dict(keys[:3] + [(f"f1_{t}", f"scores.per_type.{t}.f1") for t in types] + keys[3:])


def entry_keys(types: Sequence[str]) -> tuple[str, ...]:
    at = ENTRY_KEYS.index("recall") + 1
    return ENTRY_KEYS[:at] + tuple(f"f1_{t}" for t in types) + ENTRY_KEYS[at:]


def summarise_variant(runs: dict[int, dict], seeds: Sequence[int], types: Sequence[str] | None = None) -> dict:
    """One variant's summary entry (vs_reference still None) from its readable runs; `types`: the
    entity types reported per type (default: those the runs were scored on)."""
    types = entity_types_of(runs.values()) if types is None else types
    present = [s for s in seeds if s in runs]
    first = runs[present[0]] if present else {}
    entry: dict[str, Any] = {
        "method": first.get("method") or dig(first, "variant_params.method"),
        "params": first.get("variant_params"),
        "n_seeds": len(present), "seeds": present,
        "missing_seeds": [s for s in seeds if s not in runs],
    }
    measured = [s for s in present if number(runs[s], "memory.peak_bytes") is not None]
    kinds = sorted({str(dig(runs[s], "memory.kind")) for s in measured})
    entry["memory_kind"] = kinds[0] if len(kinds) == 1 else None  # never average different kinds
    for key, path in seed_metrics(types).items():
        scale = 1 / MB if key == "peak_memory_mb" else 1.0
        values = {s: number(runs[s], path) for s in present}
        if key == "peak_memory_mb" and entry["memory_kind"] is None:
            values = {}
        entry[key] = per_seed_stats({s: None if v is None else v * scale for s, v in values.items()})
    for key, path in CONSTANTS.items():
        value = number(first, path)
        if value is not None and key not in ("trainable_share", "lr"):
            value = int(round(value))
        entry[key] = value
    entry["lr_tuning"] = None
    entry["vs_reference"] = None
    return {key: entry[key] for key in entry_keys(types)}


def compare_with_reference(mine: dict[int, float], reference: dict[int, float]) -> dict | None:
    """Paired comparison of test F1 (variant - reference) with the pairs it used."""
    comparison = paired_comparison(mine, reference)
    if comparison is not None:
        comparison["pairs"] = {str(s): {"variant": mine[s], "reference": reference[s]}
                               for s in sorted(set(mine) & set(reference))}
    return comparison


def tuning_entry(tuned: dict | None) -> dict | None:
    """What summary.json keeps of a variant's data/lr/<variant>.json."""
    if not tuned:
        return None
    return {"tuned": tuned.get("tuned"), "chosen_lr": tuned.get("chosen_lr"), "seed": tuned.get("seed"),
            "at_grid_edge": tuned.get("at_grid_edge"), "extended_by": tuned.get("extended_by") or [],
            "wall_time_s": tuned.get("wall_time_s"),
            "trials": [{k: t.get(k) for k in ("lr", "best_val_f1", "best_epoch", "epochs_run")}
                       for t in tuned.get("trials", [])]}


def read_tuning(lr_dir: Path, variants: Sequence[str]) -> dict[str, dict]:
    """{variant: its data/lr/<variant>.json} for the variants that have one."""
    found = {}
    for name in variants:
        path = Path(lr_dir) / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def build_summary(runs: dict[str, dict[int, dict]], seeds: Sequence[int], reference: str | None,
                  tuning: dict[str, dict] | None = None) -> dict:
    """The summary.json dict (NaN-free) from {variant: {seed: run}}, variants in study order."""
    types = entity_types_of(run for by_seed in runs.values() for run in by_seed.values())
    variants = {name: summarise_variant(by_seed, seeds, types) for name, by_seed in runs.items()}
    for name, entry in variants.items():
        entry["lr_tuning"] = tuning_entry((tuning or {}).get(name))
    ref_f1 = {s: number(r, "scores.f1") for s, r in runs.get(reference, {}).items()}
    for name, entry in variants.items():
        if name != reference and ref_f1:
            mine = {s: number(r, "scores.f1") for s, r in runs[name].items()}
            entry["vs_reference"] = compare_with_reference(mine, ref_f1)
    return without_nan({"reference": reference, "seeds": list(seeds), "trained": trained_on(runs), "variants": variants})


def without_nan(node: Any) -> Any:
    """NaN / inf -> None everywhere, so the JSON is strict."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: without_nan(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [without_nan(v) for v in node]
    return node


def json_text(data: Any) -> str:
    return json.dumps(without_nan(data), indent=2, allow_nan=False) + "\n"


def study_metrics(summary: dict) -> dict:
    """metrics/study.json, the DVC metrics file: per variant (study order) mean test F1, the
    half-width of its 95 % interval, and the paired difference with the reference and its p."""
    out = {}
    for name, e in summary["variants"].items():
        vs = e["vs_reference"] or {}
        out[name] = {"f1": (e["f1"] or {}).get("mean"), "f1_ci95": half_width(e["f1"]),
                     "delta_f1": vs.get("mean_diff"), "p": vs.get("p_value")}
    return out


def model_text(model: Any) -> str | None:
    """What a run fine-tuned, said so that a table from a stand-in model is never read as LayoutLM-base's."""
    if not isinstance(model, dict) or not model.get("checkpoint"):
        return None
    checkpoint, source = model["checkpoint"], model.get("source_type")
    if source != "bert":
        return f"`{checkpoint}` ({source or 'unknown'} checkpoint)"
    lr = model.get("new_tables_lr")
    tables = f"its new 2-D position tables {model.get('new_tables', 'train')}" + (f" at lr {lr:g}" if lr else "")
    return (f"`{checkpoint}`, a BERT checkpoint turned LayoutLM ({tables}): not LayoutLM-base, whose 2-D tables "
            "are pre-trained, so its F1 says how the methods compare at this scale, not what LayoutLM reaches")


def schedule_text(train: Any, precision: Any) -> str | None:
    if not isinstance(train, dict) or "max_epochs" not in train:
        return None
    parts = [f"up to {train['max_epochs']} epochs", f"batch {train.get('batch_size', '?')}",
             f"patience {train.get('patience', '?')}"]
    if train.get("select_on"):
        parts.append(f"best epoch on validation {train['select_on']}")
    return ", ".join(parts + ([str(precision)] if precision else []))


def trained_on(runs: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """What the table comes from: the runs' distinct model and schedule descriptions (sorted)."""
    runs_list = [run for by_seed in runs.values() for run in by_seed.values()]
    models = {model_text(run.get("model")) for run in runs_list} - {None}
    schedules = {schedule_text(run.get("train_params"), run.get("precision")) for run in runs_list} - {None}
    return {"model": sorted(models), "schedule": sorted(schedules)}


def environment_line(runs: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """Distinct values of device, library versions, code, scoring and memory kind over all runs."""
    found: dict[str, set[str]] = {}

    def add(key: str, value: Any) -> None:
        if value not in (None, "", "..."):
            found.setdefault(key, set()).add(str(value))

    # Runs recorded before CPU flags were part of the record share a device with those after: name it
    # once, with the flags and how many runs recorded them, not as two devices.
    devices: dict[str, dict[tuple, Counter]] = {"train_device": {}, "eval_device": {}}

    def add_device(key: str, env: dict) -> None:
        kind, name = env.get("device"), env.get("device_name")
        if not kind:
            return
        details = [] if name in (None, "", "...") else [str(name)]
        if details and kind == "cpu" and env.get("cpu_threads"):
            details.append(f"{env['cpu_threads']} threads")
        flags = env.get("cpu_flags") if details and kind == "cpu" and isinstance(env.get("cpu_flags"), list) else None
        flag_text = None if flags is None else " ".join(flags) or "(no avx2, avx512 or amx)"
        devices[key].setdefault((kind, tuple(details)), Counter())[flag_text] += 1

    for by_seed in runs.values():
        for run in by_seed.values():
            env = run.get("environment") if isinstance(run.get("environment"), dict) else {}
            train_env = run.get("train_environment") if isinstance(run.get("train_environment"), dict) else env
            add_device("train_device", train_env)
            add_device("eval_device", env)
            for lib in LIBRARIES:
                add(lib, env.get(lib))
                add(lib, train_env.get(lib))
            for record in (env, train_env):
                if record.get("git_commit"):
                    # Uncommitted code edits make the commit alone misleading: say so.
                    edited = " + uncommitted code" if record.get("code_modified") else ""
                    add("git_commit", str(record["git_commit"])[:8] + edited)
            scheme, mode = dig(run, "scores.scheme"), dig(run, "scores.mode")
            add("scoring", ", ".join(f"{k} {v}" for k, v in (("scheme", scheme), ("mode", mode)) if v) or None)
            add("memory", dig(run, "memory.kind"))
    for key, by_device in devices.items():
        for (kind, details), by_flags in by_device.items():
            total = sum(by_flags.values())
            if by_flags.keys() == {None}:
                add(key, f"{kind} ({', '.join(details)})" if details else kind)
            for flags, count in by_flags.items():
                if flags is not None:
                    share = f"; {count} of {total} runs recorded them" if count < total else ""
                    add(key, f"{kind} ({', '.join(details)}, flags {flags}{share})")
    return {k: sorted(v) for k, v in found.items()}


# --------------------------------------------------------------------------- tables

def _mean(stat: dict | None) -> float | None:
    return stat["mean"] if stat else None


def sorted_variants(summary: dict) -> list[str]:
    """Best mean F1 first; variants without any run last, in study order."""
    names = list(summary["variants"])

    def key(name: str):
        f1 = summary["variants"][name]["f1"]
        return (f1 is None, -(f1["mean"]) if f1 else 0.0, names.index(name))
    return sorted(names, key=key)


def _delta(summary: dict, name: str, with_ci: bool = True, reference: str = "reference") -> str:
    if name == summary["reference"]:
        return reference
    return fmt.delta(summary["variants"][name]["vs_reference"], with_ci=with_ci)


def _has_memory(runs: dict[int, dict]) -> bool:
    return any(number(r, "memory.peak_bytes") is not None for r in runs.values())


def inference_cell(entry: dict) -> str:
    """"2.6 k (merged 2.87 k)": real tokens/s over the test split, and with the adapter merged where it can be."""
    plain, merged = _mean(entry.get("inference_tokens_per_s")), _mean(entry.get("merged_inference_tokens_per_s"))
    return fmt.count(plain) + (f" (merged {fmt.count(merged)})" if merged is not None else "")


def inference_setup(runs: dict[str, dict[int, dict]]) -> list[str]:
    """How the throughput was timed, one text per distinct setting ("batch 32, 1 thread")."""
    found = set()
    for by_seed in runs.values():
        for run in by_seed.values():
            batch, threads = number(run, "inference.batch_size"), number(run, "inference.threads")
            if batch is not None or threads is not None:
                found.add((f"batch {batch:.0f}" if batch is not None else "batch unknown")
                          + (f", {threads:.0f} thread{'s' if threads != 1 else ''}" if threads is not None else ""))
    return sorted(found)


def markdown_table(summary: dict, study: Study) -> str:
    """metrics/summary.md: the study's table, notes and the runs left out."""
    seeds, reference = summary["seeds"], summary["reference"]
    env = environment_line(study.runs)
    header = ["Variant", "Method", "lr", "Trainable params", "P (%)", "R (%)", "F1 (%)",
              f"Δ F1 vs {reference or 'reference'} (pts, 95 % CI, p)", "Best epoch / run", "Train time",
              "Inference (tokens/s)", "Peak memory", "Saved", "Seeds"]
    lines = ["# Seed study: LayoutLM PEFT methods on FUNSD", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * 11 + ["---"]) + "|"]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        params = fmt.count(e["trainable_params"])
        if e["trainable_share"] is not None:
            params += f" ({fmt.share(e['trainable_share'])})"
        tuned = e.get("lr_tuning") or {}
        lr = fmt.DASH if e.get("lr") is None else f"{e['lr']:.3g}" + (" (tuned)" if tuned.get("tuned") else "")
        if tuned.get("extended_by"):
            lr += f", grid extended {len(tuned['extended_by'])}x"
        if tuned.get("at_grid_edge"):
            lr += f" ⚠ {tuned['at_grid_edge']} of grid"
        epochs = (f"{_mean(e['best_epoch']):.0f} / {_mean(e['epochs_run']):.0f}"
                  if e.get("best_epoch") and e.get("epochs_run") else fmt.DASH)
        mixed = e.get("memory_kind") is None and e.get("n_seeds") and e.get("peak_memory_mb") is None
        memory = "mixed kinds" if mixed and _has_memory(study.runs.get(name, {})) else fmt.megabytes(_mean(e["peak_memory_mb"]))
        lines.append("| " + " | ".join([
            f"**{name}**" if name == reference else name, str(e["method"] or fmt.DASH), lr, params,
            fmt.percent(e["precision"]), fmt.percent(e["recall"]), fmt.percent(e["f1"]), _delta(summary, name),
            epochs, fmt.seconds(_mean(e["train_time_s"])), inference_cell(e), memory,
            fmt.size(e["saved_bytes"]), fmt.seeds(e, len(seeds))]) + " |")
    lines.append("")
    lines += which_to_pick(summary)
    notes = [f"Seeds: {', '.join(map(str, seeds))}. Mean over seeds ± half-width of the 95 % t-interval "
             f"(n − 1 degrees of freedom)."]
    if reference in summary["variants"] and summary["variants"][reference]["n_seeds"]:
        notes.append(f"Δ F1: paired difference with **{reference}** over shared seeds, 95 % t-interval, "
                     f"paired t-test p-value.")
    elif reference:
        notes.append(f"Reference {reference} has no readable run in this study: no paired comparison.")
    else:
        notes.append("No study.reference: no paired comparison.")
    trained = summary.get("trained") or {}
    if trained.get("model"):
        notes.append("Model: " + "; ".join(trained["model"]) + ". Data: FUNSD; validation carved from its training "
                     "forms (params.yaml `data:`), test = its 50 test forms.")
    if trained.get("schedule"):
        notes.append(f"Schedule{'s (they differ between runs)' if len(trained['schedule']) > 1 else ''}: "
                     + "; ".join(trained["schedule"]) + ".")
    scoring = ", ".join(env.get("scoring", [])) or "unknown"
    notes.append(f"Scoring: seqeval entity-level micro precision / recall / F1 ({scoring}) on the FUNSD test split.")
    libs = ", ".join(f"{lib} {' / '.join(env[lib])}" for lib in LIBRARIES if lib in env)
    train_dev, eval_dev = env.get("train_device", ["unknown"]), env.get("eval_device", ["unknown"])
    devices = ("; ".join(train_dev) if train_dev == eval_dev else
               f"training {'; '.join(train_dev)}, evaluation {'; '.join(eval_dev)}")
    notes.append(f"Device: {devices}. Versions: {libs or 'unknown'}."
                 + (f" Code: {', '.join(env['git_commit'])}." if env.get("git_commit") else ""))
    timed = inference_setup(study.runs)
    notes.append("Inference: real tokens per second on the test split, the median of timed passes after a warm-up"
                 + (f" ({'; '.join(timed)})" if timed else "") + "; merged: the same with the adapter folded into "
                 "the weights (`merge_and_unload`), for methods that allow it. It is timed on the machine that "
                 "evaluated, under whatever else ran there: compare runs evaluated under equal load.")
    notes.append("Saved: what a run stores to be used (the adapter, or the trained tensors, or the whole model for "
                 "full fine-tuning; the classifier head and trained new 2-D tables included).")
    notes.append(f"Peak memory: {', '.join(env.get('memory', ['unknown']))} (MB = 10^6 bytes); "
                 "cpu_peak_rss_training is the process's RSS peak during training (imports and loading excluded), "
                 "cuda_peak_allocated the GPU tensor peak; kinds are never averaged together."
                 + (" On CPU the RSS peak also holds heap the allocator kept after freeing, which grows over a run "
                    "(benchmarks/results/2026-11-27-cpu-memory.md): compare it between runs of equal length."
                    if "cpu_peak_rss_training" in env.get("memory", []) else ""))
    tuned = [n for n, e in summary["variants"].items() if (e.get("lr_tuning") or {}).get("tuned")]
    if tuned:
        costs = [summary["variants"][n]["lr_tuning"]["wall_time_s"] or 0 for n in tuned]
        notes.append(f"lr: chosen per variant on validation entity F1 (tuning seed "
                     f"{summary['variants'][tuned[0]]['lr_tuning']['seed']}) from its grid; tuning cost "
                     f"{fmt.seconds(sum(costs))} of training in all. Best epoch: chosen on validation, never on test.")
    lines += [f"- {n}" for n in notes]
    bad = [(v, s, why) for v, by_seed in study.problems.items() for s, why in sorted(by_seed.items())]
    if bad:
        lines += ["", f"**Missing runs ({len(bad)}):** these seeds are left out of their variant's statistics.", ""]
        absent = [run_path(study.runs_dir, v, s) for v, s, why in bad if why == ABSENT]
        if absent:  # one line, not one per run: a study in progress has many
            lines.append(f"- not (yet) in `{study.runs_dir.as_posix()}/`: " + ", ".join(f"`{p.name}`" for p in absent))
        lines += [f"- `{run_path(study.runs_dir, v, s).as_posix()}`: {why}" for v, s, why in bad if why != ABSENT]
    return "\n".join(lines) + "\n"


def stdout_table(summary: dict) -> str:
    """A short plain-text table for the stage's output."""
    n = len(summary["seeds"])
    rows = [("variant", "F1 %", "ΔF1 vs ref", "trainable", "train", "seeds")]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        rows.append((name, fmt.percent(e["f1"]), _delta(summary, name, with_ci=False, reference="ref"),
                     fmt.count(e["trainable_params"]), fmt.seconds(_mean(e["train_time_s"])), fmt.seeds(e, n)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


VS_KEYS = ("n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value")


def summary_csv(summary: dict) -> str:
    """metrics/summary.csv: one flat row per variant (study order), for tools."""
    header = ["variant", "method", "is_reference", "n_seeds", "n_expected", "missing_seeds",
              "trainable_params", "total_params", "trainable_share", "saved_bytes"]
    types = [key[3:] for key in next(iter(summary["variants"].values()), {}) if key.startswith("f1_")]
    metrics = seed_metrics(types)
    header += [f"{key}_{s}" for key in metrics for s in STAT_KEYS]
    header += [f"vs_ref_{k}" for k in VS_KEYS]
    rows = []
    for name, e in summary["variants"].items():
        row = [name, e["method"], name == summary["reference"], e["n_seeds"], len(summary["seeds"]),
               " ".join(map(str, e["missing_seeds"])),
               e["trainable_params"], e["total_params"], e["trainable_share"], e["saved_bytes"]]
        row += [(e[key] or {}).get(s) for key in metrics for s in STAT_KEYS]
        row += [(e["vs_reference"] or {}).get(k) for k in VS_KEYS]
        rows.append(row)
    return csv_text(header, rows)
