"""torch.compile with fixed length buckets against eager dynamic padding, across processes.

    OMP_NUM_THREADS=1 python benchmarks/compile_buckets.py --tokenized data/tokenized \
        --variants full lora --buckets 128 256 384 512 --steps 16 --rounds 2 --out benchmarks/results/<date>-compile-buckets

A CPU training is one process per trial and per seed, so what compile costs is paid again by each
process unless inductor's on-disk cache serves it (train.compile uses ~/.cache/layoutpeft/inductor,
engine.use_compile_cache). Arms, each a fresh process doing `--steps` optimizer steps of the study's
training (its params.yaml, the variant at its tuned lr, seed 0's batches from epoch 1 on):
  eager  - train.compile false, dynamic padding (the default);
  cold   - compile true + train.length_buckets, an empty compile cache (the first process of a study),
           once per variant, first: it fills the cache;
  warm   - the same, with the cache the cold arm filled (every later trial and seed).
Then eager and warm alternate in each of `--rounds` rounds, so background load hits both alike.
Reported per arm: the first step of each new batch shape (tracing, and compilation or cache load,
included), the median step on a shape seen before, the padded share, and one training of the
study's schedule projected from them (every shape once, the rest at the seen-shape median) with
its ratio to eager; the seen-shape training FLOP/s against the same process's fp32 matmul peak
(layoutpeft.hardware.matmul_peak; the bf16 peak is in the JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, argument_parser

ARMS = ("eager", "cold", "warm")


def child(args) -> dict:
    """One arm in this process: the timed steps, as JSON."""
    import torch

    from layoutpeft import hardware
    from layoutpeft.config import ModelConfig, TrainConfig, load_params
    from layoutpeft.data.batching import load_meta, load_windows
    from layoutpeft.labels import LEGACY_LABELS
    from layoutpeft.train import engine
    from layoutpeft.train.methods import Schedule, method_of, n_virtual_tokens
    from layoutpeft.train.variants import studied_variants

    from flops import training_flops

    params = load_params(Path(args.study) / "params.yaml")
    train_params = {**params["train"], "precision": args.precision}
    if args.arm != "eager":
        train_params.update(compile=True, length_buckets=list(args.buckets))
    cfg = TrainConfig.from_params({**params, "train": train_params})
    variant = {
        **studied_variants(params, check_runtime=False)[args.variant],
        "lr": json.loads((Path(args.study) / "lr" / f"{args.variant}.json").read_text())["chosen_lr"],
    }
    device = torch.device("cpu")
    dtype = engine.resolve_precision(cfg.precision, device)
    windows, pad = load_windows("train", Path(args.tokenized)), load_meta(Path(args.tokenized))["pad_token_id"]
    n_virtual = n_virtual_tokens(variant)
    epoch_batches = engine.shuffled_batches(windows, cfg, pad, 0, n_virtual)
    chosen: list[dict] = []
    for epoch in range(1, 100):
        chosen += list(epoch_batches(epoch))
        if len(chosen) >= args.steps:
            break
    chosen = chosen[: args.steps]
    engine.seed_everything(0)
    model_cfg = ModelConfig.from_params(params)
    model, source = engine.build_model(model_cfg, variant, device, Schedule(1000, 8), cfg.attention, labels=LEGACY_LABELS)
    optimization = engine.make_optimization(model, variant, cfg, 1000, dtype, engine.new_tables_lr(variant, model_cfg, source))
    forward = engine.compiled(model, cfg.compile, cfg.length_buckets)
    per_batch = engine.mean_labelled_tokens_per_batch(windows, cfg.batch_size)
    method = method_of(variant)

    def loss_of(batch: dict):
        return engine.batch_loss(forward, batch, method, cfg.loss, n_virtual, per_batch)

    times, real, padded = [], [], []
    for batch in chosen:
        start = time.perf_counter()
        engine.train_epoch(model, [batch], optimization, device, dtype, loss_of)
        times.append(time.perf_counter() - start)
        real.append(int(batch["attention_mask"].sum()))
        padded.append(batch["attention_mask"].numel())
    lengths = [int(m.sum()) for b in chosen for m in b["attention_mask"]]
    flops = training_flops(model, lengths, n_virtual)["total"]
    peaks = {name: hardware.matmul_peak(dt, device) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    # a compiled step on a shape this process has not seen traces (and compiles or loads) a graph first
    seen: set = set()
    new_shape = []
    for batch in chosen:
        new_shape.append(tuple(batch["input_ids"].shape) not in seen)
        seen.add(tuple(batch["input_ids"].shape))
    repeat = [t for t, new in zip(times, new_shape, strict=True) if not new]
    if not repeat:
        raise SystemExit(f"{args.arm}: every one of the {len(times)} steps had a new shape: give --steps more")
    steps_per_training = cfg.max_epochs * engine.steps_per_epoch(len(windows), cfg.batch_size)
    first_seen = [t for t, new in zip(times, new_shape, strict=True) if new]
    seen_tokens = sum(n for n, new in zip(real, new_shape, strict=True) if not new)
    seen_rate = seen_tokens / sum(repeat)  # real tokens/s on seen-shape steps
    return {
        "arm": args.arm,
        "variant": args.variant,
        "precision": cfg.precision,
        "first_step_s": times[0],
        "total_s": sum(times),
        "real_tokens_per_s": sum(real) / sum(times),
        "padded_share": 1 - sum(real) / sum(padded),
        "shapes": sorted({tuple(b["input_ids"].shape) for b in chosen}),
        "seen_shape_flops_per_s": flops / sum(real) * seen_rate,
        "peaks_flops_per_s": peaks,
        "step_times_s": [round(t, 3) for t in times],
        "new_shape_steps": sum(new_shape),
        "new_shape_step_s": statistics.mean(first_seen),
        "repeat_shape_step_s": statistics.median(repeat),
        # one whole training of the study's schedule: every shape seen once, the other steps at the repeat time
        "projected_training_s": sum(first_seen) + (steps_per_training - len(first_seen)) * statistics.median(repeat),
        "steps_per_training": steps_per_training,
    }


def run_arm(args, arm: str, variant: str, cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    command = [sys.executable, __file__, "--child", arm, "--variant", variant, "--study", args.study]
    command += ["--tokenized", args.tokenized, "--precision", args.precision, "--steps", str(args.steps)]
    command += ["--buckets", *map(str, args.buckets)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{arm} {variant}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], meta: dict) -> str:
    lines = [
        f"# torch.compile with length buckets vs eager ({meta['date']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Device: {meta['environment']['device_name']}, flags {' '.join(meta['environment']['cpu_flags'])}, "
        f"{meta['threads']} thread(s), precision {meta['precision']}; buckets {meta['buckets']}; {meta['steps']} steps "
        f"per process, {meta['rounds']} round(s); load average before {meta['load'][0]}, after {meta['load'][1]}.",
        "",
        "| Variant | Arm | Runs | Shapes | Step on a new shape | Step on a seen shape | Padded share "
        "| Seen-shape FLOP/s share of fp32 peak | One training (projected) | vs eager |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in meta["variants"]:
        by_arm = {a: [r for r in results if r["variant"] == variant and r["arm"] == a] for a in ARMS}
        eager = statistics.median(r["projected_training_s"] for r in by_arm["eager"])
        for arm, rows in by_arm.items():
            m = {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], int | float)}
            share = m["seen_shape_flops_per_s"] / statistics.median(r["peaks_flops_per_s"]["fp32"] for r in rows)
            lines.append(
                f"| {variant} | {arm} | {len(rows)} | {m['new_shape_steps']:.0f} | {m['new_shape_step_s']:.1f} s | "
                f"{m['repeat_shape_step_s']:.2f} s | {100 * m['padded_share']:.0f} % | {100 * share:.1f} % | "
                f"{m['projected_training_s'] / 60:.1f} min ({m['steps_per_training']:.0f} steps) | "
                f"{m['projected_training_s'] / eager:.2f}x |"
            )
    lines += [
        "",
        "Step on a new shape: the first step of each batch shape in the process (eager: allocator warm-up; "
        "compiled: Dynamo traces the model again, then inductor compiles (cold) or loads the graph from its "
        "on-disk cache (warm)). One training: every shape once at that cost, the rest of the study's "
        "schedule at the seen-shape median. FLOP/s share: the seen-shape steps' training FLOPs (benchmarks/flops.py) "
        "against the same process's fp32 matmul peak (its bf16 peak is in the JSON).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--study", default="results/reference-minilm")
    parser.add_argument("--tokenized", default="data/tokenized", help="the study's tokenized data")
    parser.add_argument("--variants", nargs="+", default=["full", "lora"])
    parser.add_argument("--buckets", nargs="+", type=int, default=[128, 256, 384, 512])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="result folder (compile_buckets.json and .md)")
    parser.add_argument("--child", choices=ARMS, help=argparse_hidden())
    parser.add_argument("--variant", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child:
        args.arm = args.child
        print(json.dumps(child(args)))
        return
    if not args.out:
        parser.error("--out is required")
    import torch

    from layoutpeft.provenance import describe

    start_load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        warm = Path(tmp) / "warm"
        for variant in args.variants:  # the cold arm, once per variant (a study's first process): fills the cache
            results.append(run_arm(args, "cold", variant, warm))
            print(f"compile_buckets: {variant} cold: {results[-1]['total_s']:.1f} s", flush=True)
        for round_ in range(args.rounds):
            for variant in args.variants:
                for arm in ("eager", "warm") if round_ % 2 == 0 else ("warm", "eager"):
                    results.append(run_arm(args, arm, variant, warm))
                    print(f"compile_buckets: round {round_ + 1} {variant} {arm}: {results[-1]['total_s']:.1f} s", flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "environment": describe(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "buckets": args.buckets,
        "steps": args.steps,
        "rounds": args.rounds,
        "variants": args.variants,
        "load": [[round(x, 2) for x in start_load], [round(x, 2) for x in os.getloadavg()]],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_buckets.json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    text = report(results, meta)
    (out / "compile_buckets.md").write_text(text + "\n")
    print(text)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
