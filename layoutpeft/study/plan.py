"""`layoutpeft plan`: what a study will run and what it will cost here, before it starts.

The stages come from DVC (layoutpeft.study.dvc_status: up to date, restored from the run cache,
to run); the counts a user reads (variants, seed runs, tuning trials with their grid sizes,
epochs) and the time per number of workers come from those stages to run and the study's params
(layoutpeft.study.estimate). docs/planning.md explains the figures.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.dvc_status import RESTORE, RUN, UP_TO_DATE, DvcPlan, dvc_plan
from layoutpeft.study.estimate import (
    STAGE_START_S,
    Device,
    EpochTime,
    StageCost,
    Timings,
    Training,
    evaluate_seconds,
    load_records,
    pack,
    this_device,
    training_seconds,
)

TRAINING_FAMILIES = ("tune", "train", "evaluate")


@dataclass
class StudyPlan:
    name: str  # "params.yaml" or "profile laptop+offline"
    command: list[str]  # what runs it
    status: DvcPlan
    device: Device
    max_epochs: int
    patience: int
    tune_lr: bool
    extend_grid: int
    trainings: list[Training]  # every training of the stages to run, in DVC's order
    estimates: dict[int, float]  # workers -> seconds
    threads: dict[int, int]  # workers -> CPU threads per worker
    costs: dict[int, list[StageCost]]  # workers -> the tune/train/evaluate stages to run, timed
    timing_notes: list[str] = field(default_factory=list)

    @property
    def seed_runs(self) -> list[Training]:
        return [t for t in self.trainings if t.stage.startswith("train@")]

    @property
    def trials(self) -> list[Training]:
        return [t for t in self.trainings if t.stage.startswith("tune@")]

    def fastest(self) -> tuple[int, float]:
        workers = min(self.estimates, key=lambda n: (self.estimates[n], n))
        return workers, self.estimates[workers]


def profile_overrides(profile: str | None, root: Path, sets: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(the `-S` texts, the command) of a profile (checked by layoutpeft.profiles) with extra `-S
    key=value` texts; params.yaml's own study (`dvc repro`) without either."""
    if not profile and not sets:
        return [], [sys.executable, "-m", "dvc", "repro"]
    from layoutpeft.study.profiles import build_command

    extra = [arg for text in sets or [] for arg in ("-S", text)]
    if profile:
        command = build_command(profile, extra, profiles_path=root / "profiles.yaml", params_path=root / "params.yaml")
    else:
        command = [sys.executable, "-m", "dvc", "exp", "run", *extra]
    return [command[i + 1] for i, arg in enumerate(command) if arg == "-S"], command


def trainings_of(status: DvcPlan) -> tuple[list[Training], dict]:
    """The trainings each tune@/train@ stage to run will do, and the studied variants' settings."""
    from layoutpeft.config import TrainConfig
    from layoutpeft.train.tuning import TuningConfig, lr_grid, trial_epochs
    from layoutpeft.train.variants import studied_variants

    params = status.params
    variants = studied_variants(params, check_runtime=False)
    epochs = TrainConfig.from_params(params).max_epochs
    tuning = TuningConfig.from_params(params)
    out = []
    for stage in status.to_run():
        if stage.family == "tune" and tuning.enabled:
            spec = variants[stage.item]
            lrs = lr_grid(spec, tuning)
            # successive halving (study.halving): all but the survivors stop at a rung
            out += [
                Training(stage.name, stage.item, spec, n, lr)
                for lr, n in zip(lrs, trial_epochs(len(lrs), tuning, epochs), strict=True)
            ]
        elif stage.family == "train":
            name = stage.item.rsplit("-", 1)[0]
            out.append(Training(stage.name, name, variants[name], epochs))
    return out, variants


def plan_study(
    root: str | Path = ".",
    profile: str | None = None,
    sets: list[str] | None = None,
    workers: list[int] | None = None,
    probe_steps: int = 3,
    timings_cache: dict | None = None,
) -> StudyPlan:
    """The plan of params.yaml's study (or `profile`'s, with extra `-S key=value` `sets`) in the workspace `root`."""
    from layoutpeft.config import EvaluateConfig, ModelConfig, TrainConfig, get
    from layoutpeft.train.device import emulated_bf16_warning, resolve_device
    from layoutpeft.train.tuning import TuningConfig

    root = Path(root)
    overrides, command = profile_overrides(profile, root, sets)
    status = dvc_plan(root, overrides)
    params = status.params
    train_cfg = TrainConfig.from_params(params)
    model_cfg = ModelConfig.from_params(params, check_source=False)
    repeats = EvaluateConfig.from_params(params).timing_repeats
    tuning = TuningConfig.from_params(params)
    trainings, variants = trainings_of(status)
    device = this_device(train_cfg.device, train_cfg.precision)
    counts = workers or list(range(1, device.count + 1))
    key = (model_cfg.checkpoint, tuple(sorted(train_cfg.as_dict().items())), device)
    cache = timings_cache if timings_cache is not None else {}
    if key not in cache:
        cache[key] = Timings(
            load_records(root),
            model_cfg.checkpoint,
            train_cfg,
            device,
            resolve_device(train_cfg.device),
            root / "data" / "tokenized",
            get(params, "data.val_fraction", float, default=0.15),
            probe_steps,
        )
    timings: Timings = cache[key]
    estimates, threads, costs = {}, {}, {}
    for n in counts:
        threads[n] = device.threads(n, train_cfg.threads)
        costs[n] = stage_costs(status, trainings, variants, timings, threads[n], train_cfg.max_epochs, repeats)
        units: dict[str, float] = {}
        for cost in costs[n]:
            name = cost.stage.split("@", 1)[1]
            variant = name if cost.stage.startswith("tune@") else name.rsplit("-", 1)[0]
            unit = variant if tuning.enabled else name  # a shard's unit of work (shards.units)
            units[unit] = units.get(unit, 0.0) + cost.seconds
        estimates[n] = pack(list(units.values()), n)
    notes = timing_notes(timings, variants, {t.variant for t in trainings} | evaluated(status), threads)
    if warning := emulated_bf16_warning(train_cfg.precision, resolve_device(train_cfg.device)):
        notes.append(f"note: {warning}")
    name = " ".join([f"profile {profile}"] * bool(profile) + [f"-S {t}" for t in sets or []]) or "params.yaml"
    return StudyPlan(
        name=name,
        command=command,
        status=status,
        device=device,
        max_epochs=train_cfg.max_epochs,
        patience=train_cfg.patience,
        tune_lr=tuning.enabled,
        extend_grid=tuning.extend,
        trainings=trainings,
        estimates=estimates,
        threads=threads,
        costs=costs,
        timing_notes=notes,
    )


def evaluated(status: DvcPlan) -> set[str]:
    return {s.item.rsplit("-", 1)[0] for s in status.to_run("evaluate")}


def stage_costs(
    status: DvcPlan, trainings: list[Training], variants: dict, timings: Timings, threads: int, max_epochs: int, repeats: int
) -> list[StageCost]:
    out = []
    for stage in status.to_run():
        if stage.family not in TRAINING_FAMILIES:
            continue
        mine = [t for t in trainings if t.stage == stage.name]
        if stage.family == "evaluate":
            name = stage.item.rsplit("-", 1)[0]
            timing = timings.epoch(variants[name], threads)
            out.append(StageCost(stage.name, [], evaluate_seconds(variants[name], timing, repeats), timing.source))
            continue
        seconds, source = STAGE_START_S, ""
        for training in mine:
            each: EpochTime = timings.epoch(training.settings, threads)
            seconds += training_seconds(training, each)
            source = each.source
        out.append(StageCost(stage.name, mine, seconds, source))
    return out


def timing_notes(timings: Timings, variants: dict, used: set[str], threads: dict[int, int]) -> list[str]:
    """Where each figure came from: per thread count, the recorded or probed seconds per epoch."""
    notes = []
    for t in sorted(set(threads.values())):
        if t in timings.probes:
            notes.append(f"{t} thread(s): {timings.probes[t].describe()}")
        recorded = [n for n in sorted(used) if timings.epoch(variants[n], t).source.startswith("recorded")]
        if recorded:
            example = timings.epoch(variants[recorded[0]], t)
            notes.append(
                f"{t} thread(s): recorded runs for {len(recorded)} of {len(used)} variants "
                f"(e.g. {recorded[0]}: {example.epoch_s:.1f} s/epoch, {example.source}; "
                f"{len({p for n in recorded for p in timings.epoch(variants[n], t).records})} records)"
            )
    return notes


# ---------------------------------------------------------------- text
def duration(seconds: float) -> str:
    """3 d 4 h, 5 h 10 min, 12 min, 40 s."""
    seconds = max(0.0, seconds)
    if seconds >= 86400:
        return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"


def parse_duration(text: str) -> float:
    """'8h', '90m', '1h30m', '2d', '45s' (or a bare number of hours) -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1}
    text = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 3600
    parts = re.findall(r"(\d+(?:\.\d+)?)(min|d|h|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise LayoutpeftError(f"--budget {text!r}: expected a duration such as 8h, 90m, 1h30m or 2d")
    return sum(float(a) * units[b] for a, b in parts)


def grid_sizes(trials: list[Training]) -> str:
    """'3 lrs x 20 variants, 4 lrs x 5 variants'."""
    per_variant = Counter(t.variant for t in trials)
    sizes = Counter(per_variant.values())
    return ", ".join(f"{size} lrs x {count} variant{'s' if count > 1 else ''}" for size, count in sorted(sizes.items()))


def command_text(command: list[str]) -> str:
    return " ".join(command[2:] if command[:2] == [sys.executable, "-m"] else command)


def describe(plan: StudyPlan) -> str:
    status = plan.status
    lines = [f"plan: {plan.name}: {command_text(plan.command)}", f"device: {plan.device.describe()}"]
    to_run, restored = status.by_state(RUN), status.by_state(RESTORE)
    families = Counter(s.family for s in to_run)
    which = ", ".join(f"{n} {f}" + ("@" if f in TRAINING_FAMILIES else "") for f, n in families.items())
    lines.append(
        f"DVC: {len(to_run)} of {len(status.stages)} stages to run{f' ({which})' if which else ''}, "
        f"{len(restored)} restored from the run cache, {len(status.by_state(UP_TO_DATE))} up to date"
    )
    runs, trials = plan.seed_runs, plan.trials
    evaluations = status.to_run("evaluate")
    if plan.trainings:
        variants = {t.variant for t in plan.trainings} | evaluated(status)
        schedule = f"{plan.max_epochs} epochs" + (f" (patience {plan.patience}: at most)" if plan.patience else "")
        epochs = sum(t.epochs for t in plan.trainings)
        stopped = [t for t in trials if t.epochs < plan.max_epochs]
        halved = f", but {len(stopped)} tuning trials that stop at a halving rung (study.halving)" if stopped else ""
        lines.append(
            f"trainings: {len(plan.trainings)} for {len(variants)} variant(s), {schedule} each{halved}: "
            f"{epochs:,} epochs{' at most' if plan.patience else ''}"
        )
        seeds = sorted({int(t.stage.rsplit("-", 1)[1]) for t in runs})
        lines.append(
            f"  seed runs: {len(runs)}" + (f" ({len({t.variant for t in runs})} variants x seeds {seeds})" if runs else "")
        )
        if plan.tune_lr:
            extra = (
                f", + up to {plan.extend_grid} per variant whose best lr is at a grid end" if plan.extend_grid and trials else ""
            )
            lines.append(f"  tuning trials: {len(trials)}" + (f" ({grid_sizes(trials)}{extra})" if trials else ""))
        else:
            lines.append("  tuning trials: none (study.tune_lr false: each variant trains at its own lr)")
    else:
        lines.append("trainings: none to run")
    lines.append(f"  evaluations: {len(evaluations)}")
    lines.append("estimated time here (tune@, train@, evaluate@ stages; data stages and aggregate take seconds):")
    for n, seconds in plan.estimates.items():
        who = f"{n} worker{'s' if n > 1 else ''}"
        if plan.device.kind == "cpu":
            how = f"{plan.threads[n]} thread{'s' if plan.threads[n] > 1 else ''}{' each' if n > 1 else ''}"
        else:
            how = f"{n} GPU{'s' if n > 1 else ''}"
        lines.append(f"  {who:<10} ({how}): {duration(seconds)}" + (f"  (layoutpeft shard --workers {n})" if n > 1 else ""))
    lines += [f"  {'' if note.startswith('note:') else 'from '}{note}" for note in plan.timing_notes]
    return "\n".join(lines)


def describe_stages(plan: StudyPlan) -> str:
    costs = {c.stage: c for c in plan.costs[min(plan.costs)]}
    lines = ["stages (DVC's order):"]
    for s in plan.status.stages:
        cost = f"  ~{duration(costs[s.name].seconds)}" if s.name in costs else ""
        lines.append(f"  {s.name:<28} {s.state}{cost}{'  (' + s.reason + ')' if s.reason else ''}")
    return "\n".join(lines)


def suggest(
    budget_s: float,
    profiles: list[str] | None = None,
    sets: list[str] | None = None,
    workers: list[int] | None = None,
    probe_steps: int = 3,
    root: Path = Path("."),
) -> str:
    """Every profile (or those named) with its estimate here; those within the budget suggested."""
    from layoutpeft.study.profiles import load_profiles

    names = profiles or list(load_profiles(root / "profiles.yaml"))
    cache: dict = {}
    rows, fits = [], []
    for name in names:
        try:
            plan = plan_study(root, name, sets, workers, probe_steps, timings_cache=cache)
        except LayoutpeftError as err:
            rows.append(f"  {name:<24} cannot be planned here: {err}")
            continue
        n, seconds = plan.fastest()
        ok = seconds <= budget_s
        if ok:
            fits.append((seconds, name, n))
        rows.append(
            f"  {name:<24} {len(plan.trainings):>4} trainings, {duration(seconds):>12} with {n} worker(s){'  fits' if ok else ''}"
        )
    device = plan.device.describe() if rows and "plan" in locals() else "this machine"
    head = [f"budget {duration(budget_s)} on {device}:"]
    if fits:
        best = max(fits)  # the largest study that still fits
        parallel = (
            f"  (or `layoutpeft profile {best[1]} variants && layoutpeft shard --workers {best[2]}`)" if best[2] > 1 else ""
        )
        tail = [
            f"suggested: make study PROFILE={best[1]}{parallel}",
            f"within the budget: {', '.join(name for _, name, _ in sorted(fits))}",
        ]
    else:
        tail = ["no profile finishes within the budget here (a GPU, more workers or a smaller profile: docs/planning.md)"]
    return "\n".join(head + rows + tail)
