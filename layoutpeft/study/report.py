"""Compare this workspace's study with a git revision's: one Markdown report for a pull request.

    layoutpeft report --base main [--out reports/study.md]     (layoutpeft/commands/report.py)

`write_report(base, out, cwd)` does the work; bad input (a base that is not a git revision, no
metrics/summary.json in the workspace) raises LayoutpeftError naming it. Head is the workspace:
metrics/summary.json and params.yaml as they are now (labelled with HEAD's short sha when
dvc.lock, params.yaml and the summary equal HEAD's committed versions, else "workspace"). Base
is any git revision. What is read, and how:

- the base's metrics/summary.json: `git show <base>:metrics/summary.json` when it is committed
  in git there (older layouts), else `dvc.api.read(..., rev=<base>)` (a DVC-cached output: works
  with the local cache or a configured remote); without one every head variant counts as added;
- `dvc params diff <base> --json`: every changed param of every stage, grouped by section;
- `dvc metrics diff <base> --json`: changes in the other metrics files (metrics/data.json);
- `dvc plots diff <base> --json -o <tmp>`: base and head versions of the image plots
  (plots/images/*.png), copied next to the report; when it fails or finds nothing for a
  revision, the workspace PNGs are linked alone.
All dvc commands run as `sys.executable -m dvc`, the DVC of this Python environment, and need
no network: a plain local checkout is enough.

Per variant the report shows base and head F1 (mean over seeds ± 95 % half-width) and ΔF1 =
head - base with its 95 % interval and p-value (layoutpeft.study.stats): a paired t-test over the
seeds both sides ran when both summaries keep per-seed F1 for at least two common seeds, else
Welch's test from each side's mean, std and seed count. The row says which test it used, and
flags the difference when the interval excludes zero. The rule, and what it does not cover
(study settings that differ, several variants tested at once), is printed in the report.
Every number is shown with layoutpeft.study.formatting, as in metrics/summary.md.

The table-building functions take plain dicts (two summaries and a `dvc params diff` dict) and
are unit-tested; write_report() only gathers inputs and writes the file.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from layoutpeft.study import formatting as fmt
from layoutpeft.atomic import write_text
from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.stats import PAIRED, paired_comparison, welch_comparison

SUMMARY = "metrics/summary.json"
STUDY_METRICS = "metrics/study.json"
PARAMS = "params.yaml"
DEFAULT_OUT = "reports/study.md"
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
        "base_f1": b_f1, "head_f1": h_f1, "base_n": _n(base), "head_n": _n(head),
        "comparison": comparison, "test": comparison_label(comparison),
        "delta": None, "delta_low": None, "delta_high": None, "p_value": None,
        "cis_overlap": None, "flag": "",
        "trainable_params": (base.get("trainable_params"), head.get("trainable_params")),
        "train_time_s": (_mean(base, "train_time_s"), _mean(head, "train_time_s")),
        "peak_memory_mb": (_mean(base, "peak_memory_mb"), _mean(head, "peak_memory_mb")),
        "saved_bytes": (base.get("saved_bytes"), head.get("saved_bytes")),
    }
    if comparison is None:
        row["flag"] = "no F1"
        return row
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
        "added_rows": [{"variant": name, "f1": _stats(h_vars[name], "f1"), "n": _n(h_vars[name]),
                        "trainable_params": h_vars[name].get("trainable_params"),
                        "train_time_s": _mean(h_vars[name], "train_time_s"),
                        "peak_memory_mb": _mean(h_vars[name], "peak_memory_mb"),
                        "saved_bytes": h_vars[name].get("saved_bytes")} for name in added],
        "removed": [name for name in b_vars if name not in h_vars],
        "changed_definition": [r["variant"] for r in rows if r["definition"]],
        "flagged_up": [r["variant"] for r in rows if r["flag"] == "▲"],
        "flagged_down": [r["variant"] for r in rows if r["flag"] == "▼"],
        "base_seeds": base.get("seeds"), "head_seeds": head.get("seeds"),
        "base_reference": base.get("reference"), "head_reference": head.get("reference"),
        "base_trained": base.get("trained"), "head_trained": head.get("trained"),
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
    if summaries and summaries.get("base_seeds") is not None and summaries.get("head_seeds") is not None \
            and summaries["base_seeds"] != summaries["head_seeds"] and "study.seeds" not in keys:
        keys.append("study.seeds")
    return sorted(keys)



# ====================================================================== rendering
def md(text: str) -> str:
    """Escape a table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def f1_cell(stats: dict | None, n: int) -> str:
    """"70.0 ± 2.5 (n=3)": F1 in percent ± 95 % half-width, as in metrics/summary.md."""
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
    "overlapping intervals do not mean \"no difference\". With k variants compared, about 0.05·k "
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


def render_report(*, base_label: str, head_label: str, comparison: dict, params_grouped: dict,
                  shared_changes: list[str], metrics_diff: dict | None = None,
                  plots: list[dict] | None = None, notes: list[str] | None = None) -> str:
    """The Markdown report from already-computed pieces (pure)."""
    c = comparison
    rows = c["rows"]
    out = [f"# Study report: {head_label} vs {base_label}", ""]
    out.append(f"- **Base:** {base_label}")
    out.append(f"- **Head:** {head_label}")
    if c.get("base_seeds") is not None or c.get("head_seeds") is not None:
        out.append(f"- **Seeds:** base {fmt.value(c.get('base_seeds'))}, head {fmt.value(c.get('head_seeds'))}")
    out.append(f"- **Variants:** {len(rows)} on both sides, {len(c['changed_definition'])} with a changed "
               f"definition, {len(c['added'])} added, {len(c['removed'])} removed; "
               f"F1 flagged ▲ {len(c['flagged_up'])}, ▼ {len(c['flagged_down'])}")
    out += trained_lines(c.get("base_trained"), c.get("head_trained"))
    for note in notes or []:
        out.append(f"- {note}")
    out.append("")
    if shared_changes:
        out += ["> [!WARNING]",
                "> Settings shared by every variant differ between base and head: "
                + ", ".join(f"`{k}`" for k in shared_changes)
                + ". Every ΔF1 below mixes these changes with the variant's own; compare studies "
                  "run with the same settings before reading a flag as an effect of the change.", ""]

    out += ["## F1 per variant", "",
            "Test-set entity F1 (seqeval, strict IOB2) in %: mean over seeds ± half-width of the 95 % "
            "t-interval (seeds). Cost columns: base → head (relative change).", "",
            "| Variant | Definition | Base F1 (%) | Head F1 (%) | ΔF1 (pts) [95 % CI], p | Test | Flag "
            "| Trainable params | Train time | Peak memory | Saved |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(md(x) for x in (
            r["variant"], definition_cell(r["definition"]),
            f1_cell(r["base_f1"], r["base_n"]), f1_cell(r["head_f1"], r["head_n"]),
            fmt.delta(r["comparison"]), r["test"], r["flag"],
            fmt.cost_change(r["trainable_params"], fmt.count), fmt.cost_change(r["train_time_s"], fmt.seconds),
            fmt.cost_change(r["peak_memory_mb"], fmt.megabytes), fmt.cost_change(r["saved_bytes"], fmt.size))) + " |")
    if not rows:
        out.append("| (no variant on both sides) | | | | | | | | | | |")
    out += ["", FLAG_RULE, ""]

    out += ["## Variants added / removed", ""]
    if not c["added"] and not c["removed"]:
        out += ["None.", ""]
    else:
        if c["added"]:
            out += ["- **Added:** " + ", ".join(f"`{v}`" for v in c["added"])]
        if c["removed"]:
            out += ["- **Removed:** " + ", ".join(f"`{v}`" for v in c["removed"])]
        out.append("")
    if c.get("added_rows"):
        out += ["| Added variant | Head F1 (%) | Trainable params | Train time | Peak memory | Saved |",
                "|---|---|---|---|---|---|"]
        for r in c["added_rows"]:
            out.append("| " + " | ".join(md(x) for x in (
                r["variant"], f1_cell(r["f1"], r["n"]), fmt.count(r["trainable_params"]),
                fmt.seconds(r["train_time_s"]), fmt.megabytes(r["peak_memory_mb"]), fmt.size(r["saved_bytes"]))) + " |")
        out.append("")

    out += ["## Params changed", ""]
    if not params_grouped:
        out += ["None (`dvc params diff`).", ""]
    for file, sections in params_grouped.items():
        for section, changes in sections.items():
            out += [f"### `{section}` ({file})", "", "| Param | Base → head |", "|---|---|"]
            for key, old, new in changes:
                out.append(f"| `{md(key)}` | {md(fmt.change(old, new))} |")
            out.append("")

    if metrics_diff is not None:
        shown = (STUDY_METRICS, SUMMARY)  # the table above (summary.json: the metrics file of older layouts)
        other = {f: ch for f, ch in metrics_diff.items() if f not in shown and ch}
        n_study = sum(len(metrics_diff.get(f) or {}) for f in shown)
        out += ["## Other metrics", "",
                f"`dvc metrics diff`: {n_study} numeric value(s) changed in `{STUDY_METRICS}` (the table above)"
                + (f"; changes in {', '.join(f'`{f}`' for f in other)} below." if other else
                   "; no other metrics file changed."), ""]
        for file, changes in other.items():
            out += ["<details>", f"<summary>{file}: {len(changes)} value(s) changed</summary>", "",
                    "| Metric | Base | Head | Δ |", "|---|---|---|---|"]
            for key, ch in sorted(changes.items()):
                diff = ch.get("diff")
                out.append(f"| `{md(key)}` | {fmt.value(ch.get('old'))} | {fmt.value(ch.get('new'))} | "
                           f"{'' if diff is None else fmt.value(diff)} |")
            out += ["", "</details>", ""]

    out += ["## Plots", ""]
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
    out += ["Interactive overlays of the CSV plots: `dvc plots diff <base> --open`.", ""]
    return "\n".join(out)


# ====================================================================== I/O (thin)
def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def dvc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd)


def dvc_json(*args: str, cwd: Path | None = None) -> tuple[dict | None, str]:
    """Parsed JSON from a dvc command, or (None, why)."""
    proc = dvc(*args, "--json", cwd=cwd)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    try:
        return json.loads(proc.stdout or "{}"), ""
    except json.JSONDecodeError as err:
        return None, f"`dvc {' '.join(args)}`: no JSON ({err})"


def git(*args: str, cwd: Path | None = None) -> str | None:
    proc = run(["git", *args], cwd=cwd)
    return proc.stdout.strip() if proc.returncode == 0 else None


def read_base_summary(base: str, cwd: Path | None = None) -> tuple[dict | None, str]:
    """The base revision's summary.json (None when it has none) and where it came from."""
    text = git("show", f"{base}:{SUMMARY}", cwd=cwd)
    source = f"git show {base}:{SUMMARY}"
    if text is None:
        try:
            import dvc.api

            text = dvc.api.read(SUMMARY, repo=str(cwd) if cwd else None, rev=base)
            source = f"dvc.api.read({SUMMARY!r}, rev={base!r})"
        except Exception as err:  # noqa: BLE001 - any failure: the base has no readable summary
            return None, f"no {SUMMARY} at {base} ({type(err).__name__})"
    try:
        summary = json.loads(text)
    except ValueError:
        return None, f"{source}: not JSON, ignored"
    return (summary, source) if isinstance(summary, dict) else (None, f"{source}: not a summary, ignored")


def head_label(cwd: Path | None = None) -> str:
    sha = git("rev-parse", "--short", "HEAD", cwd=cwd)
    if sha is None:
        return "workspace"
    status = git("status", "--porcelain", "--", SUMMARY, PARAMS, "dvc.lock", cwd=cwd)
    if status:
        return f"workspace (uncommitted study on top of `{sha}`)"
    return f"`{sha}` (HEAD)"


def collect_plots(base: str, out_dir: Path, cwd: Path | None = None) -> tuple[list[dict], str]:
    """Copy base/head image plots next to the report; [{title, base, head}] with relative links."""
    root = Path(cwd or ".")
    img_dir = out_dir / "plots"
    if img_dir.resolve() == (root / "plots").resolve():  # never write into the pipeline's plots/
        img_dir = out_dir / "report_plots"
    if img_dir.exists():
        for old in [*img_dir.glob("base_*.png"), *img_dir.glob("head_*.png")]:
            old.unlink()
    img_dir.mkdir(parents=True, exist_ok=True)
    link = img_dir.relative_to(out_dir).as_posix()
    plots: dict[str, dict] = {}
    note = ""
    with tempfile.TemporaryDirectory(prefix="report-plots-") as tmp:
        data, why = dvc_json("plots", "diff", base, "-o", tmp, cwd=cwd)
        for path, entries in ((data or {}).get("data") or {}).items():
            for entry in entries if isinstance(entries, list) else []:
                if entry.get("type") != "image" or not entry.get("url"):
                    continue
                side = "head" if "workspace" in entry.get("revisions", []) else "base"
                src = Path(entry["url"])
                if not src.is_absolute():
                    src = Path(tmp) / src
                if not src.is_file():
                    continue
                name = f"{side}_{_slug(path)}"
                shutil.copyfile(src, img_dir / name)
                plots.setdefault(path, {"title": Path(path).name})[side] = f"{link}/{name}"
        if data is None:
            note = why
    # Workspace images that DVC did not hand back (no dvc.yaml plot entry, or plots diff failed).
    for png in sorted((root / "plots" / "images").glob("*.png")):
        path = png.relative_to(root).as_posix()
        entry = plots.setdefault(path, {"title": png.name})
        if "head" not in entry:
            name = f"head_{_slug(path)}"
            shutil.copyfile(png, img_dir / name)
            entry["head"] = f"{link}/{name}"
    missing_base = [p for p, e in plots.items() if "base" not in e]
    if plots and missing_base and not note:
        note = f"{len(missing_base)} image plot(s) have no base version (not in the local DVC cache)"
    return [plots[p] for p in sorted(plots)], note


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path)


def write_report(base: str, out: Path, cwd: Path | None = None, notes: list[str] | None = None,
                 base_name: str | None = None) -> dict:
    """Compare the workspace at `cwd` (default: the current folder) with revision `base` and write
    the Markdown report to `out` (relative to `cwd`), atomically. `notes` go first in the report's
    header list; `base_name` labels the base (default `base`), e.g. the branch a computed base
    study (layoutpeft.study.basestudy) was run from.

    Returns the comparison (compare_summaries) with `out` and `notes` added. Raises
    LayoutpeftError when `base` is not a git revision or the workspace has no readable summary."""
    root = Path(cwd) if cwd is not None else Path(".")
    out = Path(out) if Path(out).is_absolute() else root / out
    sha = git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", cwd=cwd)
    if sha is None:
        raise LayoutpeftError(f"--base {base!r} is not a git revision here (fetch it first: "
                              f"git fetch origin <branch>, or check out with fetch-depth: 0)")
    head_file = root / SUMMARY
    if not head_file.is_file():
        raise LayoutpeftError(f"{SUMMARY} not found: run the study first (dvc repro, or layoutpeft profile ...), "
                              f"or `dvc checkout {SUMMARY}`")
    try:
        head = json.loads(head_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LayoutpeftError(f"{SUMMARY}: not readable JSON ({type(err).__name__}: {err})") from err
    if not isinstance(head, dict) or not isinstance(head.get("variants"), dict):
        raise LayoutpeftError(f"{SUMMARY}: no `variants` mapping (not a summary written by the aggregate stage)")
    base_summary, base_source = read_base_summary(base, cwd=cwd)
    notes = [*(notes or []), f"Base summary: {base_source}"]

    params_diff, why = dvc_json("params", "diff", base, cwd=cwd)
    if params_diff is None:
        notes.append(f"Params diff unavailable: {why}")
    metrics_diff, why = dvc_json("metrics", "diff", base, cwd=cwd)
    if metrics_diff is None:
        notes.append(f"Metrics diff unavailable: {why}")

    out.parent.mkdir(parents=True, exist_ok=True)
    plots, plot_note = collect_plots(base, out.parent, cwd=cwd)
    if plot_note:
        notes.append(f"Plots: {plot_note}")

    comparison = compare_summaries(base_summary, head)
    text = render_report(
        base_label=f"`{base_name or base}` (`{sha[:7]}`)", head_label=head_label(cwd),
        comparison=comparison, params_grouped=group_params_diff(params_diff or {}),
        shared_changes=shared_setting_changes(params_diff or {}, comparison),
        metrics_diff=metrics_diff, plots=plots, notes=notes)
    write_text(out, text)
    return {**comparison, "out": out, "notes": notes}
