"""The seed study's summary: run files in, the summary dict (statistics from layoutpeft.study.stats
and .bootstrap) and compact metrics out; layoutpeft.study.tables renders it (Markdown, CSV, stdout).

Reads metrics/runs/<variant>-<seed>.json for exactly the studied variants x seeds (files of other
variants or seeds are ignored, and listed as stale). A missing or unreadable run file is never
averaged away silently: its variant lists the seed in `missing_seeds`, `Study.warnings()` names
the file and the table shows "2/3, missing: 1". Shapes: docs/result-files.md.
Nothing here writes files (the aggregate stage does, atomically). MB is 10^6 bytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layoutpeft.errors import LayoutpeftError
from layoutpeft.study import bootstrap, stats
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
    "peak_memory_mb": "memory.peak_bytes",  # divided by MB on reading
    "inference_tokens_per_s": "inference.tokens_per_s",
    "merged_inference_tokens_per_s": "inference.merged_tokens_per_s",
}
# summary key -> dotted path; the same for every seed of a variant (the first run's value is kept).
CONSTANTS: dict[str, str] = {
    "lr": "variant_params.lr",  # the lr the runs used (chosen by tune@ when tuning)
    "trainable_params": "parameters.trainable",
    "total_params": "parameters.total",
    "trainable_share": "parameters.trainable_share",
    # what trains, split (layoutpeft.train.probes.count_parameters; older records: layoutpeft.study.recount)
    "method_params": "parameters.method",  # the method's own weights
    "head_params": "parameters.head",  # the new classifier, trained by every method
    "table_params": "parameters.new_tables",  # a BERT checkpoint's new 2-D tables, likewise
    "full_trainable_params": "parameters.full_trainable",  # full fine-tuning's trainable count: every share's base
    "method_share": "parameters.method_share",
    "method_bytes": "parameters.method_bytes",  # the method's own tensors alone
    "saved_bytes": "saved_bytes",  # what a user ships: method + head + trained tables
}
FRACTIONS = ("trainable_share", "method_share", "lr")
REQUIRED = ("scores.f1", "scores.precision", "scores.recall")
# A variant's keys in summary.json, in the order of docs/result-files.md.
ENTRY_KEYS = (
    "method",
    "params",
    "n_seeds",
    "seeds",
    "missing_seeds",
    "f1",
    "precision",
    "recall",
    "lr",
    "lr_tuning",
    "trainable_params",
    "total_params",
    "trainable_share",
    "method_params",
    "head_params",
    "table_params",
    "full_trainable_params",
    "method_share",
    "method_bytes",
    "params_recounted",
    "saved_bytes",
    "train_time_s",
    "epoch_time_s",
    "epochs_run",
    "best_epoch",
    "peak_memory_mb",
    "memory_kind",
    "inference_tokens_per_s",
    "merged_inference_tokens_per_s",
    "quiet_costs",
    "f1_bootstrap",
    "vs_reference",
)
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
    extra_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    runs: dict[str, dict[int, dict]] = field(default_factory=dict)
    problems: dict[str, dict[int, str]] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        """The study's seeds and the variant's extra ones (study.extra_runs)."""
        return (*self.seeds, *self.extra_seeds.get(variant, ()))

    def warnings(self) -> list[str]:
        out = []
        for variant, by_seed in self.problems.items():
            if by_seed:
                files = ", ".join(f"{run_path(self.runs_dir, variant, s)} ({why})" for s, why in sorted(by_seed.items()))
                n = len(self.seeds_of(variant))
                out.append(f"{variant}: {n - len(by_seed)}/{n} seeds usable; left out: {files}")
        if self.reference is not None and not self.runs.get(self.reference):
            out.append(f"reference {self.reference!r} has no readable run: no paired comparison")
        return out


def read_study(
    runs_dir: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    reference: str | None,
    extra_seeds: Mapping[str, Sequence[int]] | None = None,
) -> Study:
    """Every run file of variants x seeds (and each variant's extra seeds); AggregateError (naming the
    folder) when none is readable."""
    study = Study(Path(runs_dir), tuple(variants), tuple(seeds), reference, {v: tuple(s) for v, s in (extra_seeds or {}).items()})
    for variant in variants:
        study.runs[variant], study.problems[variant] = {}, {}
        for seed in study.seeds_of(variant):
            run, problem = read_run(run_path(runs_dir, variant, seed), variant, seed)
            if run is None:
                assert problem is not None  # read_run says why it read nothing
                study.problems[variant][seed] = problem
            else:
                study.runs[variant][seed] = run
    if not any(study.runs.values()):
        raise AggregateError(
            f"{runs_dir}: no run file could be read for any of the {len(variants)} studied variants "
            f"x {len(seeds)} seeds (expected e.g. {run_path(runs_dir, variants[0], seeds[0])}; "
            "run the evaluate stages first)"
        )
    if study.runs_dir.is_dir():
        expected = {run_path(runs_dir, v, s).name for v in variants for s in study.seeds_of(v)}
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
        "n_seeds": len(present),
        "seeds": present,
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
        if value is not None and key not in FRACTIONS:
            value = int(round(value))
        entry[key] = value
    entry["params_recounted"] = bool(dig(first, "parameters.recounted"))
    entry["lr_tuning"] = None
    entry["quiet_costs"] = None
    entry["f1_bootstrap"] = None
    entry["vs_reference"] = None
    return {key: entry[key] for key in entry_keys(types)}


def compare_with_reference(mine: dict[int, float], reference: dict[int, float]) -> dict | None:
    """Paired comparison of test F1 (variant - reference) with the pairs it used."""
    comparison = paired_comparison(mine, reference)
    if comparison is not None:
        comparison["pairs"] = {
            str(s): {"variant": mine[s], "reference": reference[s]} for s in sorted(set(mine) & set(reference))
        }
    return comparison


def tuning_entry(tuned: dict | None) -> dict | None:
    """What summary.json keeps of a variant's data/lr/<variant>.json."""
    if not tuned:
        return None
    return {
        "tuned": tuned.get("tuned"),
        "chosen_lr": tuned.get("chosen_lr"),
        "seed": tuned.get("seed"),
        "at_grid_edge": tuned.get("at_grid_edge"),
        "extended_by": tuned.get("extended_by") or [],
        "wall_time_s": tuned.get("wall_time_s"),
        "halving": tuned.get("halving"),
        "trials": [
            {k: t.get(k) for k in ("lr", "best_val_f1", "best_epoch", "epochs_run", "stopped_at_epoch")}
            for t in tuned.get("trials", [])
        ],
    }


def read_tuning(lr_dir: Path, variants: Sequence[str]) -> dict[str, dict]:
    """{variant: its data/lr/<variant>.json} for the variants that have one."""
    found = {}
    for name in variants:
        path = Path(lr_dir) / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def build_summary(
    runs: dict[str, dict[int, dict]],
    seeds: Sequence[int],
    reference: str | None,
    tuning: dict[str, dict] | None = None,
    margin: float | None = None,
    extra_seeds: Mapping[str, Sequence[int]] | None = None,
    quiet_costs: dict | None = None,
) -> dict:
    """The summary.json dict (NaN-free) from {variant: {seed: run}}, variants in study order.

    Every comparison with the reference is paired over the seeds both have (a variant given extra
    seeds is compared over the shared ones), Holm-corrected across the family of comparisons, tested
    for equivalence within ±`margin` (F1 points) when one is given, and carries a power line."""
    extra = extra_seeds or {}
    types = entity_types_of(run for by_seed in runs.values() for run in by_seed.values())
    variants = {name: summarise_variant(by_seed, [*seeds, *extra.get(name, ())], types) for name, by_seed in runs.items()}
    for name, entry in variants.items():
        entry["lr_tuning"] = tuning_entry((tuning or {}).get(name))
        entry["quiet_costs"] = ((quiet_costs or {}).get("variants") or {}).get(name)
    # scores.f1 is REQUIRED of a readable run: the filters below only narrow the type
    f1 = {name: {s: v for s, r in by_seed.items() if (v := number(r, "scores.f1")) is not None} for name, by_seed in runs.items()}
    ref_f1 = f1.get(reference, {}) if reference is not None else {}
    for name, entry in variants.items():
        if name != reference and ref_f1:
            entry["vs_reference"] = compare_with_reference(f1[name], ref_f1)
    judge(variants, f1, ref_f1, margin)
    add_bootstrap(variants, runs, reference)
    add_shares(variants, reference)
    return without_nan(
        {
            "reference": reference,
            "seeds": list(seeds),
            "extra_seeds": {k: list(v) for k, v in extra.items()},
            "statistics": {
                "alpha": stats.ALPHA,
                "correction": "holm",
                "margin_points": margin,
                "target_power": stats.TARGET_POWER,
            },
            "trained": trained_on(runs),
            "load": load_record(runs),
            "quiet_costs": quiet_source(quiet_costs),
            "variants": variants,
        }
    )


def load_record(runs: dict[str, dict[int, dict]]) -> dict:
    """The 1-minute load averages the runs recorded (training start/end, evaluation start/end): the
    range, and how many runs recorded any."""
    training, evaluation, recorded = [], [], 0
    for by_seed in runs.values():
        for run in by_seed.values():
            t = [number(run, f"training.load_average.{k}") for k in ("start", "end")]
            e = [number(run, f"inference.load_average.{k}") for k in ("start", "end")]
            training += [v for v in t if v is not None]
            evaluation += [v for v in e if v is not None]
            recorded += any(v is not None for v in t + e)
    return {
        "runs": sum(len(b) for b in runs.values()),
        "recorded": recorded,
        "training": [min(training), max(training)] if training else None,
        "evaluation": [min(evaluation), max(evaluation)] if evaluation else None,
    }


def quiet_source(quiet_costs: dict | None) -> dict | None:
    """What summary.json keeps of a quiet cost benchmark besides its per-variant figures."""
    if not quiet_costs:
        return None
    return {
        k: quiet_costs.get(k)
        for k in ("path", "command", "date", "environment", "precision", "load_average", "steps", "rounds", "method")
    }


def judge(variants: dict[str, dict], f1: dict[str, dict[int, float]], ref_f1: dict[int, float], margin: float | None) -> None:
    """Add to each comparison with the reference: `p_holm` (Holm over all of them), `equivalence`
    (TOST within ±margin points, its p Holm-corrected over the family too), `verdict` ("differs",
    "equivalent" or "undecided") and `power` (layoutpeft.stats.power_line)."""
    compared = {n: e["vs_reference"] for n, e in variants.items() if e.get("vs_reference")}
    adjusted = stats.holm({n: c.get("p_value") for n, c in compared.items()})
    tests = {n: stats.equivalence(f1[n], ref_f1, margin / 100) if margin else None for n in compared}
    tost_adjusted = stats.holm({n: t["p_value"] if t else None for n, t in tests.items()})
    family = sum(1 for c in compared.values() if c.get("p_value") is not None)
    for name, comparison in compared.items():
        comparison["p_holm"] = adjusted[name]
        test = tests[name]
        if test is not None:
            p = tost_adjusted[name]
            test = {**test, "margin_points": margin, "p_holm": p, "equivalent": p is not None and p < stats.ALPHA}
        comparison["equivalence"] = test
        comparison["verdict"] = verdict(comparison)
        comparison["power"] = stats.power_line(f1[name], ref_f1, family=max(family, 1))


def verdict(comparison: dict) -> str | None:
    """ "differs" (Holm p < alpha), "equivalent" (TOST within the margin, Holm-corrected), else
    "undecided"; None without a p-value."""
    if comparison.get("p_holm") is None:
        return None
    if comparison["p_holm"] < stats.ALPHA:
        return "differs"
    return "equivalent" if (comparison.get("equivalence") or {}).get("equivalent") else "undecided"


def per_form(by_seed: dict[int, dict]) -> dict[int, dict] | None:
    """{seed: scores.per_form} when every run of the variant recorded per-form counts, else None."""
    found = {s: dig(run, "scores.per_form") for s, run in by_seed.items()}
    return found if found and all(isinstance(v, dict) and v for v in found.values()) else None


def add_bootstrap(variants: dict[str, dict], runs: dict[str, dict[int, dict]], reference: str | None) -> None:
    """`f1_bootstrap` per variant and `bootstrap` in its comparison with the reference (layoutpeft.study.bootstrap),
    where the runs recorded per-form counts; None otherwise."""
    forms = {name: per_form(by_seed) for name, by_seed in runs.items()}
    ref = forms.get(reference) if reference is not None else None
    for name, entry in variants.items():
        mine = forms[name]
        entry["f1_bootstrap"] = bootstrap.f1_interval(mine) if mine else None
        vs = entry.get("vs_reference")
        if vs is not None:
            vs["bootstrap"] = bootstrap.paired_difference(mine, ref) if mine and ref else None


def add_shares(variants: dict[str, dict], reference: str | None) -> None:
    """Shares of full fine-tuning's trainable count: from the records' own base where they hold it,
    else from the reference's trainable count when the reference is full fine-tuning."""
    full = next((e["trainable_params"] for e in variants.values() if e.get("method") == "full"), None)
    for entry in variants.values():
        base = entry.get("full_trainable_params") or full
        if base and entry.get("trainable_params") is not None:
            entry["trainable_share"] = entry["trainable_params"] / base
        if base and entry.get("method_params") is not None:
            entry["method_share"] = entry["method_params"] / base


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
    half-width of its 95 % interval and the paired difference with the reference, in F1 points
    (percent, as summary.md prints them; the `_pct` names say so in `dvc exp show`), and its p."""

    def points(value: float | None) -> float | None:
        return None if value is None else 100 * value

    out = {}
    for name, e in summary["variants"].items():
        vs = e["vs_reference"] or {}
        out[name] = {
            "f1_pct": points((e["f1"] or {}).get("mean")),
            "f1_ci95_pct": points(half_width(e["f1"])),
            "delta_f1_pct": points(vs.get("mean_diff")),
            "p": vs.get("p_value"),
            "p_holm": vs.get("p_holm"),
        }
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
    return (
        f"`{checkpoint}`, a BERT checkpoint turned LayoutLM ({tables}): not LayoutLM-base, whose 2-D tables "
        "are pre-trained, so its F1 says how the methods compare at this scale, not what LayoutLM reaches"
    )


def schedule_text(train: Any, precision: Any) -> str | None:
    if not isinstance(train, dict) or "max_epochs" not in train:
        return None
    parts = [
        f"up to {train['max_epochs']} epochs",
        f"batch {train.get('batch_size', '?')}",
        f"patience {train.get('patience', '?')}",
    ]
    if train.get("select_on"):
        parts.append(f"best epoch on validation {train['select_on']}")
    return ", ".join(parts + ([str(precision)] if precision else []))


def trained_on(runs: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """What the table comes from: the runs' distinct model and schedule descriptions (sorted)."""
    runs_list = [run for by_seed in runs.values() for run in by_seed.values()]
    models = {text for run in runs_list if (text := model_text(run.get("model"))) is not None}
    schedules = {text for run in runs_list if (text := schedule_text(run.get("train_params"), run.get("precision"))) is not None}
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
            found_env, found_train = run.get("environment"), run.get("train_environment")
            env: dict = found_env if isinstance(found_env, dict) else {}
            train_env: dict = found_train if isinstance(found_train, dict) else env
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
