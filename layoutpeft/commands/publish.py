"""`layoutpeft publish NAME --command "..."`: copy the study's results into results/NAME/ for git."""

from __future__ import annotations

import argparse
from pathlib import Path

from layoutpeft.study.publish import publish, rerender, short_table, update_readme_block


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="layoutpeft publish", description=__doc__)
    parser.add_argument("name", help="results/<name>/")
    parser.add_argument("--command", help="the command that reproduces the study (required unless --rerender)")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="rebuild results/NAME/'s summary and plots from its committed run records (no training)",
    )
    parser.add_argument("--quiet-costs", type=Path, help="with --rerender: a quiet cost benchmark's costs.json")
    parser.add_argument("--note", default="", help="a paragraph for results/<name>/README.md")
    parser.add_argument(
        "--readme", default="README.md", help="also replace its <!-- results:NAME --> block with a short table of the summary"
    )
    args = parser.parse_args(argv)
    if args.rerender:
        target = rerender(args.name, quiet_costs=args.quiet_costs)
    elif not args.command:
        parser.error("--command is required (or --rerender)")
    else:
        target = publish(args.name, args.command, args.note)
    updated = Path(args.readme).is_file() and update_readme_block(
        Path(args.readme), args.name, short_table(target, Path(args.readme).parent)
    )
    print(f"publish: {target}/" + (f" and the results:{args.name} block of {args.readme}" if updated else ""))
    return 0
