"""The rank convention decided on validation: LoRA's tuned lr at the rank extremes under each `rank_scaling`.

    python benchmarks/rank_convention.py --plan
    python benchmarks/rank_convention.py --set train.precision=fp32 --out benchmarks/results/<date>-rank-convention
    python benchmarks/rank_convention.py --out benchmarks/results/<date>-rank-convention --report
    python benchmarks/rank_convention.py --ranks 64 --out ...      # a second process takes r 64

Whether one learning rate serves every rank depends on how the update's scale follows r
(docs/methods.md#rank-convention: alpha_2r keeps the scale at 2, alpha_fixed makes it 32 / r,
rslora 8 / sqrt(r); all three give 2 at r 16). The reference study's LoRA (q, k, v, o, r 16) is
tuned again at each rank of --ranks under each convention, on the tuning seed, with the reference
profile's protocol (LoRA's own lr grid, which every LoRA variant inherits, grid extension, successive
halving, the whole annealed schedule; benchmarks/study_cost.py's params). The alpha_2r arms are thus
the ablation profile's lora_r1 / lora_r64 tunes, trial for trial: on the same code and machine
they are the same trial-cache entries (profiles.yaml, ablation). Each (rank, convention) tune is one
JSON in --out/lr: resumable, and processes with disjoint --ranks or --conventions share the work.

The decision (validation only, one tuning seed): under a convention whose tuned lr is the same at
every rank, a rank sweep needs one lr; its best validation F1 at each rank is printed beside it.
The default changes from alpha_2r only when another convention keeps the lr where alpha_2r does not
and reaches a validation F1 no lower at any rank by more than --margin points.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import add_study_options, argument_parser

from layoutpeft.atomic import write_json, write_text
from layoutpeft.train import tuning
from layoutpeft.train.methods import RANK_SCALINGS, validate_variant

from study_cost import results_folder, study_params, tune_variant

BASE = "lora"


def arm_name(rank: int, convention: str) -> str:
    return f"{BASE}_r{rank}_{convention}"


def arm_variant(params: dict, study: Path, rank: int, convention: str) -> dict:
    """The study's LoRA at this rank and convention (alpha by the convention), on LoRA's own lr grid."""
    spec = {k: v for k, v in params["variants"][BASE].items() if k != "alpha"}
    spec.update(r=rank, rank_scaling=convention, lr=json.loads((study / "lr" / f"{BASE}.json").read_text())["chosen_lr"])
    return validate_variant(arm_name(rank, convention), spec, params["data"]["prompt_reserve"], check_runtime=False)


def decide(results: dict[tuple[int, str], dict], ranks: list[int], conventions: list[str], margin: float) -> dict:
    rows: dict[str, dict] = {}
    for convention in conventions:
        got = {r: results.get((r, convention)) for r in ranks}
        lrs = {r: g["chosen_lr"] for r, g in got.items() if g}
        f1 = {r: max(t["best_val_f1"] for t in g["trials"] if t["lr"] == g["chosen_lr"]) for r, g in got.items() if g}
        rows[convention] = {
            "chosen_lr": lrs,
            "best_val_f1": f1,
            "complete": len(lrs) == len(ranks),
            "one_lr": len(set(lrs.values())) == 1 if len(lrs) == len(ranks) else None,
        }
    default = "alpha_2r"
    verdict = "undecided: not every (rank, convention) has finished"
    if all(r["complete"] for r in rows.values()) and default in rows:
        if rows[default]["one_lr"]:
            verdict = f"{default} stays: its tuned lr is the same at every rank"
        else:
            better = [
                c
                for c, r in rows.items()
                if c != default
                and r["one_lr"]
                and all(100 * (r["best_val_f1"][k] - rows[default]["best_val_f1"][k]) >= -margin for k in ranks)
            ]
            verdict = (
                f"{better[0]}: one lr serves every rank and no rank loses more than {margin:g} points"
                if better
                else f"{default} stays: no other convention keeps one lr without losing more than {margin:g} points"
            )
    return {"conventions": rows, "decision": verdict, "margin_points": margin}


def report(decision: dict, ranks: list[int]) -> str:
    lines = [
        "| rank_scaling | " + " | ".join(f"r {r}: tuned lr (val F1)" for r in ranks) + " | one lr |",
        "|---|" + "---:|" * len(ranks) + "---|",
    ]
    for convention, row in decision["conventions"].items():
        cells = [f"{row['chosen_lr'][r]:g} ({100 * row['best_val_f1'][r]:.1f})" if r in row["chosen_lr"] else "–" for r in ranks]
        lines.append(f"| {convention} | " + " | ".join(cells) + f" | {row['one_lr']} |")
    return "\n".join([*lines, "", f"Decision: {decision['decision']}."]) + "\n"


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    add_study_options(parser, "per-(rank, convention) tunes", plan=True)
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--conventions", nargs="+", default=list(RANK_SCALINGS), choices=RANK_SCALINGS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="params key=value on top")
    parser.add_argument("--margin", type=float, default=1.0, help="largest accepted validation F1 loss, points")
    args = parser.parse_args(argv)
    study = Path(args.study)
    params = study_params(study, args.overrides)
    arms = [(r, c) for r in args.ranks for c in args.conventions]
    variants = {arm: arm_variant(params, study, *arm) for arm in arms}
    tuning_cfg = tuning.TuningConfig.from_params(params)
    if args.plan:
        epochs = params["train"]["max_epochs"]
        for (r, c), v in variants.items():
            grid = tuning.lr_grid(v, tuning_cfg)
            planned = tuning.planned_epochs(len(grid), tuning_cfg, epochs)
            print(f"{arm_name(r, c)}: alpha {v['alpha']:g}, lrs {grid}, {planned} epochs (grid extensions not counted)")
        return
    out = results_folder(args, params)
    if not args.report:
        for arm, variant in variants.items():
            tune_variant(arm_name(*arm), variant, params, Path(args.tokenized), out)
    results = {}
    for r in args.ranks:
        for c in RANK_SCALINGS:
            path = out / "lr" / f"{arm_name(r, c)}.json"
            if path.is_file():
                results[(r, c)] = json.loads(path.read_text())
    decision = decide(results, args.ranks, list(RANK_SCALINGS), args.margin)
    write_json(out / "rank_convention.json", {**decision, "ranks": args.ranks, "overrides": args.overrides})
    text = report(decision, args.ranks)
    write_text(out / "rank_convention.md", text)
    print(text)


if __name__ == "__main__":
    main()
