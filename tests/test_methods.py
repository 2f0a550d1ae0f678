"""The method catalogue on a tiny random LayoutLM: trainable counts in closed form, what changes, bad params."""

from __future__ import annotations

import pytest
import torch

from layoutpeft.config import ModelConfig, ParamsError
from layoutpeft.data.batching import load_windows
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train import engine
from layoutpeft.train.methods import CATALOGUE, TARGET_MODULES, Schedule, n_virtual_tokens, validate_variant
from layoutpeft.train.probes import count_parameters

from fixtures import TINY_BERT, cpu_train_config, step_budget

H, I, LAYERS = TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"], TINY_BERT["num_hidden_layers"]
LABELS = 7  # O + B/I of HEADER, QUESTION, ANSWER
CLASSIFIER = H * LABELS + LABELS
# A BERT checkpoint gets new x/y/h/w position tables (1024 rows each); every method trains them, like the head.
TABLES = 4 * 1024 * H
NEW = CLASSIFIER + TABLES
ATTN = ["query", "key", "value", "attention_output"]

# (variant settings, closed-form trainable parameter count)
CASES = {
    "full": ({"method": "full", "lr": 1e-3}, None),
    "head": ({"method": "head", "lr": 1e-3}, NEW),
    "lora": ({"method": "lora", "r": 4, "targets": ATTN, "lr": 1e-3}, LAYERS * 4 * 2 * H * 4 + NEW),
    "lora_ffn": ({"method": "lora", "r": 2, "targets": ["intermediate", "output"], "lr": 1e-3}, LAYERS * (2 * (H + I)) * 2 + NEW),
    "dora": ({"method": "dora", "r": 4, "targets": ["query", "value"], "lr": 1e-3}, LAYERS * 2 * (2 * H * 4 + H) + NEW),
    "qlora": ({"method": "qlora", "r": 4, "targets": ATTN, "lr": 1e-3}, LAYERS * 4 * 2 * H * 4 + NEW),
    "loha": ({"method": "loha", "r": 4, "targets": ["query", "value"], "lr": 1e-3}, LAYERS * 2 * 2 * 4 * (H + H) + NEW),
    "vera": (
        {"method": "vera", "r": 8, "targets": ["query", "value", "intermediate"], "lr": 1e-3},
        LAYERS * ((8 + H) + (8 + H) + (8 + I)) + NEW,
    ),
    "ia3": (
        {"method": "ia3", "targets": ["key", "value", "output"], "feedforward": ["output"], "lr": 1e-3},
        LAYERS * (H + H + I) + NEW,
    ),
    "adalora": (
        {"method": "adalora", "r": 2, "init_r": 4, "targets": ["query", "value"], "lr": 1e-3},
        LAYERS * 2 * (4 * H + H * 4 + 4) + NEW,
    ),
    "prompt_tuning": ({"method": "prompt_tuning", "virtual_tokens": 4, "lr": 1e-2}, 4 * H + NEW),
    "lokr": ({"method": "lokr", "r": 4, "targets": ["query"], "lr": 1e-3}, None),
    "bitfit": ({"method": "bitfit", "lr": 1e-3}, None),
    "p_tuning": ({"method": "p_tuning", "virtual_tokens": 4, "encoder_hidden": 16, "lr": 1e-3}, None),
    # a key and a value prefix of 4 tokens x hidden in every layer: layers x 2 x virtual_tokens x hidden
    "prefix_tuning": ({"method": "prefix_tuning", "virtual_tokens": 4, "lr": 1e-2}, LAYERS * 2 * 4 * H + NEW),
    # reparameterised (PEFT's MLP): 4 token embeddings of H, then H -> 16 -> layers x 2 x H
    "prefix_projection": (
        {"method": "prefix_tuning", "virtual_tokens": 4, "prefix_projection": True, "encoder_hidden": 16, "lr": 1e-2},
        4 * H + (H * 16 + 16) + (16 * LAYERS * 2 * H + LAYERS * 2 * H) + NEW,
    ),
}


@pytest.fixture(scope="module")
def windows(tiny_tokenized):
    folder = tiny_tokenized / "data" / "tokenized"
    return load_windows("train", folder)[:8], load_windows("validation", folder)[:4]


def cpu_settings(epochs: int):
    return cpu_train_config(max_epochs=epochs, patience=epochs)


def build(tiny_checkpoint, settings):
    variant = validate_variant("t", settings, prompt_reserve=8)
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint), "zero"),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=20, steps_per_epoch=2),
        labels=LEGACY_LABELS,
    )
    return model, variant


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_trains_exactly_its_parameters(case, tiny_checkpoint, windows):
    settings, expected = CASES[case]
    model, variant = build(tiny_checkpoint, settings)
    counts = count_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if expected is not None:
        assert counts["trainable"] == expected
    if case == "full":
        assert counts["trainable"] == counts["total"]
    if case == "bitfit":
        biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and "classifier" not in n)
        assert counts["trainable"] == biases + NEW
    assert any("classifier" in n for n in trainable), "the new head must be trained"

    before = {n: p.detach().clone().float() for n, p in model.named_parameters()}
    cfg = cpu_settings(epochs=1)
    train, val = windows
    engine.fit(
        model,
        variant,
        cfg,
        train,
        val,
        0,
        torch.device("cpu"),
        seed=0,
        total_steps=20,
        epoch_batches=step_budget(train, 4, 0, steps=2, n_virtual=n_virtual_tokens(variant)),
    )
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach().float())}
    frozen_changed = changed - trainable
    if CATALOGUE[variant["method"]].quantized:
        # bitsandbytes repacks 4-bit weights for the CPU kernel on first use; values are not trained.
        frozen_changed = {n for n in frozen_changed if after[n].__class__.__name__ != "Params4bit"}
    assert not frozen_changed, f"frozen parameters changed: {sorted(frozen_changed)[:5]}"
    assert any("classifier" in n for n in changed)
    if case not in ("head",):
        assert changed - {n for n in changed if "classifier" in n}, "the method's own parameters did not train"


def test_qlora_base_is_4bit_and_head_is_not(tiny_checkpoint):
    import bitsandbytes as bnb

    model, _ = build(tiny_checkpoint, CASES["qlora"][0])
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit) and ".encoder." in n]
    # every encoder linear (q, k, v, attention output, intermediate, output) of every layer
    assert len(quantized) == LAYERS * 6
    assert not any("classifier" in n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    weight = dict(model.named_modules())[quantized[0]].weight
    assert weight.quant_state.quant_type == "nf4"
    assert weight.quant_state.nested, "double quantisation"
    heads = [m for n, m in model.named_modules() if n.endswith("classifier.modules_to_save.default")]
    assert heads and not isinstance(heads[0], bnb.nn.Linear4bit)
    assert heads[0].weight.dtype == torch.float32


def test_qlora_trains_again_after_a_validation_pass(tiny_checkpoint, windows):
    # Regression: on AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for inference on the first
    # eval forward, and the next training step failed. fit() alternates epochs and validation.
    from bitsandbytes.functional import has_avx512bf16

    model, variant = build(tiny_checkpoint, CASES["qlora"][0])
    cfg = cpu_settings(epochs=2)
    train, val = windows
    result = engine.fit(model, variant, cfg, train, val, 0, torch.device("cpu"), seed=0, total_steps=4)
    assert result.epochs_run == 2  # train, validate, train again, validate
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: the repacking path never runs here (the fit above still must)")


def test_target_names_map_to_distinct_modules(tiny_checkpoint):
    import re

    from layoutpeft.modeling import load_model
    from layoutpeft.train.methods import target_regex

    model, _ = load_model(str(tiny_checkpoint), labels=LEGACY_LABELS)
    names = [n for n, _ in model.named_modules()]
    for target in TARGET_MODULES:
        hits = [n for n in names if re.fullmatch(target_regex([target]), n)]
        assert len(hits) == LAYERS, (target, hits)
    ffn_out = [n for n in names if re.fullmatch(target_regex(["output"]), n)]
    assert all("attention" not in n for n in ffn_out)  # "Wo" never catches the FFN output, nor vice versa


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "lorax", "lr": 1e-3}, "unknown method 'lorax'"),
        ({"lr": 1e-3}, "missing key 'method'"),
        ({"method": "lora", "r": 4, "lr": 1e-3, "rank": 8}, "unknown key 'rank'"),
        ({"method": "lora", "r": 0, "lr": 1e-3}, "key 'r' = 0 must be > 0"),
        ({"method": "lora", "r": -2, "lr": 1e-3}, "key 'r' = -2 must be > 0"),
        ({"method": "lora", "r": "8", "lr": 1e-3}, "key 'r' must be int"),
        ({"method": "lora", "r": 4}, "missing key 'lr'"),
        ({"method": "lora", "r": 4, "lr": 1e-3, "targets": ["query", "Wq"]}, "unknown module(s) ['Wq']"),
        ({"method": "lora", "r": 4, "lr": 1e-3, "targets": []}, "must list at least one module"),
        ({"method": "ia3", "lr": 1e-3, "targets": ["key"], "feedforward": ["output"]}, "must be a subset"),
        ({"method": "prompt_tuning", "lr": 1e-3, "virtual_tokens": 30}, "exceeds data.prompt_reserve = 8"),
        ({"method": "adalora", "r": 8, "init_r": 4, "lr": 1e-3}, "must be >= r"),
        ({"method": "prefix_tuning", "lr": 1e-3, "encoder_hidden": 32}, "needs prefix_projection: true"),
    ],
)
def test_bad_variant_is_named(settings, message):
    with pytest.raises(ParamsError) as err:
        validate_variant("my_variant", settings, prompt_reserve=8)
    assert "my_variant" in str(err.value)
    assert message in str(err.value)


def test_qlora_without_working_bitsandbytes_fails_early(monkeypatch):
    import bitsandbytes.functional as F

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel")

    monkeypatch.setattr(F, "quantize_4bit", broken)
    with pytest.raises(ParamsError, match="qlora_v.*bitsandbytes cannot quantise"):
        validate_variant("qlora_v", {"method": "qlora", "r": 4, "lr": 1e-3})


def test_alpha_defaults_to_twice_the_rank():
    assert validate_variant("v", {"method": "lora", "r": 8, "lr": 1e-3})["alpha"] == 16.0
    assert validate_variant("v", {"method": "lora", "r": 8, "alpha": 4, "lr": 1e-3})["alpha"] == 4.0


@pytest.mark.parametrize("case", ["head", "bitfit", "lora", "ia3", "prompt_tuning", "adalora", "prefix_tuning"])
def test_new_2d_tables_train_and_are_saved_with_every_method(case, tiny_checkpoint, tmp_path):
    from layoutpeft.train.runs import save_trained

    model, variant = build(tiny_checkpoint, CASES[case][0])
    tables = {
        n
        for n, p in model.named_parameters()
        if "_position_embeddings" in n
        and "layoutlm.embeddings." in n
        and p.requires_grad
        and n.split(".")[-2 if "modules_to_save" not in n else -4].startswith(("x_", "y_", "h_", "w_"))
    }
    assert len(tables) == 4, sorted(tables)
    save_trained(model, variant, "bert", ModelConfig(str(tiny_checkpoint), "zero", "train"), tmp_path)
    from safetensors.torch import load_file

    saved = load_file(next(tmp_path.rglob("*.safetensors")))
    assert sum(1 for k in saved if any(f"{t}_position_embeddings" in k for t in "xyhw")) == 4


def test_frozen_tables_option_keeps_them_frozen(tiny_checkpoint):
    variant = validate_variant("t", CASES["lora"][0], prompt_reserve=8)
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint), "zero", "frozen"),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=20, steps_per_epoch=2),
        labels=LEGACY_LABELS,
    )
    assert not [n for n, p in model.named_parameters() if "x_position_embeddings" in n and p.requires_grad]


def test_layoutlm_checkpoint_keeps_its_pretrained_tables_frozen_for_peft(tmp_path, tiny_checkpoint):
    from transformers import AutoTokenizer, LayoutLMConfig, LayoutLMModel

    config = LayoutLMConfig(vocab_size=len(AutoTokenizer.from_pretrained(tiny_checkpoint)), **TINY_BERT)
    LayoutLMModel(config).save_pretrained(tmp_path / "layoutlm")  # like layoutlm-base: no head
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "layoutlm")
    variant = validate_variant("t", CASES["lora"][0], prompt_reserve=8)
    model, source = engine.build_model(
        ModelConfig(str(tmp_path / "layoutlm"), "zero", "train"),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=20, steps_per_epoch=2),
        labels=LEGACY_LABELS,
    )
    assert source == "layoutlm"
    assert count_parameters(model)["trainable"] == CASES["lora"][1] - TABLES
    tables = [p for n, p in model.named_parameters() if "x_position_embeddings" in n]
    assert tables and not any(p.requires_grad for p in tables) and tables[0].abs().sum() > 0  # pre-trained, not zeroed


def test_model_tables_lr_applies_to_new_tables_only(tmp_path, tiny_checkpoint):
    from transformers import AutoTokenizer, LayoutLMConfig, LayoutLMModel

    full = validate_variant("t", {"method": "full", "lr": 1e-3}, prompt_reserve=8)
    bert = ModelConfig(str(tiny_checkpoint), "zero", "train", tables_lr=2e-5)
    assert engine.new_tables_lr(full, bert, "bert") == 2e-5
    assert engine.new_tables_lr({**full, "tables_lr": 7e-5}, bert, "bert") == 7e-5  # a variant's own wins
    assert engine.new_tables_lr(full, ModelConfig(str(tiny_checkpoint), "zero", "frozen", 2e-5), "bert") is None
    assert engine.new_tables_lr(full, ModelConfig(str(tiny_checkpoint), "zero", "train"), "bert") is None
    # a LayoutLM checkpoint's tables are pre-trained: full fine-tuning trains them at its own lr
    config = LayoutLMConfig(vocab_size=len(AutoTokenizer.from_pretrained(tiny_checkpoint)), **TINY_BERT)
    LayoutLMModel(config).save_pretrained(tmp_path / "layoutlm")
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "layoutlm")
    layoutlm = ModelConfig(str(tmp_path / "layoutlm"), "zero", "train", tables_lr=2e-5)
    model, source = engine.build_model(
        layoutlm, full, torch.device("cpu"), Schedule(total_steps=4, steps_per_epoch=2), labels=LEGACY_LABELS
    )
    assert source == "layoutlm" and engine.new_tables_lr(full, layoutlm, source) is None
    optimizer = engine.make_optimizer(model, full["lr"], 0.01, "foreach", engine.new_tables_lr(full, layoutlm, source))
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


@pytest.mark.parametrize("value, ok", [(1.5e-4, True), (None, True), (0, False), ("fast", False)])
def test_model_tables_lr_is_checked(tiny_checkpoint, value, ok):
    from layoutpeft.errors import ParamsError

    params = {"model": {"checkpoint": str(tiny_checkpoint), "position_init": "zero", "new_tables": "train", "tables_lr": value}}
    if ok:
        assert ModelConfig.from_params(params).tables_lr == value
    else:
        with pytest.raises(ParamsError, match="model.tables_lr"):
            ModelConfig.from_params(params)


@pytest.mark.parametrize(
    "case, method_weights",
    [
        ("full", None),
        ("head", 0),
        ("lora", LAYERS * 4 * 2 * H * 4),
        ("prompt_tuning", 4 * H),
        ("vera", LAYERS * ((8 + H) + (8 + H) + (8 + I))),
    ],
)
def test_counts_split_the_method_from_the_head_and_new_tables(case, method_weights, tiny_checkpoint):
    """On a BERT checkpoint every method trains the head and the new 2-D tables: the method's own
    weights are the rest, and every share is of full fine-tuning's trainable count."""
    model, _ = build(tiny_checkpoint, CASES[case][0])
    counts = count_parameters(model, shared_tables=True, full_trainable=model.full_trainable)
    full_model, _ = build(tiny_checkpoint, CASES["full"][0])
    full_size = count_parameters(full_model)["trainable"]
    assert model.full_trainable == full_size  # measured before the method wraps the model
    assert counts["head"] == CLASSIFIER and counts["new_tables"] == TABLES
    expected = full_size - NEW if case == "full" else method_weights
    assert counts["method"] == expected
    assert counts["method"] + counts["head"] + counts["new_tables"] == counts["trainable"]
    assert counts["method_share"] == pytest.approx(expected / full_size)
    assert counts["trainable_share"] == pytest.approx(counts["trainable"] / full_size)
    assert counts["method_bytes"] == 4 * expected and counts["shared_bytes"] == 4 * NEW  # fp32 tensors


def test_counts_on_a_layoutlm_checkpoint_leave_its_pretrained_tables_to_the_method(tmp_path, tiny_checkpoint):
    from transformers import AutoTokenizer, LayoutLMConfig, LayoutLMModel

    config = LayoutLMConfig(vocab_size=len(AutoTokenizer.from_pretrained(tiny_checkpoint)), **TINY_BERT)
    LayoutLMModel(config).save_pretrained(tmp_path / "layoutlm")
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(tmp_path / "layoutlm")
    cfg = ModelConfig(str(tmp_path / "layoutlm"), "zero", "train")
    full = validate_variant("t", CASES["full"][0], prompt_reserve=8)
    model, source = engine.build_model(
        cfg, full, torch.device("cpu"), Schedule(total_steps=4, steps_per_epoch=2), labels=LEGACY_LABELS
    )
    counts = count_parameters(model, engine.trains_new_tables(cfg, source), model.full_trainable)
    assert counts["new_tables"] == 0 and counts["head"] == CLASSIFIER
    assert counts["method"] == counts["trainable"] - CLASSIFIER and counts["method_share"] < 1
