"""Regenerate a section of benchmarks/README.md from a benchmark's result file, so no figure is typed by hand.

    python benchmarks/readme_tables.py benchmarks/results/2026-11-27-cpu-speed-quiet.md --block speed-cpu

Copies the result's text (without its title) between `<!-- results:<block> -->` and
`<!-- /results:<block> -->` in benchmarks/README.md (or --readme), with a line naming the file it came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import argument_parser

from layoutpeft.study.publish import update_readme_block


def body_of(result: Path) -> str:
    lines = result.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    demoted = [("#" + line) if line.startswith("#") else line for line in lines]  # under a README subsection
    return "\n".join([f"*Generated from `{result.as_posix()}` by `python benchmarks/readme_tables.py`.*", *demoted])


def main(argv=None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("result", type=Path, help="a benchmark's .md result file")
    parser.add_argument("--block", required=True, help="the README block name")
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parent / "README.md")
    args = parser.parse_args(argv)
    if not args.result.is_file():
        print(f"readme_tables: error: {args.result}: no such file", file=sys.stderr)
        return 2
    if not update_readme_block(args.readme, args.block, body_of(args.result)):
        print(f"readme_tables: error: {args.readme}: no <!-- results:{args.block} --> block", file=sys.stderr)
        return 2
    print(f"{args.readme}: block {args.block} regenerated from {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
