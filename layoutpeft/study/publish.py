"""Publish a finished (or partly finished) study as committed files: results/<name>/.

DVC's cache holds every output, but a fresh clone without the remote sees none of it. Like
PEFT's committed method-comparison results, `publish` copies what a reader needs into a folder
that git tracks: the summary (md, json, csv), the DVC metric (study.json), every run record,
each variant's lr tuning, the plot images, the exact params.yaml and dvc.lock, and a README
naming the command that reproduces it, the model, data, schedule, device and commit. That README's
generated part sits between `<!-- results:<name> -->` and `<!-- /results:<name> -->` markers, so
what was written by hand around it (the study's story) survives a republish; the same markers in
the main README hold a short table of the summary. Tables are never typed by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from itertools import takewhile
from pathlib import Path

from layoutpeft.atomic import staged_dir, write_text
from layoutpeft.errors import LayoutpeftError
from layoutpeft.paths import LR_DIR, PLOTS_DIR, RUNS_DIR, STUDY_METRICS, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD
from layoutpeft.study.formatting import missing_seeds

RESULTS_DIR = Path("results")
# The main README's short table: the answer and its cost; summary.md has every column.
SHORT_COLUMNS = ("Variant", "Own params", "F1 (%)", "Δ F1", "Saved")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def publish(name: str, command: str, note: str = "", root: Path = Path("."), results_dir: Path = RESULTS_DIR) -> Path:
    """Copy the study's results into results/<name>/ (replaced whole, only once complete)."""
    if not NAME.match(name):
        raise LayoutpeftError(f"results name {name!r}: use letters, digits, '.', '_' or '-'")
    root = Path(root)
    summary_path = root / SUMMARY_JSON
    if not summary_path.is_file():
        raise LayoutpeftError(f"{summary_path}: missing; run the study (at least its aggregate stage) first")
    summary = json.loads(summary_path.read_text())
    runs = [root / RUNS_DIR / f"{v}-{s}.json" for v, e in summary["variants"].items() for s in e["seeds"]]
    target = root / results_dir / name
    old_readme = (target / "README.md").read_text() if (target / "README.md").is_file() else ""
    with staged_dir(target) as out:
        for path in (SUMMARY_MD, SUMMARY_JSON, SUMMARY_CSV, STUDY_METRICS, Path("params.yaml"), Path("dvc.lock")):
            if (root / path).is_file():
                shutil.copyfile(root / path, out / path.name)
        (out / "runs").mkdir()
        for run in runs:
            shutil.copyfile(run, out / "runs" / run.name)
        if (root / LR_DIR).is_dir():
            (out / "lr").mkdir()
            for tuned in sorted((root / LR_DIR).glob("*.json")):
                if tuned.stem in summary["variants"]:
                    shutil.copyfile(tuned, out / "lr" / tuned.name)
        images = root / PLOTS_DIR / "images"
        if images.is_dir():
            shutil.copytree(images, out / "plots")
        records = [json.loads(run.read_text()) for run in runs]
        generated = readme(name, command, note, summary, records, root / "dvc.lock")
        (out / "README.md").write_text(folder_readme(name, generated, old_readme))
    return target


def folder_readme(name: str, generated: str, old: str) -> str:
    """The folder's README: the generated text between its markers, and what was written by hand
    around the markers of the previous README kept."""
    kept = replace_block(old, name, generated)
    return kept if kept is not None else f"<!-- results:{name} -->\n{generated.rstrip()}\n<!-- /results:{name} -->\n"


def rerender(name: str, results_dir: Path = RESULTS_DIR, quiet_costs: Path | None = None) -> Path:
    """Rebuild results/<name>/'s summary files and plot images from its committed run records, lr
    tuning and params.yaml (no retraining): what changes when the statistics or the tables do. Its
    README.md, runs/, lr/, params.yaml and dvc.lock stay as they are."""
    import tempfile

    from layoutpeft.config import StudyConfig, load_yaml
    from layoutpeft.study.plots import write_plots
    from layoutpeft.study.summary import build_summary, json_text, read_study, read_tuning, study_metrics
    from layoutpeft.study.tables import markdown_table, summary_csv

    target = Path(results_dir) / name
    if not (target / "params.yaml").is_file() or not (target / "runs").is_dir():
        raise LayoutpeftError(f"{target}: not a published study (needs params.yaml and runs/)")
    config = StudyConfig.from_params(load_yaml(target / "params.yaml"), summary_keys=True)
    costs = None
    if quiet_costs is not None:
        costs = {**json.loads(Path(quiet_costs).read_text()), "path": Path(quiet_costs).as_posix()}
    study = read_study(target / "runs", config.variants, config.seeds, config.reference, config.extra_seeds)
    summary = build_summary(
        study.runs,
        config.seeds,
        config.reference,
        read_tuning(target / "lr", config.variants),
        margin=config.margin,
        extra_seeds=config.extra_seeds,
        quiet_costs=costs,
    )
    files = {
        SUMMARY_MD.name: markdown_table(summary, study),
        SUMMARY_JSON.name: json_text(summary),
        SUMMARY_CSV.name: summary_csv(summary),
        STUDY_METRICS.name: json_text(study_metrics(summary)),
    }
    with tempfile.TemporaryDirectory() as scratch:
        write_plots(Path(scratch) / "plots", summary, study.runs)
        with staged_dir(target / "plots") as images:
            for png in sorted((Path(scratch) / "plots" / "images").glob("*.png")):
                shutil.copyfile(png, images / png.name)
        for file_name, text in files.items():
            write_text(target / file_name, text)
    return target


def readme(name: str, command: str, note: str, summary: dict, runs: list[dict], lock: Path | None = None) -> str:
    """The folder's README from the summary and the run records (parsed once, by the caller)."""
    first = runs[0] if runs else {}
    env, trained = first.get("environment", {}), summary.get("trained") or {}  # trained: see summary.trained_on
    # records made before CPU flags were recorded lack them: take them from any run that has them
    flags = next((r["environment"]["cpu_flags"] for r in runs if (r.get("environment") or {}).get("cpu_flags")), None)
    missing = {v: e["missing_seeds"] for v, e in summary["variants"].items() if e["missing_seeds"]}
    lines = [
        f"# Study results: {name}",
        "",
        "Committed copy of a study's outputs (`layoutpeft publish`); the DVC cache holds the models.",
        "",
        f"- **Reproduce:** `{command}`",
        f"- **Model:** {'; '.join(trained.get('model') or []) or '?'}",
        "- **Data:** FUNSD, validation carved from the training forms (params.yaml `data:`), test = the 50 test forms",
        f"- **Schedule:** {'; '.join(trained.get('schedule') or []) or '?'}",
        f"- **Device:** {env.get('device', '?')} ({env.get('device_name', '?')}, {env.get('cpu_threads', '?')} threads"
        + (f", CPU flags {' '.join(flags)}" if flags else "")
        + "); "
        f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}, peft {env.get('peft', '?')}",
        f"- **Code:** {code_text(runs, lock)}",
        f"- **Runs:** {len(runs)} finished" + (f"; missing: {missing_seeds(missing)}" if missing else ""),
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "Files: `summary.md` (the table), `summary.json`, `summary.csv`, `study.json`, `runs/` (one record per",
        "run), `lr/` (each variant's lr tuning), `plots/`, and the exact `params.yaml` and `dvc.lock`.",
        "",
    ]
    return "\n".join(lines)


def code_text(runs: list[dict], lock: Path | None) -> str:
    """The commit(s) the runs were made at. Runs of a long study span several commits; then say
    whether every training stage ran the same code, from dvc.lock's hashes of their code deps."""
    envs = [run.get("environment", {}) for run in runs]
    commits = list(dict.fromkeys(e["git_commit"] for e in envs if e.get("git_commit")))
    dirty = " + uncommitted changes" if any(e.get("code_modified") for e in envs) else ""
    if len(commits) <= 1:
        return f"commit {commits[0] if commits else '?'}{dirty}"
    text = f"runs made at {len(commits)} commits ({', '.join(c[:8] for c in commits)}){dirty}"
    same = same_training_code(lock) if lock is not None and lock.is_file() else None
    if same is None:
        return text
    return text + (
        "; every tune@/train@/evaluate@ stage ran the same code (dvc.lock: equal hashes of its stages/ and layoutpeft/ deps)"
        if same
        else "; their code differs between runs (see dvc.lock)"
    )


def same_training_code(lock: Path) -> bool | None:
    """Whether every tune@/train@/evaluate@ stage in dvc.lock has the same hash for each code dep
    it shares with the others (None: no such stage)."""
    import yaml

    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    seen: dict[str, set[str]] = {}
    for name, stage in stages.items():
        if name.split("@")[0] in ("tune", "train", "evaluate"):
            for dep in stage.get("deps", []):
                if dep["path"].startswith(("stages/", "layoutpeft/")):
                    seen.setdefault(dep["path"], set()).add(dep.get("md5", ""))
    return None if not seen else all(len(hashes) == 1 for hashes in seen.values())


def short_table(target: Path, readme_dir: Path) -> str:
    """A published study as a few columns of its summary table (SHORT_COLUMNS), linked from a README in readme_dir."""
    lines = (target / "summary.md").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise LayoutpeftError(f"{target / 'summary.md'}: no table")
    table = list(takewhile(lambda line: line.startswith("|"), lines[start:]))  # the first table only
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
    keep = [i for i, header in enumerate(rows[0]) if header.startswith(SHORT_COLUMNS)]
    folder = Path(os.path.relpath(target, readme_dir)).as_posix()
    return "\n".join(
        ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]
        + [
            "",
            f"*Test F1 in %, mean ± 95 % CI over seeds. Generated by `layoutpeft publish` from [{folder}/summary.md]"
            f"({folder}/summary.md), which has every column; how, where and when it ran: [{folder}/]({folder}/README.md).*",
        ]
    )


def replace_block(text: str, name: str, body: str) -> str | None:
    """text with what lies between `<!-- results:<name> -->` and `<!-- /results:<name> -->` replaced; None if absent."""
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def update_readme_block(readme_path: Path, name: str, body: str) -> bool:
    """Replace the text between `<!-- results:<name> -->` and `<!-- /results:<name> -->`; False if absent."""
    replaced = replace_block(readme_path.read_text(), name, body)
    if replaced is None:
        return False
    write_text(readme_path, replaced)
    return True
