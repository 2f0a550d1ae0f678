"""`layoutpeft shard`: the study's runs split into shards balanced by cost, run on DVC's machinery.

    layoutpeft shard --plan N                          which stages each of N shards runs, and its cost
    layoutpeft shard --workers N [--gpus 0,1,...]      one machine: N parallel workers, then collect
    layoutpeft shard --prepare [--push]                data stages once (before M machines start)
    layoutpeft shard --shard I/M [--pull] [--push] [--require-gpu]   shard I of M on this machine
    layoutpeft shard --collect [--pull]                restore every run from the run cache, aggregate
    layoutpeft shard --collect --partial               the same for a study still running: what has finished
    layoutpeft shard --emit slurm|actions [--shards M] recipe for a Slurm array / an Actions matrix

Shards never change a stage's params or deps: every stage is the run-cache entry a serial
`dvc repro` makes. `--workers` runs each shard as `dvc exp run --temp <stages>` (its own copy
of the workspace, one shared cache) with CUDA_VISIBLE_DEVICES from --gpus and OMP/MKL threads =
cores / N. `--collect` stops, naming the run, if dvc would train anything. See
docs/scaling-out.md and layoutpeft.scale.shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layoutpeft.scale import shards
from layoutpeft.scale.shard_recipes import DEFAULT_SHARDS, RECIPES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="layoutpeft shard",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[2:10]),
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", type=int, metavar="N", help="print the split into N shards (-v: with stages)")
    mode.add_argument("--workers", type=int, metavar="N", help="run the study with N workers on this machine")
    mode.add_argument("--shard", metavar="I/M", help="run shard I of M (counting from 1) in this workspace")
    mode.add_argument("--prepare", action="store_true", help="run the data stages (download, tokenize, variants)")
    mode.add_argument("--collect", action="store_true", help="dvc repro the whole study from the run cache")
    mode.add_argument("--emit", choices=sorted(RECIPES), help="print a recipe for M machines")
    parser.add_argument("--gpus", help="--workers: comma-separated CUDA devices, one per worker in turn")
    parser.add_argument(
        "--require-gpu", action="store_true", help="--shard: fail before running anything if torch sees no CUDA device"
    )
    parser.add_argument(
        "--pull", action="store_true", help="dvc repro --pull: restore from the default remote's run cache (outputs included)"
    )
    parser.add_argument(
        "--push", action="store_true", help="dvc push --run-cache to the default remote after each step (--prepare: at the end)"
    )
    parser.add_argument(
        "--partial", action="store_true", help="--collect: summarise the runs finished so far (the others listed as missing)"
    )
    parser.add_argument(
        "--allow-train", action="store_true", help="--collect/--workers: let the collector run stages missing from the run cache"
    )
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help=f"--emit: M (default {DEFAULT_SHARDS})")
    parser.add_argument("-v", "--verbose", action="store_true", help="--plan: list each shard's stages")
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.partial and not args.collect:
        raise shards.ShardError("--partial goes with --collect (a summary of the runs finished so far)")
    if args.partial and args.allow_train:
        raise shards.ShardError("--partial never trains: drop --allow-train, or --partial to finish the study")
    if args.emit:
        make, _ = RECIPES[args.emit]
        if args.shards < 1:
            raise shards.ShardError(f"--shards must be at least 1, got {args.shards}")
        print(make(args.shards), end="")
        return 0
    params = shards.load(Path(args.params))
    if args.plan is not None:
        print(shards.describe(shards.plan(params, args.plan), stages=args.verbose))
    elif args.workers is not None:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        if args.gpus is not None and not gpus:
            raise shards.ShardError("--gpus: expected device numbers, e.g. --gpus 0,1")
        shards.run_workers(params, args.workers, gpus=gpus, allow_train=args.allow_train)
    elif args.shard:
        index, count = shards.parse_shard(args.shard)
        shards.run_shard(params, index, count, pull=args.pull, push=args.push, require_gpu=args.require_gpu)
    elif args.prepare:
        shards.prepare(push=args.push)
    elif args.collect:
        shards.collect(pull=args.pull, allow_train=args.allow_train, partial=args.partial)
    return 0
