"""Stage `aggregate`: summarise the seed study across seeds and compare variants with the reference.

Reads metrics/runs/<variant>-<seed>.json for exactly the variants x seeds of params.yaml's
`study:` (files of other variants or seeds are ignored) and writes:

* metrics/summary.json  mean / std / 95 % t-interval over seeds of every score and cost, and
                        the paired difference in test F1 with the reference (docs/result-files.md);
* metrics/summary.md    the study's table for humans;
* metrics/summary.csv   one flat row per variant, for tools;
* plots/                CSVs for `dvc plots` and PNGs under plots/images/.

A missing or unreadable run file is never averaged away silently: the variant lists it in
`missing_seeds`, a warning names the file, and summary.md shows "2/3, missing: 1".
Every file is written atomically (temporary file + rename) and plots/ is built next to the
old one and swapped in only once complete. MB here is 10^6 bytes.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from scipy import stats as sps

from layoutpeft.config import ParamsError, get, load_params

PER_TYPES = ("HEADER", "QUESTION", "ANSWER")
MB = 1e6

# summary key -> dotted path inside a run file; values are averaged over seeds.
SEED_METRICS: dict[str, str] = {
    "f1": "scores.f1",
    "precision": "scores.precision",
    "recall": "scores.recall",
    **{f"f1_{t}": f"scores.per_type.{t}.f1" for t in PER_TYPES},
    "train_time_s": "training.wall_time_s",
    "epoch_time_s": "training.epoch_time_s",
    "epochs_run": "training.epochs_run",
    "peak_memory_mb": "memory.peak_bytes",          # divided by MB on reading
    "inference_tokens_per_s": "inference.tokens_per_s",
    "merged_inference_tokens_per_s": "inference.merged_tokens_per_s",
}
# summary key -> dotted path; the same for every seed of a variant (the first run's value is kept).
CONSTANTS: dict[str, str] = {
    "trainable_params": "parameters.trainable",
    "total_params": "parameters.total",
    "trainable_share": "parameters.trainable_share",
    "saved_bytes": "saved_bytes",
}
REQUIRED = ("scores.f1", "scores.precision", "scores.recall")
# A variant's keys in summary.json, in the order of docs/result-files.md.
ENTRY_KEYS = ("method", "params", "n_seeds", "seeds", "missing_seeds",
              "f1", "precision", "recall", *(f"f1_{t}" for t in PER_TYPES),
              "trainable_params", "total_params", "trainable_share", "saved_bytes",
              "train_time_s", "epoch_time_s", "epochs_run", "peak_memory_mb",
              "inference_tokens_per_s", "merged_inference_tokens_per_s", "vs_reference")


class AggregateError(RuntimeError):
    """Nothing to aggregate (no run file could be read)."""


def warn(message: str) -> None:
    print(f"aggregate: WARNING: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- params

def study_settings(params: dict, where: str = "params.yaml") -> tuple[list[str], list[int], str | None]:
    """(variants, seeds, reference or None) from the `study:` section, checked."""
    names = get(params, "study.variants", list, where=where)
    seeds = get(params, "study.seeds", list, where=where)
    reference = get(params, "study.reference", str, default=None, where=where)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ParamsError(f"{where}: study.variants must be a non-empty list of variant names, got {names!r}")
    if len(set(names)) != len(names):
        raise ParamsError(f"{where}: study.variants lists a variant twice")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ParamsError(f"{where}: study.seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"{where}: study.seeds lists a seed twice")
    return list(names), list(seeds), reference


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


def run_path(runs_dir: Path, variant: str, seed: int) -> Path:
    return runs_dir / f"{variant}-{seed}.json"


def read_run(path: Path, variant: str, seed: int) -> tuple[dict | None, str | None]:
    """(run, None) or (None, why it cannot be used)."""
    if not path.is_file():
        return None, "missing"
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


def load_runs(runs_dir: Path, variants: Sequence[str], seeds: Sequence[int]
              ) -> tuple[dict[str, dict[int, dict]], dict[str, dict[int, str]]]:
    """({variant: {seed: run}}, {variant: {seed: problem}}) for the study's variants x seeds only."""
    runs: dict[str, dict[int, dict]] = {}
    problems: dict[str, dict[int, str]] = {}
    for variant in variants:
        runs[variant], problems[variant] = {}, {}
        for seed in seeds:
            run, problem = read_run(run_path(runs_dir, variant, seed), variant, seed)
            if run is None:
                problems[variant][seed] = problem
            else:
                runs[variant][seed] = run
    return runs, problems


# --------------------------------------------------------------------------- statistics

def t_halfwidth(std: float, n: int, level: float = 0.95) -> float:
    return float(sps.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def seed_stats(values: Iterable[float | None]) -> dict | None:
    """{mean, std, ci95_low, ci95_high} over the non-null values; std and CI null with one value;
    None with no value."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None
    mean = math.fsum(xs) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_halfwidth(std, n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def paired_comparison(variant: dict[int, float], reference: dict[int, float]) -> dict | None:
    """Paired difference variant - reference over the seeds both have.

    {n_pairs, mean_diff, ci95_low, ci95_high, p_value}: CI and p null with one pair, p null
    when scipy gives NaN (all differences identical); None with no shared seed."""
    shared = sorted(set(variant) & set(reference))
    if not shared:
        return None
    a = [variant[s] for s in shared]
    b = [reference[s] for s in shared]
    diff = seed_stats(x - y for x, y in zip(a, b))
    diffs = [x - y for x, y in zip(a, b)]
    p_value = None
    # With identical differences (up to rounding) the t statistic is undefined: scipy answers
    # nan or, in recent versions, inf with p = 0. Neither is a p-value; write null.
    if len(shared) >= 2 and max(diffs) - min(diffs) > 1e-12 * max(1.0, abs(diff["mean"])):
        p = float(sps.ttest_rel(a, b).pvalue)
        p_value = p if math.isfinite(p) else None
    return {"n_pairs": len(shared), "mean_diff": diff["mean"], "ci95_low": diff["ci95_low"],
            "ci95_high": diff["ci95_high"], "p_value": p_value}


def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """points = [(trainable_params, f1)]: True where no other point has <= params and >= F1
    with one of them strictly better."""
    flags = []
    for i, (cost_i, f1_i) in enumerate(points):
        dominated = any(cost_j <= cost_i and f1_j >= f1_i and (cost_j < cost_i or f1_j > f1_i)
                        for j, (cost_j, f1_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


_RANK_SUFFIX = re.compile(r"_r\d+$")


def rank_series(variant_params: dict[str, dict | None]) -> dict[str, list[tuple[str, float]]]:
    """Group variants whose resolved params differ only in `r` (and in `alpha` where it is the
    default 2r); keep groups with >= 2 distinct ranks.

    Returns {series name: [(variant, r), ...] sorted by r}. A series is named after its variants
    with any `_r<N>` suffix removed (lora, lora_r4 -> "lora"), else after its method."""
    groups: dict[str, list[tuple[str, float]]] = {}
    methods: dict[str, str] = {}
    for name, settings in variant_params.items():
        if not isinstance(settings, dict):
            continue
        r = settings.get("r")
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            continue
        # alpha left at its default (2r, filled in by methods.validate_variant) follows r: not a difference.
        key = json.dumps({k: v for k, v in settings.items()
                          if k != "r" and not (k == "alpha" and v == 2 * r)}, sort_keys=True, default=str)
        groups.setdefault(key, []).append((name, r))
        methods[key] = str(settings.get("method", "?"))
    series: dict[str, list[tuple[str, float]]] = {}
    for key, members in groups.items():
        if len({r for _, r in members}) < 2:
            continue
        stems = {_RANK_SUFFIX.sub("", name) for name, _ in members}
        label = stems.pop() if len(stems) == 1 else methods[key]
        unique, k = label, 2
        while unique in series:
            unique, k = f"{label}_{k}", k + 1
        series[unique] = sorted(members, key=lambda m: (m[1], m[0]))
    return dict(sorted(series.items()))


# --------------------------------------------------------------------------- the summary

def summarise_variant(runs: dict[int, dict], seeds: Sequence[int]) -> dict:
    """One variant's summary entry (without vs_reference) from its readable runs."""
    present = [s for s in seeds if s in runs]
    first = runs[present[0]] if present else {}
    entry: dict[str, Any] = {
        "method": first.get("method") or dig(first, "variant_params.method"),
        "params": first.get("variant_params"),
        "n_seeds": len(present), "seeds": present,
        "missing_seeds": [s for s in seeds if s not in runs],
    }
    for key, path in SEED_METRICS.items():
        scale = 1 / MB if key == "peak_memory_mb" else 1.0
        values = [number(runs[s], path) for s in present]
        entry[key] = seed_stats(None if v is None else v * scale for v in values)
    for key, path in CONSTANTS.items():
        value = number(first, path)
        if value is not None and key != "trainable_share":
            value = int(round(value))
        entry[key] = value
    entry["vs_reference"] = None
    return {key: entry[key] for key in ENTRY_KEYS}


def build_summary(runs: dict[str, dict[int, dict]], seeds: Sequence[int], reference: str | None) -> dict:
    variants = {name: summarise_variant(by_seed, seeds) for name, by_seed in runs.items()}
    ref_f1 = ({s: number(r, "scores.f1") for s, r in runs[reference].items()}
              if reference in runs else {})
    for name, entry in variants.items():
        if name != reference and ref_f1:
            mine = {s: number(r, "scores.f1") for s, r in runs[name].items()}
            entry["vs_reference"] = paired_comparison(mine, ref_f1)
    return {"reference": reference, "seeds": list(seeds), "variants": variants}


def without_nan(node: Any) -> Any:
    """NaN / inf -> None everywhere, so the JSON is strict."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: without_nan(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [without_nan(v) for v in node]
    return node


LIBRARIES = ("python", "torch", "transformers", "peft", "bitsandbytes", "seqeval")


def environment_line(runs: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """Distinct values of device, library versions, scoring and memory kind over all runs."""
    found: dict[str, set[str]] = {}

    def add(key: str, value: Any) -> None:
        if value not in (None, "", "..."):
            found.setdefault(key, set()).add(str(value))

    def device(env: dict) -> str | None:
        kind, name = env.get("device"), env.get("device_name")
        if not kind:
            return None
        threads = f", {env['cpu_threads']} threads" if kind == "cpu" and env.get("cpu_threads") else ""
        return f"{kind} ({name}{threads})" if name not in (None, "", "...") else kind

    for by_seed in runs.values():
        for run in by_seed.values():
            env = run.get("environment") if isinstance(run.get("environment"), dict) else {}
            train_env = run.get("train_environment") if isinstance(run.get("train_environment"), dict) else env
            add("train_device", device(train_env))
            add("eval_device", device(env))
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
    return {k: sorted(v) for k, v in found.items()}


# --------------------------------------------------------------------------- formatting

def human_count(n: float | None, sep: str = " ") -> str:
    """152000 -> "152 k", 1234567 -> "1.23 M" (three significant digits; `sep` before the unit)."""
    if n is None:
        return "–"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{sep}{unit}"
    return f"{int(n)}"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def human_mb(mb: float | None) -> str:
    if mb is None:
        return "–"
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def half_width(stat: dict | None) -> float | None:
    if not stat or stat.get("ci95_high") is None:
        return None
    return (stat["ci95_high"] - stat["ci95_low"]) / 2


def pct(stat: dict | None, with_ci: bool = True) -> str:
    """0.72 ± 0.0497 -> "72.0 ± 5.0" (percentage points)."""
    if not stat or stat.get("mean") is None:
        return "–"
    half = half_width(stat)
    text = f"{100 * stat['mean']:.1f}"
    return f"{text} ± {100 * half:.1f}" if with_ci and half is not None else text


def p_text(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def delta_text(vs: dict | None, is_reference: bool) -> str:
    if is_reference:
        return "reference"
    if not vs:
        return "–"
    text = f"{100 * vs['mean_diff']:+.1f}"
    if vs["ci95_low"] is not None:
        text += f" [{100 * vs['ci95_low']:+.1f}, {100 * vs['ci95_high']:+.1f}]"
    return f"{text}, {p_text(vs['p_value'])}"


def seeds_text(entry: dict, n_expected: int) -> str:
    text = f"{entry['n_seeds']}/{n_expected}"
    if entry["missing_seeds"]:
        text += ", missing: " + ", ".join(str(s) for s in entry["missing_seeds"])
    return text


def sorted_variants(summary: dict) -> list[str]:
    """Best mean F1 first; variants without any run last, in study order."""
    names = list(summary["variants"])
    def key(name: str):
        f1 = summary["variants"][name]["f1"]
        return (f1 is None, -(f1["mean"]) if f1 else 0.0, names.index(name))
    return sorted(names, key=key)


def markdown_table(summary: dict, problems: dict[str, dict[int, str]], env: dict[str, list[str]],
                   runs_dir: Path) -> str:
    seeds = summary["seeds"]
    reference = summary["reference"]
    header = ["Variant", "Method", "Trainable params", "P (%)", "R (%)", "F1 (%)",
              f"Δ F1 vs {reference or 'reference'} (pts, 95 % CI, p)", "Train time", "Peak memory", "Seeds"]
    lines = ["# Seed study: LayoutLM PEFT methods on FUNSD", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * 7 + ["---"]) + "|"]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        share = e["trainable_share"]
        params = human_count(e["trainable_params"])
        if share is not None:
            params += f" ({100 * share:.2g} %)" if share < 0.1 else f" ({100 * share:.0f} %)"
        label = f"**{name}**" if name == reference else name
        lines.append("| " + " | ".join([
            label, str(e["method"] or "–"), params, pct(e["precision"]), pct(e["recall"]), pct(e["f1"]),
            delta_text(e["vs_reference"], name == reference),
            human_seconds((e["train_time_s"] or {}).get("mean")),
            human_mb((e["peak_memory_mb"] or {}).get("mean")),
            seeds_text(e, len(seeds))]) + " |")
    lines.append("")
    notes = [f"Seeds: {', '.join(map(str, seeds))}. Mean over seeds ± half-width of the 95 % t-interval "
             f"(n − 1 degrees of freedom)."]
    if reference in summary["variants"] and summary["variants"][reference]["n_seeds"]:
        notes.append(f"Δ F1: paired difference with **{reference}** over shared seeds, 95 % t-interval, "
                     f"paired t-test p-value.")
    elif reference:
        notes.append(f"Reference {reference} has no readable run in this study: no paired comparison.")
    else:
        notes.append("No study.reference: no paired comparison.")
    scoring = ", ".join(env.get("scoring", [])) or "unknown"
    notes.append(f"Scoring: seqeval entity-level micro precision / recall / F1 ({scoring}) on the FUNSD test split.")
    libs = ", ".join(f"{lib} {' / '.join(env[lib])}" for lib in LIBRARIES if lib in env)
    train_dev, eval_dev = env.get("train_device", ["unknown"]), env.get("eval_device", ["unknown"])
    devices = ("; ".join(train_dev) if train_dev == eval_dev else
               f"training {'; '.join(train_dev)}, evaluation {'; '.join(eval_dev)}")
    notes.append(f"Device: {devices}. Versions: {libs or 'unknown'}."
                 + (f" Code: {', '.join(env['git_commit'])}." if env.get("git_commit") else ""))
    notes.append(f"Peak memory: {', '.join(env.get('memory', ['unknown']))} (MB = 10^6 bytes).")
    lines += [f"- {n}" for n in notes]
    bad = [(v, s, why) for v, by_seed in problems.items() for s, why in sorted(by_seed.items())]
    if bad:
        lines += ["", f"**Missing runs ({len(bad)}):** these seeds are left out of their variant's statistics.", ""]
        lines += [f"- `{run_path(runs_dir, v, s).as_posix()}`: {why}" for v, s, why in bad]
    return "\n".join(lines) + "\n"


def stdout_table(summary: dict) -> str:
    n = len(summary["seeds"])
    rows = [("variant", "F1 %", "ΔF1 vs ref", "trainable", "train", "seeds")]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        vs = e["vs_reference"]
        delta = ("ref" if name == summary["reference"] else
                 "–" if not vs else f"{100 * vs['mean_diff']:+.1f} {p_text(vs['p_value'])}")
        rows.append((name, pct(e["f1"]), delta, human_count(e["trainable_params"]),
                     human_seconds((e["train_time_s"] or {}).get("mean")), seeds_text(e, n)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def summary_csv(summary: dict) -> str:
    header = ["variant", "method", "is_reference", "n_seeds", "n_expected", "missing_seeds",
              "trainable_params", "total_params", "trainable_share", "saved_bytes"]
    for key in SEED_METRICS:
        header += [f"{key}_{s}" for s in ("mean", "std", "ci95_low", "ci95_high")]
    header += [f"vs_ref_{k}" for k in ("n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value")]
    rows = []
    for name, e in summary["variants"].items():
        row = [name, e["method"], name == summary["reference"], e["n_seeds"], len(summary["seeds"]),
               " ".join(map(str, e["missing_seeds"])),
               e["trainable_params"], e["total_params"], e["trainable_share"], e["saved_bytes"]]
        for key in SEED_METRICS:
            stat = e[key] or {}
            row += [stat.get(s) for s in ("mean", "std", "ci95_low", "ci95_high")]
        vs = e["vs_reference"] or {}
        row += [vs.get(k) for k in ("n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value")]
        rows.append(row)
    return csv_text(header, rows)


# --------------------------------------------------------------------------- plot data

def _mean(stat: dict | None) -> float | None:
    return stat["mean"] if stat else None


def rank_rows(summary: dict) -> list[list]:
    """plots/f1_vs_rank.csv rows: series, variant, r, f1_mean, f1_ci95_low, f1_ci95_high."""
    with_f1 = {n: e["params"] for n, e in summary["variants"].items() if e["f1"]}
    rows = []
    for series, members in rank_series(with_f1).items():
        for name, r in members:
            f1 = summary["variants"][name]["f1"]
            rows.append([series, name, r, f1["mean"], f1["ci95_low"], f1["ci95_high"]])
    return rows


def pareto_rows(summary: dict) -> list[list]:
    """plots/pareto.csv rows: variant, method, trainable_params, f1_mean, f1_ci95_low, f1_ci95_high, pareto."""
    names = [n for n, e in summary["variants"].items() if e["f1"] and e["trainable_params"] is not None]
    points = [(summary["variants"][n]["trainable_params"], summary["variants"][n]["f1"]["mean"]) for n in names]
    rows = []
    for name, flag in zip(names, pareto_flags(points)):
        e = summary["variants"][name]
        rows.append([name, e["method"], e["trainable_params"], e["f1"]["mean"], e["f1"]["ci95_low"],
                     e["f1"]["ci95_high"], flag])
    return rows


def cost_rows(summary: dict) -> list[list]:
    """plots/cost.csv rows: variant, method, train_time_s, peak_memory_mb, trainable_params, saved_mb, tokens_per_s."""
    rows = []
    for name, e in summary["variants"].items():
        if not e["n_seeds"]:
            continue
        saved = e["saved_bytes"] / MB if e["saved_bytes"] is not None else None
        rows.append([name, e["method"], _mean(e["train_time_s"]), _mean(e["peak_memory_mb"]),
                     e["trainable_params"], saved, _mean(e["inference_tokens_per_s"])])
    return rows


def curve_rows(runs: dict[str, dict[int, dict]]) -> list[list]:
    """plots/learning_curves.csv rows: variant, seed, epoch, train_loss, val_loss, val_f1."""
    rows = []
    for name, by_seed in runs.items():
        for seed in sorted(by_seed):
            history = by_seed[seed].get("history")
            for point in history if isinstance(history, list) else []:
                epoch = number(point, "epoch")
                if epoch is None:
                    continue
                rows.append([name, seed, int(epoch), number(point, "train_loss"),
                             number(point, "val_loss"), number(point, "val_f1")])
    return rows


# --------------------------------------------------------------------------- writing

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())        # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in(staged: Path, target: Path) -> None:
    """Replace folder `target` by `staged`; the old one is removed only once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
        old.rmdir()
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


PLOT_CSVS = {
    "f1_vs_rank.csv": (["series", "variant", "r", "f1_mean", "f1_ci95_low", "f1_ci95_high"], rank_rows),
    "pareto.csv": (["variant", "method", "trainable_params", "f1_mean", "f1_ci95_low", "f1_ci95_high",
                    "pareto"], pareto_rows),
    "cost.csv": (["variant", "method", "train_time_s", "peak_memory_mb", "trainable_params", "saved_mb",
                  "tokens_per_s"], cost_rows),
}


def _ci_err(stats: Sequence[dict | None]) -> list[list[float]]:
    """Asymmetric error bars [[below...], [above...]] (0 where there is no CI)."""
    low = [s["mean"] - s["ci95_low"] if s and s["ci95_low"] is not None else 0.0 for s in stats]
    high = [s["ci95_high"] - s["mean"] if s and s["ci95_high"] is not None else 0.0 for s in stats]
    return [low, high]


def _figures(folder: Path, summary: dict, curves: list[list]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    variants = summary["variants"]
    reference = summary["reference"]
    ref_f1 = variants[reference]["f1"] if reference in variants else None

    def empty(ax, text):
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(images / name, dpi=120)
        plt.close(fig)

    # F1 vs rank
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[list]] = {}
    for row in rank_rows(summary):
        series.setdefault(row[0], []).append(row)
    for label, rows in series.items():
        rs = [r[2] for r in rows]
        line, = ax.plot(rs, [100 * r[3] for r in rows], marker="o", label=label)
        if all(r[4] is not None for r in rows):
            ax.fill_between(rs, [100 * r[4] for r in rows], [100 * r[5] for r in rows],
                            color=line.get_color(), alpha=0.2)
    if series:
        ax.set_xscale("log", base=2)
    else:
        empty(ax, "no rank sweep with 2+ ranks in this study")
    if ref_f1:
        ax.axhline(100 * ref_f1["mean"], color="black", linestyle="--", label=f"{reference} (reference)")
        if ref_f1["ci95_low"] is not None:
            ax.axhspan(100 * ref_f1["ci95_low"], 100 * ref_f1["ci95_high"], color="grey", alpha=0.15)
    ax.set_xlabel("rank r (log2)")
    ax.set_ylabel("test F1 (%)")
    ax.set_title("F1 vs rank (mean over seeds, 95 % CI)")
    if series or ref_f1:
        ax.legend(fontsize=8)
    save(fig, "f1_vs_rank.png")

    # Pareto: F1 vs trainable params
    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in pareto_rows(summary) if r[2] > 0]
    for row in rows:
        stat = variants[row[0]]["f1"]
        is_ref = row[0] == reference
        ax.errorbar([row[2]], [100 * row[3]], yerr=[[100 * e[0]] for e in _ci_err([stat])],
                    fmt="*" if is_ref else "o", markersize=12 if is_ref else 5,
                    color="crimson" if is_ref else ("tab:blue" if row[6] else "tab:grey"), capsize=2)
        ax.annotate(row[0], (row[2], 100 * row[3]), textcoords="offset points", xytext=(4, 3),
                    fontsize=7 if row[6] or is_ref else 6, color="black" if row[6] or is_ref else "dimgrey")
    front = sorted((r[2], 100 * r[3]) for r in rows if r[6])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue",
                alpha=0.6, label="Pareto front")
        ax.plot([], [], "o", color="tab:grey", label="dominated")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        empty(ax, "no variant with F1 and parameter counts")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel("test F1 (%)")
    ax.set_title("F1 vs trainable parameters" + (f" (★ = {reference})" if ref_f1 else ""))
    save(fig, "pareto.png")

    # Cost bars
    for key, name, xlabel in (("train_time_s", "train_time.png", "train time (s)"),
                              ("peak_memory_mb", "peak_memory.png", "peak memory (MB)")):
        names = sorted((n for n, e in variants.items() if e[key]), key=lambda n: variants[n][key]["mean"])
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
        if names:
            stats_ = [variants[n][key] for n in names]
            ax.barh(names, [s["mean"] for s in stats_], xerr=_ci_err(stats_), capsize=2,
                    color=["crimson" if n == reference else "tab:blue" for n in names])
        else:
            empty(ax, "no data")
        ax.set_xlabel(xlabel + ", mean over seeds, 95 % CI")
        ax.tick_params(axis="y", labelsize=7)
        save(fig, name)

    # Learning curves: validation loss, mean over seeds per epoch
    fig, ax = plt.subplots(figsize=(8, 5))
    by_variant: dict[str, dict[int, list[float]]] = {}
    for variant, _seed, epoch, _train, val_loss, _f1 in curves:
        if val_loss is not None:
            by_variant.setdefault(variant, {}).setdefault(epoch, []).append(val_loss)
    if by_variant:
        cmap = plt.get_cmap("tab20")
        for i, (variant, epochs) in enumerate(by_variant.items()):
            xs = sorted(epochs)
            ax.plot(xs, [sum(epochs[x]) / len(epochs[x]) for x in xs], label=variant,
                    color=cmap(i % 20), linestyle="-" if i < 20 else "--", linewidth=1.2)
        ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        empty(ax, "no history in the run files")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.set_title("Validation loss")
    save(fig, "learning_curves.png")


def build_plots(folder: Path, summary: dict, runs: dict[str, dict[int, dict]]) -> None:
    """Every plot CSV and PNG into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (header, make_rows) in PLOT_CSVS.items():
        (folder / name).write_text(csv_text(header, make_rows(summary)))
    curves = curve_rows(runs)
    (folder / "learning_curves.csv").write_text(
        csv_text(["variant", "seed", "epoch", "train_loss", "val_loss", "val_f1"], curves))
    _figures(folder, summary, curves)


# --------------------------------------------------------------------------- the stage

def aggregate(params_path: Path, runs_dir: Path, out_metrics: Path, out_plots: Path) -> dict:
    names, seeds, reference = study_settings(load_params(params_path), where=str(params_path))
    runs, problems = load_runs(runs_dir, names, seeds)
    if not any(runs.values()):
        raise AggregateError(f"{runs_dir}: no run file could be read for any of the {len(names)} studied "
                             f"variants x {len(seeds)} seeds (expected e.g. {run_path(runs_dir, names[0], seeds[0])}; "
                             "run the evaluate stages first)")
    for variant, by_seed in problems.items():
        if by_seed:
            files = ", ".join(f"{run_path(runs_dir, variant, s)} ({why})" for s, why in sorted(by_seed.items()))
            warn(f"{variant}: {len(seeds) - len(by_seed)}/{len(seeds)} seeds usable; left out: {files}")
    if reference is not None and reference not in names:
        warn(f"study.reference {reference!r} is not in study.variants: no paired comparison")
    elif reference is not None and not runs[reference]:
        warn(f"reference {reference!r} has no readable run: no paired comparison")
    if runs_dir.is_dir():
        expected = {run_path(runs_dir, v, s).name for v in names for s in seeds}
        stale = sorted(p.name for p in runs_dir.glob("*.json") if p.name not in expected)
        if stale:
            print(f"aggregate: ignoring {len(stale)} run file(s) outside the study: {', '.join(stale[:5])}"
                  + (" ..." if len(stale) > 5 else ""))

    summary = without_nan(build_summary(runs, seeds, reference))
    env = environment_line(runs)
    summary_json = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    markdown = markdown_table(summary, problems, env, runs_dir)
    table_csv = summary_csv(summary)

    # Build plots/ beside the old one first: if anything fails, every earlier result stays in place.
    out_plots = Path(out_plots)
    out_plots.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=out_plots.parent, prefix=f".{out_plots.name}-new-"))
    try:
        os.chmod(staged, 0o777 & ~_umask())      # mkdtemp makes 0700
        build_plots(staged, summary, runs)
        write_atomic(out_metrics / "summary.json", summary_json)
        write_atomic(out_metrics / "summary.md", markdown)
        write_atomic(out_metrics / "summary.csv", table_csv)
        swap_in(staged, out_plots)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", default="metrics/runs")
    parser.add_argument("--out-metrics", default="metrics")
    parser.add_argument("--out-plots", default="plots")
    args = parser.parse_args(argv)
    summary = aggregate(Path(args.params), Path(args.runs), Path(args.out_metrics), Path(args.out_plots))
    print(stdout_table(summary))
    print(f"aggregate: wrote {args.out_metrics}/summary.json, summary.md, summary.csv and {args.out_plots}/")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ParamsError, AggregateError) as err:
        sys.exit(f"aggregate: error: {err}")


def read_params(params: dict):
    return study_settings(params)
