"""Speed settings: precision auto from CPU flags, AdamW kernels, training FLOPs per method in closed form."""

from __future__ import annotations

import pytest
import torch

from layoutpeft import hardware
from layoutpeft.config import ModelConfig, ParamsError, TrainConfig
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train import engine
from layoutpeft.train.device import emulated_bf16_warning, precision_path, resolve_precision
from layoutpeft.train.methods import Schedule, validate_variant

import flops
from fixtures import TINY_BERT

H, I, LAYERS = TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"], TINY_BERT["num_hidden_layers"]
LABELS = 7
LAYER_MATMUL = 4 * H * H + 2 * H * I  # q, k, v, attention output, FFN in and out


def build(tiny_checkpoint, settings, new_tables="train"):
    variant = validate_variant("v", settings)
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint), new_tables=new_tables),
        variant,
        torch.device("cpu"),
        Schedule(10, 5),
        labels=LEGACY_LABELS,
    )
    return model


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),
        ({"avx2", "fma"}, None),
    ],
)
def test_auto_precision_follows_cpu_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is expected
    assert precision_path(cpu).startswith("bf16" if expected else "fp32")
    assert resolve_precision("fp32", cpu) is None  # an explicit setting always wins
    assert resolve_precision("bf16", cpu) is torch.bfloat16


def test_bf16_set_on_a_cpu_without_bf16_units_warns_and_still_runs_bf16(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    warning = emulated_bf16_warning("bf16", cpu)
    assert "no avx512_bf16/amx_bf16 (flags: avx2 fma)" in warning and "emulated" in warning
    assert resolve_precision("bf16", cpu) is torch.bfloat16  # a pinned study keeps its numerics
    assert emulated_bf16_warning("auto", cpu) is None  # auto already chose fp32
    assert emulated_bf16_warning("fp32", cpu) is None
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert emulated_bf16_warning("bf16", cpu) is None


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
    params = {
        "train": {
            "max_epochs": 1,
            "patience": 1,
            "select_on": "f1",
            "batch_size": 4,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
            "max_grad_norm": 1.0,
            "device": "cpu",
            "precision": "auto",
            "group_by_length": True,
            "group_size": 4,
            "loss": "batch_mean",
            "attention": "sdpa",
            "compile": False,
            "threads": 0,
        }
    }
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
    lora = flops.training_flops(
        build(tiny_checkpoint, {"method": "lora", "r": 4, "targets": ["query", "value"], "lr": 1e-3}), [10, 20]
    )
    assert lora["tokens"] == full["tokens"] == 30
    assert lora["backward_weight"] < 0.2 * full["backward_weight"]
    assert lora["per_token"] < full["per_token"]
    assert lora["forward"] > full["forward"]  # the adapters' own matmuls


def test_matmul_peak_is_a_positive_rate():
    assert hardware.matmul_peak(torch.float32, shape=(64, 32, 48), seconds=0.05) > 0


@pytest.mark.slow
def test_speed_benchmark_runs_end_to_end_on_a_tiny_model(tiny_checkpoint, tiny_project, tiny_tokenized):
    """benchmarks/train_speed.py (recipes and a method per child process) on the tiny fixtures: it writes
    its JSON and Markdown, with the peak ratios, and a method that fails does not cost the others."""
    import json
    import shutil
    import subprocess
    import sys

    from fixtures import REPO_ROOT

    shutil.copytree(tiny_tokenized / "data", tiny_project / "data", dirs_exist_ok=True)
    out = tiny_project / "speed.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "train_speed.py"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--part",
            "recipes",
            "methods",
            "--epochs",
            "1",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--methods",
            "head",
            "no_such_method",
            "lora",
            "--out",
            str(out),
        ],
        cwd=tiny_project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"head", "lora"} and "partial" not in result
    assert {"naive", "layoutpeft"} <= set(result["recipes"])
    assert all(0 < r["share_bf16_peak"] for r in result["methods"].values())
    assert "of bf16 peak" in out.with_suffix(".md").read_text()

    # an interrupted run (methods not finished) resumes: recipes kept as they were, the rest run, start-up too
    interrupted = {k: v for k, v in result.items() if k != "methods"}
    out.write_text(json.dumps({**interrupted, "partial": True}))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "train_speed.py"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--part",
            "recipes",
            "methods",
            "startup",
            "--steps",
            "1",
            "--methods",
            "head",
            "--resume",
            "--out",
            str(out),
        ],
        cwd=tiny_project,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads(out.read_text())
    assert resumed["recipes"] == result["recipes"] and set(resumed["methods"]) == {"head"}
    assert resumed["resumed"]["parts_kept"] == ["recipes"] and resumed["startup"]["median_to_first_step_s"] > 0
