"""Training-speed benchmark: how close training gets to this machine's own matmul peak, the naive
LayoutLM/FUNSD recipe against layoutpeft's, the cost of every method, and stage start-up time.

Run after `dvc repro tokenize` (it reads data/tokenized); benchmarks/README.md has the commands.

    python benchmarks/train_speed.py                          # offline MiniLM checkpoint, CPU
    python benchmarks/train_speed.py --device cuda --config layoutlm-base   # random LayoutLM-base

Peaks: fp32 and bf16 matmul FLOP/s at the model's own shapes (tokens x hidden @ hidden x
intermediate), measured in this run, before and after the training parts (on a shared machine
they differ; both are recorded).

Part 1, recipes (full fine-tuning, same windows, same seeds, `--epochs` x `--repeats`):
  naive:             every window padded to 512, no length grouping, fp32, eager attention, foreach AdamW;
  layoutpeft-fp32:   params.yaml's recipe (dynamic padding, length groups, its attention and AdamW) in fp32;
  layoutpeft:        params.yaml's recipe as the train stage runs it (precision: auto decides on this machine).
Each reports real (non-padding) tokens/s, achieved FLOP/s (flops: useful FLOPs on real
tokens, so padding shows as waste), its share of the bf16 and fp32 peaks, s/epoch (training only),
peak memory, test F1 after the short schedule and the speed-up over naive.

Part 2, methods (params.yaml's recipe, each default variant in its own process so peak RSS does
not carry over): the same figures per method over `--steps` real batches, plus training FLOPs
per real token (cheaper for methods that train fewer weight matrices) and the ratio to full.

Part 3, start-up: wall time from launching `python -m stages.train` (a temporary copy of the
run folder with 1 epoch) to its first optimizer step, and how much of it is imports.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import ROOT, argument_parser

import psutil
import torch

from layoutpeft import hardware
from layoutpeft.atomic import write_json, write_text
from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.data.batching import batches, load_meta, load_windows, to_device
from layoutpeft.labels import LEGACY_LABELS  # the benchmarks measure FUNSD's three types
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.device import autocast, precision_path, resolve_device, resolve_precision, set_threads
from layoutpeft.train.methods import Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.probes import count_parameters
from layoutpeft.train.runs import save_trained
from layoutpeft.train.variants import expand_sweeps, resolve

import flops

METHOD_VARIANTS = [
    "full",
    "head",
    "bitfit",
    "lora",
    "dora",
    "qlora",
    "loha",
    "lokr",
    "adalora",
    "vera",
    "ia3",
    "prompt_tuning",
    "p_tuning",
]
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def release_freed_heap() -> None:
    """Hand freed heap pages back to the OS before measuring RSS (model loading frees hundreds of MB
    that glibc otherwise keeps mapped, which would count as the measured block's RSS)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory over a block: CUDA peak allocated, or the process's RSS sampled every 20 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_freed_heap()
            process = psutil.Process()
            self.peak = process.memory_info().rss

            def sample():
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_config(args) -> ModelConfig:
    """`layoutlm-base` saves a random LayoutLM-base to a temp folder so that it loads (and quantises,
    for QLoRA) through the same path as a real checkpoint."""
    if args.config == "layoutlm-base":
        from transformers import LayoutLMConfig, LayoutLMForTokenClassification

        folder = tempfile.mkdtemp(prefix="layoutlm-base-random-")
        engine.seed_everything(0)
        LayoutLMForTokenClassification(LayoutLMConfig()).save_pretrained(folder)
        return ModelConfig(folder, "zero")
    return ModelConfig(args.checkpoint, "zero")


def variant_of(name: str, params: dict) -> dict:
    return validate_variant(
        name, resolve(name, expand_sweeps(params["variants"], params.get("sweeps") or {})), params["data"]["prompt_reserve"]
    )


def measure_peaks(model_cfg: ModelConfig, device: torch.device, tokens: int) -> dict:
    from layoutpeft.modeling import layoutlm_config

    config, _ = layoutlm_config(model_cfg.checkpoint, LEGACY_LABELS)
    shape = (tokens, config.hidden_size, config.intermediate_size)
    peaks: dict[str, Any] = {"shape": list(shape), "load": loadavg()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = hardware.matmul_peak(dtype, device, shape)
    return peaks


def train_epochs(model, variant, cfg: TrainConfig, windows, pad_id, device, *, epochs, pad_to, seed, dtype):
    """Training steps as engine.fit takes them (no validation, so that only training is timed)."""
    n_virtual = n_virtual_tokens(variant)
    optimizer = engine.make_optimizer(model, variant["lr"], cfg.weight_decay, cfg.adamw)
    total = epochs * engine.steps_per_epoch(len(windows), cfg.batch_size)
    scheduler = engine.linear_schedule(optimizer, int(cfg.warmup_ratio * total), total)
    trainable = [p for p in model.parameters() if p.requires_grad]
    forward = engine.compiled(model, cfg.compile)
    model.train()
    lengths, epoch_times = [], []
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        for _, batch in batches(
            windows,
            cfg.batch_size,
            pad_id,
            shuffle=True,
            group_by_length=cfg.group_by_length,
            seed=seed * 1000 + epoch,
            pad_to=pad_to,
            n_virtual=n_virtual,
        ):
            lengths += batch["attention_mask"].sum(1).tolist()
            batch = to_device(batch, device, non_blocking=device.type == "cuda")
            with autocast(device, dtype):
                loss = engine.token_loss(engine.logits_of(forward, batch, n_virtual), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        epoch_times.append(time.perf_counter() - start)
    return lengths, epoch_times


def recipes(cfg: TrainConfig, device) -> dict:
    """name -> (TrainConfig, pad_to). The naive recipe is the original LayoutLM/FUNSD one."""
    naive = dataclasses.replace(cfg, precision="fp32", attention="eager", group_by_length=False, adamw="foreach", compile=False)
    table = {
        "naive": (naive, 512),
        "layoutpeft-fp32": (dataclasses.replace(cfg, precision="fp32"), None),
        "layoutpeft": (cfg, None),
    }
    if resolve_precision(cfg.precision, device) is None:
        del table["layoutpeft-fp32"]  # the same thing twice
    return table


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def rates(model, variant, lengths: list[int], seconds: float, epoch_tokens: int, peaks: dict) -> dict:
    f = flops.training_flops(model, lengths, n_virtual_tokens(variant))
    achieved = f["total"] / seconds
    return {
        "tokens_per_s": f["tokens"] / seconds,
        "flops_per_token": f["per_token"],
        "achieved_flops": achieved,
        "share_bf16_peak": achieved / peaks["bf16"],
        "share_fp32_peak": achieved / peaks["fp32"],
        "epoch_s": epoch_tokens / (f["tokens"] / seconds),
    }


def compare_recipes(args, model_cfg, params, cfg, device, train, test, pad_id, peaks) -> dict:
    variant = variant_of("full", params)
    epoch_tokens = args.epoch_tokens
    out: dict[str, dict[str, Any]] = {}
    for name, (recipe, pad_to) in recipes(cfg, device).items():
        if args.recipes and name not in args.recipes:
            continue
        rows = []
        dtype = resolve_precision(recipe.precision, device)
        for repeat in range(args.repeats):
            # Repeat i uses seed i for every recipe: the F1 spread over seeds is the noise that a
            # difference between recipes must exceed.
            engine.seed_everything(repeat)
            per_epoch = engine.steps_per_epoch(len(train), recipe.batch_size)
            model, _ = engine.build_model(
                model_cfg, variant, device, Schedule(args.epochs * per_epoch, per_epoch), recipe.attention, labels=LEGACY_LABELS
            )
            load = loadavg()
            with PeakMemory(device) as memory:
                lengths, epoch_times = train_epochs(
                    model, variant, recipe, train, pad_id, device, epochs=args.epochs, pad_to=pad_to, seed=repeat, dtype=dtype
                )
            f1 = engine.evaluate_windows(model, test, 32, pad_id, device, 0, dtype)["scores"]["f1"]
            row = {
                **rates(model, variant, lengths, sum(epoch_times), epoch_tokens, peaks),
                "peak_mb": memory.peak / 1e6,
                "test_f1": f1,
            }
            rows.append(row)
            print(
                f"  {name:16s} seed {repeat}: {row['tokens_per_s']:7.0f} real tok/s  "
                f"{row['achieved_flops'] / 1e9:6.0f} GFLOP/s ({row['share_bf16_peak']:.0%} of bf16 peak)  "
                f"{row['epoch_s']:6.1f} s/epoch  {row['peak_mb']:6.0f} MB  F1 {f1:.4f}  load {load}",
                flush=True,
            )
            del model
        out[name] = {key: spread([r[key] for r in rows]) for key in rows[0]}
        out[name]["precision"] = PRECISION_NAMES[dtype]
        out[name]["settings"] = {**dataclasses.asdict(recipe), "pad_to": pad_to}
    base = out["naive"]["tokens_per_s"]["median"] if "naive" in out else float("nan")
    for name in out:
        out[name]["speedup_vs_naive"] = out[name]["tokens_per_s"]["median"] / base
    return out


def weights_mb(model) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def method_cost(name, args, model_cfg, params, cfg, device, train, pad_id, peaks) -> dict:
    """`--steps` training steps of one method on the first batches of a real epoch (1 warm-up first)."""
    variant = variant_of(name, params)
    n_virtual = n_virtual_tokens(variant)
    dtype = resolve_precision(cfg.precision, device)
    engine.seed_everything(0)
    model, source = engine.build_model(model_cfg, variant, device, Schedule(100, 10), cfg.attention, labels=LEGACY_LABELS)
    optimizer = engine.make_optimizer(model, variant["lr"], cfg.weight_decay, cfg.adamw)
    trainable = [p for p in model.parameters() if p.requires_grad]
    hook = engine.after_step_hook(model, variant)
    forward = engine.compiled(model, cfg.compile)
    epoch = [
        b
        for _, b in batches(
            train, cfg.batch_size, pad_id, shuffle=True, group_by_length=cfg.group_by_length, seed=0, n_virtual=n_virtual
        )
    ]
    chosen = [epoch[i % len(epoch)] for i in range(args.steps + 1)]  # round again when an epoch is shorter
    model.train()
    lengths, seconds = [], 0.0
    load = loadavg()
    with PeakMemory(device) as memory:
        for step, batch in enumerate(chosen):
            batch = to_device(batch, device)
            sync(device)
            start = time.perf_counter()
            with autocast(device, dtype):
                loss = engine.token_loss(engine.logits_of(forward, batch, n_virtual), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            if hook:
                hook(step)
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            sync(device)
            if step > 0:  # the first step pays for allocation and kernel selection
                seconds += time.perf_counter() - start
                lengths += batch["attention_mask"].sum(1).tolist()
    counts = count_parameters(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_trained(model, variant, source, model_cfg, Path(tmp))
    epoch_tokens = args.epoch_tokens
    return {
        "method": variant["method"],
        **rates(model, variant, lengths, seconds, epoch_tokens, peaks),
        "steps": args.steps,
        "peak_mb": memory.peak / 1e6,
        "weights_mb": weights_mb(model),
        "trainable": counts["trainable"],
        "total": counts["total"],
        "saved_mb": saved / 1e6,
        "precision": PRECISION_NAMES[dtype],
        "load": load,
    }


def method_costs(args, device) -> dict:
    """One child process per method: a process's peak RSS never goes down."""
    out = {}
    for name in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            child = [
                sys.executable,
                __file__,
                "--part",
                "one-method",
                "--methods",
                name,
                "--params",
                args.params,
                "--checkpoint",
                args.checkpoint,
                "--config",
                args.config,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--windows",
                str(args.windows),
                "--peaks-json",
                json.dumps(args.peaks),
                "--out",
                str(Path(tmp) / "m.json"),
            ]
            if args.batch_size:
                child += ["--batch-size", str(args.batch_size)]
            done = subprocess.run(child, stdout=subprocess.DEVNULL)
            if done.returncode != 0:  # one broken method must not cost the others' figures
                print(f"  {name:14s} FAILED (exit {done.returncode}; its traceback is above)", flush=True)
                continue
            out[name] = json.loads((Path(tmp) / "m.json").read_text())
        row = out[name]
        print(
            f"  {name:14s} {row['tokens_per_s']:7.0f} real tok/s  {row['flops_per_token'] / 1e6:5.1f} MFLOP/token  "
            f"{row['achieved_flops'] / 1e9:5.0f} GFLOP/s ({row['share_bf16_peak']:.0%} of bf16 peak)  "
            f"{row['epoch_s']:6.1f} s/epoch  {row['peak_mb']:6.0f} MB  load {row['load']}",
            flush=True,
        )
    ref = out.get("full")
    if ref:
        for row in out.values():
            row["speedup_vs_full"] = row["tokens_per_s"] / ref["tokens_per_s"]
            row["flops_vs_full"] = row["flops_per_token"] / ref["flops_per_token"]
            row["peak_memory_vs_full"] = row["peak_mb"] / ref["peak_mb"]
    return out


STARTUP_CHILD = r"""
import os, runpy, sys, time
t_launch = float(os.environ["LAYOUTPEFT_T_LAUNCH"])
t0 = time.time()
import stages.train  # everything the stage imports at module level
t_imports = time.time()
from torch.optim.optimizer import register_optimizer_step_post_hook
def first_step(optimizer, args, kwargs):
    print(f"STARTUP {t0 - t_launch:.3f} {t_imports - t0:.3f} {time.time() - t_launch:.3f}", flush=True)
    os._exit(0)
register_optimizer_step_post_hook(first_step)
sys.argv = ["stages.train", "--variant", sys.argv[1], "--seed", "0"]
runpy.run_module("stages.train", run_name="__main__")
"""


def startup(args, params: dict, repeats: int = 2) -> dict:
    """`python -m stages.train` in a temporary run folder (params.yaml with this run's model, data/
    linked), stopped at its first optimizer step by a global optimizer hook."""
    import yaml

    from layoutpeft.train.variants import write_variants

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        local = json.loads(json.dumps(params))
        local["model"]["checkpoint"] = args.checkpoint
        local["train"]["max_epochs"] = 1
        (tmp / "params.yaml").write_text(yaml.safe_dump(local))
        (tmp / "data").mkdir()
        (tmp / "data" / "tokenized").symlink_to(Path("data/tokenized").resolve())  # what the other parts read
        variant = variant_of("full", params)
        write_variants({"full": variant}, tmp / "data" / "variants")
        # what tune@full writes when study.tune_lr is off: the stage reads its lr from there
        write_json(
            tmp / "data" / "lr" / "full.json",
            {"variant": "full", "chosen_lr": variant["lr"], "tuned": False, "trials": [], "reason": "start-up benchmark"},
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(repeats):
            env["LAYOUTPEFT_T_LAUNCH"] = repr(time.time())
            done = subprocess.run(
                [sys.executable, "-c", STARTUP_CHILD, "full"], cwd=tmp, env=env, capture_output=True, text=True, timeout=600
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("STARTUP")), None)
            if line is None:
                raise RuntimeError(f"start-up child failed: {done.stderr[-2000:]}")
            interpreter, imports, first = map(float, line.split()[1:])
            results.append({"interpreter_s": interpreter, "imports_s": imports, "to_first_step_s": first, "load": loadavg()})
            print(
                f"  start-up: {first:.1f}s to the first optimizer step (interpreter {interpreter:.1f}s, "
                f"stage imports {imports:.1f}s)  load {results[-1]['load']}",
                flush=True,
            )
    return {"runs": results, "median_to_first_step_s": statistics.median(r["to_first_step_s"] for r in results)}


def pct(x: float) -> str:
    return f"{x:.0%}"


def markdown(result: dict) -> str:
    env, peaks = result["environment"], result["peaks"]
    lines = [
        f"# Training speed, {result['date']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {env['device']} ({env['device_name']}, {env['cpu_threads']} threads); CPU flags: "
        f"{' '.join(result['cpu_flags']) or 'n/a'}; precision auto here: {result['precision_path']}  ",
        f"Versions: torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
        f"bitsandbytes {env['bitsandbytes']}; git {env['git_commit']} (modified: {env['code_modified']})  ",
        f"Model {result['model']}; batch {result['batch_size']}; {result['epochs']} epoch(s) x "
        f"{result['repeats']} seed(s) per recipe; {result['steps']} timed steps per method; "
        f"{result['train_windows']} training windows{' (limited by --windows)' if result['windows_limit'] else ''}  ",
        f"Load average: start {result['load_start']}, end {result['load_end']}  ",
        f"Matmul peak at the model's shapes {tuple(peaks['shape'])}, measured in this run: fp32 "
        f"{peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s (before; after: fp32 "
        f"{result['peaks_after']['fp32'] / 1e9:.0f}, bf16 {result['peaks_after']['bf16'] / 1e9:.0f}). "
        "Shares below use the before figures.",
    ]
    if result.get("recipes"):
        lines += [
            "",
            "| recipe | precision | real tokens/s (median, min-max) | achieved GFLOP/s | of bf16 peak "
            "| of fp32 peak | s/epoch | peak MB | test F1 (median, min-max) | speed-up vs naive |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in result["recipes"].items():
            t, f = r["tokens_per_s"], r["test_f1"]
            lines.append(
                f"| {name} | {r['precision']} | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) | "
                f"{r['achieved_flops']['median'] / 1e9:.0f} | {pct(r['share_bf16_peak']['median'])} | "
                f"{pct(r['share_fp32_peak']['median'])} | {r['epoch_s']['median']:.1f} | "
                f"{r['peak_mb']['median']:.0f} | {f['median']:.4f} ({f['min']:.4f}-{f['max']:.4f}) | "
                f"{r['speedup_vs_naive']:.2f}x |"
            )
    if result.get("methods"):
        lines += [
            "",
            "| method | real tokens/s | speed-up vs full | training MFLOP/token | vs full | achieved GFLOP/s "
            "| of bf16 peak | s/epoch | peak MB | trainable | saved MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in result["methods"].items():
            lines.append(
                f"| {name} | {r['tokens_per_s']:.0f} | {r.get('speedup_vs_full', float('nan')):.2f}x | "
                f"{r['flops_per_token'] / 1e6:.1f} | {r.get('flops_vs_full', float('nan')):.2f}x | "
                f"{r['achieved_flops'] / 1e9:.0f} | {pct(r['share_bf16_peak'])} | {r['epoch_s']:.1f} | "
                f"{r['peak_mb']:.0f} | {r['trainable']:,} | {r['saved_mb']:.2f} |"
            )
    if result.get("startup"):
        s = result["startup"]
        lines += [
            "",
            f"Start-up (`python -m stages.train` to its first optimizer step): median "
            f"{s['median_to_first_step_s']:.1f} s over {len(s['runs'])} runs; "
            + "; ".join(
                f"{r['to_first_step_s']:.1f} s (interpreter {r['interpreter_s']:.1f}, "
                f"stage imports {r['imports_s']:.1f}, load {r['load']})"
                for r in s["runs"]
            ),
        ]
    lines += [
        "",
        "s/epoch is training only (no validation pass): the whole train split's real tokens / real tokens/s. "
        "FLOPs are useful training FLOPs on real tokens (benchmarks/flops.py). On a shared machine "
        "every figure here is contended: compare rows of one run, and re-measure on a quiet machine.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argument_parser(__doc__, training=True)
    parser.add_argument("--config", choices=["checkpoint", "layoutlm-base"], default="checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3, help="short schedule per recipe (F1 is measured after it)")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per recipe")
    parser.add_argument("--batch-size", type=int, default=None, help="default: params.yaml's train.batch_size")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per method (after 1 warm-up)")
    parser.add_argument(
        "--windows", type=int, default=0, help="use only the first N training windows (a smoke test, or a busy machine); 0 = all"
    )
    parser.add_argument("--methods", nargs="*", default=METHOD_VARIANTS)
    parser.add_argument("--recipes", nargs="*", default=None, help="only these (naive, layoutpeft-fp32, layoutpeft)")
    parser.add_argument(
        "--part", nargs="*", default=["recipes", "methods", "startup"], choices=["recipes", "methods", "startup", "one-method"]
    )
    parser.add_argument("--peaks-json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>-<device>-speed.json)")
    parser.add_argument(
        "--resume", action="store_true", help="--out holds an interrupted run's parts: keep them, run only the rest"
    )
    args = parser.parse_args(argv)

    params = load_params(args.params)
    cfg = TrainConfig.from_params(params)
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    set_threads(cfg.threads)
    device = resolve_device(args.device)
    model_cfg = model_config(args)
    meta, train = load_meta(), load_windows("train")
    args.epoch_tokens = sum(len(w["input_ids"]) for w in train)  # s/epoch is always for the whole split
    if args.windows:
        train = train[: args.windows]
    pad_id = meta["pad_token_id"]

    if args.part == ["one-method"]:
        row = method_cost(args.methods[0], args, model_cfg, params, cfg, device, train, pad_id, json.loads(args.peaks_json))
        Path(args.out).write_text(json.dumps(row) + "\n")
        return

    load_start = loadavg()
    typical_tokens = cfg.batch_size * int(statistics.median(len(w["input_ids"]) for w in train))
    args.peaks = measure_peaks(model_cfg, device, typical_tokens)
    print(
        f"matmul peak {tuple(args.peaks['shape'])}: fp32 {args.peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {args.peaks['bf16'] / 1e9:.0f} GFLOP/s  load {load_start}",
        flush=True,
    )
    result = {
        "date": datetime.date.today().isoformat(),
        "environment": describe(device),
        "cpu_flags": hardware.simd_flags() if device.type == "cpu" else [],
        "precision_path": precision_path(device),
        "train_settings": dataclasses.asdict(cfg),
        "model": args.config if args.config != "checkpoint" else args.checkpoint,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "batch_size": cfg.batch_size,
        "steps": args.steps,
        "train_windows": len(train),
        "windows_limit": args.windows,
        "command": "python " + " ".join(sys.argv),
        "load_start": load_start,
        "peaks": args.peaks,
    }
    out = Path(args.out or f"benchmarks/results/{result['date']}-{device.type}-speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and out.is_file():  # keep the parts an interrupted run finished (and the peaks they used)
        earlier = json.loads(out.read_text())
        if earlier.get("partial"):
            kept = [part for part in ("recipes", "methods") if part in earlier]
            result.update({k: earlier[k] for k in ("date", "environment", "peaks", "load_start", "command", *kept)})
            result["resumed"] = {"parts_kept": kept, "load": loadavg(), "command": "python " + " ".join(sys.argv)}
            args.part = [part for part in args.part if part not in kept]
            print(f"resuming {out}: kept {', '.join(kept)}", flush=True)

    def save_partial() -> None:  # a part that fails later must not cost the earlier parts' figures
        write_json(out, {**result, "partial": True})

    if "recipes" in args.part:
        print("recipes (full fine-tuning):", flush=True)
        result["recipes"] = compare_recipes(args, model_cfg, params, cfg, device, train, load_windows("test"), pad_id, args.peaks)
        save_partial()
    if "methods" in args.part and args.methods:
        print("methods:", flush=True)
        result["methods"] = method_costs(args, device)
        save_partial()
    if "startup" in args.part and args.config == "checkpoint":
        print("start-up:", flush=True)
        result["startup"] = startup(args, params)
    result["peaks_after"] = measure_peaks(model_cfg, device, typical_tokens)
    result["load_end"] = loadavg()
    text = markdown(result)
    print("\n" + text)
    write_json(out, result)
    write_text(out.with_suffix(".md"), text + "\n")
    print(f"\nwritten: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
