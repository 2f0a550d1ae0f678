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

What is compared, and how it is rendered: layoutpeft.study.comparison (pure, unit-tested);
this module only gathers its inputs and writes the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from layoutpeft.atomic import write_text
from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.comparison import SUMMARY, compare_summaries, group_params_diff, render_report, shared_setting_changes

PARAMS = "params.yaml"
DEFAULT_OUT = "reports/study.md"


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


def write_report(
    base: str, out: Path, cwd: Path | None = None, notes: list[str] | None = None, base_name: str | None = None
) -> dict:
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
        raise LayoutpeftError(
            f"--base {base!r} is not a git revision here (fetch it first: "
            f"git fetch origin <branch>, or check out with fetch-depth: 0)"
        )
    head_file = root / SUMMARY
    if not head_file.is_file():
        raise LayoutpeftError(
            f"{SUMMARY} not found: run the study first (dvc repro, or layoutpeft profile ...), or `dvc checkout {SUMMARY}`"
        )
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
        base_label=f"`{base_name or base}` (`{sha[:7]}`)",
        head_label=head_label(cwd),
        comparison=comparison,
        params_grouped=group_params_diff(params_diff or {}),
        shared_changes=shared_setting_changes(params_diff or {}, comparison),
        metrics_diff=metrics_diff,
        plots=plots,
        notes=notes,
    )
    write_text(out, text)
    return {**comparison, "out": out, "notes": notes}
