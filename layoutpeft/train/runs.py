"""One run = one (variant, seed): train it, save what it trained, load it back, evaluate it.

A run folder (models/<variant>-<seed>/) holds what the method trains (`adapter/` for PEFT,
`model/` for full fine-tuning, `trainable.safetensors` otherwise, plus the new 2-D tables of
a BERT checkpoint when they are not all zero) and `train_log.json`, the record of what train
used (model, train settings, resolved device and precision) and measured. Evaluation reads
the record, not params.yaml, so it always rebuilds the model exactly as it was trained.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from layoutpeft.atomic import staged_dir, write_bytes, write_json
from layoutpeft.config import EvaluateConfig, ModelConfig, TrainConfig
from layoutpeft.data.batching import load_meta, load_windows
from layoutpeft.errors import LayoutpeftError
from layoutpeft.labels import labels_of_record
from layoutpeft.modeling import TABLES_2D, backbone_of, load_model
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.device import (
    emulated_bf16_warning,
    frozen_weights_dtype,
    hold_frozen_weights,
    precision_path,
    resolve_device,
    resolve_precision,
    set_threads,
)
from layoutpeft.train.methods import Schedule, check_backbone, method_of, n_virtual_tokens
from layoutpeft.train.probes import count_parameters, inference_speed, peak_memory, start_memory_window

TRAIN_LOG = "train_log.json"
TABLES_FILE = "base_2d_tables.safetensors"
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def save_trained(model, variant: dict, source_type: str, model_cfg: ModelConfig, out: Path) -> int:
    """Save what the method trains (the head and trained new 2-D tables included); returns its size in
    bytes. Frozen random 2-D tables are saved beside it (not counted): they are not in the checkpoint."""
    method = method_of(variant)
    if method.peft:
        model.save_pretrained(out / "adapter")
        saved = out / "adapter"
    elif all(p.requires_grad for p in model.parameters()):
        model.save_pretrained(out / "model")
        saved = out / "model"
    else:
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, out / "trainable.safetensors")
        saved = out / "trainable.safetensors"
    frozen_random = model_cfg.position_init == "random" and model_cfg.new_tables == "frozen"
    if source_type == "bert" and frozen_random and not saved.name == "model":
        base = model.get_base_model() if method.peft else model
        embeddings = base.layoutlm.embeddings
        save_file({name: getattr(embeddings, name).weight.detach().cpu().contiguous() for name in TABLES_2D}, out / TABLES_FILE)
    files = [saved] if saved.is_file() else [p for p in saved.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def read_train_log(run_dir: Path) -> dict:
    path = Path(run_dir) / TRAIN_LOG
    if not path.is_file():
        raise LayoutpeftError(f"{path}: missing (run the train@{Path(run_dir).name} stage first)")
    return json.loads(path.read_text())


def load_trained(run_dir: Path, device: torch.device | None = None):
    """The trained model as `train` left it, on `device` (default: the device it was trained on)."""
    from transformers import AutoModelForTokenClassification

    run_dir = Path(run_dir)
    log = read_train_log(run_dir)
    variant = log["variant_params"]
    method = method_of(variant)
    device = device or resolve_device(log["device"])
    if (run_dir / "model").is_dir():
        return AutoModelForTokenClassification.from_pretrained(run_dir / "model").to(device)
    from layoutpeft.train.methods import quantization_config

    quant = quantization_config(device.type) if method.quantized else None
    base, _ = load_model(
        log["model"]["checkpoint"],
        log["model"]["position_init"],
        quantization_config=quant,
        labels=labels_of_record(log),
        architecture=log["model"].get("architecture", "auto"),
    )
    if (run_dir / TABLES_FILE).is_file():
        embeddings = base.layoutlm.embeddings
        with torch.no_grad():
            for name, weight in load_file(run_dir / TABLES_FILE).items():
                getattr(embeddings, name).weight.copy_(weight)
    if method.peft:
        from peft import PeftModel

        if method.prepare_base:  # as in training (prefix tuning: the attention that takes the prefixes)
            method.prepare_base(base)
        model = PeftModel.from_pretrained(base, run_dir / "adapter")
    else:
        weights = load_file(run_dir / "trainable.safetensors")
        unknown = set(weights) - {n for n, _ in base.named_parameters()}
        if unknown:
            raise LayoutpeftError(f"{run_dir}/trainable.safetensors: tensors {sorted(unknown)[:5]} not in the model")
        base.load_state_dict(weights, strict=False)
        model = base
    if not method.quantized or device.type == "cuda":
        model.to(device)
    return model


def train(
    name: str,
    seed: int,
    variant: dict,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir: Path,
    tokenized: Path,
    on_epoch=None,
    live_dir: str = "live",
    pause_after: int | None = None,
    checkpoint: Path | None = None,
) -> dict:
    """Train one run into `out_dir` (replaced only once complete); returns its train log.

    checkpoint: a paused training's state (engine.pause_state) to continue from when the file exists;
    with pause_after (an epoch before the last) the training stops there and writes its state to it
    (the log then says training.paused). The tuning's successive halving pauses trials this way."""
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    if warning := emulated_bf16_warning(cfg.precision, device):
        print(f"train: WARNING: {warning}", file=sys.stderr, flush=True)
    check_backbone(name, variant, backbone_of(model_cfg.checkpoint, model_cfg.architecture))  # before any work
    meta = load_meta(tokenized)
    train_windows, val_windows = load_windows("train", tokenized), load_windows("validation", tokenized)
    per_epoch = engine.steps_per_epoch(len(train_windows), cfg.batch_size)
    schedule = Schedule(total_steps=cfg.max_epochs * per_epoch, steps_per_epoch=per_epoch)

    engine.seed_everything(seed)  # classifier, adapters and 2-D tables are initialised from this seed
    model, source_type = engine.build_model(model_cfg, variant, device, schedule, cfg.attention, labels=meta["labels"])
    frozen = hold_frozen_weights(model, frozen_weights_dtype(cfg.frozen_weights, variant, device, dtype))
    resume = load_checkpoint(checkpoint, device) if checkpoint is not None and Path(checkpoint).is_file() else None
    counts = count_parameters(model, engine.trains_new_tables(model_cfg, source_type), getattr(model, "full_trainable", None))
    print(
        f"train: {name}-{seed}: {variant['method']}, {counts['trainable']:,} parameters trainable "
        f"({counts['trainable_share']:.3%} of full fine-tuning's), the method's own {counts['method']:,}; "
        f"{device}, {PRECISION_NAMES[dtype]}",
        flush=True,
    )

    with staged_dir(out_dir) as staged:
        load_start = load_average()
        window = start_memory_window(device)
        tables_lr = engine.new_tables_lr(variant, model_cfg, source_type)
        result = engine.fit(
            model,
            variant,
            cfg,
            train_windows,
            val_windows,
            meta["pad_token_id"],
            device,
            seed,
            total_steps=schedule.total_steps,
            on_epoch=on_epoch(staged / live_dir) if on_epoch else None,
            tables_lr=tables_lr,
            pause_after=pause_after,
            resume=resume,
        )
        if result.paused is not None:
            assert checkpoint is not None, "pause_after needs a checkpoint file"
            write_bytes(checkpoint, checkpoint_bytes(result.paused))
        memory = peak_memory(device, window)
        method = method_of(variant)
        if method.effective_trainable:
            counts["effective_trainable"] = method.effective_trainable(model)
        saved_bytes = save_trained(model, variant, source_type, model_cfg, staged)
        epoch_times = [r["epoch_time_s"] for r in result.history]
        log = {
            "variant": name,
            "seed": seed,
            "method": variant["method"],
            "variant_params": variant,
            "model": {**model_cfg.as_dict(), "source_type": source_type, "new_tables_lr": tables_lr},
            "train_params": cfg.as_dict(),
            "device": device.type,
            "precision": PRECISION_NAMES[dtype],
            "data": {"window_length": meta["window_length"], "pad_token_id": meta["pad_token_id"], "labels": meta["labels"]},
            "precision_path": precision_path(device) if cfg.precision == "auto" else "set in params.yaml",
            "frozen_weights": f"bf16 ({frozen} frozen Linear tensors)" if frozen else "fp32",
            "parameters": counts,
            "saved_bytes": saved_bytes,
            "training": {
                "wall_time_s": result.wall_time_s,
                "epoch_time_s": sum(epoch_times) / len(epoch_times),
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "selected_on": result.selected_on,
                "stopped_early": result.stopped_early,
                "stop_reason": result.stop_reason,
                "paused": result.paused is not None,
                "resumed_at_epoch": resume["epoch"] if resume else None,
                "optimizer_steps": result.optimizer_steps,
                "best_val_loss": result.best_val_loss,
                "best_val_f1": result.best_val_f1,
                "train_tokens": result.train_tokens,
                # what else ran: the summary marks costs measured under load with it
                "load_average": {"start": load_start, "end": load_average()},
            },
            "memory": memory,
            "history": result.history,
            "environment": describe(device),
        }
        write_json(staged / TRAIN_LOG, log)
    return log


def checkpoint_bytes(state: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise LayoutpeftError(
            f"{path}: not a readable paused training ({type(error).__name__}: {error}); "
            "delete it to train that trial from its start"
        ) from error


def evaluate(run_dir: Path, cfg: EvaluateConfig, tokenized: Path, out_path: Path) -> dict:
    """Score one trained run on the test split; writes and returns its self-describing run record."""
    log = read_train_log(run_dir)
    variant = log["variant_params"]
    if log["train_params"].get("threads"):
        torch.set_num_threads(log["train_params"]["threads"])
    device = resolve_device(log["device"])
    dtype = resolve_precision(log["precision"], device)
    meta = load_meta(tokenized)
    if labels_of_record(log) != meta["labels"]:
        raise LayoutpeftError(
            f"{run_dir / TRAIN_LOG}: trained with labels {labels_of_record(log)}, but "
            f"{tokenized}/meta.json has {meta['labels']}: retrain it on this data"
        )
    test = load_windows("test", tokenized)
    n_virtual = n_virtual_tokens(variant)

    engine.seed_everything(log["seed"])
    load_start = load_average()
    model = load_trained(run_dir, device)
    result = engine.evaluate_windows(model, test, cfg.batch_size, meta["pad_token_id"], device, n_virtual, dtype)
    speed = inference_speed(
        model, test, cfg.batch_size, meta["pad_token_id"], device, n_virtual, dtype, repeats=cfg.timing_repeats
    )
    merged_speed = None
    if method_of(variant).mergeable:
        merged = model.merge_and_unload()
        merged_result = engine.evaluate_windows(merged, test, cfg.batch_size, meta["pad_token_id"], device, n_virtual, dtype)
        merged_speed = inference_speed(
            merged, test, cfg.batch_size, meta["pad_token_id"], device, n_virtual, dtype, repeats=cfg.timing_repeats
        )
        if abs(merged_result["scores"]["f1"] - result["scores"]["f1"]) > 0.01:
            print(
                f"evaluate: warning: merged F1 {merged_result['scores']['f1']:.4f} differs from "
                f"unmerged {result['scores']['f1']:.4f}"
            )
    record = {
        "variant": log["variant"],
        "seed": log["seed"],
        "method": variant["method"],
        "variant_params": variant,
        "train_params": log["train_params"],
        "model": log["model"],
        "device": log["device"],
        "precision": log["precision"],
        "scores": result["scores"],
        "test_loss": result["loss"],
        "labels": labels_of_record(log),
        "parameters": log["parameters"],
        "saved_bytes": log["saved_bytes"],
        "training": log["training"],
        "memory": log["memory"],
        "inference": {
            **speed,
            "merged_tokens_per_s": merged_speed["tokens_per_s"] if merged_speed else None,
            "batch_size": cfg.batch_size,
            "load_average": {"start": load_start, "end": load_average()},
        },
        "history": log["history"],
        "environment": describe(device),
        "train_environment": log["environment"],
    }
    write_json(out_path, record)
    return record
