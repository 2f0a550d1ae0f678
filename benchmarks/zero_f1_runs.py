"""The evidence for `train.collapse_epochs`: in a published study, which runs had a validation F1 of 0
(no entity found) several epochs in a row, and did any of them find an entity again?

    python benchmarks/zero_f1_runs.py --study results/reference-minilm

Reads every tuning trial (lr/<variant>.json) and every seed run (runs/<variant>-<seed>.json) with its
per-epoch history. For each run: its longest streak of zero-F1 epochs, where it began, and whether
F1 rose above 0 after it. A default of N is safe on this evidence when no run that recovered had a
streak of N or more; it saves the epochs after each never-recovering run's N-th zero.
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import argument_parser


def zero_streak(f1s: list[float]) -> tuple[int, int | None, bool]:
    """(longest streak of zero F1, its first epoch (1-based) or None, whether F1 > 0 came after it)."""
    best, start, run, run_start = 0, None, 0, None
    for epoch, f1 in enumerate(f1s, 1):
        if f1 == 0:
            run_start = epoch if run == 0 else run_start
            run += 1
            if run > best:
                best, start = run, run_start
        else:
            run = 0
    recovered = start is not None and any(f1 > 0 for f1 in f1s[start - 1 + best :])
    return best, start, recovered


def stop_epoch(f1s: list[float], n: int) -> int | None:
    """The epoch at which `train.collapse_epochs: n` stops this history (its n-th zero in a row), or None."""
    run = 0
    for epoch, f1 in enumerate(f1s, 1):
        run = run + 1 if f1 == 0 else 0
        if n and run >= n:
            return epoch
    return None


def histories(study: Path):
    for path in sorted((study / "lr").glob("*.json")):
        record = json.loads(path.read_text())
        for trial in record.get("trials", []):
            yield f"{record['variant']} trial lr {trial['lr']:g}", [h["val_f1"] for h in trial["history"]]
    for path in sorted((study / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        yield f"{record['variant']} seed {record['seed']}", [h["val_f1"] for h in record["history"]]


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--study", default="results/reference-minilm")
    parser.add_argument("--collapse-epochs", type=int, default=5)
    args = parser.parse_args(argv)
    found = list(histories(Path(args.study)))
    rows = [(name, len(f1s), *zero_streak(f1s)) for name, f1s in found]
    if not rows:
        raise SystemExit(f"{args.study}: no tuning trials or runs with histories")
    n = args.collapse_epochs
    total_epochs = sum(r[1] for r in rows)
    print(f"{args.study}: {len(rows)} runs, {total_epochs} epochs")
    print("| run | epochs | longest zero-F1 streak | from epoch | F1 > 0 after it |\n|---|---:|---:|---:|---|")
    for name, epochs, streak, start, recovered in rows:
        if streak:
            print(f"| {name} | {epochs} | {streak} | {start} | {'yes' if recovered else 'no'} |")
    stops = [(name, len(f1s), stop_epoch(f1s, n), f1s) for name, f1s in found]
    stopped = [(name, epochs, at, f1s) for name, epochs, at, f1s in stops if at is not None]
    wrong = [name for name, _, at, f1s in stopped if any(f1 > 0 for f1 in f1s[at:])]
    saved = sum(epochs - at for _, epochs, at, _ in stopped)
    print(
        f"\ncollapse_epochs {n}: stops {len(stopped)} runs ({', '.join(s[0] for s in stopped) or 'none'}), "
        f"saves {saved} of {total_epochs} epochs ({saved / total_epochs:.1%}); "
        + (
            f"NOT safe: {', '.join(wrong)} found an entity again after it"
            if wrong
            else "none of them found an entity again after it"
        )
    )


if __name__ == "__main__":
    main()
