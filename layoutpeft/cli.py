"""The `layoutpeft` command: what is not a DVC stage (stages run with `dvc repro` / `dvc exp run`).

    layoutpeft plan laptop              what a study would run and cost here, before it starts
    layoutpeft study                    run a study this machine can finish (make study)
    layoutpeft report --base main       compare this study with another revision's (PR comment)
    layoutpeft profile laptop+offline   run a smaller study from profiles.yaml
    layoutpeft predict / export         use a trained run
    layoutpeft shard --workers 2        the study split over workers, GPUs or machines

`python -m layoutpeft ...` is the same. Each subcommand lives in layoutpeft/commands/<name>.py
as `main(argv) -> int | None`; bad input ends with one line, `layoutpeft <cmd>: error: ...`
(`--debug` shows the traceback).
"""

from __future__ import annotations

import importlib
import sys

from layoutpeft.errors import run_main

# name -> (module under layoutpeft.commands, one-line help). Add a command here and in its module.
COMMANDS = {
    "report": "compare this study's summary with a base revision's (Markdown, for a PR comment)",
    "study": "run a study this machine can finish (make study): its plan first, then progress while it trains",
    "plan": "what a study would run (DVC's status) and its estimated time here, per number of workers",
    "profile": "run a named smaller study from profiles.yaml (dvc exp run -S ...)",
    "predict": "label FUNSD-format forms with a trained run",
    "export": "export a trained run as a Hugging Face folder (merged or PEFT adapter) with a model card",
    "publish": "copy the study's results into results/<name>/ for git (and a README block)",
    "shard": "split the study's runs over workers, GPUs or machines (DVC run cache), then collect",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: layoutpeft <command> [options]   (layoutpeft <command> --help)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"layoutpeft: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"layoutpeft.commands.{name}")
    return run_main(name, module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
