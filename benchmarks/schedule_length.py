"""Schedule length decided on validation: 15, 20 and 30 annealed epochs, paired over seeds.

    python benchmarks/schedule_length.py --plan        # trainings, epochs and planned hours; trains nothing
    python benchmarks/schedule_length.py --out benchmarks/results/2026-12-07-schedule-length
    python benchmarks/schedule_length.py --out benchmarks/results/2026-12-07-schedule-length --report
    python benchmarks/schedule_length.py --variants lora --out ...   # a second process takes lora

Each variant (default full, lora, vera) trains at the lr its study's tune@ chose, with the study's
params.yaml, once per seed and length: benchmarks/defaults_seeds.py does it (its baseline arm is the
study's own schedule, the others `max_epochs=L`), one folder per variant under --out, one JSON per
finished (length, seed): resumable, and two processes with disjoint --seeds or --variants share the
work. The schedule anneals to zero at its own last epoch, so each length is a whole schedule.

The decision (validation only; test F1 is shown for information): the shortest length that is not
measurably worse than the study's length for every variant, paired by seed: the paired 95 % t-interval
of its validation F1 difference reaches 0 or above, and the mean difference is no worse than
--margin points (three seeds detect only large losses; the margin bounds what is accepted unseen).
A length that one variant fails with all its seeds is refused whatever the other variants' seeds
will show; otherwise, without all seeds of every variant, that length is undecided. Writes schedule_length.json
(the table and the decision) and schedule_length.md beside the per-variant folders.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import add_study_options, argument_parser

from layoutpeft.atomic import write_json, write_text
from layoutpeft.config import load_params
from layoutpeft.study import stats

import defaults_seeds  # benchmarks/, beside this script


def arm_for(length: int, study_length: int) -> str:
    """The defaults_seeds arm that trains `length` epochs ("" = the study's own schedule, its baseline)."""
    return "" if length == study_length else f"max_epochs={length}"


def seconds_per_epoch(study: Path, variant: str) -> float:
    """Measured training + validation seconds per epoch of the variant's committed study runs."""
    records = [json.loads(p.read_text()) for p in sorted((study / "runs").glob(f"{variant}-*.json"))]
    records = [r for r in records if r.get("variant") == variant]
    if not records:
        raise SystemExit(f"{study / 'runs'}: no run of {variant!r} to time an epoch by")
    return sum(r["training"]["wall_time_s"] / r["training"]["epochs_run"] for r in records) / len(records)


def plan(study: Path, variants: list[str], lengths: list[int], seeds: list[int]) -> dict:
    rows = []
    for variant in variants:
        per_epoch = seconds_per_epoch(study, variant)
        epochs = len(seeds) * sum(lengths)
        rows.append(
            {
                "variant": variant,
                "trainings": len(seeds) * len(lengths),
                "epochs": epochs,
                "s_per_epoch": per_epoch,
                "hours": epochs * per_epoch / 3600,
            }
        )
    return {
        "rows": rows,
        "trainings": sum(r["trainings"] for r in rows),
        "epochs": sum(r["epochs"] for r in rows),
        "hours": sum(r["hours"] for r in rows),
    }


def results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def length_of(result: dict, study_length: int) -> int:
    return int(result["overrides"].get("max_epochs", study_length))


def decide(by_variant: dict[str, list[dict]], lengths: list[int], study_length: int, seeds: list[int], margin: float) -> dict:
    """The table (per variant and length: validation and test F1 by seed, the paired difference with the
    study's length) and the shortest accepted length (None while a shorter one is undecided)."""
    table: dict[str, dict[str, dict]] = {}
    verdicts: dict[int, dict[str, str]] = {}  # length -> variant -> verdict
    for variant, rows in by_variant.items():
        by_length: dict[int, dict[int, dict]] = {}
        for r in rows:
            by_length.setdefault(length_of(r, study_length), {})[r["seed"]] = r
        base = {s: r["best_val_f1"] for s, r in by_length.get(study_length, {}).items()}
        table[variant] = {}
        for length in lengths:
            got = by_length.get(length, {})
            val = {s: r["best_val_f1"] for s, r in got.items()}
            entry: dict = {
                "seeds": sorted(val),
                "val_f1": stats.seed_stats(val.values()),
                "test_f1": stats.seed_stats(r["test_f1"] for r in got.values()),
                "best_epochs": [got[s]["best_epoch"] for s in sorted(got)],
                "s_per_epoch": sum(r["epoch_time_s"] for r in got.values()) / len(got) if got else None,
            }
            if length != study_length:
                c = stats.paired_comparison(val, base)
                complete = set(seeds) <= set(val) and set(seeds) <= set(base)
                verdict = (
                    "undecided"
                    if not complete or c is None or c["ci95_high"] is None
                    else "measurably worse"
                    if c["ci95_high"] < 0
                    else f"worse by more than the {margin:g}-point margin"
                    if 100 * c["mean_diff"] < -margin
                    else "not measurably worse"
                )
                entry.update(vs_study_length=c, verdict=verdict)
                verdicts.setdefault(length, {})[variant] = verdict
            table[variant][str(length)] = entry
    # The shortest accepted length. A length that one variant fails with all its seeds is refused
    # whatever the others' seeds will say; one that no variant fails waits for every variant's seeds.
    chosen: int | None = study_length
    refused: list[str] = []
    reason = ""
    for length in sorted(lengths):
        if length >= study_length:
            break
        verdict_of = verdicts.get(length, {})
        failed = {v: verdict for v, verdict in verdict_of.items() if verdict not in ("undecided", "not measurably worse")}
        if failed:
            refused.append(f"{length} epochs refused: " + ", ".join(f"{v} {verdict}" for v, verdict in failed.items()))
            continue
        if not verdict_of or "undecided" in verdict_of.values():
            chosen, reason = None, f"{length} epochs: not every variant has all seeds yet"
            break
        chosen, reason = length, f"{length} epochs: not measurably worse than {study_length} for every variant"
        break
    if not reason:
        reason = f"no shorter length is accepted for every variant: {study_length} stays"
    return {"table": table, "max_epochs": chosen, "reason": "; ".join([*refused, reason])}


def report(decision: dict, study_length: int, margin: float) -> str:
    def cell(s):
        if not s:
            return "–"
        half = stats.half_width(s)
        return f"{100 * s['mean']:.1f}" + (f" ± {100 * half:.1f}" if half is not None else "")

    lines = [
        "Schedule length on validation (each length a whole annealed schedule; mean ± 95 % t half-width over "
        f"seeds; Δ paired with {study_length} epochs, in points; test F1 for information only)",
        "",
        "| variant | epochs | seeds | val F1 | Δ val F1 [95 % CI] | verdict | test F1 | best epochs | s/epoch |",
        "|---|---:|---|---:|---:|---|---:|---|---:|",
    ]
    for variant, by_length in decision["table"].items():
        for length, e in by_length.items():
            c = e.get("vs_study_length")
            delta = (
                "–"
                if not c
                else (
                    f"{100 * c['mean_diff']:+.1f}"
                    + (f" [{100 * c['ci95_low']:+.1f}, {100 * c['ci95_high']:+.1f}]" if c["ci95_low"] is not None else "")
                )
            )
            lines.append(
                f"| {variant} | {length} | {', '.join(map(str, e['seeds'])) or '–'} | {cell(e['val_f1'])} | "
                f"{delta} | {e.get('verdict', 'the study length')} | {cell(e['test_f1'])} | "
                f"{', '.join(map(str, e['best_epochs'])) or '–'} | "
                f"{'–' if e['s_per_epoch'] is None else round(e['s_per_epoch'])} |"
            )
    lines += [
        "",
        f"Rule: the shortest length whose paired validation F1 difference has a 95 % interval reaching 0 "
        f"and a mean loss within the {margin:g}-point margin, for every variant (a length one variant fails with all "
        f"its seeds is refused without waiting for the others). Decision: "
        f"{decision['max_epochs'] if decision['max_epochs'] is not None else 'undecided'} ({decision['reason']}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    add_study_options(parser, "per-variant results", plan=True)
    parser.add_argument("--variants", nargs="+", default=["full", "lora", "vera"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[15, 20, 30])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--margin", type=float, default=1.0, help="largest accepted mean loss, in F1 points")
    parser.add_argument(
        "--every-arm",
        default="",
        help="train.* overrides for every length alike (defaults_seeds.py), e.g. precision=fp32 on a CPU without bf16 units",
    )
    args = parser.parse_args(argv)
    study = Path(args.study)
    study_length = load_params(study / "params.yaml")["train"]["max_epochs"]
    lengths = sorted(set(args.lengths) | {study_length})
    if args.plan:
        p = plan(study, args.variants, lengths, args.seeds)
        for r in p["rows"]:
            print(
                f"{r['variant']}: {r['trainings']} trainings, {r['epochs']} epochs x {r['s_per_epoch']:.1f} s/epoch "
                f"(the study's runs) = {r['hours']:.1f} h"
            )
        print(f"in all: {p['trainings']} trainings, {p['epochs']} epochs, {p['hours']:.1f} h of one-thread training")
        return
    if not args.out:
        raise SystemExit("--out is required (or --plan)")
    out = Path(args.out)
    if not args.report:
        for variant in args.variants:
            defaults_seeds.main(
                [
                    "--study",
                    str(study),
                    "--variant",
                    variant,
                    "--tokenized",
                    args.tokenized,
                    "--seeds",
                    *map(str, args.seeds),
                    "--out",
                    str(out / variant),
                    "--every-arm",
                    args.every_arm,
                    "--arms",
                    *(arm_for(length, study_length) for length in lengths),
                ]
            )
    decision = decide({v: results(out / v) for v in args.variants}, lengths, study_length, args.seeds, args.margin)
    write_json(
        out / "schedule_length.json",
        {
            "study": str(study),
            "study_length": study_length,
            "lengths": lengths,
            "seeds": args.seeds,
            "margin_points": args.margin,
            **decision,
        },
    )
    text = report(decision, study_length, args.margin)
    write_text(out / "schedule_length.md", text)
    print(text)


if __name__ == "__main__":
    main()
