"""`layoutpeft report --base <rev> [--out reports/study.md]`: this study vs another revision's, in Markdown.

For a pull-request comment (.github/workflows/study.yml) or a local look (`make report BASE=main`).
See layoutpeft.report for what is compared and how.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from layoutpeft.report import DEFAULT_OUT, write_report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="layoutpeft report",
                                     description="Compare this workspace's study with a git revision's "
                                                 "(Markdown report for a pull request).")
    parser.add_argument("--base", required=True, help="git revision to compare with (branch, tag, sha)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Markdown report path (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    result = write_report(args.base, Path(args.out))
    print(f"report: {args.out} ({len(result['rows'])} variants compared, "
          f"{len(result['added'])} added, {len(result['removed'])} removed)")
    return 0
