"""Stage `evaluate@<variant>-<seed>`: score one trained run on the test split.

Rebuilds the model from what `train` saved (base + adapter, or the saved weights), predicts
every test window, maps predictions back to words (each word counted once) and scores
entities with seqeval. Also measures inference throughput, and for mergeable adapters the
throughput after merging them into the base weights. Writes metrics/runs/<variant>-<seed>.json,
one self-describing result (schema: docs/result-files.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from stages import engine
from stages.batching import load_meta, load_windows
from stages.environment import describe
from stages.methods import CATALOGUE, n_virtual_tokens
from stages.params import get, load_params, number_in
from stages.train import MODELS_DIR, TABLES, model_settings, run_args
from stages.variants import load_variant

RUNS_DIR = Path("metrics/runs")


def load_trained(run_dir: Path, variant: dict, model_params: dict, device: torch.device):
    """The trained model as `train` left it."""
    from transformers import LayoutLMForTokenClassification

    method = CATALOGUE[variant["method"]]
    if method.name == "full":
        return LayoutLMForTokenClassification.from_pretrained(run_dir / "model").to(device)
    from stages.methods import quantization_config
    from stages.modeling import load_model

    quant = quantization_config(device.type) if method.quantized else None
    base, _ = load_model(model_params["checkpoint"], model_params["position_init"], quantization_config=quant)
    if (run_dir / TABLES).is_file():
        tables = load_file(run_dir / TABLES)
        embeddings = base.layoutlm.embeddings
        with torch.no_grad():
            for name, weight in tables.items():
                getattr(embeddings, name).weight.copy_(weight)
    if method.peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, run_dir / "adapter")
    else:
        weights = load_file(run_dir / "trainable.safetensors")
        missing = set(weights) - {n for n, _ in base.named_parameters()}
        if missing:
            raise RuntimeError(f"{run_dir}/trainable.safetensors: tensors {sorted(missing)[:5]} not in the model")
        base.load_state_dict(weights, strict=False)
        model = base
    if not method.quantized or device.type == "cuda":
        model.to(device)
    return model


def run(variant_name: str, seed: int, params: dict, run_dir: Path, out_path: Path) -> dict:
    variant = load_variant(variant_name)
    model_params = model_settings(params)
    batch_size = number_in(params, "evaluate.batch_size", 1, 4096, kind=int)
    device = engine.resolve_device(get(params, "train.device", str))
    dtype = engine.resolve_precision(get(params, "train.precision", str), device)
    train_log_path = run_dir / "train_log.json"
    if not train_log_path.is_file():
        raise FileNotFoundError(f"{train_log_path}: missing (run the train@{variant_name}-{seed} stage)")
    train_log = json.loads(train_log_path.read_text())
    meta = load_meta()
    test = load_windows("test")
    n_virtual = n_virtual_tokens(variant)

    engine.seed_everything(seed)
    model = load_trained(run_dir, variant, model_params, device)
    engine.predict(model, test[:batch_size], batch_size, meta["pad_token_id"], device, n_virtual, dtype)  # warm-up
    result = engine.evaluate_windows(model, test, batch_size, meta["pad_token_id"], device, n_virtual, dtype)
    merged_tokens_per_s = None
    if CATALOGUE[variant["method"]].mergeable:
        merged = model.merge_and_unload()
        merged_result = engine.evaluate_windows(merged, test, batch_size, meta["pad_token_id"], device, n_virtual, dtype)
        merged_tokens_per_s = merged_result["tokens_per_s"]
        if abs(merged_result["scores"]["f1"] - result["scores"]["f1"]) > 0.01:
            print(f"evaluate: warning: merged F1 {merged_result['scores']['f1']:.4f} differs from "
                  f"unmerged {result['scores']['f1']:.4f}")

    record = {
        "variant": variant_name, "seed": seed, "method": variant["method"], "variant_params": variant,
        "train_params": params.get("train", {}), "model": train_log["model"],
        "scores": result["scores"],
        "test_loss": result["loss"],
        "parameters": train_log["parameters"], "saved_bytes": train_log["saved_bytes"],
        "training": train_log["training"], "memory": train_log["memory"],
        "inference": {"tokens_per_s": result["tokens_per_s"], "merged_tokens_per_s": merged_tokens_per_s,
                      "batch_size": batch_size},
        "history": train_log["history"],
        "environment": describe(device),
        "train_environment": train_log["environment"],
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out_path)
    return record


def main(argv=None) -> None:
    args = run_args(argv, __doc__)
    key = f"{args.variant}-{args.seed}"
    record = run(args.variant, args.seed, load_params(args.params), MODELS_DIR / key, RUNS_DIR / f"{key}.json")
    s = record["scores"]
    print(f"evaluate: {key}: test P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} "
          f"({s['words']} words), {record['inference']['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
