"""train.frozen_weights: frozen Linear weights held in bf16 (no per-step autocast cast), same numbers."""

from __future__ import annotations

import dataclasses

import torch

from layoutpeft.config import ModelConfig, ParamsError, TrainConfig
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train import device, engine
from layoutpeft.train.methods import Schedule, validate_variant

from fixtures import cpu_train_config

LORA = {"method": "lora", "r": 2, "dropout": 0.1, "targets": ["query", "value"], "lr": 5e-3}
CPU = torch.device("cpu")


def test_the_setting_is_off_where_it_cannot_help():
    lora = {"method": "lora"}
    has_units = device.precision_path(CPU).startswith("bf16")
    assert device.frozen_weights_dtype("fp32", lora, CPU, torch.bfloat16) is None  # the default
    assert device.frozen_weights_dtype("auto", lora, CPU, torch.bfloat16) == (torch.bfloat16 if has_units else None)
    assert device.frozen_weights_dtype("bf16", lora, CPU, None) is None  # fp32 training: weights stay fp32
    assert device.frozen_weights_dtype("bf16", {"method": "dora"}, CPU, torch.bfloat16) is None  # uses W itself
    assert device.frozen_weights_dtype("bf16", lora, CPU, torch.bfloat16) == torch.bfloat16  # forced
    assert TrainConfig.from_params({"train": {**cpu_train_config().as_dict()}}).frozen_weights == "fp32"
    try:
        TrainConfig.from_params({"train": {**cpu_train_config().as_dict(), "frozen_weights": "fp16"}})
    except ParamsError as error:
        assert "train.frozen_weights" in str(error)
    else:
        raise AssertionError("frozen_weights: fp16 was accepted")


def test_only_frozen_linear_weights_are_cast(tiny_checkpoint):
    variant = validate_variant("lora", LORA, prompt_reserve=8)
    engine.seed_everything(0)
    model, _ = engine.build_model(ModelConfig(str(tiny_checkpoint), "zero"), variant, CPU, Schedule(10, 2), labels=LEGACY_LABELS)
    assert device.hold_frozen_weights(model, None) == 0
    cast = device.hold_frozen_weights(model, torch.bfloat16)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert cast > 0
    for module in linear:
        for p in (module.weight, module.bias):
            if p is not None:
                assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "LayerNorm" in n or "embeddings" in n)


def test_forced_bf16_frozen_weights_train_to_the_same_numbers(tiny_checkpoint, tiny_tokenized, tmp_path):
    """Forced on this CPU (bf16 emulated where it has no bf16 units): autocast would have cast the same
    weights to the same bf16 values at every use, so the run's numbers do not change."""
    from layoutpeft.train import runs

    variant = validate_variant("lora", LORA, prompt_reserve=8)
    cfg = dataclasses.replace(cpu_train_config(max_epochs=2), precision="bf16")
    tokenized, model_cfg = tiny_tokenized / "data" / "tokenized", ModelConfig(str(tiny_checkpoint), "zero")
    plain = runs.train("lora", 0, variant, model_cfg, cfg, tmp_path / "plain", tokenized)
    held = runs.train(
        "lora", 0, variant, model_cfg, dataclasses.replace(cfg, frozen_weights="bf16"), tmp_path / "held", tokenized
    )
    assert plain["frozen_weights"] == "fp32" and held["frozen_weights"].startswith("bf16 (")

    def numbers(log):
        return [(r["train_loss"], r["val_loss"], r["val_f1"]) for r in log["history"]]

    assert numbers(held) == numbers(plain)
