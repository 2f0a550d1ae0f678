"""Replay a study's recorded lr-tuning trials through successive halving (no training).

    python benchmarks/halving_replay.py                          # the reference profile's rule
    python benchmarks/halving_replay.py --rungs 5 --keep 2       # another rule
    python benchmarks/halving_replay.py --rungs 10 --keep 0.5 --json out.json

Each variant's trials in <study>/lr/*.json ran the whole schedule and recorded validation F1 per
epoch; layoutpeft.train.tuning.replay runs them through the selection code tune@ runs (tuning.search),
so the table says which lr the rule would have chosen and how many tuning epochs it would have
trained. The grid is the one the study declared (its params.yaml), the extension the profile's.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import ROOT, argument_parser

from layoutpeft.atomic import write_json
from layoutpeft.config import load_params, load_yaml
from layoutpeft.train.tuning import TuningConfig, lr_grid, replay
from layoutpeft.train.variants import resolve


def replay_study(study: Path, halving: dict, extend: int) -> list[dict]:
    params = load_params(study / "params.yaml")
    tuning = TuningConfig.from_params({**params, "study": {**params["study"], "extend_grid": extend, "halving": halving}})
    rows = []
    for path in sorted((study / "lr").glob("*.json")):
        committed = json.loads(path.read_text())
        if not committed.get("tuned"):
            continue
        declared = lr_grid(resolve(committed["variant"], params["variants"]), tuning)
        result = replay(committed["trials"], declared, tuning, params["train"]["max_epochs"], params["train"]["select_on"])
        exhaustive = sum(t["epochs_run"] for t in committed["trials"])
        rows.append(
            {
                "variant": committed["variant"],
                "committed_lr": committed["chosen_lr"],
                "halving_lr": result["chosen_lr"],
                "finalists": result["finalists"],
                "trials": len(declared),
                "exhaustive_epochs": exhaustive,
                "halving_epochs": result["epochs"],
                "saved_epochs": exhaustive - result["epochs"],
            }
        )
    return rows


def table(rows: list[dict], halving: dict) -> str:
    lines = [
        f"Successive halving, rungs {halving['rungs']}, keep {halving['keep']}: chosen lr and tuning epochs",
        "",
        "| variant | lrs | chosen lr, exhaustive | chosen lr, halving | same | epochs, exhaustive | epochs, halving | saved |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['trials']} | {r['committed_lr']:g} | {r['halving_lr']:g} | "
            f"{'yes' if r['committed_lr'] == r['halving_lr'] else '**no**'} | {r['exhaustive_epochs']} | "
            f"{r['halving_epochs']} | {r['saved_epochs']} |"
        )
    total = sum(r["exhaustive_epochs"] for r in rows)
    saved = sum(r["saved_epochs"] for r in rows)
    same = sum(r["committed_lr"] == r["halving_lr"] for r in rows)
    lines.append(
        f"| all | {sum(r['trials'] for r in rows)} | | | {same}/{len(rows)} | {total} | {total - saved} | "
        f"{saved} ({100 * saved / total:.0f} %) |"
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--study", default="results/reference-minilm")
    parser.add_argument("--profile", default="reference", help="profiles.yaml entry whose study.halving is the default")
    parser.add_argument("--rungs", nargs="*", type=int, help="rung epochs (default: the profile's)")
    parser.add_argument("--keep", type=float, help="trials kept per rung: a count (2) or a share (0.5)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    profile = load_yaml(ROOT / "profiles.yaml")[args.profile]
    halving = dict(profile.get("study.halving") or {"rungs": [], "keep": 2})
    if args.rungs is not None:
        halving["rungs"] = args.rungs
    if args.keep is not None:
        halving["keep"] = int(args.keep) if args.keep >= 1 else args.keep
    rows = replay_study(Path(args.study), halving, profile.get("study.extend_grid", 0))
    print(table(rows, halving), end="")
    if args.json:
        write_json(args.json, {"study": args.study, "halving": halving, "rows": rows})


if __name__ == "__main__":
    main()
