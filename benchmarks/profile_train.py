"""Where a training step's time goes on this machine: phases (wall clock) and op kinds (torch.profiler).

    python benchmarks/profile_train.py --methods full lora --precisions fp32 bf16 --steps 8

Per (method, precision): one warm-up step, then `--steps` steps of the real training batches
(params.yaml's batch size, dynamic padding, length groups) timed by phase with perf_counter
(collate, forward, backward, grad clipping, optimizer + scheduler + zero_grad), one validation
pass (what fit() runs after each epoch), then the same steps again under torch.profiler to split
forward+backward+optimizer time by op kind (self CPU time). Writes a markdown table.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from _common import argument_parser

import torch

from layoutpeft import hardware
from layoutpeft.config import ModelConfig, TrainConfig, load_params
from layoutpeft.data.batching import batches, load_meta, load_windows, to_device
from layoutpeft.labels import LEGACY_LABELS  # the benchmarks measure FUNSD's three types
from layoutpeft.provenance import describe
from layoutpeft.train import engine
from layoutpeft.train.device import autocast, resolve_precision
from layoutpeft.train.methods import Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.variants import expand_sweeps, resolve

import flops

KINDS = [  # (kind, substrings of aten op names), first match wins
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn_linear", "mkldnn_matmul")),
    ("optimizer", ("_foreach_", "adam", "lerp", "addcdiv", "addcmul", "sqrt", "_fused")),
    ("embedding", ("embedding",)),
    ("dtype casts/copies", ("aten::copy_", "aten::_to_copy", "aten::to", "clone", "contiguous")),
    ("layernorm", ("layer_norm",)),
    ("activation/dropout", ("gelu", "dropout", "bernoulli", "native_dropout")),
    ("reductions/norms", ("norm", "sum", "mean", "nll_loss", "log_softmax", "max")),
    ("zero/fill", ("zero_", "fill_", "aten::zeros", "aten::empty")),
]


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other elementwise"


def step(model, batch, optimizer, scheduler, n_virtual, device, dtype, trainable, phases=None):
    t0 = time.perf_counter()
    with autocast(device, dtype):
        loss = engine.token_loss(engine.logits_of(model, batch, n_virtual), batch["labels"])
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    t3 = time.perf_counter()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()
    t4 = time.perf_counter()
    if phases is not None:
        for key, value in (("forward", t1 - t0), ("backward", t2 - t1), ("grad clipping", t3 - t2), ("optimizer", t4 - t3)):
            phases[key] += value


def profile_one(method, precision, args, params, mp, cfg, train, val, pad_id, device) -> dict:
    expanded = expand_sweeps(params["variants"], params.get("sweeps") or {})
    variant = validate_variant(method, resolve(method, expanded), params["data"]["prompt_reserve"])
    n_virtual = n_virtual_tokens(variant)
    dtype = resolve_precision(precision, device)
    engine.seed_everything(0)
    model, _ = engine.build_model(mp, variant, device, Schedule(1000, 8), cfg.attention, labels=LEGACY_LABELS)
    optimizer = engine.make_optimizer(model, variant["lr"], cfg.weight_decay)
    scheduler = engine.linear_schedule(optimizer, 0, 1000)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def batch_list(seed):
        out = []
        for _, b in batches(
            train, cfg.batch_size, pad_id, shuffle=True, group_by_length=cfg.group_by_length, seed=seed, n_virtual=n_virtual
        ):
            out.append(b)
            if len(out) == args.steps:
                break
        return out

    step(model, batch_list(99)[0], optimizer, scheduler, n_virtual, device, dtype, trainable)  # warm-up
    phases: defaultdict[str, float] = defaultdict(float)
    start = time.perf_counter()
    real = 0
    for seed in range(1):
        t = time.perf_counter()
        chosen = batch_list(seed)
        phases["collation"] += time.perf_counter() - t
        for b in chosen:
            real += int(b["attention_mask"].sum())
            step(model, to_device(b, device), optimizer, scheduler, n_virtual, device, dtype, trainable, phases)
    train_s = time.perf_counter() - start
    t = time.perf_counter()
    engine.evaluate_windows(model, val, cfg.batch_size, pad_id, device, n_virtual, dtype)
    val_s = time.perf_counter() - t
    lengths = [int(b["attention_mask"][i].sum()) for b in chosen for i in range(b["attention_mask"].shape[0])]
    f = flops.training_flops(model, lengths, n_virtual)

    model.train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b in chosen:
            step(model, b, optimizer, scheduler, n_virtual, device, dtype, trainable)
    kinds: defaultdict[str, float] = defaultdict(float)
    top = sorted(((e.self_cpu_time_total / 1e6, e.key) for e in prof.key_averages()), reverse=True)[:12]
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("mkldnn") or event.key.startswith("Optimizer"):
            kinds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    # Autograd and Python overhead outside any aten op: the rest of the profiled wall time.
    return {
        "method": method,
        "precision": precision,
        "steps": len(chosen),
        "real_tokens": real,
        "train_s": train_s,
        "val_s": val_s,
        "phases": dict(phases),
        "kinds": dict(kinds),
        "top": top,
        "flops_per_token": f["per_token"],
        "achieved_flops": f["total"] / train_s,
    }


def table(results: list[dict], peaks: dict) -> str:
    lines = ["| | " + " | ".join(f"{r['method']} {r['precision']}" for r in results) + " |", "|---|" + "---:|" * len(results)]

    def row(label, values):
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row("steps / real tokens", [f"{r['steps']} / {r['real_tokens']}" for r in results])
    row("train wall s (phases below)", [f"{r['train_s']:.2f}" for r in results])
    for phase in ("collation", "forward", "backward", "grad clipping", "optimizer"):
        row(
            f"&nbsp; {phase}",
            [f"{r['phases'].get(phase, 0):.2f} ({r['phases'].get(phase, 0) / r['train_s']:.0%})" for r in results],
        )
    row("validation pass s (once per epoch)", [f"{r['val_s']:.2f}" for r in results])
    row("training GFLOP per real token", [f"{r['flops_per_token'] / 1e9:.4f}" for r in results])
    row("achieved GFLOP/s", [f"{r['achieved_flops'] / 1e9:.0f}" for r in results])
    row(
        "share of bf16 / fp32 matmul peak",
        [f"{r['achieved_flops'] / peaks['bf16']:.0%} / {r['achieved_flops'] / peaks['fp32']:.0%}" for r in results],
    )
    all_kinds = sorted({k for r in results for k in r["kinds"]}, key=lambda k: -sum(r["kinds"].get(k, 0) for r in results))
    lines += [
        "",
        "Op kinds under torch.profiler (self CPU s over the same steps; share of the sum of op times):",
        "",
        "| op kind | " + " | ".join(f"{r['method']} {r['precision']}" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for kind in all_kinds:
        row(kind, [f"{r['kinds'].get(kind, 0):.2f} ({r['kinds'].get(kind, 0) / sum(r['kinds'].values()):.0%})" for r in results])
    for r in results:
        lines += [
            "",
            f"Top ops, {r['method']} {r['precision']} (self CPU s): " + ", ".join(f"{name} {sec:.2f}" for sec, name in r["top"]),
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argument_parser(__doc__, training=True)
    parser.add_argument("--methods", nargs="+", default=["full", "lora"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=8, help="profiled steps (8 = one epoch at batch 16)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = TrainConfig.from_params(params)
    mp = ModelConfig(args.checkpoint, "zero")
    device = torch.device("cpu")
    meta, train, val = load_meta(), load_windows("train"), load_windows("validation")
    load_before = open("/proc/loadavg").read().split()[:3]
    peaks = {"fp32": hardware.matmul_peak(torch.float32), "bf16": hardware.matmul_peak(torch.bfloat16)}
    results = []
    for method in args.methods:
        for precision in args.precisions:
            results.append(profile_one(method, precision, args, params, mp, cfg, train, val, meta["pad_token_id"], device))
            print(f"done {method} {precision}: {results[-1]['train_s']:.1f}s", flush=True)
    env = describe(device)
    head = [
        f"# CPU training profile, {datetime.date.today().isoformat()}",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Versions: torch {torch.__version__}, transformers {env['transformers']}, peft {env['peft']}; "
        f"git {env['git_commit']} (modified: {env['code_modified']})  ",
        f"CPU: {env['cpu_model']}, {torch.get_num_threads()} threads, flags {' '.join(hardware.simd_flags())}  ",
        f"Load average before/after: {' '.join(load_before)} / {' '.join(open('/proc/loadavg').read().split()[:3])}"
        f" (shared machine: other jobs ran; re-measure on a quiet one)  ",
        f"Matmul peak measured in this run (2048x384 @ 384x1536): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s  ",
        f"Batch {cfg.batch_size}, group_by_length {cfg.group_by_length}, attention {cfg.attention}, {os.cpu_count()} CPUs",
        "",
        "",
    ]
    text = "\n".join(head) + table(results, peaks) + "\n"
    print(text)
    out = Path(args.out or f"benchmarks/results/{datetime.date.today().isoformat()}-cpu-profile.md")
    out.write_text(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
