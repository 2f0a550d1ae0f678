"""The seed study's summary rendered: metrics/summary.md (the table, "which to pick", the notes that
say where every column comes from), the stage's stdout table and metrics/summary.csv, from the
summary dict that layoutpeft.study.summary builds. Formats: layoutpeft.study.formatting.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from layoutpeft.study import bootstrap
from layoutpeft.study import formatting as fmt
from layoutpeft.study.decision import which_to_pick
from layoutpeft.study.summary import ABSENT, LIBRARIES, MB, STAT_KEYS, Study, environment_line, number, run_path, seed_metrics


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
    """ "2.6 k (merged 2.87 k)": real tokens/s over the test split, and with the adapter merged where it can be."""
    plain, merged = _mean(entry.get("inference_tokens_per_s")), _mean(entry.get("merged_inference_tokens_per_s"))
    return fmt.count(plain) + (f" (merged {fmt.count(merged)})" if merged is not None else "")


def inference_setup(runs: dict[str, dict[int, dict]]) -> list[str]:
    """How the throughput was timed, one text per distinct setting ("batch 32, 1 thread")."""
    found = set()
    for by_seed in runs.values():
        for run in by_seed.values():
            batch, threads = number(run, "inference.batch_size"), number(run, "inference.threads")
            if batch is not None or threads is not None:
                found.add(
                    (f"batch {batch:.0f}" if batch is not None else "batch unknown")
                    + (f", {threads:.0f} thread{'s' if threads != 1 else ''}" if threads is not None else "")
                )
    return sorted(found)


def markdown_table(summary: dict, study: Study) -> str:
    """metrics/summary.md: the study's table, notes and the runs left out."""
    seeds, reference = summary["seeds"], summary["reference"]
    env = environment_line(study.runs)
    header = [
        "Variant",
        "Method",
        "lr",
        "Own params (% of full FT)",
        "Trainable in all",
        "P (%)",
        "R (%)",
        "F1 (%)",
        f"Δ F1 vs {reference or 'reference'} (pts, 95 % CI, p (Holm p))",
        "Best epoch / run",
        "Train time †",
        "Inference (tokens/s) †",
        "Peak memory †",
        "Saved: adapter / to ship",
        "Seeds",
    ]
    quiet = summary.get("quiet_costs") is not None
    if quiet:
        header[-1:-1] = ["Train step (quiet)", "Train tokens/s (quiet)", "Step tensors (quiet)"]
    lines = [
        "# Seed study: LayoutLM PEFT methods on FUNSD",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (15 if quiet else 12) + ["---"]) + "|",
    ]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        params = fmt.count(e["trainable_params"])
        if e["trainable_share"] is not None:
            params += f" ({fmt.share(e['trainable_share'])})"
        own = fmt.count(e.get("method_params"))
        if e.get("method_share") is not None:
            own += f" ({fmt.share(e.get('method_share'))})"
        saved = (
            fmt.size(e["saved_bytes"])
            if e["method"] == "full" or e.get("method_bytes") is None
            else f"{fmt.size(e.get('method_bytes'))} / {fmt.size(e['saved_bytes'])}"
        )
        tuned = e.get("lr_tuning") or {}
        lr = fmt.DASH if e.get("lr") is None else f"{e['lr']:.3g}" + (" (tuned)" if tuned.get("tuned") else "")
        if tuned.get("extended_by"):
            lr += f", grid extended {len(tuned['extended_by'])}x"
        if tuned.get("at_grid_edge"):
            lr += f" ⚠ {tuned['at_grid_edge']} of grid"
        epochs = (
            f"{_mean(e['best_epoch']):.0f} / {_mean(e['epochs_run']):.0f}"
            if e.get("best_epoch") and e.get("epochs_run")
            else fmt.DASH
        )
        mixed = e.get("memory_kind") is None and e.get("n_seeds") and e.get("peak_memory_mb") is None
        memory = "mixed kinds" if mixed and _has_memory(study.runs.get(name, {})) else fmt.megabytes(_mean(e["peak_memory_mb"]))
        cells = [
            f"**{name}**" if name == reference else name,
            str(e["method"] or fmt.DASH),
            lr,
            own,
            params,
            fmt.percent(e["precision"]),
            fmt.percent(e["recall"]),
            fmt.percent(e["f1"]),
            _delta(summary, name),
            epochs,
            fmt.seconds(_mean(e["train_time_s"])),
            inference_cell(e),
            memory,
            saved,
            fmt.seeds(e, len(seeds) + len((summary.get("extra_seeds") or {}).get(name, ()))),
        ]
        if quiet:
            q = e.get("quiet_costs") or {}
            step = q.get("step_time_s")
            cells[-1:-1] = [
                fmt.DASH if step is None else f"{step:.2f} s",
                fmt.count(q.get("tokens_per_s")),
                fmt.megabytes(None if q.get("tensor_peak_bytes") is None else q["tensor_peak_bytes"] / MB),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += which_to_pick(summary)
    extra = summary.get("extra_seeds") or {}
    notes = [
        f"Seeds: {', '.join(map(str, seeds))}"
        + (
            "; added to some variants only (study.extra_runs): "
            + "; ".join(f"{v} {', '.join(map(str, s))}" for v, s in extra.items())
            if extra
            else ""
        )
        + ". Mean over seeds ± half-width of the 95 % t-interval (n − 1 degrees of freedom)."
    ]
    if reference in summary["variants"] and summary["variants"][reference]["n_seeds"]:
        family = sum(1 for e in summary["variants"].values() if (e.get("vs_reference") or {}).get("p_value") is not None)
        notes.append(
            f"Δ F1: paired difference with **{reference}** over shared seeds, 95 % t-interval, "
            f"paired t-test p-value and, in brackets, its Holm-adjusted value over the {family} comparisons "
            f"with {reference} (statsmodels `multipletests`); every verdict above uses the Holm value."
            + equivalence_note(summary)
        )
    elif reference:
        notes.append(f"Reference {reference} has no readable run in this study: no paired comparison.")
    else:
        notes.append("No study.reference: no paired comparison.")
    notes.append(test_variance_note(summary))
    trained = summary.get("trained") or {}
    if trained.get("model"):
        notes.append(
            "Model: " + "; ".join(trained["model"]) + ". Data: FUNSD; validation carved from its training "
            "forms (params.yaml `data:`), test = its 50 test forms."
        )
    if trained.get("schedule"):
        notes.append(
            f"Schedule{'s (they differ between runs)' if len(trained['schedule']) > 1 else ''}: "
            + "; ".join(trained["schedule"])
            + "."
        )
    scoring = ", ".join(env.get("scoring", [])) or "unknown"
    notes.append(f"Scoring: seqeval entity-level micro precision / recall / F1 ({scoring}) on the FUNSD test split.")
    libs = ", ".join(f"{lib} {' / '.join(env[lib])}" for lib in LIBRARIES if lib in env)
    train_dev, eval_dev = env.get("train_device", ["unknown"]), env.get("eval_device", ["unknown"])
    devices = (
        "; ".join(train_dev) if train_dev == eval_dev else f"training {'; '.join(train_dev)}, evaluation {'; '.join(eval_dev)}"
    )
    notes.append(
        f"Device: {devices}. Versions: {libs or 'unknown'}."
        + (f" Code: {', '.join(env['git_commit'])}." if env.get("git_commit") else "")
    )
    timed = inference_setup(study.runs)
    notes.append(
        "Inference: real tokens per second on the test split, the median of timed passes after a warm-up"
        + (f" ({'; '.join(timed)})" if timed else "")
        + "; merged: the same with the adapter folded into "
        "the weights (`merge_and_unload`), for methods that allow it. It is timed on the machine that "
        "evaluated, under whatever else ran there: compare runs evaluated under equal load."
    )
    notes.append(cost_note(summary))
    notes.append(parameters_note(summary))
    notes.append(
        "Saved: the adapter alone (the method's own trained tensors) / what a user must ship beside the base "
        "checkpoint (the run's saved files: adapter, classifier head and trained new 2-D tables, and whatever "
        "else the method stores, e.g. VeRA's frozen random projections); full fine-tuning ships the whole "
        "model."
    )
    notes.append(
        f"Peak memory: {', '.join(env.get('memory', ['unknown']))} (MB = 10^6 bytes); "
        "cpu_peak_rss_training is the process's RSS peak during training (imports and loading excluded), "
        "cuda_peak_allocated the GPU tensor peak; kinds are never averaged together."
        + (
            " On CPU the RSS peak also holds heap the allocator kept after freeing, which grows over a run "
            "(benchmarks/results/2026-11-27-cpu-memory.md): compare it between runs of equal length."
            if "cpu_peak_rss_training" in env.get("memory", [])
            else ""
        )
    )
    tuned = [n for n, e in summary["variants"].items() if (e.get("lr_tuning") or {}).get("tuned")]
    if tuned:
        costs = [summary["variants"][n]["lr_tuning"]["wall_time_s"] or 0 for n in tuned]
        halving = next(
            (e["lr_tuning"]["halving"] for e in summary["variants"].values() if (e.get("lr_tuning") or {}).get("halving")), None
        )
        stopped = sum(1 for n in tuned for t in summary["variants"][n]["lr_tuning"]["trials"] if t.get("stopped_at_epoch"))
        notes.append(
            f"lr: chosen per variant on validation entity F1 (tuning seed "
            f"{summary['variants'][tuned[0]]['lr_tuning']['seed']}) from its grid"
            + (
                f", by successive halving (only the {halving['keep']} best trials go on past epoch(s) "
                f"{', '.join(map(str, halving['rungs']))}; {stopped} trial(s) stopped there)"
                if halving
                else ""
            )
            + f"; tuning cost {fmt.seconds(sum(costs))} of training in all (stopped trials included). "
            "Best epoch: chosen on validation, never on test."
        )
    lines += [f"- {n}" for n in notes]
    bad = [(v, s, why) for v, by_seed in study.problems.items() for s, why in sorted(by_seed.items())]
    if bad:
        lines += ["", f"**Missing runs ({len(bad)}):** these seeds are left out of their variant's statistics.", ""]
        absent = [run_path(study.runs_dir, v, s) for v, s, why in bad if why == ABSENT]
        if absent:  # one line, not one per run: a study in progress has many
            lines.append(f"- not (yet) in `{study.runs_dir.as_posix()}/`: " + ", ".join(f"`{p.name}`" for p in absent))
        lines += [f"- `{run_path(study.runs_dir, v, s).as_posix()}`: {why}" for v, s, why in bad if why != ABSENT]
    from layoutpeft.study import questions  # here: questions reads plots, which reads this module

    answered = questions.markdown(summary)  # "" unless the study ran a question's variants
    if answered:
        lines += ["", answered.rstrip()]
    return "\n".join(lines) + "\n"


def spread(summary: dict, key: str) -> tuple[float, str, float, float] | None:
    """(max/min over its seeds, variant, min, max) of the variant whose per-seed values of `key` spread most."""
    found = []
    for name, e in summary["variants"].items():
        values = [v for v in ((e.get(key) or {}).get("per_seed") or {}).values() if v]
        if len(values) > 1:
            found.append((max(values) / min(values), name, min(values), max(values)))
    return max(found) if found else None


def cost_note(summary: dict) -> str:
    """† costs: measured during the study's runs under whatever else ran, with the load they recorded."""
    load = summary.get("load") or {}
    if load.get("recorded"):
        parts = [
            f"{what} {lo:g}–{hi:g}"
            for what, span in (("training", load.get("training")), ("evaluation", load.get("evaluation")))
            if span
            for lo, hi in [span]
        ]
        measured = (
            f"1-minute load average {', '.join(parts)} on this machine ({load['recorded']} of {load['runs']} runs recorded it)"
        )
    else:
        measured = "load average not recorded by these runs"
    text = (
        f"† Train time, inference and peak memory were measured during the study's runs, not in a quiet benchmark ({measured})."
    )
    widest = spread(summary, "train_time_s")
    if widest:
        ratio, name, low, high = widest
        text += (
            f" Across seeds of one variant train time varies up to {ratio:.2f}x ({name} "
            f"{fmt.seconds(low)}–{fmt.seconds(high)}): read these columns as rough, and only within-run ratios "
            "(merged vs unmerged throughput) as measured."
        )
    source = summary.get("quiet_costs")
    if source:
        text += (
            f" Quiet columns: {source.get('method') or 'quiet interleaved benchmark'} "
            f"(`{source.get('path')}`, {source.get('date')}, {quiet_conditions(source)})."
        )
    else:
        text += " For comparable costs run the quiet interleaved benchmark (benchmarks/quiet_costs.py)."
    return text


def quiet_conditions(source: dict) -> str:
    """Where and how the quiet benchmark ran: its device, threads and precision can differ from the study's runs."""
    env = source.get("environment") or {}
    load = source.get("load_average") or {}
    if isinstance(load, list | tuple):  # [before, after]
        load = dict(zip(("start", "end"), load, strict=False))
    first = {k: v[0] if isinstance(v, list | tuple) else v for k, v in load.items() if v is not None}
    parts = [
        str(env.get("device_name") or env.get("device") or ""),
        "flags " + " ".join(env["cpu_flags"]) if env.get("cpu_flags") else "",
        f"{env.get('cpu_threads')} thread(s)" if env.get("cpu_threads") else "",
        f"precision {source.get('precision')}" if source.get("precision") else "",
        f"1-minute load average {first['start']:g} before, {first['end']:g} after" if {"start", "end"} <= set(first) else "",
    ]
    return ", ".join(p for p in parts if p)


def test_variance_note(summary: dict) -> str:
    """Whether the intervals also cover the test forms' sampling variance (the bootstrap), and its figures."""
    entries = {n: e for n, e in summary["variants"].items() if e.get("n_seeds")}
    done = {n: e for n, e in entries.items() if e.get("f1_bootstrap")}
    if not done:
        return (
            "Test-set variance: not estimated. These run records hold no per-form entity counts (evaluation "
            "records them from this version on), so the intervals above cover seed variance only, not the "
            "sampling of the 50 test forms; the study's models are not kept with its published records, so the "
            "bootstrap over forms and seeds applies to the next study."
        )
    parts = []
    for name, e in done.items():
        b = e["f1_bootstrap"]
        text = f"{name} {100 * b['mean']:.1f} [{100 * b['ci95_low']:.1f}, {100 * b['ci95_high']:.1f}]"
        diff = (e.get("vs_reference") or {}).get("bootstrap")
        if diff:
            text += f", Δ {100 * diff['mean_diff']:+.1f} [{100 * diff['ci95_low']:+.1f}, {100 * diff['ci95_high']:+.1f}]"
        parts.append(text)
    missing = sorted(set(entries) - set(done))
    return (
        "Test-set variance (seeds and test forms; "
        + bootstrap.METHOD
        + "), F1 and Δ F1 with 95 % intervals: "
        + "; ".join(parts)
        + "."
        + (f" No per-form counts for {', '.join(missing)}: seed intervals only." if missing else "")
    )


def equivalence_note(summary: dict) -> str:
    margin = (summary.get("statistics") or {}).get("margin_points")
    if not margin:
        return " No equivalence margin (`study.margin`): a comparison is either shown to differ or undecided."
    return (
        f" Equivalence: two one-sided paired t-tests that the difference lies within ±{margin:g} F1 points "
        "(statsmodels `ttost_paired`, study.margin), Holm-adjusted over the same family."
    )


def parameters_note(summary: dict) -> str:
    """Where the parameter columns come from, and what every method trains alike."""
    entries = [e for e in summary["variants"].values() if e.get("n_seeds")]
    split = [e for e in entries if e.get("method_params") is not None]
    if not split:
        return (
            "Trainable: every trainable weight (the method's, the head's and any new 2-D tables'); these records "
            "do not split them (`python -m layoutpeft.study.recount <runs folder>` adds the split)."
        )
    heads = sorted({e.get("head_params") for e in split if e.get("head_params") is not None})
    tables = sorted({e.get("table_params") for e in split if e.get("table_params")})
    base = sorted({e.get("full_trainable_params") for e in split if e.get("full_trainable_params")})
    shared = f"the classifier head ({', '.join(f'{h:,}' for h in heads)} weights)"
    if tables:
        shared += f" and the new 2-D position tables of the BERT checkpoint ({', '.join(f'{t:,}' for t in tables)})"
    return (
        f"Own params: the method's own trainable weights; every method also trains {shared}, which "
        f'"Trainable in all" adds. Shares are of full fine-tuning\'s trainable count'
        + (f" ({', '.join(f'{b:,}' for b in base)})" if base else "")
        + ". The Pareto front uses the own weights."
        + (
            " Split recounted from the records' model and variant settings on an untrained rebuild (layoutpeft.study.recount)."
            if any(e.get("params_recounted") for e in split)
            else ""
        )
    )


def stdout_table(summary: dict) -> str:
    """A short plain-text table for the stage's output."""
    n = len(summary["seeds"])
    rows = [("variant", "F1 %", "ΔF1 vs ref", "own params", "train", "seeds")]
    for name in sorted_variants(summary):
        e = summary["variants"][name]
        rows.append(
            (
                name,
                fmt.percent(e["f1"]),
                _delta(summary, name, with_ci=False, reference="ref"),
                fmt.count(e.get("method_params") if e.get("method_params") is not None else e["trainable_params"]),
                fmt.seconds(_mean(e["train_time_s"])),
                fmt.seeds(e, n),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows)


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


VS_KEYS = ("n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value", "p_holm", "verdict")


def summary_csv(summary: dict) -> str:
    """metrics/summary.csv: one flat row per variant (study order), for tools."""
    header = [
        "variant",
        "method",
        "is_reference",
        "n_seeds",
        "n_expected",
        "missing_seeds",
        "trainable_params",
        "total_params",
        "trainable_share",
        "method_params",
        "head_params",
        "table_params",
        "full_trainable_params",
        "method_share",
        "method_bytes",
        "saved_bytes",
    ]
    types = [key[3:] for key in next(iter(summary["variants"].values()), {}) if key.startswith("f1_")]
    metrics = seed_metrics(types)
    header += [f"{key}_{s}" for key in metrics for s in STAT_KEYS]
    header += [f"vs_ref_{k}" for k in VS_KEYS]
    rows = []
    for name, e in summary["variants"].items():
        row = [
            name,
            e["method"],
            name == summary["reference"],
            e["n_seeds"],
            len(summary["seeds"]),
            " ".join(map(str, e["missing_seeds"])),
            e["trainable_params"],
            e["total_params"],
            e["trainable_share"],
            *(
                e.get(k)
                for k in ("method_params", "head_params", "table_params", "full_trainable_params", "method_share", "method_bytes")
            ),
            e["saved_bytes"],
        ]
        row += [(e[key] or {}).get(s) for key in metrics for s in STAT_KEYS]
        row += [(e["vs_reference"] or {}).get(k) for k in VS_KEYS]
        rows.append(row)
    return csv_text(header, rows)
