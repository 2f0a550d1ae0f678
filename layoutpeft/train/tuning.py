"""Per-variant learning-rate tuning on validation: each method at its own best learning rate.

Rankings of PEFT methods flip once each method's learning rate is tuned (PEFT's own method
comparison saw a method go from 0.15 % to 41.6 % by its lr alone), so every studied variant
picks its lr from a grid, by best validation entity F1, on one tuning seed, before its seed
runs. The grid is the variant's own `lr_grid` (absolute values) or `study.lr_grid`
(multiples of the variant's `lr`). A best lr at an end of the grid is not a tuned lr (the optimum
may lie beyond), so up to `study.extend_grid` more lrs are tried past that end, one grid step
each, until the best is interior. The test split is never read here.

A tune@ stage is long (one full training per grid value) and DVC keeps nothing of a stage that
is killed, so each finished trial is also memoised in a trial cache (TRIAL_CACHE_ENV, default
~/.cache/layoutpeft/trials): one JSON per trial, named by a fingerprint of everything that decides
it (variant settings and lr, model and train params, tuning seed, the tokenized data's bytes, the
source of the modules the stage depends on, library versions, device and CPU threads). A rerun of the stage
after an interruption reuses the finished trials and trains only the rest; any change to that code,
data or settings gives new fingerprints, so a stale trial is never reused.

Successive halving (`study.halving`, docs/tuning.md): every trial trains to the first rung epoch,
only the `keep` best (best validation F1 so far, the same key as the final choice) go on to the
next rung, and the last ones run the whole annealed schedule; the choice is the best of those.
A stopped trial keeps its record up to the rung (its cost counts in the tuning's) and, in the
trial cache, its paused state (`<fingerprint>.pt`, engine.pause_state): when a later decision (a
grid extension, a larger `keep`, halving turned off) needs it further, it continues from there
with the numbers of an uninterrupted training, instead of training from its start. The rule is
synchronous, so the choice depends only on the params and the trials' histories, never on what
the cache held: `replay` runs the same selection over recorded histories (tests/test_halving.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig, ParamsError, TrainConfig, get, number_in
from layoutpeft.errors import LayoutpeftError

TRIAL_CACHE_ENV = "LAYOUTPEFT_TRIAL_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TuningConfig:
    """`study.tune_lr`, `study.tuning_seed`, `study.lr_grid`, `study.extend_grid`, `study.halving` — read by
    the tune@ stages."""

    enabled: bool
    seed: int
    multipliers: tuple[float, ...]
    extend: int = 0  # at most this many lrs tried past the end of the grid where the best one lies
    rungs: tuple[int, ...] = ()  # successive halving: epochs at which the running trials are compared (): off
    keep: int | float = 2  # how many go on past each rung: a count (int >= 1) or a share of them (0 < float < 1)

    @classmethod
    def from_params(cls, params: dict) -> TuningConfig:
        grid = get(params, "study.lr_grid", list)
        if not grid or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in grid):
            raise ParamsError(f"params.yaml: study.lr_grid must be a non-empty list of positive multipliers, got {grid!r}")
        if len(set(grid)) != len(grid):
            raise ParamsError(f"params.yaml: study.lr_grid lists a multiplier twice: {grid!r}")
        rungs, keep = halving_params(params)
        return cls(
            get(params, "study.tune_lr", bool),
            number_in(params, "study.tuning_seed", 0, 2**31, kind=int),
            tuple(float(m) for m in grid),
            number_in(params, "study.extend_grid", 0, 10, kind=int),
            rungs,
            keep,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def halving_params(params: dict) -> tuple[tuple[int, ...], int | float]:
    """study.halving: {rungs: [epoch, ...], keep: count or share}; absent or rungs [] = every trial runs
    the whole schedule. Each rung must lie before train.max_epochs (a rung there would stop nothing)."""
    halving = get(params, "study.halving", dict, default=None)
    if halving is None:
        return (), 2
    unknown = set(halving) - {"rungs", "keep"}
    if unknown:
        raise ParamsError(f"params.yaml: study.halving has unknown keys {sorted(unknown)} (rungs, keep)")
    rungs = get(params, "study.halving.rungs", list)
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rungs) or rungs != sorted(set(rungs)):
        raise ParamsError(f"params.yaml: study.halving.rungs must be increasing epochs >= 1, got {rungs!r}")
    max_epochs = get(params, "train.max_epochs", int, default=None)
    tuned = get(params, "study.tune_lr", bool, default=False)
    if tuned and rungs and max_epochs is not None and rungs[-1] >= max_epochs:
        raise ParamsError(f"params.yaml: study.halving.rungs {rungs} must lie before train.max_epochs ({max_epochs})")
    keep = get(params, "study.halving.keep", (int, float))
    if not (isinstance(keep, int) and keep >= 1 or isinstance(keep, float) and 0 < keep < 1):
        raise ParamsError(
            "params.yaml: study.halving.keep must be a count of trials (an integer >= 1) or a share "
            f"of them (0 < share < 1), got {keep!r}"
        )
    return tuple(rungs), keep


def kept(keep: int | float, contestants: int) -> int:
    """How many of `contestants` trials go on past a rung: the count, or the share rounded up (at least 1)."""
    return min(contestants, keep if isinstance(keep, int) else max(1, math.ceil(keep * contestants)))


def planned_epochs(trials: int, tuning: TuningConfig, max_epochs: int) -> int:
    """Epochs that `trials` trials train under the halving rule (none stopping on their own, no extension)."""
    return sum(trial_epochs(trials, tuning, max_epochs))


def trial_epochs(trials: int, tuning: TuningConfig, max_epochs: int) -> list[int]:
    """Each trial's planned epochs under the halving rule, longest first: the survivors of the last
    rung train max_epochs, the others stop at the rung that dropped them."""
    out, running = [], trials
    for rung in tuning.rungs:
        going_on = kept(tuning.keep, running)
        out += [rung] * (running - going_on)
        running = going_on
    return [max_epochs] * running + out[::-1]


def lr_grid(variant: dict, tuning: TuningConfig) -> list[float]:
    """The learning rates a variant tries: its own lr_grid, else study.lr_grid x its lr (sorted, rounded to 3 digits)."""
    values = variant.get("lr_grid") or [variant["lr"] * m for m in tuning.multipliers]
    return sorted({rounded(v) for v in values})


def rounded(lr: float) -> float:
    return float(f"{lr:.3g}")


def grid_edge(trials: list[dict], best: dict | None = None) -> str | None:
    """'highest' or 'lowest' when the best trial (default: choose(trials)) is at that end of the lrs tried
    (None: interior, or one lr)."""
    lrs = sorted(t["lr"] for t in trials)
    best = (best or choose(trials))["lr"]
    if len(lrs) < 2 or best not in (lrs[0], lrs[-1]):
        return None
    return "highest" if best == lrs[-1] else "lowest"


def next_lr(trials: list[dict], best: dict | None = None) -> float | None:
    """One grid step past the end where the best trial lies (the step: the ratio of the two lrs at
    that end), or None when the best is interior."""
    edge, lrs = grid_edge(trials, best), sorted(t["lr"] for t in trials)
    if edge == "highest":
        return rounded(lrs[-1] * lrs[-1] / lrs[-2])
    if edge == "lowest":
        return rounded(lrs[0] * lrs[0] / lrs[1])
    return None


def search(
    declared: list[float], tuning: TuningConfig, max_epochs: int, select_on: str, advance: Callable[[float, int], dict]
) -> dict:
    """The lr search of one variant, whatever trains its trials: the declared grid through successive
    halving (no rungs: every trial to max_epochs), then up to tuning.extend more lrs past the end
    where the choice lies, each pass of the rule rerun over all lrs tried (trials already trained
    that far cost nothing). advance(lr, epoch) trains a trial to `epoch` or to where it stops on its
    own and returns its record (history per epoch; it may hold more epochs, from a cache).

    Returns the trials as far as the rule took each (a trial stopped at a rung has
    stop_reason 'halving' and its scores up to there), the finalists, the choice and the extension."""
    reached: dict[float, int] = {}
    records: dict[float, dict] = {}

    def bring(lr: float, epoch: int) -> dict:
        reached[lr] = max(reached.get(lr, 0), epoch)
        records[lr] = advance(lr, epoch)
        return at_epoch(records[lr], epoch, select_on)

    def halve(lrs: list[float]) -> list[dict]:
        contestants = list(lrs)
        for rung in tuning.rungs:
            standing = sorted((bring(lr, rung) for lr in contestants), key=rank_key)
            contestants = [t["lr"] for t in standing[: kept(tuning.keep, len(standing))]]
        return [bring(lr, max_epochs) for lr in contestants]

    lrs, extended = list(declared), list[float]()
    finalists = halve(lrs)
    while len(extended) < tuning.extend:
        trials = [at_epoch(records[lr], reached[lr], select_on) for lr in lrs]
        lr = next_lr(trials, choose(finalists))
        if lr is None:
            break
        print(f"  best lr at the {grid_edge(trials, choose(finalists))} end of the grid: extending it to {lr:g}", flush=True)
        lrs.append(lr)
        extended.append(lr)
        finalists = halve(lrs)
    trials = []
    for lr in sorted(lrs):
        trial = at_epoch(records[lr], reached[lr], select_on)
        if reached[lr] < max_epochs and len(records[lr]["history"]) >= reached[lr] and not stopped_itself(trial):
            trial = {**trial, "stop_reason": "halving", "stopped_at_epoch": reached[lr]}
        trials.append(trial)
    best = choose(finalists)
    return {
        "trials": trials,
        "finalists": sorted(t["lr"] for t in finalists),
        "best": best,
        "extended_by": extended,
        "at_grid_edge": grid_edge(trials, best),
    }


def stopped_itself(trial: dict) -> bool:
    return trial.get("stop_reason") in ("patience", "collapsed")


def at_epoch(trial: dict, epoch: int, select_on: str = "f1") -> dict:
    """A trial's record as it stood after `epoch` (its best epoch so far chosen as engine.fit chooses:
    the first best validation F1, or loss); the whole record when it holds no more epochs."""
    if len(trial["history"]) <= epoch:
        return trial
    history = trial["history"][:epoch]
    if select_on == "f1":
        best = max(range(len(history)), key=lambda i: (history[i]["val_f1"], -i))
    else:
        best = min(range(len(history)), key=lambda i: (history[i]["val_loss"], i))
    wall = history[-1].get("elapsed_s")
    return {
        **trial,
        "history": history,
        "best_val_f1": history[best]["val_f1"],
        "best_val_loss": history[best]["val_loss"],
        "best_epoch": best + 1,
        "epochs_run": epoch,
        "stop_reason": None,
        "wall_time_s": wall if wall is not None else trial.get("wall_time_s"),
    }


def tune(
    name: str,
    variant: dict,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tuning: TuningConfig,
    tokenized: Path,
    scratch: Path | None = None,
    on_epoch=None,
) -> dict:
    """Train the variant once per grid lr on the tuning seed (under successive halving when
    tuning.rungs); return the choice and every trial.

    on_epoch(lr) -> (record -> None): a per-epoch callback for each trial (progress output)."""
    from layoutpeft.train import runs

    if not tuning.enabled:
        return {
            "variant": name,
            "chosen_lr": variant["lr"],
            "tuned": False,
            "trials": [],
            "reason": "study.tune_lr is false: the variant's own lr",
        }
    cache = trial_cache()
    # A trial trains {**variant, "lr": lr}: its key is that, so a widened grid or a moved centre lr
    # retrains only the lrs not tried before (the grid itself decides nothing inside a trial), and
    # the halving rule is not in it either: a trial's epochs are the same whether it stops or not.
    trained_settings = {k: v for k, v in variant.items() if k not in ("lr", "lr_grid")}
    common = {
        "variant": trained_settings,
        "model": model_cfg.as_dict(),
        "train": train_cfg.as_dict(),
        "seed": tuning.seed,
        "tokenized": tree_digest(tokenized),
        "code": code_digest(),
        "environment": environment_key(),
    }
    declared = lr_grid(variant, tuning)
    records: dict[float, dict] = {}
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f".tune-{name}-") as tmp:

        def advance(lr: float, epoch: int) -> dict:
            key = fingerprint({**common, "lr": lr})
            memo = cache / f"{key}.json" if cache else None
            paused = (cache or Path(tmp)) / f"{key}.pt"
            record = records.get(lr)
            if record is None and memo is not None and memo.is_file():
                record = {**json.loads(memo.read_text()), "resumed_from": str(memo)}
                print(f"  lr {lr:<8g} {epochs_text(record)} earlier: reused {memo}", flush=True)
            if record is not None and (record["ended"] or len(record["history"]) >= epoch):
                records[lr] = record
                return record
            if record is not None and not paused.is_file():
                print(f"  lr {lr:<8g} its paused state {paused} is gone: trained again from epoch 1", flush=True)
            elif record is not None:
                print(f"  lr {lr:<8g} continues from epoch {len(record['history'])}", flush=True)
            start = time.perf_counter()
            log = runs.train(
                name,
                tuning.seed,
                {**variant, "lr": lr},
                model_cfg,
                train_cfg,
                Path(tmp) / f"lr{lr:g}",
                tokenized,
                on_epoch=(lambda _folder, lr=lr: on_epoch(lr)) if on_epoch else None,
                pause_after=epoch if epoch < train_cfg.max_epochs else None,
                checkpoint=paused,
            )
            t = log["training"]
            earlier = (record or {}).get("wall_time_s", 0.0) if t.get("resumed_at_epoch") else 0.0
            records[lr] = {
                "lr": lr,
                "best_val_f1": t["best_val_f1"],
                "best_val_loss": t["best_val_loss"],
                "best_epoch": t["best_epoch"],
                "epochs_run": t["epochs_run"],
                "stop_reason": t.get("stop_reason"),
                "ended": not t.get("paused", False),
                "wall_time_s": earlier + time.perf_counter() - start,
                "history": [{k: r[k] for k in ("epoch", "val_f1", "val_loss", "elapsed_s") if k in r} for r in log["history"]],
            }
            if memo is not None:
                write_json(memo, records[lr])
            if records[lr]["ended"]:
                paused.unlink(missing_ok=True)  # a finished trial answers every later question from its record
            return records[lr]

        result = search(declared, tuning, train_cfg.max_epochs, train_cfg.select_on, advance)
    trials = [{k: v for k, v in t.items() if k != "ended"} for t in result["trials"]]
    halving = (
        {
            "rungs": list(tuning.rungs),
            "keep": tuning.keep,
            "finalists": result["finalists"],
            "stopped": [t["lr"] for t in trials if t.get("stop_reason") == "halving"],
        }
        if tuning.rungs
        else None
    )
    return {
        "variant": name,
        "chosen_lr": result["best"]["lr"],
        "tuned": True,
        "seed": tuning.seed,
        "selected_on": "best_val_f1",
        "grid": [t["lr"] for t in trials],
        "declared_grid": declared,
        "extended_by": result["extended_by"],
        "at_grid_edge": result["at_grid_edge"],
        "halving": halving,
        "trials": trials,
        "epochs_trained": sum(t["epochs_run"] for t in trials),
        "wall_time_s": sum(t["wall_time_s"] for t in trials),
    }


def epochs_text(record: dict) -> str:
    return "finished" if record["ended"] else f"paused at epoch {len(record['history'])}"


def replay(recorded: list[dict], declared: list[float], tuning: TuningConfig, max_epochs: int, select_on: str = "f1") -> dict:
    """search() over recorded trials (each ran the whole schedule: lr and history per epoch) instead of
    training: the choice the halving rule would have made, and the epochs it would have trained.
    An lr the rule asks for that was never recorded fails (the replay cannot say what it would give)."""
    by_lr = {rounded(t["lr"]): {**t, "ended": True} for t in recorded}

    def advance(lr: float, epoch: int) -> dict:
        if lr not in by_lr:
            raise LayoutpeftError(f"replay: the rule asks for lr {lr:g}, which the recorded trials never tried")
        return by_lr[lr]

    result = search(declared, tuning, max_epochs, select_on, advance)
    return {
        "chosen_lr": result["best"]["lr"],
        "finalists": result["finalists"],
        "epochs": sum(t["epochs_run"] for t in result["trials"]),
        "trials": result["trials"],
    }


def rank_key(trial: dict) -> tuple:
    """Best validation F1 first; ties (within 1e-9) go to the lower validation loss, then the smaller lr."""
    f1 = trial["best_val_f1"] if math.isfinite(trial["best_val_f1"]) else -1.0
    return (-round(f1, 9), trial["best_val_loss"], trial["lr"])


def choose(trials: list[dict]) -> dict:
    """The best trial by rank_key (the rungs of successive halving rank by the same key)."""
    return min(trials, key=rank_key)


def trial_cache() -> Path | None:
    """Where finished trials are memoised: $LAYOUTPEFT_TRIAL_CACHE ('' or 'off': nowhere), else
    ~/.cache/layoutpeft/trials."""
    value = os.environ.get(TRIAL_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value)
    return Path.home() / ".cache" / "layoutpeft" / "trials"


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes under folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def code_files() -> list[Path]:
    """The Python source the tune stage depends on: its `.py` deps in dvc.yaml (which
    tests/test_dvc_yaml.py holds equal to its imports), else every module and stage. Unrelated code
    (predict, export, ...) may change while a tune is interrupted without costing its trials."""
    pipeline = REPO_ROOT / "dvc.yaml"
    if pipeline.is_file():
        import yaml

        deps = (yaml.safe_load(pipeline.read_text()).get("stages", {}).get("tune", {}) or {}).get("deps", [])
        listed = [REPO_ROOT / dep for dep in deps if str(dep).endswith(".py")]
        if listed and all(path.is_file() for path in listed):
            return sorted(listed)
    return sorted(path for folder in ("layoutpeft", "stages") for path in (REPO_ROOT / folder).rglob("*.py"))


def code_digest() -> str:
    digest = hashlib.sha256()
    for path in code_files():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def environment_key() -> dict:
    """What else changes a training's numbers on the same code and data."""
    from importlib import metadata

    import torch

    from layoutpeft.provenance import cpu_model

    return {
        **{p: metadata.version(p) for p in ("torch", "transformers", "peft")},
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model(),
    }
