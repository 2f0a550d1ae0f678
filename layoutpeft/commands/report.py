"""`layoutpeft report --base <rev> [--profile NAME] [--out reports/study.md]`: this study vs another revision's, in Markdown.

For a pull-request comment (.github/workflows/study.yml) or a local look (`make report BASE=main`).
With `--profile NAME` (what the PR workflow uses) the base is the base revision's study *on that
profile*: its committed study when it ran with the profile's values, else computed here in a git
worktree of the base that shares this repository's DVC cache and run cache (layoutpeft.study.basestudy).
See layoutpeft.study.report (what is read) and layoutpeft.study.comparison (what is compared, how).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.report import DEFAULT_OUT, write_report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="layoutpeft report",
        description="Compare this workspace's study with a git revision's (Markdown report for a pull request).",
    )
    parser.add_argument("--base", required=True, help="git revision to compare with (branch, tag, sha)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Markdown report path (default {DEFAULT_OUT})")
    parser.add_argument(
        "--profile",
        help="the profile the workspace ran (profiles.yaml): compare with the base's "
        "study on the same profile, computing it when the base has none",
    )
    parser.add_argument("--pull", action="store_true", help="--profile: dvc exp run --pull for a computed base")
    parser.add_argument("--base-workdir", help="--profile: where to put the base's worktree (default: next to the repository)")
    args = parser.parse_args(argv)
    base, notes = args.base, []
    if args.profile:
        from layoutpeft.study.basestudy import ensure_base_study, head_ran_profile

        if not head_ran_profile(args.profile):
            raise LayoutpeftError(
                f"params.yaml does not hold profile {args.profile!r}'s values: run "
                f"`layoutpeft profile {args.profile}` first (the report would compare "
                "two different profiles)"
            )
        base, note = ensure_base_study(
            args.base, args.profile, pull=args.pull, workdir=Path(args.base_workdir) if args.base_workdir else None
        )
        notes = [f"Profile: both sides ran `{args.profile}` (this profiles.yaml's values)", note]
    result = write_report(base, Path(args.out), notes=notes, base_name=args.base)
    print(
        f"report: {args.out} ({len(result['rows'])} variants compared, "
        f"{len(result['added'])} added, {len(result['removed'])} removed)"
    )
    return 0
