"""The training and inference loop shared by the train and evaluate stages and the benchmark.

Device and precision choice live in layoutpeft.train.device; memory, parameter and speed
measurements in layoutpeft.train.probes.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layoutpeft.config import ModelConfig, TrainConfig
from layoutpeft.data.batching import batches, to_device
from layoutpeft.errors import LayoutpeftError
from layoutpeft.modeling import TABLES_2D, label_names, load_model
from layoutpeft.train.device import autocast, resolve_precision
from layoutpeft.train.methods import (
    Method,
    Schedule,
    after_step_hook,
    apply_method,
    method_of,
    n_virtual_tokens,
    quantization_config,
)
from layoutpeft.train.scoring import score, word_labels


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_model(
    model_cfg: ModelConfig, variant: dict, device: torch.device, schedule: Schedule, attention: str = "sdpa", *, labels: list[str]
):
    """Base model from model.checkpoint with the variant's method applied, predicting the data's BIO
    `labels` (meta.json); returns (model, source_type)."""
    method = method_of(variant)
    quant = quantization_config(device.type) if method.quantized else None
    model, source_type = load_model(
        model_cfg.checkpoint,
        model_cfg.position_init,
        quantization_config=quant,
        attn_implementation=attention,
        labels=labels,
        architecture=model_cfg.architecture,
    )
    from layoutpeft.train.probes import model_size  # probes imports this module

    new_modules = TABLES_2D if trains_new_tables(model_cfg, source_type) else ()
    model.full_trainable = model_size(model)  # full fine-tuning's trainable count, before the method
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
    return model(
        input_ids=batch["input_ids"],
        bbox=batch["bbox"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        **kwargs,
    )


def logits_of(model, batch: dict, n_virtual: int) -> torch.Tensor:
    """Token logits aligned with batch['labels'] (virtual-token positions dropped)."""
    return model_output(model, batch).logits[:, n_virtual:, :]


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction=reduction
    )


@torch.no_grad()
def predict(
    model,
    windows: list[dict],
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    n_virtual: int = 0,
    dtype: torch.dtype | None = None,
    with_probs: bool = False,
) -> dict:
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
            if probs is not None:  # with_probs
                probabilities[index] = probs[row, :size]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "predictions": predictions,
        "probabilities": probabilities if with_probs else None,
        "loss": total_loss / max(labelled, 1),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
    }


def evaluate_windows(model, windows, batch_size, pad_token_id, device, n_virtual=0, dtype=None) -> dict:
    result = predict(model, windows, batch_size, pad_token_id, device, n_virtual, dtype)
    labels = label_names(model)  # the schema the model was built with (its config's id2label)
    y_true, y_pred, docs = word_labels(windows, result["predictions"], labels, with_docs=True)
    return {**result, "scores": score(y_true, y_pred, labels, docs)}


def make_optimizer(
    model, lr: float, weight_decay: float, impl: str = "foreach", tables_lr: float | None = None
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights (the BERT recipe).

    `impl` (train.adamw): fused (one kernel over all tensors, CPU and CUDA), foreach (batched
    per-op kernels, torch's default) or for_loop (one tensor at a time). Same update rule.
    `tables_lr` (new_tables_lr): the trainable 2-D position tables get their own lr."""
    groups: dict[tuple[bool, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        table = tables_lr is not None and any(f"{t}." in name for t in TABLES_2D)
        no_decay = p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias")
        group = groups.setdefault(
            (table, no_decay),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, **({"lr": tables_lr} if table else {})},
        )
        group["params"].append(p)
    kind: dict[str, Any] = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]
    return torch.optim.AdamW([groups[k] for k in sorted(groups)], lr=lr, **kind)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(n_windows: int, batch_size: int) -> int:
    return math.ceil(n_windows / batch_size)


def compiled(model, enabled: bool, buckets: tuple[int, ...] = ()):
    """train.compile: torch.compile (inductor) the forward. With train.length_buckets the shapes
    are static: one graph per bucket (and per last, smaller batch), each reused from inductor's
    on-disk cache by every later process. Without buckets they are marked dynamic, because dynamic
    padding gives every batch its own length and a static compile would recompile for each."""
    if not enabled:
        return model
    use_compile_cache()
    if buckets:
        # a bucket x {full, last} batch size each: room for them all before dynamo falls back to eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(buckets) + 2)
        return torch.compile(model, dynamic=False)
    return torch.compile(model, dynamic=True)


COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache() -> Path:
    """Inductor's compiled graphs (FX graph and AOTAutograd caches) in layoutpeft's cache folder,
    ~/.cache/layoutpeft/inductor, unless $TORCHINDUCTOR_CACHE_DIR says where: every trial and seed
    after the first loads them instead of compiling (keyed on graph, shapes, config and torch version)."""
    folder = Path(os.environ.setdefault(COMPILE_CACHE_ENV, str(Path.home() / ".cache" / "layoutpeft" / "inductor")))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


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
    paused: dict | None = None  # pause_after: everything fit(resume=...) needs to go on exactly (pause_state)


@dataclass
class Optimization:
    """AdamW with its schedule, fp16 loss scaling (None otherwise), clipping and the method's after-step hook."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    hook: Callable[[int], None] | None
    trainable: list[torch.nn.Parameter]
    max_grad_norm: float
    steps: int = 0

    def step(self, loss: torch.Tensor) -> None:
        """Backward pass and one optimizer step."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.hook:
            self.hook(self.steps)  # AdaLoRA: after the optimizer step, before the gradients are zeroed (PEFT's order)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1


def make_optimization(
    model, variant: dict, cfg: TrainConfig, total_steps: int, dtype: torch.dtype | None, tables_lr: float | None
) -> Optimization:
    """AdamW, linear warm-up then decay to zero at `total_steps`."""
    optimizer = make_optimizer(model, variant["lr"], cfg.weight_decay, cfg.adamw, tables_lr)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    hook = after_step_hook(model, variant)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return Optimization(optimizer, scheduler, scaler, hook, trainable, cfg.max_grad_norm)


def mean_labelled_tokens_per_batch(train_windows: list[dict], batch_size: int) -> float:
    """The divisor of the token_mean loss: every labelled token weighs the same across batches of different lengths."""
    labelled = [int((w["labels"] != -100).sum()) for w in train_windows]
    return max(1.0, sum(labelled) / max(1, math.ceil(len(train_windows) / batch_size)))


def shuffled_batches(
    train_windows: list[dict], cfg: TrainConfig, pad_token_id: int, seed: int, n_virtual: int
) -> Callable[[int], Iterable[dict]]:
    """The default batches of an epoch: dynamic padding, length groups, a new order and new batch
    members each epoch and seed."""

    def epoch_batches(epoch: int) -> Iterable[dict]:
        for _, batch in batches(
            train_windows,
            cfg.batch_size,
            pad_token_id,
            shuffle=True,
            group_by_length=cfg.group_by_length,
            group_size=cfg.group_size,
            seed=seed * 100_003 + epoch,
            n_virtual=n_virtual,
            buckets=cfg.length_buckets,
        ):
            yield batch

    return epoch_batches


def batch_loss(forward_model, batch: dict, method: Method, loss: str, n_virtual: int, tokens_per_batch: float) -> torch.Tensor:
    """train.loss of one batch: token_mean (sum over labelled tokens / tokens_per_batch) or the batch mean."""
    if method.loss_in_model:  # the model adds its own terms (AdaLoRA's orthogonal regulariser)
        return model_output(forward_model, batch, with_labels=True).loss
    if loss == "token_mean":
        return token_loss(logits_of(forward_model, batch, n_virtual), batch["labels"], "sum") / tokens_per_batch
    return token_loss(logits_of(forward_model, batch, n_virtual), batch["labels"])


def train_epoch(
    model,
    epoch_batches: Iterable[dict],
    optimization: Optimization,
    device: torch.device,
    dtype: torch.dtype | None,
    loss_of: Callable[[dict], torch.Tensor],
) -> tuple[float, int]:
    """One pass over the training batches: (mean batch loss, real tokens seen)."""
    model.train()
    loss_sum, n_batches, tokens = 0.0, 0, 0
    for batch in epoch_batches:
        tokens += int(batch["attention_mask"].sum())
        batch = to_device(batch, device, non_blocking=device.type == "cuda")
        with autocast(device, dtype):
            loss = loss_of(batch)
        optimization.step(loss)
        loss_sum += loss.item()
        n_batches += 1
    return loss_sum / max(n_batches, 1), tokens


@dataclass
class Selection:
    """The best epoch so far on validation (`select_on`: f1 or loss), its trainable weights, and
    the counters that stop a run early."""

    select_on: str
    best: tuple[float, int] | None = None  # (metric, epoch)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    stale: int = 0  # epochs since the best one
    zero_f1: int = 0  # epochs in a row with validation F1 0

    def update(self, record: dict, model) -> None:
        metric = record["val_f1"] if self.select_on == "f1" else record["val_loss"]
        improved = self.best is None or (metric > self.best[0] if self.select_on == "f1" else metric < self.best[0])
        if improved:
            self.best, self.stale = (metric, record["epoch"]), 0
            self.state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.stale += 1
        self.zero_f1 = self.zero_f1 + 1 if record["val_f1"] == 0 else 0

    def stop_reason(self, patience: int, collapse_epochs: int) -> str | None:
        if patience and self.stale >= patience:
            return "patience"
        if collapse_epochs and self.zero_f1 >= collapse_epochs:
            return "collapsed"
        return None

    def restore(self, model) -> int:
        """Put the best epoch's trainable weights back into `model`; returns that epoch."""
        assert self.best is not None, "no epoch ran"
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.state:
                    p.copy_(self.state[name])
        return self.best[1]


# AdaLoRA's RankAllocator (peft 0.21) keeps per-weight sensitivity averages between steps.
ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def rank_allocator(model):
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


def pause_state(model, optimization: Optimization, selection: Selection, loop: dict) -> dict:
    """A paused training's state: trainable weights, AdamW moments, the schedule's position, the RNG
    (dropout masks), the best epoch so far and the loop's counters, so that fit(resume=state) goes on
    with the numbers an uninterrupted training gives. Tensors, numbers and lists only
    (torch.load(weights_only=True) reads it back)."""
    state = {
        **loop,
        "model": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimization.optimizer.state_dict(),
        "scheduler": optimization.scheduler.state_dict(),
        "scaler": optimization.scaler.state_dict() if optimization.scaler else None,
        "steps": optimization.steps,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "selection": {
            "best": list(selection.best) if selection.best else None,
            "state": selection.state,
            "stale": selection.stale,
            "zero_f1": selection.zero_f1,
        },
    }
    allocator = rank_allocator(model)
    if allocator is not None:
        state["rank_allocator"] = {k: dict(getattr(allocator, k)) for k in ALLOCATOR_STATE}
    return state


def restore_state(state: dict, model, optimization: Optimization, selection: Selection) -> None:
    """Put a pause_state back into a freshly built model, its optimization and selection."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        missing = set(state["model"]) - set(params)
        if missing:
            raise LayoutpeftError(f"a paused training's weights {sorted(missing)[:3]} are not in this model")
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimization.optimizer.load_state_dict(state["optimizer"])
    optimization.scheduler.load_state_dict(state["scheduler"])
    if optimization.scaler and state.get("scaler"):
        optimization.scaler.load_state_dict(state["scaler"])
    optimization.steps = state["steps"]
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    allocator = rank_allocator(model)
    if allocator is not None and state.get("rank_allocator"):
        for key in ALLOCATOR_STATE:
            setattr(allocator, key, dict(state["rank_allocator"][key]))
    chosen = state["selection"]
    selection.best = tuple(chosen["best"]) if chosen["best"] else None
    selection.state, selection.stale, selection.zero_f1 = chosen["state"], chosen["stale"], chosen["zero_f1"]


def fit(
    model,
    variant: dict,
    cfg: TrainConfig,
    train_windows: list[dict],
    val_windows: list[dict],
    pad_token_id: int,
    device: torch.device,
    seed: int,
    *,
    total_steps: int,
    epoch_batches: Callable[[int], Iterable[dict]] | None = None,
    on_epoch=None,
    tables_lr: float | None = None,
    pause_after: int | None = None,
    resume: dict | None = None,
) -> FitResult:
    """AdamW, linear warm-up then decay to zero at `total_steps`, grad-norm clipping; one validation pass
    per epoch; the epoch with the best validation metric (`cfg.select_on`: entity F1 or loss) is
    restored at the end. `cfg.patience` > 0 stops after that many epochs without improvement
    (0: run the whole annealed schedule, so every method ends at the same learning rate).
    `cfg.collapse_epochs` > 0 stops a run whose validation F1 has been 0 that many epochs in a row:
    it has diverged to predicting no entity, and the rest of its schedule would not bring it back.

    `epoch_batches(epoch)` replaces the default batches (dynamic padding, length groups, a new
    order and new batch members each epoch and seed): the benchmark passes its naive recipe or a
    step budget this way, so nothing benchmark-only lives in the training loop.

    `pause_after` (an epoch before the last): stop there and return the state to go on from in
    FitResult.paused (successive halving in lr tuning stops most trials at a rung and continues a
    few); `resume`: such a state. Paused and resumed, a training gives the numbers of one that ran
    straight through (tests/test_halving.py).
    """
    dtype = resolve_precision(cfg.precision, device)
    n_virtual = n_virtual_tokens(variant)
    method = method_of(variant)
    optimization = make_optimization(model, variant, cfg, total_steps, dtype, tables_lr)
    tokens_per_batch = mean_labelled_tokens_per_batch(train_windows, cfg.batch_size)
    epoch_batches = epoch_batches or shuffled_batches(train_windows, cfg, pad_token_id, seed, n_virtual)
    forward_model = compiled(model, cfg.compile, cfg.length_buckets)

    def loss_of(batch: dict) -> torch.Tensor:
        return batch_loss(forward_model, batch, method, cfg.loss, n_virtual, tokens_per_batch)

    history: list[dict] = []
    selection = Selection(cfg.select_on)
    stop_reason, tokens, earlier_s, first_epoch = None, 0, 0.0, 1
    if resume is not None:
        restore_state(resume, model, optimization, selection)
        history, tokens = list(resume["history"]), resume["tokens"]
        earlier_s, first_epoch = resume["elapsed_s"], resume["epoch"] + 1
    # a state already at (or past) the pause epoch stays paused (the trial cache can hold one written
    # by a run killed before its record was)
    paused = resume if resume is not None and pause_after is not None and resume["epoch"] >= pause_after else None
    start = time.perf_counter()
    for epoch in range(first_epoch, cfg.max_epochs + 1 if paused is None else first_epoch):
        epoch_start = time.perf_counter()
        train_loss, seen = train_epoch(model, epoch_batches(epoch), optimization, device, dtype, loss_of)
        tokens += seen
        train_time = time.perf_counter() - epoch_start
        val = evaluate_windows(model, val_windows, cfg.batch_size, pad_token_id, device, n_virtual, dtype)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_f1": val["scores"]["f1"],
            "epoch_time_s": train_time,
            "lr": optimization.scheduler.get_last_lr()[0],
            "elapsed_s": earlier_s + time.perf_counter() - start,
        }  # training + validation since epoch 1
        history.append(record)
        if on_epoch:
            on_epoch(record)
        selection.update(record, model)
        stop_reason = selection.stop_reason(cfg.patience, cfg.collapse_epochs)
        if stop_reason:
            break
        if pause_after is not None and epoch == pause_after < cfg.max_epochs:
            paused = pause_state(
                model,
                optimization,
                selection,
                {"epoch": epoch, "history": history, "tokens": tokens, "elapsed_s": earlier_s + time.perf_counter() - start},
            )
            break
    wall = earlier_s + time.perf_counter() - start
    best_epoch = selection.restore(model)
    chosen = history[best_epoch - 1]
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_val_loss=chosen["val_loss"],
        best_val_f1=chosen["val_f1"],
        selected_on=cfg.select_on,
        epochs_run=len(history),
        optimizer_steps=optimization.steps,
        stopped_early=stop_reason is not None,
        stop_reason=stop_reason,
        wall_time_s=wall,
        train_tokens=tokens,
        paused=paused,
    )
