"""Interleaved A/B timing of train.* settings, for a shared or noisy machine.

    python benchmarks/ab_levers.py --method full --rounds 4 --steps 4 \
        --arms precision=fp32 precision=bf16 precision=bf16,adamw=foreach precision=bf16,attention=eager

One model per arm (same seed, same initial weights), all in one process. Each round runs every
arm for `--steps` optimizer steps on the same real training batches (params.yaml's batch size,
dynamic padding, length groups), arms in rotating order, so background load hits every arm
alike. Reports the median over rounds of real tokens/s per arm and its ratio to the first arm,
with the load average before and after. Settings not named in an arm come from params.yaml.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from _common import argument_parser

import torch

from layoutpeft.atomic import write_json
from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.data.batching import batches, load_meta, load_windows
from layoutpeft.labels import LEGACY_LABELS  # the benchmarks measure FUNSD's three types
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.device import autocast, frozen_weights_dtype, hold_frozen_weights, resolve_precision
from layoutpeft.train.methods import Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.variants import expand_sweeps, resolve


def parse_arm(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key] = {"true": True, "false": False}.get(value, int(value) if value.isdigit() else value)
    return out


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def load_setup(params_path: str, method: str) -> tuple[TrainConfig, dict, int, list[dict]]:
    """params.yaml's train settings, the method's variant, its virtual tokens, and the real training
    batches one epoch of seed 0 makes (params.yaml's batch size, dynamic padding, length groups)."""
    params = load_params(params_path)
    base = TrainConfig.from_params(params)
    variant = validate_variant(
        method, resolve(method, expand_sweeps(params["variants"], params.get("sweeps") or {})), params["data"]["prompt_reserve"]
    )
    n_virtual = n_virtual_tokens(variant)
    meta, train = load_meta(), load_windows("train")
    chosen = [
        b
        for _, b in batches(
            train,
            base.batch_size,
            meta["pad_token_id"],
            shuffle=True,
            group_by_length=base.group_by_length,
            seed=0,
            n_virtual=n_virtual,
        )
    ]
    return base, variant, n_virtual, chosen


def new_arm(text: str, base: TrainConfig, variant: dict, checkpoint: str, device: torch.device) -> dict:
    """One arm: the settings `text` (key=value,...) over `base`, its model (seed 0) and AdamW."""
    cfg = dataclasses.replace(base, **parse_arm(text))
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(checkpoint, "zero"), variant, device, Schedule(1000, 8), cfg.attention, labels=LEGACY_LABELS
    )
    dtype = resolve_precision(cfg.precision, device)
    frozen = hold_frozen_weights(model, frozen_weights_dtype(cfg.frozen_weights, variant, device, dtype))
    model.train()
    optimizer = engine.make_optimizer(model, variant["lr"], cfg.weight_decay, cfg.adamw)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "name": text,
        "cfg": cfg,
        "model": engine.compiled(model, cfg.compile),
        "optimizer": optimizer,
        "trainable": trainable,
        "dtype": dtype,
        "frozen_bf16_tensors": frozen,  # the path taken: 0 where frozen_weights kept fp32
        "rates": [],
        "cursor": 0,
    }


def train_step(arm: dict, batch: dict, n_virtual: int, device: torch.device) -> None:
    """One optimizer step as the train stage takes it (autocast, clipping, AdamW)."""
    with autocast(device, arm["dtype"]):
        loss = engine.token_loss(engine.logits_of(arm["model"], batch, n_virtual), batch["labels"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(arm["trainable"], 1.0)
    arm["optimizer"].step()
    arm["optimizer"].zero_grad(set_to_none=True)
    loss.item()


def main(argv=None) -> None:
    parser = argument_parser(__doc__, training=True)
    parser.add_argument("--method", default="full")
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    base, variant, n_virtual, chosen = load_setup(args.params, args.method)
    device = torch.device("cpu")
    arms = [new_arm(text, base, variant, args.checkpoint, device) for text in args.arms]

    default_threads = torch.get_num_threads()

    def run(arm, steps: int) -> tuple[int, float]:
        torch.set_num_threads(arm["cfg"].threads or default_threads)  # train.threads, per arm
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            batch = chosen[arm["cursor"] % len(chosen)]
            arm["cursor"] += 1
            tokens += int(batch["attention_mask"].sum())
            train_step(arm, batch, n_virtual, device)
        return tokens, time.perf_counter() - start

    load_start = loadavg()
    for arm in arms:  # warm-up (and, for compile, the compilation) outside the timed rounds
        arm["warmup_s"] = run(arm, 1)[1]
    for round_ in range(args.rounds):
        order = arms[round_ % len(arms) :] + arms[: round_ % len(arms)]
        for arm in order:
            arm["cursor"] = round_ * args.steps  # every arm sees the same batches in a round
            tokens, seconds = run(arm, args.steps)
            arm["rates"].append(tokens / seconds)
        print(
            f"round {round_}: " + "  ".join(f"{a['name']}: {a['rates'][-1]:.0f}" for a in arms) + f"  (load {loadavg()})",
            flush=True,
        )
    ref = statistics.median(arms[0]["rates"])
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "params": args.params,
        "checkpoint": args.checkpoint,
        "method": args.method,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": loadavg(),
        "arms": [
            {
                "arm": a["name"],
                "median_tokens_per_s": statistics.median(a["rates"]),
                "rates": a["rates"],
                "vs_first": statistics.median(a["rates"]) / ref,
                "warmup_s": a["warmup_s"],
                "precision": str(a["dtype"]).removeprefix("torch.") if a["dtype"] is not None else "fp32",
                "frozen_bf16_tensors": a["frozen_bf16_tensors"],
            }
            for a in arms
        ],
        "environment": describe(device),  # versions, CPU model and flags, commit
    }
    print(f"{args.method}, {torch.get_num_threads()} threads, load {load_start} -> {result['load_end']}")
    for a in result["arms"]:
        print(
            f"  {a['arm']:45s} {a['median_tokens_per_s']:7.0f} real tok/s  {a['vs_first']:.2f}x  "
            f"(first step {a['warmup_s']:.1f}s)"
        )
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
