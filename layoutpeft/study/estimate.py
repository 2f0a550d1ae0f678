"""How long the trainings of a plan take on this machine: from recorded runs, else a timed probe.

A training's time is its epochs x the seconds one epoch takes (training steps and the validation
pass) at the study's model, method, batch, precision and device:

- recorded: run records (metrics/runs/*.json, results/*/runs/*.json) of the same model, train
  settings that decide speed (SPEED_KEYS), device and CPU threads. The same variant settings give
  its recorded seconds per epoch (and with the same schedule, its recorded time exactly); another
  method is scaled from the recorded ones by the relative step cost (layoutpeft.scale.shards.METHOD_COST);
- probed: otherwise a few timed training steps of full fine-tuning on this device, at the study's
  batch and precision, on the tokenized windows (or, before tokenization, windows of FUNSD's
  measured mean length), scaled by the method cost.

An evaluate@ stage is a few passes over the test split (one scored, one warm-up and
`evaluate.timing_repeats` timed, again for a merged adapter): recorded seconds per pass, or the
probe's forward time. Every stage process also starts Python and loads its model (STAGE_START_S).
Workers: a study split over N workers (layoutpeft shard --workers N) is packed longest unit
first, as the shards are; on a CPU each worker gets cores/N threads.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from layoutpeft.errors import LayoutpeftError

# The train settings a training's speed depends on (with the model, the method, device and threads).
SPEED_KEYS = (
    "batch_size",
    "precision",
    "group_by_length",
    "group_size",
    "attention",
    "compile",
    "length_buckets",
    "adamw",
    "loss",
)
# ... what a record written before a key existed had (TrainConfig's defaults then)
SPEED_DEFAULTS: dict = {"length_buckets": []}
# ... and those that also fix how many epochs it runs: equal too, a recorded time is used as it is.
SCHEDULE_KEYS = ("max_epochs", "patience", "collapse_epochs", "select_on")
RECORD_GLOBS = ("metrics/runs/*.json", "results/*/runs/*.json")
# FUNSD with the BERT uncased vocabulary, windows of 510 (docs/planning.md; NOTES): the probe's data
# before the tokenize stage has run.
FUNSD_WINDOWS = {"train": 150, "test": 52}
FUNSD_TOKENS = {"train": 34_064, "test": 12_966}
# Seconds a stage process spends outside its training loop: Python, torch and transformers imports,
# the model load, saving. Measured on this 2-core CPU (docs/planning.md); small next to a training.
STAGE_START_S = 15.0
# A probe stops timing steps once this many seconds have passed (at least one step is timed).
PROBE_ENOUGH_S = 20.0
# Windows per probe step on a CPU: memory stays small next to a study's batch of 16 of LayoutLM-base.
CPU_PROBE_BATCH = 4


class EstimateError(LayoutpeftError):
    """Nothing to estimate from: no record of these settings and the model cannot be probed here."""


# ---------------------------------------------------------------- the device
@dataclass(frozen=True)
class Device:
    kind: str  # cpu | cuda
    name: str  # CPU model or GPU name, as run records write it (provenance.describe)
    count: int  # CPU cores or GPUs: the most workers that make sense
    precision: str  # what train.precision resolves to here
    detail: str = ""
    flags: tuple[str, ...] = ()  # CPU flags that decide matmul speed (hardware.simd_flags)

    def threads(self, workers: int, train_threads: int = 0) -> int:
        """CPU threads per worker (train.threads wins; one worker: torch's own count)."""
        import torch

        if self.kind != "cpu":
            return torch.get_num_threads()
        if train_threads:
            return train_threads
        return torch.get_num_threads() if workers == 1 else max(1, self.count // workers)

    def describe(self) -> str:
        what = "GPU" if self.kind == "cuda" else "CPU"
        return f"{self.kind}: {self.name} ({self.count} {what}{'s' if self.count != 1 else ''}{self.detail}), {self.precision}"


def this_device(train_device: str = "auto", precision: str = "auto") -> Device:
    import torch

    from layoutpeft import hardware
    from layoutpeft.provenance import cpu_model
    from layoutpeft.train.device import resolve_device, resolve_precision
    from layoutpeft.train.runs import PRECISION_NAMES

    device = resolve_device(train_device)
    dtype = PRECISION_NAMES[resolve_precision(precision, device)]
    if device.type == "cuda":
        return Device("cuda", torch.cuda.get_device_name(0), torch.cuda.device_count(), dtype)
    flags = " ".join(hardware.simd_flags())
    return Device("cpu", cpu_model(), os.cpu_count() or 1, dtype, f", {flags}" if flags else "", tuple(hardware.simd_flags()))


# ---------------------------------------------------------------- recorded runs
@dataclass
class Record:
    path: str
    variant: dict
    method: str
    checkpoint: str
    train: dict
    device_name: str
    threads: int
    precision: str
    epochs_run: int
    fit_s: float  # training loop and validation, every epoch (train_log's wall_time_s)
    test_pass_s: float | None
    cpu_flags: tuple[str, ...] | None = None  # None: not recorded (older records)

    @property
    def epoch_s(self) -> float:
        return self.fit_s / max(1, self.epochs_run)


def method_settings(variant: dict) -> dict:
    """What a training of this variant runs, less its lr (lrs change no step's cost)."""
    return {k: v for k, v in variant.items() if k not in ("lr", "lr_grid")}


def load_records(root: str | Path = ".") -> list[Record]:
    records = []
    for pattern in RECORD_GLOBS:
        for path in sorted(glob.glob(str(Path(root) / pattern))):
            try:
                r = json.loads(Path(path).read_text())
                env = r.get("train_environment") or r.get("environment") or {}
                records.append(
                    Record(
                        path=os.path.relpath(path, root),
                        variant=method_settings(r["variant_params"]),
                        method=r["method"],
                        checkpoint=r["model"]["checkpoint"],
                        train=r["train_params"],
                        device_name=env.get("device_name", ""),
                        threads=int(env.get("cpu_threads") or 0),
                        precision=r["precision"],
                        epochs_run=int(r["training"]["epochs_run"]),
                        fit_s=float(r["training"]["wall_time_s"]),
                        test_pass_s=(r.get("inference") or {}).get("seconds_per_pass"),
                        cpu_flags=tuple(env["cpu_flags"]) if env.get("cpu_flags") is not None else None,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a run record (or an older format): nothing to learn from it
    return records


# ---------------------------------------------------------------- the probe
@dataclass
class Probe:
    """A few timed training steps of full fine-tuning, and forward passes, on this device."""

    checkpoint: str
    threads: int
    batch_size: int
    length: int  # tokens per window of the probe's batches
    precision: str
    steps: int
    step_s: float  # one optimizer step (forward, backward, AdamW) at batch_size windows
    forward_s_per_token: float
    windows: dict[str, int]  # train / validation / test windows per epoch
    tokens: dict[str, int]
    data: str  # where the windows came from
    seconds: float  # what the probe took
    probe_batch: int = 0  # windows per timed step (on a CPU fewer than batch_size, scaled up)

    @property
    def epoch_s(self) -> float:
        steps = math.ceil(self.windows["train"] / self.batch_size)
        return steps * self.step_s + self.tokens["validation"] * self.forward_s_per_token

    @property
    def test_pass_s(self) -> float:
        return self.tokens["test"] * self.forward_s_per_token

    def describe(self) -> str:
        scaled = f" (timed at {self.probe_batch}, scaled)" if self.probe_batch and self.probe_batch != self.batch_size else ""
        return (
            f"probe: {self.steps} steps of full fine-tuning, batch {self.batch_size}{scaled} x {self.length} tokens, "
            f"{self.precision}, {self.threads} thread(s): {self.step_s:.2f} s/step -> {self.epoch_s:.1f} s/epoch "
            f"({self.windows['train']} training windows, validation included; {self.data}; probe took "
            f"{self.seconds:.0f} s)"
        )


def probe_data(tokenized: Path, val_fraction: float) -> tuple[dict[str, int], dict[str, int], str, int]:
    """(windows, tokens, source, pad id) per split: the tokenized data, else FUNSD's measured sizes."""
    from layoutpeft.data.batching import load_meta

    if (tokenized / "meta.json").is_file():
        from datasets import load_from_disk

        data = load_from_disk(str(tokenized))
        windows = {s: len(data[s]) for s in ("train", "validation", "test")}
        tokens = {s: int(sum(len(ids) for ids in data[s]["input_ids"])) for s in windows}
        return windows, tokens, str(tokenized), int(load_meta(tokenized)["pad_token_id"])
    val = round(FUNSD_WINDOWS["train"] * val_fraction)
    per_window = FUNSD_TOKENS["train"] / FUNSD_WINDOWS["train"]
    windows = {"train": FUNSD_WINDOWS["train"] - val, "validation": val, "test": FUNSD_WINDOWS["test"]}
    tokens = {"train": round(per_window * windows["train"]), "validation": round(per_window * val), "test": FUNSD_TOKENS["test"]}
    return windows, tokens, "FUNSD's sizes (not tokenized yet)", 0


def probe_config(checkpoint: str):
    """The model's architecture: its config, or for a hub LayoutLM that cannot be reached, the
    architecture of its name (timing needs shapes, not weights)."""
    from transformers import LayoutLMConfig

    from layoutpeft.labels import LEGACY_LABELS
    from layoutpeft.modeling import layoutlm_config

    try:
        return layoutlm_config(checkpoint, LEGACY_LABELS)[0]  # FUNSD's 7 labels: the head is a rounding error
    except Exception as err:  # noqa: BLE001 - offline hub id, missing package: fall back below
        name = checkpoint.lower()
        if "layoutlm-base" in name:
            config = LayoutLMConfig()  # transformers' defaults are layoutlm-base-uncased's shapes
        elif "layoutlm-large" in name:
            config = LayoutLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        else:
            raise EstimateError(
                f"model.checkpoint {checkpoint}: cannot read its configuration to probe it ({' '.join(str(err).split())[:160]})"
            ) from err
        config.num_labels = len(LEGACY_LABELS)
        return config


def run_probe(
    checkpoint: str,
    train_cfg,
    device,
    threads: int,
    tokenized: Path = Path("data/tokenized"),
    val_fraction: float = 0.15,
    steps: int = 3,
    config=None,
) -> Probe:
    """Time `steps` training steps (after one warm-up) of full fine-tuning and a few forward passes."""
    import torch
    from transformers import LayoutLMForTokenClassification

    from layoutpeft.data.batching import collate, to_device
    from layoutpeft.train.device import autocast, resolve_precision
    from layoutpeft.train.engine import logits_of, make_optimizer, token_loss
    from layoutpeft.train.runs import PRECISION_NAMES

    start = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        windows, tokens, source, pad_id = probe_data(tokenized, val_fraction)
        length = max(8, round(tokens["train"] / windows["train"]))
        config = config or probe_config(checkpoint)
        config._attn_implementation = train_cfg.attention
        torch.manual_seed(0)
        model = LayoutLMForTokenClassification(config).to(device)
        dtype = resolve_precision(train_cfg.precision, device)
        generator = torch.Generator().manual_seed(0)

        def window():
            box = torch.sort(torch.randint(0, 1000, (length, 4), generator=generator), dim=1).values
            return {
                "input_ids": torch.randint(5, config.vocab_size, (length,), generator=generator),
                "bbox": box[:, [0, 1, 2, 3]],
                "labels": torch.randint(0, config.num_labels, (length,), generator=generator),
                "word_ids": torch.arange(length),
            }

        # On a CPU a few windows per step (memory; a step's time grows with its windows), scaled to the batch.
        probe_batch = train_cfg.batch_size if device.type == "cuda" else min(train_cfg.batch_size, CPU_PROBE_BATCH)
        batch = to_device(collate([window() for _ in range(probe_batch)], pad_id), device)
        optimizer = make_optimizer(model, 1e-5, train_cfg.weight_decay, train_cfg.adamw)
        model.train()

        def step():
            with autocast(device, dtype):
                loss = token_loss(logits_of(model, batch, 0), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up: kernels chosen, optimizer state allocated
        step_s, steps = timed(step, steps)
        model.eval()

        def forward():
            with torch.no_grad(), autocast(device, dtype):
                logits_of(model, batch, 0)
            if device.type == "cuda":
                torch.cuda.synchronize()

        forward()
        forward_s, _ = timed(forward, steps)
        step_s *= train_cfg.batch_size / probe_batch
    finally:
        torch.set_num_threads(before)
    return Probe(
        checkpoint,
        threads,
        train_cfg.batch_size,
        length,
        PRECISION_NAMES[dtype],
        steps,
        step_s,
        forward_s / (probe_batch * length),
        windows,
        tokens,
        source,
        time.perf_counter() - start,
        probe_batch,
    )


def timed(call, most: int, enough_s: float = PROBE_ENOUGH_S) -> tuple[float, int]:
    """(mean seconds per call, calls timed): up to `most` calls, fewer once `enough_s` have passed
    (a large model on a slow CPU: one step already says enough)."""
    start, done = time.perf_counter(), 0
    while done < most:
        call()
        done += 1
        if time.perf_counter() - start >= enough_s:
            break
    return (time.perf_counter() - start) / done, done


# ---------------------------------------------------------------- seconds per epoch of one training
@dataclass
class EpochTime:
    epoch_s: float
    test_pass_s: float
    source: str  # "recorded", "recorded, scaled by method cost", "probe, scaled ..."
    recorded_fit_s: float | None = None  # same settings and schedule: the recorded time itself ...
    records: list[str] = field(default_factory=list)
    recorded_epochs: int | None = None  # ... for trainings of this many epochs (train.max_epochs)


class Timings:
    """Seconds per epoch for each training of a study, memoised per (variant settings, threads)."""

    def __init__(
        self,
        records: list[Record],
        checkpoint: str,
        train_cfg,
        device: Device,
        torch_device,
        tokenized: Path = Path("data/tokenized"),
        val_fraction: float = 0.15,
        probe_steps: int = 3,
        probe_config=None,
    ):
        self.records, self.checkpoint, self.train_cfg = records, checkpoint, train_cfg
        self.device, self.torch_device, self.tokenized, self.val_fraction = device, torch_device, tokenized, val_fraction
        self.probe_steps, self.probe_config = probe_steps, probe_config
        self.probes: dict[int, Probe] = {}
        self._memo: dict = {}

    def matching(self, threads: int) -> list[Record]:
        """Records of this model, speed settings, device (CPU flags too) and threads."""
        speed = {k: getattr(self.train_cfg, k) for k in SPEED_KEYS}
        speed["precision"] = self.device.precision  # resolved: a recorded `auto` is what it was there
        return [
            r
            for r in self.records
            if r.checkpoint == self.checkpoint
            and r.device_name == self.device.name
            and (self.device.kind != "cpu" or (r.threads == threads and self.same_cpu(r)))
            and all(
                list_if_tuple(r.train.get(k, SPEED_DEFAULTS.get(k))) == list_if_tuple(v)
                for k, v in speed.items()
                if k != "precision"
            )
            and r.precision == speed["precision"]
        ]

    def same_cpu(self, record: Record) -> bool:
        """CPUs of one model name differ (bf16 units or not): the recorded flags must be this CPU's.
        A record without flags counts unless it trained in bf16 and this CPU has no bf16 units
        (bf16 is emulated here, about 10x slower: that record came from another CPU)."""
        from layoutpeft.hardware import BF16_FLAGS

        if record.cpu_flags is not None:
            return set(record.cpu_flags) == set(self.device.flags)
        return record.precision != "bf16" or any(f in self.device.flags for f in BF16_FLAGS)

    def probe(self, threads: int) -> Probe:
        if threads not in self.probes:
            self.probes[threads] = run_probe(
                self.checkpoint,
                self.train_cfg,
                self.torch_device,
                threads,
                self.tokenized,
                self.val_fraction,
                self.probe_steps,
                self.probe_config,
            )
        return self.probes[threads]

    def epoch(self, variant: dict, threads: int) -> EpochTime:
        from layoutpeft.scale.shards import method_cost

        key = (json.dumps(method_settings(variant), sort_keys=True, default=str), threads)
        if key in self._memo:
            return self._memo[key]
        records = self.matching(threads)
        same = [r for r in records if r.variant == method_settings(variant)]
        cost = method_cost(str(variant.get("method")))
        if same:
            schedule = {k: getattr(self.train_cfg, k) for k in SCHEDULE_KEYS}
            exact = [r for r in same if all(r.train.get(k) == v for k, v in schedule.items())]
            passes = [r.test_pass_s for r in same if r.test_pass_s]
            result = EpochTime(
                mean([r.epoch_s for r in same]),
                mean(passes) if passes else 0.0,
                f"recorded ({len(same)} run{'s' if len(same) > 1 else ''})",
                mean([r.fit_s for r in exact]) if exact else None,
                [r.path for r in same],
                self.train_cfg.max_epochs,
            )
        elif records:
            full = mean([r.epoch_s / method_cost(r.method) for r in records])
            passes = [r.test_pass_s for r in records if r.test_pass_s]
            result = EpochTime(
                full * cost,
                mean(passes) if passes else 0.0,
                f"recorded runs of other methods x method cost {cost:.2f}",
                None,
                [r.path for r in records],
            )
        else:
            probe = self.probe(threads)
            result = EpochTime(
                probe.epoch_s * cost, probe.test_pass_s, "probe" + (f" x method cost {cost:.2f}" if cost != 1.0 else "")
            )
        self._memo[key] = result
        return result


def list_if_tuple(value):
    """A setting as a record's JSON holds it (a tuple comes back as a list)."""
    return list(value) if isinstance(value, tuple) else value


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------- the plan's trainings, timed
@dataclass
class Training:
    """One training a stage to run will do: a seed run, or one tuning trial."""

    stage: str
    variant: str
    settings: dict
    epochs: int
    lr: float | None = None


@dataclass
class StageCost:
    stage: str
    trainings: list[Training]
    seconds: float
    source: str = ""


def training_seconds(training: Training, timing: EpochTime) -> float:
    """A recorded time as it is where the schedule was the same, else epochs x seconds per epoch."""
    if timing.recorded_fit_s is not None and training.epochs == timing.recorded_epochs:
        return timing.recorded_fit_s
    return training.epochs * timing.epoch_s


def evaluate_seconds(settings: dict, timing: EpochTime, repeats: int) -> float:
    from layoutpeft.train.methods import method_of

    passes = (2 + repeats) * (2 if method_of(settings).mergeable else 1)
    return passes * timing.test_pass_s + STAGE_START_S


def pack(unit_seconds: list[float], workers: int) -> float:
    """The longest worker's seconds when units go longest first to the least loaded worker (shards.plan)."""
    loads = [0.0] * workers
    for seconds in sorted(unit_seconds, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads) if loads else 0.0
