"""`layoutpeft plan`: what a study would run and how long it would take here, before it starts.

    layoutpeft plan                         params.yaml's study (what `dvc repro` would run)
    layoutpeft plan laptop reference+offline   each profile's study (`dvc exp run -S ...`)
    layoutpeft plan -S train.max_epochs=10  with extra overrides
    layoutpeft plan --budget 8h [PROFILE...]   which profiles finish within 8 hours here
    layoutpeft plan --workers 1,2 --stages  worker counts to estimate; list every stage and why

Stages come from DVC's own comparison with dvc.lock and the run cache (nothing is written); the
time from recorded runs of the same settings on this device, else a short timed probe (shown).
docs/planning.md explains the figures. Nothing trains.
"""

from __future__ import annotations

import argparse

from layoutpeft.errors import LayoutpeftError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="layoutpeft plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", nargs="*", metavar="PROFILE", help="profiles.yaml names (a+b combines)")
    parser.add_argument(
        "-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="extra params override, as dvc exp run -S"
    )
    parser.add_argument("--budget", help="suggest the profiles that finish within this time (8h, 90m, 2d)")
    parser.add_argument("--workers", help="worker counts to estimate, e.g. 1,2 (default: 1 to cores or GPUs)")
    parser.add_argument("--stages", action="store_true", help="list every stage with its state and reason")
    parser.add_argument("--probe-steps", type=int, default=3, help="timed steps of a probe (default 3)")
    return parser.parse_args(argv)


def worker_counts(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise LayoutpeftError(f"--workers {text!r}: expected numbers such as 1,2") from None
    if not counts or counts[0] < 1:
        raise LayoutpeftError(f"--workers {text!r}: counts must be at least 1")
    return counts


def main(argv: list[str]) -> int:
    from layoutpeft.study.plan import describe, describe_stages, parse_duration, plan_study, suggest

    args = parse(argv)
    workers = worker_counts(args.workers)
    budget = parse_duration(args.budget) if args.budget else None
    if budget is not None:
        print(suggest(budget, args.profiles or None, args.set_param, workers, args.probe_steps))
        return 0
    cache: dict = {}
    for n, profile in enumerate(args.profiles or [None]):
        plan = plan_study(".", profile, args.set_param, workers, args.probe_steps, timings_cache=cache)
        print(("\n" if n else "") + describe(plan))
        if args.stages:
            print(describe_stages(plan))
    return 0
