"""Stage `train@<variant>-<seed>`: fine-tune one method variant with one seed.

Output, models/<variant>-<seed>/:
- what the method trains: `adapter/` (PEFT, safetensors), `model/` (full fine-tuning), or
  `trainable.safetensors` (head, BitFit); plus `base_2d_tables.safetensors` when the base
  came from BERT with randomly initialised 2-D tables (they are frozen and not in the checkpoint);
- `train_log.json`: per-epoch history, timings, peak memory, parameter counts, environment;
- `live/`: the same per-epoch curves logged with DVCLive.
The test split is never read here.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from stages import engine
from stages.batching import load_meta, load_windows
from stages.environment import describe
from stages.methods import CATALOGUE
from stages.modeling import POSITION_INITS
from stages.params import ParamsError, get, load_params
from stages.variants import load_variant

MODELS_DIR = Path("models")
TABLES = "base_2d_tables.safetensors"


def save_trained(model, variant: dict, source_type: str, position_init: str, out: Path) -> int:
    """Save what the method trains; returns its size in bytes (the 2-D tables file not counted)."""
    method = CATALOGUE[variant["method"]]
    if method.peft:
        model.save_pretrained(out / "adapter")
        saved = out / "adapter"
    elif method.name == "full":
        model.save_pretrained(out / "model")
        saved = out / "model"
    else:
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, out / "trainable.safetensors")
        saved = out / "trainable.safetensors"
    if source_type == "bert" and position_init == "random" and method.name != "full":
        base = model.get_base_model() if method.peft else model
        embeddings = base.layoutlm.embeddings
        save_file({name: getattr(embeddings, name).weight.detach().cpu().contiguous()
                   for name in ("x_position_embeddings", "y_position_embeddings",
                                "h_position_embeddings", "w_position_embeddings")}, out / TABLES)
    files = [saved] if saved.is_file() else [p for p in saved.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def model_settings(params: dict) -> dict:
    checkpoint = get(params, "model.checkpoint", str)
    position_init = get(params, "model.position_init", str)
    if position_init not in POSITION_INITS:
        raise ParamsError(f"params.yaml: key 'model.position_init' must be one of {POSITION_INITS}, got {position_init!r}")
    return {"checkpoint": checkpoint, "position_init": position_init}


def run(variant_name: str, seed: int, params: dict, out_dir: Path) -> dict:
    variant = load_variant(variant_name)
    cfg = engine.read_train_settings(params)
    model_params = model_settings(params)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = engine.resolve_device(cfg.device)
    meta = load_meta()
    train_windows, val_windows = load_windows("train"), load_windows("validation")
    total_steps = cfg.max_epochs * engine.steps_per_epoch(len(train_windows), cfg.batch_size)

    engine.seed_everything(seed)  # classifier, adapters and 2-D tables are initialised from this seed
    model, source_type = engine.build_model(model_params, variant, device, total_steps, cfg.attention)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counts = engine.count_parameters(model)
    print(f"train: {variant_name} seed {seed}: {variant['method']}, {counts['trainable']:,} of "
          f"{counts['total']:,} parameters trainable ({counts['trainable_share']:.3%}), device {device}")

    from dvclive import Live

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staged = Path(tmp)
        with Live(dir=str(staged / "live"), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            live.log_params({"variant": variant_name, "seed": seed, **variant})

            def log_epoch(record: dict) -> None:
                live.log_metric("train/loss", record["train_loss"])
                live.log_metric("val/loss", record["val_loss"])
                live.log_metric("val/f1", record["val_f1"])
                live.next_step()
                print(f"  epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f}  "
                      f"val loss {record['val_loss']:.4f}  val F1 {record['val_f1']:.4f}  "
                      f"({record['epoch_time_s']:.1f}s)", flush=True)

            result = engine.fit(model, variant, cfg, train_windows, val_windows, meta["pad_token_id"], device,
                                seed, total_steps=total_steps, on_epoch=log_epoch)
        memory = engine.peak_memory(device)
        saved_bytes = save_trained(model, variant, source_type, model_params["position_init"], staged)
        train_epochs = [r["epoch_time_s"] for r in result.history]
        log = {
            "variant": variant_name, "seed": seed, "method": variant["method"], "variant_params": variant,
            "model": {**model_params, "source_type": source_type},
            "parameters": counts, "saved_bytes": saved_bytes,
            "training": {"wall_time_s": result.wall_time_s, "epoch_time_s": sum(train_epochs) / len(train_epochs),
                         "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                         "stopped_early": result.stopped_early, "optimizer_steps": result.optimizer_steps,
                         "best_val_loss": result.best_val_loss, "train_tokens": result.train_tokens},
            "memory": memory, "history": result.history, "environment": describe(device),
        }
        (staged / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(staged), out_dir)
        out_dir.chmod(0o755)  # TemporaryDirectory makes it 0700
        Path(tmp).mkdir()  # so TemporaryDirectory's cleanup finds its folder
    return log


def run_args(argv, description: str) -> argparse.Namespace:
    """The command line of a per-run stage (train@, evaluate@): --variant, --seed, --params."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = run_args(argv, __doc__)
    log = run(args.variant, args.seed, load_params(args.params), MODELS_DIR / f"{args.variant}-{args.seed}")
    t = log["training"]
    print(f"train: {args.variant}-{args.seed}: best epoch {t['best_epoch']} of {t['epochs_run']}, "
          f"{t['wall_time_s']:.0f}s, peak memory {log['memory']['peak_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
