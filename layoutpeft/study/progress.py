"""Progress of a running study for a person: which training of how many, its epoch, time left.

DVC prints stage names only. `layoutpeft study` runs dvc with its output piped through
`Progress.feed`, which reads the lines DVC and the stages already print ("Running stage
'train@lora-0'", "... is cached - skipping run", the per-epoch lines of train@ and tune@) and
after each epoch adds one line:

    [study] training 12/45 (train@lora-1), epoch 3/30, 2 h 10 min left (est.)

Counts and times come from the plan (layoutpeft.study.plan): its trainings to run and their
estimated seconds. The time left is the estimate of what is still to run, scaled by how the
epochs so far compare with their estimate (a machine busier than when it was estimated shows
up at once), plus the current training's remaining epochs at its own pace.
"""

from __future__ import annotations

import re
import time

from layoutpeft.study.plan import StudyPlan, duration

RUNNING = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' (?:is cached - skipping run|didn't change, skipping)")
TRAIN_EPOCH = re.compile(r"^\s+epoch\s+(\d+)\s+train loss")
TUNE_EPOCH = re.compile(r"^\s+lr\s+(\S+)\s+epoch\s+(\d+)\s+train loss")
TRIAL_REUSED = re.compile(r"^\s+lr\s+(\S+)\s+finished earlier")
EXTENDED = re.compile(r"extending it to (\S+)")


class Progress:
    def __init__(self, plan: StudyPlan, workers: int = 1, clock=time.monotonic):
        self.clock = clock
        costs = plan.costs[workers]
        self.max_epochs = plan.max_epochs
        # seconds per epoch the estimate assumed, per stage (its trainings all have the plan's epochs)
        self.stage_seconds = {c.stage: c.seconds for c in costs}
        self.stage_trainings = {c.stage: len(c.trainings) for c in costs}
        self.epoch_estimate = {c.stage: (c.seconds / max(1, sum(t.epochs for t in c.trainings))) for c in costs if c.trainings}
        self.total = sum(self.stage_trainings.values())
        self.done_stages: set[str] = set()
        self.started = 0  # trainings begun
        self.stage: str | None = None
        self.in_stage = 0  # trainings begun in the current stage (tune@ runs several)
        self.trial: str | None = None
        self.training_start = None
        self.epochs_seen = 0  # epochs of the current training
        self.measured = 0.0  # seconds of finished epochs, all trainings
        self.expected = 0.0  # what the estimate said they would take
        self.last_epoch_at = None

    def feed(self, line: str) -> str | None:
        """Take one output line; returns a progress line to print after it, or None."""
        if m := RUNNING.match(line):
            self._finish_stage()
            self.stage, self.trial, self.in_stage, self.epochs_seen = m[1], None, 0, 0
            self.last_epoch_at = self.clock()
            return None
        if m := SKIPPED.match(line):
            self._drop(m[1])
            return None
        stage = self.stage
        if stage is None:
            return None
        one_trial = self.epoch_estimate.get(stage, 0.0) * self.max_epochs
        if TRIAL_REUSED.match(line):
            self.total -= 1  # a tuning trial memoised earlier: no training
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) - one_trial
            return None
        if EXTENDED.search(line):
            self.total += 1
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + one_trial
            return None
        m, trial = TRAIN_EPOCH.match(line), None
        if not m and (t := TUNE_EPOCH.match(line)):
            m, trial = t, t[1]
            epoch = int(t[2])
        elif m:
            epoch = int(m[1])
        if not m:
            return None
        now = self.clock()
        if epoch == 1 or trial != self.trial:
            self.started += 1
            self.in_stage += 1
            self.trial, self.epochs_seen = trial, 0
        self.epochs_seen = epoch
        if self.last_epoch_at is not None:
            self.measured += now - self.last_epoch_at
            self.expected += self.epoch_estimate.get(stage, now - self.last_epoch_at)
        self.last_epoch_at = now
        return self.line(epoch)

    def _drop(self, stage: str) -> None:
        if stage in self.stage_seconds and stage not in self.done_stages:
            self.done_stages.add(stage)
            self.total -= self.stage_trainings.get(stage, 0)

    def _finish_stage(self) -> None:
        if self.stage is not None:
            self.done_stages.add(self.stage)

    def pace(self) -> float:
        """Measured over estimated seconds of the epochs so far (1.0 before the first)."""
        return self.measured / self.expected if self.expected > 0 else 1.0

    def seconds_left(self) -> float:
        stage = self.stage or ""
        later = sum(s for name, s in self.stage_seconds.items() if name not in self.done_stages and name != stage)
        per_epoch = self.epoch_estimate.get(stage, 0.0)
        epochs_done = max(0, self.in_stage - 1) * self.max_epochs + self.epochs_seen
        current_left = max(0.0, self.stage_seconds.get(stage, 0.0) - per_epoch * epochs_done)
        return (later + current_left) * self.pace()

    def line(self, epoch: int) -> str:
        what = (self.stage or "") + (f" lr {self.trial}" if self.trial else "")
        return (
            f"[study] training {min(self.started, max(self.total, self.started))}/{max(self.total, self.started)} "
            f"({what}), epoch {epoch}/{self.max_epochs}, {duration(self.seconds_left())} left (est.)"
        )
