"""Compare two study summaries and render the pull-request report (pure: dicts in, Markdown out).

Per variant the report shows base and head F1 (mean over seeds ± 95 % half-width) and ΔF1 =
head - base with its 95 % interval and p-value (layoutpeft.study.stats): a paired t-test over the
seeds both sides ran when both summaries keep per-seed F1 for at least two common seeds, else
Welch's test from each side's mean, std and seed count. The row says which test it used, and
flags the difference when the interval excludes zero. The rule, and what it does not cover
(study settings that differ, several variants tested at once), is printed in the report.
Every number is shown with layoutpeft.study.formatting, as in metrics/summary.md.

Everything here takes plain dicts (two summaries, a `dvc params diff` / `dvc metrics diff` dict)
and is unit-tested; layoutpeft.study.report gathers those inputs (git, dvc) and writes the file.
"""

from __future__ import annotations

import ast
from typing import Any

from layoutpeft.study import formatting as fmt
from layoutpeft.study.stats import PAIRED, paired_comparison, welch_comparison

SUMMARY = "metrics/summary.json"
STUDY_METRICS = "metrics/study.json"
# Sections whose change moves every variant's results: a base/head difference then mixes the
# variant's own change with the shared setting's.
SHARED_SECTIONS = ("data", "model", "train", "evaluate")
SHARED_KEYS = ("study.seeds",)


# ====================================================================== statistics
def _stats(entry: dict | None, metric: str) -> dict | None:
    value = (entry or {}).get(metric)
    return value if isinstance(value, dict) and value.get("mean") is not None else None


def _mean(entry: dict | None, metric: str) -> float | None:
    stats = _stats(entry, metric)
    return None if stats is None else stats["mean"]


def _n(entry: dict | None) -> int:
    if not entry:
        return 0
    if isinstance(entry.get("n_seeds"), int):
        return entry["n_seeds"]
    return len(entry.get("seeds") or [])


def per_seed(stats: dict | None) -> dict[int | str, float] | None:
    """{seed: value} from a stats dict's `per_seed` (summaries before it existed: None)."""
    values = (stats or {}).get("per_seed")
    if not isinstance(values, dict):
        return None
    out: dict[int | str, float] = {}
    for seed, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[int(seed) if str(seed).lstrip("-").isdigit() else seed] = float(value)
    return out


def compare_f1(base: dict, head: dict) -> dict | None:
    """head - base of test F1: paired over common seeds (2 or more, per-seed values on both
    sides), else Welch from the means, stds and seed counts. None without F1 on a side."""
    b_f1, h_f1 = _stats(base, "f1"), _stats(head, "f1")
    if b_f1 is None or h_f1 is None:
        return None
    b_seeds, h_seeds = per_seed(b_f1), per_seed(h_f1)
    if b_seeds is not None and h_seeds is not None and len(set(b_seeds) & set(h_seeds)) >= 2:
        return paired_comparison(h_seeds, b_seeds)
    return welch_comparison(b_f1, _n(base), h_f1, _n(head))


def comparison_label(comparison: dict | None) -> str:
    if comparison is None:
        return fmt.DASH
    if comparison["test"] == PAIRED:
        return f"paired (n={comparison['n_pairs']})"
    return "Welch"


def definition_changes(base_params: dict | None, head_params: dict | None) -> list[str] | None:
    """Differences between two resolved variant settings, None when either is unknown."""
    if not isinstance(base_params, dict) or not isinstance(head_params, dict):
        return None
    changes = []
    for key in sorted(set(base_params) | set(head_params)):
        if key not in head_params:
            changes.append(f"-{key}")
        elif key not in base_params:
            changes.append(f"+{key}: {fmt.value(head_params[key])}")
        elif base_params[key] != head_params[key]:
            changes.append(f"{key}: {fmt.value(base_params[key])} → {fmt.value(head_params[key])}")
    return changes


def compare_variant(name: str, base: dict, head: dict) -> dict:
    """One row of the F1 table for a variant present on both sides."""
    b_f1, h_f1 = _stats(base, "f1"), _stats(head, "f1")
    comparison = compare_f1(base, head)
    row = {
        "variant": name,
        "definition": definition_changes(base.get("params"), head.get("params")),
        "base_f1": b_f1,
        "head_f1": h_f1,
        "base_n": _n(base),
        "head_n": _n(head),
        "comparison": comparison,
        "test": comparison_label(comparison),
        "delta": None,
        "delta_low": None,
        "delta_high": None,
        "p_value": None,
        "cis_overlap": None,
        "flag": "",
        "trainable_params": (base.get("trainable_params"), head.get("trainable_params")),
        "train_time_s": (_mean(base, "train_time_s"), _mean(head, "train_time_s")),
        "peak_memory_mb": (_mean(base, "peak_memory_mb"), _mean(head, "peak_memory_mb")),
        "saved_bytes": (base.get("saved_bytes"), head.get("saved_bytes")),
    }
    if comparison is None:
        row["flag"] = "no F1"
        return row
    assert b_f1 is not None and h_f1 is not None  # compare_f1 compares only when both sides have F1
    low, high = comparison["ci95_low"], comparison["ci95_high"]
    row.update(delta=comparison["mean_diff"], delta_low=low, delta_high=high, p_value=comparison["p_value"])
    if None not in (b_f1.get("ci95_low"), b_f1.get("ci95_high"), h_f1.get("ci95_low"), h_f1.get("ci95_high")):
        row["cis_overlap"] = not (h_f1["ci95_low"] > b_f1["ci95_high"] or h_f1["ci95_high"] < b_f1["ci95_low"])
    if low is None:
        row["flag"] = "n<2"
    elif low > 0:
        row["flag"] = "▲"
    elif high < 0:
        row["flag"] = "▼"
    return row


def compare_summaries(base: dict | None, head: dict) -> dict:
    """Rows for shared variants (head's order), plus added/removed variants and seeds."""
    base = base or {}
    b_vars, h_vars = base.get("variants") or {}, head.get("variants") or {}
    rows = [compare_variant(name, b_vars[name], h_vars[name]) for name in h_vars if name in b_vars]
    added = [name for name in h_vars if name not in b_vars]
    return {
        "rows": rows,
        "added": added,
        "added_rows": [
            {
                "variant": name,
                "f1": _stats(h_vars[name], "f1"),
                "n": _n(h_vars[name]),
                "trainable_params": h_vars[name].get("trainable_params"),
                "train_time_s": _mean(h_vars[name], "train_time_s"),
                "peak_memory_mb": _mean(h_vars[name], "peak_memory_mb"),
                "saved_bytes": h_vars[name].get("saved_bytes"),
            }
            for name in added
        ],
        "removed": [name for name in b_vars if name not in h_vars],
        "changed_definition": [r["variant"] for r in rows if r["definition"]],
        "flagged_up": [r["variant"] for r in rows if r["flag"] == "▲"],
        "flagged_down": [r["variant"] for r in rows if r["flag"] == "▼"],
        "base_seeds": base.get("seeds"),
        "head_seeds": head.get("seeds"),
        "base_reference": base.get("reference"),
        "head_reference": head.get("reference"),
        "base_trained": base.get("trained"),
        "head_trained": head.get("trained"),
    }


# ====================================================================== params
def parse_param(value: Any) -> Any:
    """`dvc params diff --json` prints lists/dicts as Python reprs: turn them back into objects."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def group_params_diff(params_diff: dict) -> dict[str, dict[str, list[tuple[str, Any, Any]]]]:
    """{file: {section: [(key, old, new), ...]}} from `dvc params diff --json` output."""
    grouped: dict[str, dict[str, list]] = {}
    for file, changes in sorted((params_diff or {}).items()):
        for key, change in sorted((changes or {}).items()):
            old, new = parse_param(change.get("old")), parse_param(change.get("new"))
            if old == new:
                continue
            section = key.split(".", 1)[0]
            grouped.setdefault(file, {}).setdefault(section, []).append((key, old, new))
    return grouped


def shared_setting_changes(params_diff: dict, summaries: dict | None = None) -> list[str]:
    """Changed params that move every variant (data/model/train/evaluate, seeds)."""
    keys = []
    for changes in (params_diff or {}).values():
        for key, change in (changes or {}).items():
            if parse_param(change.get("old")) == parse_param(change.get("new")):
                continue
            if key.split(".", 1)[0] in SHARED_SECTIONS or key in SHARED_KEYS:
                keys.append(key)
    if (
        summaries
        and summaries.get("base_seeds") is not None
        and summaries.get("head_seeds") is not None
        and summaries["base_seeds"] != summaries["head_seeds"]
        and "study.seeds" not in keys
    ):
        keys.append("study.seeds")
    return sorted(keys)


# ====================================================================== rendering
def md(text: str) -> str:
    """Escape a table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def f1_cell(stats: dict | None, n: int) -> str:
    """ "70.0 ± 2.5 (n=3)": F1 in percent ± 95 % half-width, as in metrics/summary.md."""
    return fmt.DASH if stats is None else f"{fmt.percent(stats)} (n={n})"


def definition_cell(changes: list[str] | None) -> str:
    if changes is None:
        return "?"
    return "same" if not changes else "changed: " + "; ".join(changes)


FLAG_RULE = (
    "**Test and flag rule.** ΔF1 = head − base in percentage points, 95 % interval and p-value. "
    "`paired (n=k)`: both summaries keep per-seed F1 and share k ≥ 2 seeds, so the test is a paired "
    "t-test over those seeds (the seed's shared effect on both runs cancels out). `Welch`: otherwise "
    "(a side without per-seed values, e.g. a summary from before they were kept, or fewer than two "
    "common seeds), Welch's t-test from each side's mean, std and number of seeds, treating the two "
    "sets of runs as independent, which is conservative when they share seeds. ▲/▼: the 95 % "
    "interval excludes 0. `n<2`: too few seeds (or pairs) for an interval, so no flag. Non-overlap "
    "of the two per-side intervals, a cruder check, is nearly always stricter than this rule; "
    'overlapping intervals do not mean "no difference". With k variants compared, about 0.05·k '
    "flags are expected by chance alone even when nothing changed."
)


def trained_lines(base: dict | None, head: dict | None) -> list[str]:
    """What each side's table comes from (model, schedule), once when both sides agree."""

    def text(side: dict | None, key: str) -> str:
        return "; ".join((side or {}).get(key) or []) or "not recorded"

    lines = []
    for key, label in (("model", "Model"), ("schedule", "Schedule")):
        if not (head or {}).get(key) and not (base or {}).get(key):
            continue
        if base is None or text(base, key) == text(head, key):
            lines.append(f"- **{label}:** {text(head, key)}")
        else:
            lines.append(f"- **{label}:** base {text(base, key)}; head {text(head, key)}")
    return lines


def header_lines(base_label: str, head_label: str, c: dict, notes: list[str] | None) -> list[str]:
    """Title and the bullet list: sides, seeds, variant counts, what was trained, notes."""
    out = [f"# Study report: {head_label} vs {base_label}", "", f"- **Base:** {base_label}", f"- **Head:** {head_label}"]
    if c.get("base_seeds") is not None or c.get("head_seeds") is not None:
        out.append(f"- **Seeds:** base {fmt.value(c.get('base_seeds'))}, head {fmt.value(c.get('head_seeds'))}")
    out.append(
        f"- **Variants:** {len(c['rows'])} on both sides, {len(c['changed_definition'])} with a changed "
        f"definition, {len(c['added'])} added, {len(c['removed'])} removed; "
        f"F1 flagged ▲ {len(c['flagged_up'])}, ▼ {len(c['flagged_down'])}"
    )
    out += trained_lines(c.get("base_trained"), c.get("head_trained"))
    out += [f"- {note}" for note in notes or []]
    return [*out, ""]


def shared_changes_warning(shared_changes: list[str]) -> list[str]:
    if not shared_changes:
        return []
    return [
        "> [!WARNING]",
        "> Settings shared by every variant differ between base and head: "
        + ", ".join(f"`{k}`" for k in shared_changes)
        + ". Every ΔF1 below mixes these changes with the variant's own; compare studies "
        "run with the same settings before reading a flag as an effect of the change.",
        "",
    ]


def f1_table_lines(rows: list[dict]) -> list[str]:
    """The F1 per variant table (variants on both sides) and the rule behind its flags."""
    out = [
        "## F1 per variant",
        "",
        "Test-set entity F1 (seqeval, strict IOB2) in %: mean over seeds ± half-width of the 95 % "
        "t-interval (seeds). Cost columns: base → head (relative change).",
        "",
        "| Variant | Definition | Base F1 (%) | Head F1 (%) | ΔF1 (pts) [95 % CI], p | Test | Flag "
        "| Trainable params | Train time | Peak memory | Saved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            "| "
            + " | ".join(
                md(x)
                for x in (
                    r["variant"],
                    definition_cell(r["definition"]),
                    f1_cell(r["base_f1"], r["base_n"]),
                    f1_cell(r["head_f1"], r["head_n"]),
                    fmt.delta(r["comparison"]),
                    r["test"],
                    r["flag"],
                    fmt.cost_change(r["trainable_params"], fmt.count),
                    fmt.cost_change(r["train_time_s"], fmt.seconds),
                    fmt.cost_change(r["peak_memory_mb"], fmt.megabytes),
                    fmt.cost_change(r["saved_bytes"], fmt.size),
                )
            )
            + " |"
        )
    if not rows:
        out.append("| (no variant on both sides) | | | | | | | | | | |")
    return [*out, "", FLAG_RULE, ""]


def added_removed_lines(c: dict) -> list[str]:
    out = ["## Variants added / removed", ""]
    if not c["added"] and not c["removed"]:
        out += ["None.", ""]
    else:
        if c["added"]:
            out += ["- **Added:** " + ", ".join(f"`{v}`" for v in c["added"])]
        if c["removed"]:
            out += ["- **Removed:** " + ", ".join(f"`{v}`" for v in c["removed"])]
        out.append("")
    if c.get("added_rows"):
        out += [
            "| Added variant | Head F1 (%) | Trainable params | Train time | Peak memory | Saved |",
            "|---|---|---|---|---|---|",
        ]
        for r in c["added_rows"]:
            out.append(
                "| "
                + " | ".join(
                    md(x)
                    for x in (
                        r["variant"],
                        f1_cell(r["f1"], r["n"]),
                        fmt.count(r["trainable_params"]),
                        fmt.seconds(r["train_time_s"]),
                        fmt.megabytes(r["peak_memory_mb"]),
                        fmt.size(r["saved_bytes"]),
                    )
                )
                + " |"
            )
        out.append("")
    return out


def params_lines(params_grouped: dict) -> list[str]:
    out = ["## Params changed", ""]
    if not params_grouped:
        out += ["None (`dvc params diff`).", ""]
    for file, sections in params_grouped.items():
        for section, changes in sections.items():
            out += [f"### `{section}` ({file})", "", "| Param | Base → head |", "|---|---|"]
            for key, old, new in changes:
                out.append(f"| `{md(key)}` | {md(fmt.change(old, new))} |")
            out.append("")
    return out


def other_metrics_lines(metrics_diff: dict | None) -> list[str]:
    """`dvc metrics diff` outside the study metrics (shown in the F1 table), one folded table per file."""
    if metrics_diff is None:
        return []
    shown = (STUDY_METRICS, SUMMARY)  # the table above (summary.json: the metrics file of older layouts)
    other = {f: ch for f, ch in metrics_diff.items() if f not in shown and ch}
    n_study = sum(len(metrics_diff.get(f) or {}) for f in shown)
    out = [
        "## Other metrics",
        "",
        f"`dvc metrics diff`: {n_study} numeric value(s) changed in `{STUDY_METRICS}` (the table above)"
        + (f"; changes in {', '.join(f'`{f}`' for f in other)} below." if other else "; no other metrics file changed."),
        "",
    ]
    for file, changes in other.items():
        out += [
            "<details>",
            f"<summary>{file}: {len(changes)} value(s) changed</summary>",
            "",
            "| Metric | Base | Head | Δ |",
            "|---|---|---|---|",
        ]
        for key, ch in sorted(changes.items()):
            diff = ch.get("diff")
            out.append(
                f"| `{md(key)}` | {fmt.value(ch.get('old'))} | {fmt.value(ch.get('new'))} | "
                f"{'' if diff is None else fmt.value(diff)} |"
            )
        out += ["", "</details>", ""]
    return out


def plots_lines(plots: list[dict] | None) -> list[str]:
    """Base and head image plots side by side (links made by report.collect_plots)."""
    out = ["## Plots", ""]
    if not plots:
        out += ["No image plots found (`plots/images/`).", ""]
    for plot in plots or []:
        out += [f"### {plot['title']}", ""]
        if plot.get("base") and plot.get("head"):
            out += ["| Base | Head |", "|---|---|", f"| ![base]({plot['base']}) | ![head]({plot['head']}) |", ""]
        elif plot.get("head"):
            out += [f"![head]({plot['head']})", ""]
        else:
            out += [f"![base]({plot['base']}) (base only: not in the workspace)", ""]
    return [*out, "Interactive overlays of the CSV plots: `dvc plots diff <base> --open`.", ""]


def render_report(
    *,
    base_label: str,
    head_label: str,
    comparison: dict,
    params_grouped: dict,
    shared_changes: list[str],
    metrics_diff: dict | None = None,
    plots: list[dict] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The Markdown report from already-computed pieces (pure)."""
    return "\n".join(
        [
            *header_lines(base_label, head_label, comparison, notes),
            *shared_changes_warning(shared_changes),
            *f1_table_lines(comparison["rows"]),
            *added_removed_lines(comparison),
            *params_lines(params_grouped),
            *other_metrics_lines(metrics_diff),
            *plots_lines(plots),
        ]
    )
