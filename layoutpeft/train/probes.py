"""What a run measures about itself besides F1: peak memory of the training phase, parameter
counts and inference throughput."""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from layoutpeft.data.batching import batches, to_device
from layoutpeft.modeling import TABLES_2D
from layoutpeft.train.device import autocast
from layoutpeft.train.engine import logits_of


def _vm_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def start_memory_window(device: torch.device) -> dict:
    """Begin measuring the training phase's peak memory; returns the baseline.

    CUDA: reset max_memory_allocated. CPU (Linux): reset the process's RSS high-water mark
    (writing 5 to /proc/self/clear_refs), so the peak excludes imports and model loading
    that happened before, which would otherwise hide the differences between methods."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return {"baseline_bytes": int(torch.cuda.memory_allocated(device))}
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        rss = _vm_kib("VmRSS")
        return {"baseline_bytes": rss * 1024 if rss is not None else None, "reset": True}
    except OSError:
        return {"baseline_bytes": None, "reset": False}


def peak_memory(device: torch.device, window: dict | None = None) -> dict:
    """Peak memory of the training phase (since start_memory_window), with its kind.

    Kinds never mix in a summary: cuda_peak_allocated (tensor memory on the GPU),
    cpu_peak_rss_training (process RSS peak during training; baseline = RSS at its start),
    cpu_peak_rss_process (whole-process high-water mark, where the peak could not be reset)."""
    window = window or {}
    if device.type == "cuda":
        return {
            "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
            "kind": "cuda_peak_allocated",
            "baseline_bytes": window.get("baseline_bytes"),
        }
    hwm = _vm_kib("VmHWM")
    if window.get("reset") and hwm is not None:
        return {"peak_bytes": hwm * 1024, "kind": "cpu_peak_rss_training", "baseline_bytes": window["baseline_bytes"]}
    # ru_maxrss is in KiB on Linux: the whole process's high-water mark (model load included).
    return {
        "peak_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "kind": "cpu_peak_rss_process",
        "baseline_bytes": None,
    }


def _weights(p) -> int:
    # bitsandbytes packs two 4-bit weights per byte: count the weights, not the bytes.
    packed_4bit = getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit"
    return p.numel() * 2 if packed_4bit else p.numel()


def model_size(model) -> int:
    """Every weight of a model (4-bit packed weights counted as weights): before a method is applied,
    what full fine-tuning trains."""
    return sum(_weights(p) for p in model.parameters())


HEAD = "classifier"


def part_of(name: str, shared_tables: bool) -> str:
    """Which part of what trains a parameter belongs to: "head" (the new classifier, trained by every
    method), "new_tables" (a BERT checkpoint's new 2-D tables, likewise) or "method" (the method's own)."""
    if f".{HEAD}." in f".{name}":
        return "head"
    if shared_tables and any(f".{t}." in f".{name}" for t in TABLES_2D):
        return "new_tables"
    return "method"


def count_parameters(model, shared_tables: bool = False, full_trainable: int | None = None) -> dict:
    """Trainable and total weights, and what trains split into the method's own weights and the
    parts every method shares (head; new 2-D tables when `shared_tables`), with their tensors' bytes.

    `full_trainable` (model_size before the method): full fine-tuning's trainable count, the base of
    every share; without it trainable_share falls back to the model's own total, which for a PEFT
    model counts the head and the tables twice (the original and the trained copy)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = model_size(model)
    parts = {"method": 0, "head": 0, "new_tables": 0}
    part_bytes = {"method": 0, "head": 0, "new_tables": 0}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = part_of(name, shared_tables)
            parts[part] += p.numel()
            part_bytes[part] += p.numel() * p.element_size()
    base = full_trainable or total
    return {
        "trainable": trainable,
        "total": total,
        "trainable_share": trainable / base if base else 0.0,
        **parts,
        "full_trainable": full_trainable,
        "method_share": parts["method"] / full_trainable if full_trainable else None,
        "method_bytes": part_bytes["method"],
        "shared_bytes": part_bytes["head"] + part_bytes["new_tables"],
    }


@torch.no_grad()
def inference_speed(
    model,
    windows: list[dict],
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    n_virtual: int = 0,
    dtype: torch.dtype | None = None,
    repeats: int = 3,
) -> dict:
    """Inference throughput: one warm-up pass over `windows`, then the median of `repeats` timed passes.

    tokens_per_s counts real tokens (what a user's forms contain); computed_tokens_per_s adds the
    padding and any virtual tokens the model also computes."""
    model.eval()
    real = sum(len(w["input_ids"]) for w in windows)
    computed = 0
    for _, batch in batches(windows, batch_size, pad_token_id, group_by_length=True, n_virtual=n_virtual):
        computed += batch["input_ids"].numel() + n_virtual * batch["input_ids"].shape[0]
    times = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        for _, batch in batches(windows, batch_size, pad_token_id, group_by_length=True, n_virtual=n_virtual):
            batch = to_device(batch, device)
            with autocast(device, dtype):
                logits_of(model, batch, n_virtual)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first pass is the warm-up
            times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "tokens_per_s": real / seconds,
        "computed_tokens_per_s": computed / seconds,
        "seconds_per_pass": seconds,
        "timed_passes": repeats,
        "threads": torch.get_num_threads(),
    }
