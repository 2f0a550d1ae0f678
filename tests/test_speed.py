"""Speed settings: precision auto from CPU flags, AdamW kernels, training FLOPs per method in closed form."""
from __future__ import annotations

import pytest
import torch

from layoutpeft import engine, flops, hardware
from layoutpeft.config import ModelConfig, ParamsError, TrainConfig
from layoutpeft.methods import Schedule, validate_variant

from fixtures import TINY_BERT

H, I, LAYERS = TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"], TINY_BERT["num_hidden_layers"]
LABELS = 7
LAYER_MATMUL = 4 * H * H + 2 * H * I  # q, k, v, attention output, FFN in and out


def build(tiny_checkpoint, settings, new_tables="train"):
    variant = validate_variant("v", settings)
    engine.seed_everything(0)
    model, _ = engine.build_model(ModelConfig(str(tiny_checkpoint), new_tables=new_tables), variant,
                                  torch.device("cpu"), Schedule(10, 5))
    return model


@pytest.mark.parametrize("flags,expected", [({"avx512f", "avx512_bf16"}, torch.bfloat16),
                                            ({"avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),
                                            ({"avx2", "fma"}, None)])
def test_auto_precision_follows_cpu_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    cpu = torch.device("cpu")
    assert engine.resolve_precision("auto", cpu) is expected
    assert engine.precision_path(cpu).startswith("bf16" if expected else "fp32")
    assert engine.resolve_precision("fp32", cpu) is None  # an explicit setting always wins
    assert engine.resolve_precision("bf16", cpu) is torch.bfloat16


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
def test_adamw_kernels_take_the_same_step(impl):
    torch.manual_seed(0)
    reference = torch.nn.Linear(8, 4)
    model = torch.nn.Linear(8, 4)
    model.load_state_dict(reference.state_dict())
    for m in (reference, model):
        m.weight.grad = torch.ones_like(m.weight)
        m.bias.grad = torch.ones_like(m.bias)
    engine.make_optimizer(reference, 1e-2, 0.01, "for_loop").step()
    engine.make_optimizer(model, 1e-2, 0.01, impl).step()
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert torch.allclose(model.bias, reference.bias, atol=1e-6)


def test_adamw_setting_is_checked_and_optional():
    params = {"train": {"max_epochs": 1, "patience": 1, "select_on": "f1", "batch_size": 4, "weight_decay": 0.0,
                        "warmup_ratio": 0.0, "max_grad_norm": 1.0, "device": "cpu", "precision": "auto",
                        "group_by_length": True, "group_size": 4, "loss": "batch_mean", "attention": "sdpa",
                        "compile": False, "threads": 0}}
    assert TrainConfig.from_params(params).adamw == "fused"
    params["train"]["adamw"] = "foreach"
    assert TrainConfig.from_params(params).adamw == "foreach"
    params["train"]["adamw"] = "sgd"
    with pytest.raises(ParamsError, match="train.adamw"):
        TrainConfig.from_params(params)


def attention(length):
    return LAYERS * 4 * H * length * length


def test_full_fine_tuning_flops_are_three_forward_passes(tiny_checkpoint):
    model = build(tiny_checkpoint, {"method": "full", "lr": 1e-3})
    length = 10
    f = flops.layer_flops(model, length)
    forward = 2 * (LAYERS * LAYER_MATMUL + H * LABELS) * length + attention(length)
    assert f["forward"] == forward
    assert f["backward_weight"] == 2 * (LAYERS * LAYER_MATMUL + H * LABELS) * length
    assert f["backward_input"] == forward + attention(length)  # attention's backward is twice its forward
    assert f["total"] == f["forward"] + f["backward_input"] + f["backward_weight"]


def test_head_only_back_propagates_into_its_classifier_only(tiny_checkpoint):
    model = build(tiny_checkpoint, {"method": "head", "lr": 1e-3}, new_tables="frozen")
    f = flops.layer_flops(model, 10)
    assert f["backward_input"] == 0
    assert f["backward_weight"] == 2 * H * LABELS * 10
    # Trained new 2-D tables sit below every layer: their gradient flows back through all of them.
    assert flops.layer_flops(build(tiny_checkpoint, {"method": "head", "lr": 1e-3}), 10)["backward_input"] > 0


def test_lora_skips_frozen_weight_gradients(tiny_checkpoint):
    full = flops.training_flops(build(tiny_checkpoint, {"method": "full", "lr": 1e-3}), [10, 20])
    lora = flops.training_flops(build(tiny_checkpoint, {"method": "lora", "r": 4, "targets": ["query", "value"],
                                                        "lr": 1e-3}), [10, 20])
    assert lora["tokens"] == full["tokens"] == 30
    assert lora["backward_weight"] < 0.2 * full["backward_weight"]
    assert lora["per_token"] < full["per_token"]
    assert lora["forward"] > full["forward"]  # the adapters' own matmuls


def test_matmul_peak_is_a_positive_rate():
    assert hardware.matmul_peak(torch.float32, shape=(64, 32, 48), seconds=0.05) > 0
