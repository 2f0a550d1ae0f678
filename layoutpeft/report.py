"""Compare this workspace's study with a git revision's: one Markdown report for a pull request.

    python -m stages.report --base main [--out reports/study.md]

Head is the workspace: metrics/summary.json and params.yaml as they are now (labelled with
HEAD's short sha when both equal HEAD's committed versions, else "workspace"). Base is any
git revision. What is read, and how:

- the base's metrics/summary.json: `git show <base>:metrics/summary.json` (the aggregate
  stage declares it `cache: false`, so it is committed in git); if it is not in git there,
  `dvc.api.read(..., rev=<base>)` (works when it is a DVC-cached output in the local cache
  or a configured remote);
- `dvc params diff <base> --json`: every changed param of every stage, grouped by section;
- `dvc metrics diff <base> --json`: changes in the other metrics files (metrics/data.json);
- `dvc plots diff <base> --json -o <tmp>`: base and head versions of the image plots
  (plots/images/*.png), copied next to the report; when it fails or finds nothing for a
  revision (plots/ is a DVC-cached output, so a fresh CI checkout has no base images unless
  a remote holds them), the workspace PNGs are linked alone.
All dvc commands run as `sys.executable -m dvc`, the DVC of this Python environment, and
need no network: a plain local checkout is enough.

Per variant the report shows base and head F1 (mean over seeds, 95 % t-interval), ΔF1 =
head - base with a 95 % Welch interval computed from each side's mean, std and seed count
(summary.json keeps no per-seed values, so a paired test is not possible here), and flags
the difference when that interval excludes zero. The rule, and what it does not cover
(study settings that differ, several variants tested at once), is printed in the report.

The table-building functions take plain dicts (two summaries and a `dvc params diff`
dict) and are unit-tested; main() only gathers inputs and writes files.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stages.aggregate import human_count  # TODO move to layoutpeft.formatting

SUMMARY = "metrics/summary.json"
PARAMS = "params.yaml"
DEFAULT_OUT = "reports/study.md"
# Sections whose change moves every variant's results: a base/head difference then mixes the
# variant's own change with the shared setting's.
SHARED_SECTIONS = ("data", "model", "train", "evaluate")
SHARED_KEYS = ("study.seeds",)
LONG_LIST = 8


# ====================================================================== statistics
def welch_interval(mean_a: float, std_a: float | None, n_a: int,
                   mean_b: float, std_b: float | None, n_b: int,
                   level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(b - a, low, high): Welch's t-interval for the difference of two means.

    low/high are None when either side has fewer than two seeds (no std). With both stds
    zero the interval collapses onto the difference.
    """
    diff = mean_b - mean_a
    if std_a is None or std_b is None or n_a < 2 or n_b < 2:
        return diff, None, None
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va ** 2 / (n_a - 1) if va else 0.0) + (vb ** 2 / (n_b - 1) if vb else 0.0))
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


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


def definition_changes(base_params: dict | None, head_params: dict | None) -> list[str] | None:
    """Differences between two resolved variant settings, None when either is unknown."""
    if not isinstance(base_params, dict) or not isinstance(head_params, dict):
        return None
    changes = []
    for key in sorted(set(base_params) | set(head_params)):
        if key not in head_params:
            changes.append(f"-{key}")
        elif key not in base_params:
            changes.append(f"+{key}: {fmt_value(head_params[key])}")
        elif base_params[key] != head_params[key]:
            changes.append(f"{key}: {fmt_value(base_params[key])} → {fmt_value(head_params[key])}")
    return changes


def compare_variant(name: str, base: dict, head: dict) -> dict:
    """One row of the F1 table for a variant present on both sides."""
    b_f1, h_f1 = _stats(base, "f1"), _stats(head, "f1")
    n_b, n_h = _n(base), _n(head)
    row = {
        "variant": name,
        "definition": definition_changes(base.get("params"), head.get("params")),
        "base_f1": b_f1, "head_f1": h_f1, "base_n": n_b, "head_n": n_h,
        "delta": None, "delta_low": None, "delta_high": None,
        "cis_overlap": None, "flag": "",
        "trainable_params": (base.get("trainable_params"), head.get("trainable_params")),
        "train_time_s": (_mean(base, "train_time_s"), _mean(head, "train_time_s")),
        "peak_memory_mb": (_mean(base, "peak_memory_mb"), _mean(head, "peak_memory_mb")),
    }
    if b_f1 is None or h_f1 is None:
        row["flag"] = "no F1"
        return row
    diff, low, high = welch_interval(b_f1["mean"], b_f1.get("std"), n_b,
                                     h_f1["mean"], h_f1.get("std"), n_h)
    row.update(delta=diff, delta_low=low, delta_high=high)
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
                        "peak_memory_mb": _mean(h_vars[name], "peak_memory_mb")} for name in added],
        "removed": [name for name in b_vars if name not in h_vars],
        "changed_definition": [r["variant"] for r in rows if r["definition"]],
        "flagged_up": [r["variant"] for r in rows if r["flag"] == "▲"],
        "flagged_down": [r["variant"] for r in rows if r["flag"] == "▼"],
        "base_seeds": base.get("seeds"), "head_seeds": head.get("seeds"),
        "base_reference": base.get("reference"), "head_reference": head.get("reference"),
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


# ====================================================================== formatting
def fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def fmt_change(old: Any, new: Any) -> str:
    """old → new, summarising long lists by what was added and removed."""
    if old is None:
        return f"(none) → {fmt_value(new)}"
    if new is None:
        return f"{fmt_value(old)} → (none)"
    if isinstance(old, list) and isinstance(new, list) and max(len(old), len(new)) > LONG_LIST:
        added = [v for v in new if v not in old]
        removed = [v for v in old if v not in new]
        parts = [f"{len(old)} → {len(new)} items"]
        if removed:
            parts.append("removed " + ", ".join(fmt_value(v) for v in removed))
        if added:
            parts.append("added " + ", ".join(fmt_value(v) for v in added))
        if not added and not removed:
            parts.append("reordered")
        return "; ".join(parts)
    return f"{fmt_value(old)} → {fmt_value(new)}"


def md(text: str) -> str:
    """Escape a table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_f1(stats: dict | None, n: int) -> str:
    if stats is None:
        return "–"
    if stats.get("ci95_low") is None or stats.get("ci95_high") is None:
        return f"{stats['mean']:.3f} (n={n})"
    return f"{stats['mean']:.3f} [{stats['ci95_low']:.3f}, {stats['ci95_high']:.3f}] (n={n})"


def fmt_delta(row: dict) -> str:
    if row["delta"] is None:
        return "–"
    text = f"{row['delta']:+.3f}"
    if row["delta_low"] is not None:
        text += f" [{row['delta_low']:+.3f}, {row['delta_high']:+.3f}]"
    return text


def fmt_count(n: float | None) -> str:
    return human_count(n, sep="")  # the summary's rule, compact for the report's wider table


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f}" if abs(s) >= 100 else f"{s:.1f}"


def fmt_mb(mb: float | None) -> str:
    return "–" if mb is None else f"{mb:,.0f}"


def fmt_cost(pair: tuple, fmt) -> str:
    """`base → head (+x %)`, or one value when both sides agree to the shown precision."""
    old, new = pair
    if old is None and new is None:
        return "–"
    if old is None or new is None:
        return f"{fmt(old)} → {fmt(new)}"
    if fmt(old) == fmt(new):
        return fmt(new)
    pct = f" ({(new - old) / old * 100:+.0f} %)" if old else ""
    return f"{fmt(old)} → {fmt(new)}{pct}"


def fmt_definition(changes: list[str] | None) -> str:
    if changes is None:
        return "?"
    return "same" if not changes else "changed: " + "; ".join(changes)


FLAG_RULE = (
    "**Flag rule.** ▲/▼: the 95 % Welch interval for ΔF1 = head − base excludes 0. It is "
    "computed from each side's mean, std and number of seeds in summary.json (per-seed values "
    "are not kept there, so no paired test), treating the two sets of runs as independent: "
    "when both sides used the same seeds and a seed moves both results the same way, this "
    "overstates the noise and the flag is conservative. `n<2`: a side with one seed has no "
    "interval, so no flag. Non-overlap of the two per-side 95 % intervals, a cruder check, is "
    "nearly always stricter than this rule; overlapping intervals do not mean \"no difference\". "
    "With k variants compared, about 0.05·k flags are expected by chance alone even when "
    "nothing changed."
)


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
        out.append(f"- **Seeds:** base {fmt_value(c.get('base_seeds'))}, head {fmt_value(c.get('head_seeds'))}")
    out.append(f"- **Variants:** {len(rows)} on both sides, {len(c['changed_definition'])} with a changed "
               f"definition, {len(c['added'])} added, {len(c['removed'])} removed; "
               f"F1 flagged ▲ {len(c['flagged_up'])}, ▼ {len(c['flagged_down'])}")
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
            "Test-set entity F1 (seqeval, strict IOB2): mean over seeds [95 % t-interval] (seeds). "
            "Cost columns: base → head (relative change).", "",
            "| Variant | Definition | Base F1 | Head F1 | ΔF1 [95 % CI] | Flag | Trainable params "
            "| Train time (s) | Peak memory (MB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(md(x) for x in (
            r["variant"], fmt_definition(r["definition"]),
            fmt_f1(r["base_f1"], r["base_n"]), fmt_f1(r["head_f1"], r["head_n"]),
            fmt_delta(r), r["flag"],
            fmt_cost(r["trainable_params"], fmt_count), fmt_cost(r["train_time_s"], fmt_seconds),
            fmt_cost(r["peak_memory_mb"], fmt_mb))) + " |")
    if not rows:
        out.append("| (no variant on both sides) | | | | | | | | |")
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
        out += ["| Added variant | Head F1 | Trainable params | Train time (s) | Peak memory (MB) |",
                "|---|---|---|---|---|"]
        for r in c["added_rows"]:
            out.append("| " + " | ".join(md(x) for x in (
                r["variant"], fmt_f1(r["f1"], r["n"]), fmt_count(r["trainable_params"]),
                fmt_seconds(r["train_time_s"]), fmt_mb(r["peak_memory_mb"]))) + " |")
        out.append("")

    out += ["## Params changed", ""]
    if not params_grouped:
        out += ["None (`dvc params diff`).", ""]
    for file, sections in params_grouped.items():
        for section, changes in sections.items():
            out += [f"### `{section}` ({file})", "", "| Param | Base → head |", "|---|---|"]
            for key, old, new in changes:
                out.append(f"| `{md(key)}` | {md(fmt_change(old, new))} |")
            out.append("")

    other = {f: ch for f, ch in (metrics_diff or {}).items() if f != SUMMARY and ch}
    if metrics_diff is not None:
        n_summary = len((metrics_diff or {}).get(SUMMARY) or {})
        out += ["## Other metrics", "",
                f"`dvc metrics diff`: {n_summary} numeric value(s) changed in `{SUMMARY}` (the table above)"
                + (f"; changes in {', '.join(f'`{f}`' for f in other)} below." if other else
                   "; no other metrics file changed."), ""]
        for file, changes in other.items():
            out += ["<details>", f"<summary>{file}: {len(changes)} value(s) changed</summary>", "",
                    "| Metric | Base | Head | Δ |", "|---|---|---|---|"]
            for key, ch in sorted(changes.items()):
                diff = ch.get("diff")
                out.append(f"| `{md(key)}` | {fmt_value(ch.get('old'))} | {fmt_value(ch.get('new'))} | "
                           f"{'' if diff is None else fmt_value(diff)} |")
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
    """The base revision's summary.json and where it came from."""
    text = git("show", f"{base}:{SUMMARY}", cwd=cwd)
    if text is not None:
        return json.loads(text), f"git show {base}:{SUMMARY}"
    try:
        import dvc.api

        text = dvc.api.read(SUMMARY, repo=str(cwd) if cwd else None, rev=base)
        return json.loads(text), f"dvc.api.read({SUMMARY!r}, rev={base!r})"
    except Exception as err:  # noqa: BLE001 - any failure: the base has no readable summary
        return None, f"no {SUMMARY} at {base} ({type(err).__name__})"


def head_label(cwd: Path | None = None) -> str:
    sha = git("rev-parse", "--short", "HEAD", cwd=cwd)
    if sha is None:
        return "workspace"
    status = git("status", "--porcelain", "--", SUMMARY, PARAMS, cwd=cwd)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare with (branch, tag, sha)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Markdown report path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    sha = git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    if sha is None:
        print(f"error: --base {args.base!r} is not a git revision here (fetch it first: "
              f"git fetch origin <branch>, or check out with fetch-depth: 0)", file=sys.stderr)
        return 2
    if not Path(SUMMARY).is_file():
        print(f"error: {SUMMARY} not found: run the study first (dvc repro, or python -m stages.profile ...)",
              file=sys.stderr)
        return 2
    head = json.loads(Path(SUMMARY).read_text())
    base, base_source = read_base_summary(args.base)
    notes = [f"Base summary: {base_source}"]

    params_diff, why = dvc_json("params", "diff", args.base)
    if params_diff is None:
        notes.append(f"Params diff unavailable: {why}")
    metrics_diff, why = dvc_json("metrics", "diff", args.base)
    if metrics_diff is None:
        notes.append(f"Metrics diff unavailable: {why}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots, plot_note = collect_plots(args.base, out.parent)
    if plot_note:
        notes.append(f"Plots: {plot_note}")

    comparison = compare_summaries(base, head)
    text = render_report(
        base_label=f"`{args.base}` (`{sha[:7]}`)", head_label=head_label(),
        comparison=comparison, params_grouped=group_params_diff(params_diff or {}),
        shared_changes=shared_setting_changes(params_diff or {}, comparison),
        metrics_diff=metrics_diff, plots=plots, notes=notes)
    out.write_text(text)
    print(f"report: {out} ({len(comparison['rows'])} variants compared, "
          f"{len(comparison['added'])} added, {len(comparison['removed'])} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
