"""Prefix tuning on LayoutLM: PEFT's prefixes reach every self-attention layer, and only there.

- with the prefix positions masked out, the encoder's output and the logits equal the plain model's
  (and with them visible they differ), under both attention implementations;
- the prefixes are the same keys/values under sdpa and eager;
- a trained run saves, loads (evaluate, predict) and exports (the card's recipe, reloaded, reproduces
  the run's logits); --merge is refused with the reason.
Trainable counts and "one step changes only the prefixes and the head/tables": tests/test_methods.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from layoutpeft.config import ModelConfig
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.modeling import load_model
from layoutpeft.train import engine
from layoutpeft.train.methods import Schedule, validate_variant

from fixtures import TINY_BERT

P = 3  # virtual tokens
PREFIX = {"method": "prefix_tuning", "virtual_tokens": P, "lr": 3e-2}


def prefix_model(checkpoint, attention: str, projection: bool = False):
    settings = {**PREFIX, **({"prefix_projection": True, "encoder_hidden": 16} if projection else {})}
    variant = validate_variant("prefix", settings, prompt_reserve=0)
    engine.seed_everything(0)
    model, _ = engine.build_model(
        ModelConfig(str(checkpoint), "zero"),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=4, steps_per_epoch=2),
        attention=attention,
        labels=LEGACY_LABELS,
    )
    return model.eval()


def inputs(batch: int = 2, length: int = 9):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (batch, length), generator=generator)
    corner = torch.randint(0, 900, (batch, length, 2), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0  # a padded row
    return {
        "input_ids": ids,
        "bbox": torch.cat([corner, corner + 50], dim=-1),
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
    }


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("projection", [False, True])
@torch.no_grad()
def test_masked_out_prefix_gives_the_plain_models_output(tiny_checkpoint, attention, projection):
    model = prefix_model(tiny_checkpoint, attention, projection)
    plain, _ = load_model(str(tiny_checkpoint), "zero", attn_implementation=attention, labels=LEGACY_LABELS)
    base = model.get_base_model()
    head = base.classifier.modules_to_save["default"]
    plain.classifier.load_state_dict(head.state_dict())
    plain.eval()
    batch = inputs()
    cache = model.get_prompt(batch_size=2)
    hidden_masked = base.layoutlm(
        **{**batch, "attention_mask": torch.cat([torch.zeros(2, P, dtype=torch.long), batch["attention_mask"]], dim=1)},
        past_key_values=cache,
    ).last_hidden_state
    hidden_plain = plain.layoutlm(**batch).last_hidden_state
    torch.testing.assert_close(hidden_masked, hidden_plain, rtol=0, atol=1e-5)

    with_prefix = model(**batch).logits  # PEFT's forward: prefixes visible
    assert with_prefix.shape == (2, 9, 7)  # no virtual positions in the output
    assert (with_prefix - plain(**batch).logits).abs().max() > 1e-3, "the prefixes changed nothing"
    masked_logits = head(hidden_masked)  # the head PEFT applies (LayoutLM's dropout is off in eval)
    torch.testing.assert_close(masked_logits, plain(**batch).logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_prefixes_are_the_same_keys_and_values_under_sdpa_and_eager(tiny_checkpoint):
    batch = inputs()
    sdpa, eager = prefix_model(tiny_checkpoint, "sdpa"), prefix_model(tiny_checkpoint, "eager")
    assert sdpa.config._attn_implementation == "layoutpeft_prefix_sdpa"
    assert eager.config._attn_implementation == "layoutpeft_prefix_eager"
    torch.testing.assert_close(sdpa(**batch).logits, eager(**batch).logits, rtol=0, atol=1e-5)


def test_every_layer_gets_its_own_prefix(tiny_checkpoint):
    model = prefix_model(tiny_checkpoint, "sdpa")
    cache = model.get_prompt(batch_size=1)
    assert len(cache.layers) == TINY_BERT["num_hidden_layers"]
    heads, head_dim = TINY_BERT["num_attention_heads"], TINY_BERT["hidden_size"] // TINY_BERT["num_attention_heads"]
    assert cache.layers[0].keys.shape == (1, heads, P, head_dim)
    # zeroing one layer's slice of the prefix embedding changes the output: that layer reads it
    batch = inputs()
    with torch.no_grad():
        before = model(**batch).logits
        weight = model.prompt_encoder["default"].embedding.weight
        weight[:, -TINY_BERT["hidden_size"] :] = 0  # the last layer's values
        after = model(**batch).logits
    assert (before - after).abs().max() > 1e-4


def test_prompt_reserve_does_not_limit_prefixes():
    assert validate_variant("p", {**PREFIX, "virtual_tokens": 50}, prompt_reserve=0)["virtual_tokens"] == 50


def test_encoder_hidden_needs_the_projection():
    from layoutpeft.errors import ParamsError

    with pytest.raises(ParamsError, match="variant 'p'.*encoder_hidden.*prefix_projection: true"):
        validate_variant("p", {**PREFIX, "encoder_hidden": 32}, prompt_reserve=0)
    with pytest.raises(ParamsError, match="key 'prefix_projection' must be bool"):
        validate_variant("p", {**PREFIX, "prefix_projection": 1}, prompt_reserve=0)
    assert validate_variant("p", {**PREFIX, "prefix_projection": True}, 0)["encoder_hidden"] == 128


# ------------------------------------------------------------------ a trained run: evaluate, predict, export
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenized, tiny_checkpoint):
    from trained_runs import make_workspace

    return make_workspace(
        tmp_path_factory.mktemp("prefix_ws"),
        tiny_tokenized,
        tiny_checkpoint,
        {"prefix": (PREFIX, "zero"), "prefixmlp": ({**PREFIX, "prefix_projection": True, "encoder_hidden": 16}, "zero")},
    )


@pytest.mark.parametrize("run", ["prefix-0", "prefixmlp-0"])
def test_export_and_its_card_recipe_reproduce_the_run(trained, tmp_path, tiny_checkpoint, monkeypatch, run):
    from peft import PeftModel
    from transformers import LayoutLMConfig, LayoutLMForTokenClassification

    from layoutpeft.data.batching import load_windows
    from layoutpeft.train.prefix_attention import enable_kv_prefix
    from layoutpeft.train.runs import load_trained
    from layoutpeft.use.export import export_run, logits_on

    monkeypatch.chdir(trained)
    out = tmp_path / "adapter"
    result = export_run(trained / "models" / run, out)
    assert result.kind == "adapter" and result.max_logit_diff <= 1e-3
    readme = (out / "README.md").read_text()
    assert "from layoutpeft.train.prefix_attention import enable_kv_prefix" in readme
    assert "enable_kv_prefix(base)" in readme
    # The card's recipe, by hand: plain base, the prefix route, the adapter.
    base = LayoutLMForTokenClassification.from_pretrained(
        tiny_checkpoint, config=LayoutLMConfig.from_json_file(out / "base_config.json")
    )
    enable_kv_prefix(base)
    exported = PeftModel.from_pretrained(base, out)
    windows = load_windows("test", trained / "data" / "tokenized")
    expected = logits_on(load_trained(trained / "models" / run, torch.device("cpu")), windows, 0, 0)
    got = logits_on(exported, windows, 0, 0)
    assert max(float((a - b).abs().max()) for a, b in zip(expected, got, strict=False)) <= 1e-5
    # and the run's logits are the prefix model's, not the plain base's
    plain = LayoutLMForTokenClassification.from_pretrained(
        tiny_checkpoint, config=LayoutLMConfig.from_json_file(out / "base_config.json")
    )
    plain_model = PeftModel.from_pretrained(plain, out)  # LayoutLM without the route: PEFT refuses
    with pytest.raises(ValueError, match="past key values"):
        logits_on(plain_model, windows[:1], 0, 0)


def test_merge_is_refused_with_the_reason(trained, tmp_path, monkeypatch):
    from layoutpeft.use.export import ExportError, export_run

    monkeypatch.chdir(trained)
    with pytest.raises(ExportError, match="--merge refused: prefixes are extra keys and values.*export the adapter"):
        export_run(trained / "models" / "prefix-0", tmp_path / "merged", merge=True)
    assert not (tmp_path / "merged").exists()


def test_evaluate_and_predict_use_the_prefixes(trained, monkeypatch):
    from layoutpeft.use.predict import predict_forms

    from trained_runs import pipeline_labels

    monkeypatch.chdir(trained)
    record = json.loads((trained / "metrics" / "runs" / "prefix-0.json").read_text())
    assert record["variant_params"]["method"] == "prefix_tuning" and 0 <= record["scores"]["f1"] <= 1
    predicted = predict_forms(
        trained / "models" / "prefix-0",
        [trained / "data/raw/testing_data/annotations"],
        trained / "data" / "tokenized",
        device="cpu",
    )
    by_doc = pipeline_labels(trained / "models" / "prefix-0", trained / "data" / "tokenized")
    labels = {
        doc["annotation"].rsplit("/", 1)[-1].removesuffix(".json"): [w["label"] for w in doc["words"]]
        for doc in predicted["documents"]
    }
    assert labels == by_doc
