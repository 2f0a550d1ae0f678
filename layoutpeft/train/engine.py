"""The training and inference loop shared by the train and evaluate stages and the benchmark."""
from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from layoutpeft import hardware
from layoutpeft.data.batching import batches, to_device
from layoutpeft.config import ModelConfig, TrainConfig
from layoutpeft.errors import LayoutpeftError
from layoutpeft.train.methods import Schedule, after_step_hook, apply_method, method_of, n_virtual_tokens, quantization_config
from layoutpeft.modeling import TABLES_2D, load_model
from layoutpeft.train.scoring import score, word_labels

def resolve_device(spec: str) -> torch.device:
    """auto: CUDA when one is visible, else CPU. A named cuda that is not visible fails here, before any work."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise LayoutpeftError("train.device is cuda, but no CUDA device is visible "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return torch.device(spec)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. auto: bf16 on CUDA with bf16 support and on CPUs
    with bf16 matrix units (avx512_bf16 or amx_bf16 in /proc/cpuinfo, and a oneDNN build that uses
    them); fp32 elsewhere, where bf16 is emulated and slower. `precision_path` says which applied."""
    if precision == "auto":
        precision = "bf16" if precision_path(device).startswith("bf16") else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_path(device: torch.device) -> str:
    """What `precision: auto` chooses on `device`, and why (recorded with each run)."""
    if device.type == "cuda":
        return "bf16 (CUDA bf16 support)" if torch.cuda.is_bf16_supported() else "fp32 (CUDA without bf16)"
    if device.type == "cpu":
        flags = hardware.bf16_flags()
        if flags and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return f"bf16 (CPU flags {' '.join(flags)})"
        return "fp32 (CPU without avx512_bf16/amx_bf16)"
    return f"fp32 ({device.type})"


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 is set explicitly on a CPU without bf16 units: it still runs (a study
    pinned to bf16 keeps its numerics), but emulated, an order of magnitude slower
    (benchmarks/results/2026-11-28-cpu-avx2-precision.md)."""
    if precision != "bf16" or device.type != "cpu" or precision_path(device).startswith("bf16"):
        return None
    flags = " ".join(hardware.simd_flags()) or "no AVX2/AVX-512"
    return (f"train.precision is bf16, but this CPU has no avx512_bf16/amx_bf16 (flags: {flags}): bf16 is "
            "emulated here, about 10x slower than fp32 per step; `precision: auto` trains in fp32 (other numerics "
            "than a bf16 study)")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_model(model_cfg: ModelConfig, variant: dict, device: torch.device, schedule: Schedule,
                attention: str = "sdpa"):
    """Base model from model.checkpoint with the variant's method applied; returns (model, source_type)."""
    method = method_of(variant)
    quant = quantization_config(device.type) if method.quantized else None
    model, source_type = load_model(model_cfg.checkpoint, model_cfg.position_init,
                                    quantization_config=quant, attn_implementation=attention)
    new_modules = TABLES_2D if trains_new_tables(model_cfg, source_type) else ()
    model = apply_method(model, variant, schedule, new_modules)
    if method.quantized and device.type == "cpu":
        keep_4bit_training_layout(model)
    if not method.quantized:  # bitsandbytes places quantised weights itself
        model.to(device)
    elif device.type == "cuda":
        model.to(device)
    return model, source_type


def trains_new_tables(model_cfg: ModelConfig, source_type: str) -> bool:
    """A BERT checkpoint's 2-D position tables are new weights, trained with every method (model.new_tables)."""
    return source_type == "bert" and model_cfg.new_tables == "train"


def new_tables_lr(variant: dict, model_cfg: ModelConfig, source_type: str) -> float | None:
    """The lr of the new 2-D tables: the variant's `tables_lr`, else model.tables_lr (None: the method's lr).
    A LayoutLM checkpoint's tables are pre-trained weights like any other: they keep the method's lr."""
    if not trains_new_tables(model_cfg, source_type):
        return None
    return variant.get("tables_lr") or model_cfg.tables_lr


def keep_4bit_training_layout(model) -> None:
    """bitsandbytes (0.50) repacks 4-bit weights for its AVX512-BF16 CPU inference kernel on the
    first eval-mode forward and never packs them back, so the next training step fails ("a view
    of a leaf Variable that requires grad is being used in an in-place operation"). Training
    alternates train and validation, so turn the repacking off here; evaluate.py, which only
    infers, keeps the fast kernel."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def model_output(model, batch: dict, with_labels: bool = False):
    kwargs = {"labels": batch["labels"]} if with_labels else {}
    return model(input_ids=batch["input_ids"], bbox=batch["bbox"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"], **kwargs)


def logits_of(model, batch: dict, n_virtual: int) -> torch.Tensor:
    """Token logits aligned with batch['labels'] (virtual-token positions dropped)."""
    return model_output(model, batch).logits[:, n_virtual:, :]


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100, reduction=reduction)


@torch.no_grad()
def predict(model, windows: list[dict], batch_size: int, pad_token_id: int, device: torch.device,
            n_virtual: int = 0, dtype: torch.dtype | None = None, with_probs: bool = False) -> dict:
    """Predicted label ids per window, mean token loss, and throughput in real tokens per second;
    with_probs: also the softmax probability of each predicted label ("probabilities")."""
    model.eval()
    predictions: list[torch.Tensor | None] = [None] * len(windows)
    probabilities: list[torch.Tensor | None] = [None] * len(windows)
    total_loss, labelled = 0.0, 0
    tokens = sum(len(w["input_ids"]) for w in windows)
    start = time.perf_counter()
    for indices, batch in batches(windows, batch_size, pad_token_id, group_by_length=True, n_virtual=n_virtual):
        batch = to_device(batch, device)
        with autocast(device, dtype):
            logits = logits_of(model, batch, n_virtual)
        n = int((batch["labels"] != -100).sum())
        total_loss += float(token_loss(logits, batch["labels"])) * n
        labelled += n
        guesses = logits.argmax(-1).cpu()
        probs = torch.softmax(logits.float(), dim=-1).max(-1).values.cpu() if with_probs else None
        for row, index in enumerate(indices):
            size = len(windows[index]["input_ids"])
            predictions[index] = guesses[row, :size]
            if with_probs:
                probabilities[index] = probs[row, :size]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"predictions": predictions, "probabilities": probabilities if with_probs else None,
            "loss": total_loss / max(labelled, 1), "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else float("nan")}


@torch.no_grad()
def inference_speed(model, windows: list[dict], batch_size: int, pad_token_id: int, device: torch.device,
                    n_virtual: int = 0, dtype: torch.dtype | None = None, repeats: int = 3) -> dict:
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
    return {"tokens_per_s": real / seconds, "computed_tokens_per_s": computed / seconds, "seconds_per_pass": seconds,
            "timed_passes": repeats, "threads": torch.get_num_threads()}


def evaluate_windows(model, windows, batch_size, pad_token_id, device, n_virtual=0, dtype=None) -> dict:
    result = predict(model, windows, batch_size, pad_token_id, device, n_virtual, dtype)
    y_true, y_pred = word_labels(windows, result["predictions"])
    return {**result, "scores": score(y_true, y_pred)}


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
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda_peak_allocated",
                "baseline_bytes": window.get("baseline_bytes")}
    hwm = _vm_kib("VmHWM")
    if window.get("reset") and hwm is not None:
        return {"peak_bytes": hwm * 1024, "kind": "cpu_peak_rss_training", "baseline_bytes": window["baseline_bytes"]}
    # ru_maxrss is in KiB on Linux: the whole process's high-water mark (model load included).
    return {"peak_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "kind": "cpu_peak_rss_process",
            "baseline_bytes": None}


def count_parameters(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = 0
    for p in model.parameters():
        # bitsandbytes packs two 4-bit weights per byte: count the weights, not the bytes.
        packed_4bit = getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit"
        total += p.numel() * 2 if packed_4bit else p.numel()
    return {"trainable": trainable, "total": total, "trainable_share": trainable / total if total else 0.0}


def make_optimizer(model, lr: float, weight_decay: float, impl: str = "foreach",
                   tables_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (the BERT recipe).

    `impl` (train.adamw): fused (one kernel over all tensors, CPU and CUDA), foreach (batched
    per-op kernels, torch's default) or for_loop (one tensor at a time). Same update rule.
    `tables_lr` (new_tables_lr): the trainable 2-D position tables get their own lr."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        table = tables_lr is not None and any(f"{t}." in name for t in TABLES_2D)
        no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias")
        group = groups.setdefault((table, no_decay), {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                                                      **({"lr": tables_lr} if table else {})})
        group["params"].append(p)
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]
    return torch.optim.AdamW([groups[k] for k in sorted(groups)], lr=lr, **kind)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    return math.ceil(n_windows / batch_size)


def set_threads(threads: int) -> None:
    """train.threads: torch's intra-op CPU threads (0 keeps torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


def compiled(model, enabled: bool):
    """train.compile: torch.compile (inductor) the forward. Shapes are marked dynamic, because dynamic
    padding gives every batch its own length and a static compile would recompile for each."""
    if not enabled:
        return model
    return torch.compile(model, dynamic=True)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    best_val_f1: float
    selected_on: str
    epochs_run: int
    optimizer_steps: int
    stopped_early: bool
    wall_time_s: float
    train_tokens: int  # real (non-padding) tokens seen in training steps
    stop_reason: str | None = None  # patience | collapsed | None (ran every epoch)


def fit(model, variant: dict, cfg: TrainConfig, train_windows: list[dict], val_windows: list[dict],
        pad_token_id: int, device: torch.device, seed: int, *, total_steps: int,
        epoch_batches: Callable[[int], Iterable[dict]] | None = None, on_epoch=None,
        tables_lr: float | None = None) -> FitResult:
    """AdamW, linear warm-up then decay to zero at `total_steps`, grad-norm clipping; one validation pass
    per epoch; the epoch with the best validation metric (`cfg.select_on`: entity F1 or loss) is
    restored at the end. `cfg.patience` > 0 stops after that many epochs without improvement
    (0: run the whole annealed schedule, so every method ends at the same learning rate).
    `cfg.collapse_epochs` > 0 stops a run whose validation F1 has been 0 that many epochs in a row:
    it has diverged to predicting no entity, and the rest of its schedule would not bring it back.

    `epoch_batches(epoch)` replaces the default batches (dynamic padding, length groups, a new
    order and new batch members each epoch and seed): the benchmark passes its naive recipe or a
    step budget this way, so nothing benchmark-only lives in the training loop.
    """
    dtype = resolve_precision(cfg.precision, device)
    n_virtual = n_virtual_tokens(variant)
    method = method_of(variant)
    optimizer = make_optimizer(model, variant["lr"], cfg.weight_decay, cfg.adamw, tables_lr)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    hook = after_step_hook(model, variant)
    # token_mean: every labelled token weighs the same across batches of different lengths.
    labelled = [int((w["labels"] != -100).sum()) for w in train_windows]
    tokens_per_batch = max(1.0, sum(labelled) / max(1, math.ceil(len(train_windows) / cfg.batch_size)))

    def default_batches(epoch: int):
        for _, batch in batches(train_windows, cfg.batch_size, pad_token_id, shuffle=True,
                                group_by_length=cfg.group_by_length, group_size=cfg.group_size,
                                seed=seed * 100_003 + epoch, n_virtual=n_virtual):
            yield batch

    epoch_batches = epoch_batches or default_batches
    trainable = [p for p in model.parameters() if p.requires_grad]
    forward_model = compiled(model, cfg.compile)
    better = (lambda new, old: new > old) if cfg.select_on == "f1" else (lambda new, old: new < old)

    history, best, best_state = [], None, None
    step, stale, zero_f1, stop_reason, tokens = 0, 0, 0, None, 0
    start = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        epoch_start, loss_sum, n_batches = time.perf_counter(), 0.0, 0
        for batch in epoch_batches(epoch):
            tokens += int(batch["attention_mask"].sum())
            batch = to_device(batch, device, non_blocking=device.type == "cuda")
            with autocast(device, dtype):
                if method.loss_in_model:  # the model adds its own terms (AdaLoRA's orthogonal regulariser)
                    loss = model_output(forward_model, batch, with_labels=True).loss
                elif cfg.loss == "token_mean":
                    loss = token_loss(logits_of(forward_model, batch, n_virtual), batch["labels"], "sum") / tokens_per_batch
                else:
                    loss = token_loss(logits_of(forward_model, batch, n_virtual), batch["labels"])
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if hook:
                hook(step)  # AdaLoRA: after the optimizer step, before the gradients are zeroed (PEFT's order)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            n_batches += 1
            step += 1
        train_time = time.perf_counter() - epoch_start
        val = evaluate_windows(model, val_windows, cfg.batch_size, pad_token_id, device, n_virtual, dtype)
        record = {"epoch": epoch, "train_loss": loss_sum / max(n_batches, 1), "val_loss": val["loss"],
                  "val_f1": val["scores"]["f1"], "epoch_time_s": train_time, "lr": scheduler.get_last_lr()[0]}
        history.append(record)
        if on_epoch:
            on_epoch(record)
        metric = record["val_f1"] if cfg.select_on == "f1" else record["val_loss"]
        if best is None or better(metric, best[0]):
            best, stale = (metric, epoch), 0
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            stale += 1
        zero_f1 = zero_f1 + 1 if record["val_f1"] == 0 else 0
        if cfg.patience and stale >= cfg.patience:
            stop_reason = "patience"
        elif cfg.collapse_epochs and zero_f1 >= cfg.collapse_epochs:
            stop_reason = "collapsed"
        if stop_reason:
            break
    wall = time.perf_counter() - start
    if best_state is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in best_state:
                    p.copy_(best_state[name])
    chosen = history[best[1] - 1]
    return FitResult(history=history, best_epoch=best[1], best_val_loss=chosen["val_loss"], best_val_f1=chosen["val_f1"],
                     selected_on=cfg.select_on, epochs_run=len(history), optimizer_steps=step,
                     stopped_early=stop_reason is not None, stop_reason=stop_reason, wall_time_s=wall,
                     train_tokens=tokens)
