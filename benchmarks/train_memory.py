"""Where training's peak CPU memory goes, per method and train.* setting, each in its own process.

    python benchmarks/train_memory.py --methods full head lora --arms attention=sdpa attention=eager \
        --out benchmarks/results/2026-11-27-cpu-memory-steps.json
    python benchmarks/train_memory.py --methods full --epochs 3 \
        --arms attention=sdpa attention=sdpa,MALLOC_MMAP_THRESHOLD_=131072 --out ...-epochs.json

Run after `dvc repro tokenize` (it reads data/tokenized). Every (method, arm) runs in a fresh
Python process, because an RSS high-water mark is per process: it builds the model and AdamW as
the train stage does, opens the study's own memory window (start_memory_window: the RSS
high-water mark reset, the RSS then is the baseline), and takes `--steps` optimizer steps on the
longest real training batches (batch size, padding and grouping from params.yaml; the longest
batch sets the peak). It reports the peak (the run records' cpu_peak_rss_training), its rise
above the baseline, the part of that rise the trainable weights' gradients and AdamW states
explain (3 fp32 tensors per trainable weight: 12 bytes per parameter), the rest (activations kept
for backward, autocast copies, allocator slack), and the peak's share of the machine's RAM.
With `--epochs N` a child instead trains a whole run as the train stage does (layoutpeft.train.runs.train,
validation passes included, N epochs) and also prints RSS and its high-water mark after each epoch:
what the run records' peak becomes over a longer run. An arm's UPPER_CASE keys are environment
variables of its process (e.g. glibc's MALLOC_MMAP_THRESHOLD_), the others train.* settings.
Memory, unlike time, hardly depends on other load, so a shared machine measures it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import argument_parser

import torch

from layoutpeft import hardware
from layoutpeft.config import ModelConfig, load_params
from layoutpeft.provenance import describe
from layoutpeft.train import runs
from layoutpeft.train.probes import peak_memory, start_memory_window

from ab_levers import load_setup, new_arm, parse_arm, train_step

GB = 1e9


def machine_ram() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemTotal")


def vm_gb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def split_arm(text: str) -> tuple[str, dict[str, str]]:
    """'attention=eager,MALLOC_X=1' -> ('attention=eager', {'MALLOC_X': '1'})."""
    parts = [p for p in text.split(",") if p]
    env = dict(p.split("=", 1) for p in parts if p.split("=", 1)[0].isupper())
    return ",".join(p for p in parts if p.split("=", 1)[0] not in env), env


def measure_run(method: str, arm_text: str, epochs: int, params_path: str, checkpoint: str) -> dict:
    """In this process: a whole run of `epochs` epochs as the train stage trains it."""
    base, variant, _, _ = load_setup(params_path, method)
    cfg = dataclasses.replace(base, **parse_arm(arm_text), max_epochs=epochs)
    model_cfg = dataclasses.replace(ModelConfig.from_params(load_params(params_path)), checkpoint=checkpoint)
    per_epoch = []

    def on_epoch(_folder):
        return lambda record: per_epoch.append(
            {"epoch": record["epoch"], "rss_gb": vm_gb("VmRSS"), "high_water_gb": vm_gb("VmHWM")}
        )

    with tempfile.TemporaryDirectory() as tmp:
        log = runs.train(method, 0, variant, model_cfg, cfg, Path(tmp) / "run", Path("data/tokenized"), on_epoch=on_epoch)
    memory = log["memory"]
    return {
        "method": method,
        "arm": arm_text,
        "kind": memory["kind"],
        "epochs": epochs,
        "peak_bytes": memory["peak_bytes"],
        "baseline_bytes": memory["baseline_bytes"],
        "rise_bytes": memory["peak_bytes"] - memory["baseline_bytes"],
        "per_epoch": per_epoch,
        "of_machine_ram": memory["peak_bytes"] / machine_ram(),
    }


def measure(method: str, arm_text: str, steps: int, params: str, checkpoint: str) -> dict:
    """In this process: the arm's training peak over its `steps` longest real batches."""
    device = torch.device("cpu")
    base, variant, n_virtual, chosen = load_setup(params, method)
    longest = sorted(chosen, key=lambda b: -b["input_ids"].shape[1])[:steps]
    arm = new_arm(arm_text, base, variant, checkpoint, device)
    window = start_memory_window(device)
    for batch in longest:
        train_step(arm, batch, n_virtual, device)
    peak = peak_memory(device, window)
    trainable = sum(p.numel() for p in arm["trainable"])
    rise = peak["peak_bytes"] - window["baseline_bytes"]
    return {
        "method": method,
        "arm": arm_text,
        "kind": peak["kind"],
        "steps": steps,
        "batch_shape": list(longest[0]["input_ids"].shape),
        "peak_bytes": peak["peak_bytes"],
        "baseline_bytes": window["baseline_bytes"],
        "rise_bytes": rise,
        "trainable": trainable,
        "grads_and_adam_bytes": 12 * trainable,
        "rest_bytes": rise - 12 * trainable,
        "of_machine_ram": peak["peak_bytes"] / machine_ram(),
    }


def table(rows: list[dict]) -> str:
    if rows and "per_epoch" in rows[0]:
        lines = [
            "| method | arm | epochs | peak GB | of RAM | rise over baseline GB | after each epoch: RSS / high-water GB |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['arm'] or '(params.yaml)'} | {r['epochs']} | {r['peak_bytes'] / GB:.2f} | "
                f"{100 * r['of_machine_ram']:.0f}% | {r['rise_bytes'] / GB:.2f} | "
                + ", ".join(f"{e['rss_gb']:.2f} / {e['high_water_gb']:.2f}" for e in r["per_epoch"])
                + " |"
            )
        return "\n".join(lines)
    lines = [
        "| method | arm | peak GB | of RAM | rise over baseline GB | grads + AdamW GB | rest (activations, copies, slack) GB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['arm'] or '(params.yaml)'} | {r['peak_bytes'] / GB:.2f} | "
            f"{100 * r['of_machine_ram']:.0f}% | {r['rise_bytes'] / GB:.2f} | "
            f"{r['grads_and_adam_bytes'] / GB:.2f} | {r['rest_bytes'] / GB:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argument_parser(__doc__, training=True)
    parser.add_argument("--methods", nargs="+", default=["full", "lora"])
    parser.add_argument("--arms", nargs="+", default=[""], help="train.* settings per arm, e.g. attention=eager")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=0, help="train whole runs of this many epochs instead")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "ARM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, arm = args.child
        row = (
            measure_run(method, arm, args.epochs, args.params, args.checkpoint)
            if args.epochs
            else measure(method, arm, args.steps, args.params, args.checkpoint)
        )
        print(json.dumps(row))
        return
    rows = []
    for method in args.methods:
        for arm in args.arms:
            settings, env = split_arm(arm)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    method,
                    settings,
                    "--steps",
                    str(args.steps),
                    "--epochs",
                    str(args.epochs),
                    "--params",
                    args.params,
                    "--checkpoint",
                    args.checkpoint,
                ],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, **env},
            ).stdout
            rows.append({**json.loads(out.strip().splitlines()[-1]), "arm": arm})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "environment": describe(torch.device("cpu")),
        "cpu_flags": hardware.simd_flags(),
        "machine_ram_bytes": machine_ram(),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
