"""Stage `aggregate`: summarise the seed study across seeds and compare variants with the reference.

Reads metrics/runs/<variant>-<seed>.json for exactly the variants x seeds of params.yaml's
`study:` (and each variant's lr tuning, data/lr/<variant>.json) and writes (docs/result-files.md):

* metrics/study.json    the DVC metrics file: per variant mean test F1, its 95 % half-width,
                        ΔF1 with the reference and its p (what `dvc exp show` lists first);
* metrics/summary.json  mean / std / 95 % t-interval and per-seed values of every score and
                        cost, and the paired comparison with the reference;
* metrics/summary.md    the study's table for humans; metrics/summary.csv one row per variant;
* plots/                CSVs for `dvc plots` and PNGs under plots/images/.

A missing or unreadable run file is named in a warning and in summary.md, never averaged away
silently. plots/ is built beside the old one and every file is written atomically, only once
all of them could be made: a failure leaves the previous results in place.
"""

from __future__ import annotations

import sys

from layoutpeft.atomic import staged_dir, write_text
from layoutpeft.config import StudyConfig, load_params
from layoutpeft.errors import run_main
from layoutpeft.paths import LR_DIR, PLOTS_DIR, RUNS_DIR, STUDY_METRICS, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD
from layoutpeft.study.plots import write_plots
from layoutpeft.study.summary import build_summary, json_text, read_study, read_tuning, study_metrics
from layoutpeft.study.tables import markdown_table, stdout_table, summary_csv


def read_params(params: dict) -> StudyConfig:
    """What aggregate reads: the `study:` section (variants, seeds, reference, extra_runs, margin)."""
    return StudyConfig.from_params(params, summary_keys=True)


def main(argv: list[str]) -> None:
    config = read_params(load_params())
    study = read_study(RUNS_DIR, config.variants, config.seeds, config.reference, config.extra_seeds)
    for warning in study.warnings():
        print(f"aggregate: WARNING: {warning}", file=sys.stderr)
    if study.stale:
        print(
            f"aggregate: ignoring {len(study.stale)} run file(s) outside the study: "
            f"{', '.join(study.stale[:5])}{' ...' if len(study.stale) > 5 else ''}"
        )

    summary = build_summary(
        study.runs,
        config.seeds,
        config.reference,
        read_tuning(LR_DIR, config.variants),
        margin=config.margin,
        extra_seeds=config.extra_seeds,
    )
    files = {
        STUDY_METRICS: json_text(study_metrics(summary)),
        SUMMARY_JSON: json_text(summary),
        SUMMARY_MD: markdown_table(summary, study),
        SUMMARY_CSV: summary_csv(summary),
    }
    with staged_dir(PLOTS_DIR) as plots:  # swapped in after the body; removed if anything fails
        write_plots(plots, summary, study.runs)
        for path, text in files.items():
            write_text(path, text)
    print(stdout_table(summary))
    print(f"aggregate: wrote {', '.join(p.as_posix() for p in files)} and {PLOTS_DIR.as_posix()}/")


if __name__ == "__main__":
    sys.exit(run_main("aggregate", main))
