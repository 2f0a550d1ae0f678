"""Scoring by hand, and the train + evaluate stages end to end on the tiny fixtures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.train.scoring import score, word_labels

LABEL2ID = {label: i for i, label in enumerate(LEGACY_LABELS)}


def window(doc, words, labels, first_only=True):
    """A window whose tokens are [CLS] w0 w0' w1 ... [SEP]; each word has 2 sub-tokens."""
    word_ids, label_ids = [-1], [-100]
    for w, label in zip(words, labels, strict=True):
        word_ids += [w, w]
        label_ids += [LABEL2ID[label], -100]
    word_ids.append(-1)
    label_ids.append(-100)
    return {
        "doc_id": doc,
        "word_ids": torch.tensor(word_ids),
        "labels": torch.tensor(label_ids),
        "input_ids": torch.zeros(len(word_ids), dtype=torch.long),
    }


def prediction(labels):
    ids = [0]
    for label in labels:
        ids += [LABEL2ID[label], LABEL2ID["O"]]  # the second sub-token's guess must not count
    return torch.tensor(ids + [0])


def test_split_document_scores_each_word_once():
    # doc a: Q Q | A O across two windows; doc b: H in one window.
    windows = [
        window("a", [0, 1], ["B-QUESTION", "I-QUESTION"]),
        window("a", [2, 3], ["B-ANSWER", "O"]),
        window("b", [0], ["B-HEADER"]),
    ]
    predictions = [prediction(["B-QUESTION", "I-QUESTION"]), prediction(["B-HEADER", "O"]), prediction(["B-HEADER"])]
    y_true, y_pred = word_labels(windows, predictions, LEGACY_LABELS)
    assert y_true == [["B-QUESTION", "I-QUESTION", "B-ANSWER", "O"], ["B-HEADER"]]
    assert y_pred == [["B-QUESTION", "I-QUESTION", "B-HEADER", "O"], ["B-HEADER"]]
    result = score(y_true, y_pred, LEGACY_LABELS)
    # gold: Q, A, H; predicted: Q, H(wrong), H -> 2 correct of 3 predicted, 2 of 3 gold.
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["per_type"]["QUESTION"]["f1"] == 1.0
    assert result["per_type"]["ANSWER"]["recall"] == 0.0
    assert result["per_type"]["HEADER"]["precision"] == pytest.approx(0.5)
    assert result["words"] == 5


def test_word_labelled_in_two_windows_is_an_error():
    windows = [window("a", [0], ["O"]), window("a", [0], ["O"])]
    with pytest.raises(ValueError, match="more than one window"):
        word_labels(windows, [prediction(["O"]), prediction(["O"])], LEGACY_LABELS)


@pytest.fixture
def workspace(tiny_tokenized, tmp_path, monkeypatch, tiny_checkpoint):
    """A folder with the tiny tokenized data and resolved variants, as the stages expect."""
    shutil.copytree(tiny_tokenized / "data", tmp_path / "data")
    from layoutpeft.train.methods import validate_variant
    from layoutpeft.train.variants import write_variants

    write_variants(
        {
            "lora": validate_variant("lora", {"method": "lora", "r": 4, "targets": ["query", "value"], "lr": 5e-3}),
            "prompt": validate_variant("prompt", {"method": "prompt_tuning", "virtual_tokens": 4, "lr": 3e-2}, 8),
            "head": validate_variant("head", {"method": "head", "lr": 1e-2}),
        },
        tmp_path / "data" / "variants",
    )
    monkeypatch.chdir(tmp_path)
    params = {
        "model": {"checkpoint": str(tiny_checkpoint), "position_init": "random", "new_tables": "train"},
        "train": {
            "max_epochs": 3,
            "patience": 2,
            "select_on": "loss",
            "batch_size": 4,
            "weight_decay": 0.01,
            "warmup_ratio": 0.1,
            "max_grad_norm": 1.0,
            "device": "cpu",
            "precision": "fp32",
            "group_by_length": True,
            "group_size": 4,
            "loss": "batch_mean",
            "attention": "sdpa",
            "compile": False,
            "threads": 0,
        },
        "evaluate": {"batch_size": 8},
    }
    return tmp_path, params


def train_and_evaluate(root, params, variant, seed, tag):
    from layoutpeft.config import EvaluateConfig, ModelConfig, TrainConfig
    from layoutpeft.train import runs
    from layoutpeft.train.variants import load_variant
    from stages.train import live_logger

    run_dir = root / "models" / f"{variant}-{seed}-{tag}"
    tokenized = root / "data" / "tokenized"
    runs.train(
        variant,
        seed,
        load_variant(variant),
        ModelConfig.from_params(params),
        TrainConfig.from_params(params),
        run_dir,
        tokenized,
        on_epoch=live_logger,
    )
    return runs.evaluate(
        run_dir, EvaluateConfig.from_params(params), tokenized, root / "metrics" / "runs" / f"{variant}-{seed}-{tag}.json"
    )


@pytest.mark.parametrize("variant", ["lora", "prompt"])
def test_same_seed_same_metrics_other_seed_differs(workspace, variant):
    root, params = workspace
    first = train_and_evaluate(root, params, variant, 0, "a")
    again = train_and_evaluate(root, params, variant, 0, "b")
    other = train_and_evaluate(root, params, variant, 1, "c")
    assert first["scores"] == again["scores"]
    timings = ("epoch_time_s", "elapsed_s")  # seconds differ between two runs; every number else must not
    assert first["history"] == [
        dict(r, **{k: a[k] for k in timings}) for r, a in zip(again["history"], first["history"], strict=True)
    ]
    assert [r["train_loss"] for r in first["history"]] != [r["train_loss"] for r in other["history"]]


def test_run_file_is_self_describing(workspace):
    root, params = workspace
    record = train_and_evaluate(root, params, "lora", 0, "x")
    saved = json.loads((root / "metrics" / "runs" / "lora-0-x.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["scores"]["words"] == sum(
        1 for w in __import__("layoutpeft.data.batching", fromlist=["x"]).load_windows("test") for l in w["labels"] if l != -100
    )
    assert saved["parameters"]["trainable"] < saved["parameters"]["total"]
    parts = saved["parameters"]
    assert parts["method"] + parts["head"] + parts["new_tables"] == parts["trainable"] and parts["method"] > 0
    assert parts["trainable_share"] == parts["trainable"] / parts["full_trainable"]
    # per test form entity counts that add up to the run's F1 (the bootstrap over forms resamples them)
    per_form = saved["scores"]["per_form"]
    test_docs = {w["doc_id"] for w in __import__("layoutpeft.data.batching", fromlist=["x"]).load_windows("test")}
    assert set(per_form) == test_docs
    tp, fp, fn = (sum(c[k][i] for c in per_form.values() for k in c) for i in range(3))
    assert (2 * tp / (2 * tp + fp + fn) if tp else 0.0) == pytest.approx(saved["scores"]["f1"])
    assert saved["saved_bytes"] > 0 and (root / "models" / "lora-0-x" / "adapter" / "adapter_model.safetensors").is_file()
    assert 1 <= saved["training"]["best_epoch"] <= saved["training"]["epochs_run"] <= 3
    assert saved["memory"]["kind"] in ("cpu_peak_rss_training", "cpu_peak_rss_process") and saved["memory"]["peak_bytes"] > 0
    assert saved["inference"]["tokens_per_s"] > 0 and saved["inference"]["merged_tokens_per_s"] > 0
    for key in ("torch", "transformers", "peft", "bitsandbytes", "device", "python"):
        assert saved["environment"][key]
    assert [h["epoch"] for h in saved["history"]] == list(range(1, saved["training"]["epochs_run"] + 1))
    # Saved files are readable by the group and others (the umask's modes, not a temp file's 0600).
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in [root / "models" / "lora-0-x", *(root / "models" / "lora-0-x").rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path
    # DVCLive curves in the run's own folder
    assert (root / "models" / "lora-0-x" / "live" / "plots" / "metrics" / "val" / "loss.tsv").is_file()


def test_head_only_restores_best_epoch_and_reloads(workspace):
    root, params = workspace
    record = train_and_evaluate(root, params, "head", 0, "h")
    losses = [h["val_loss"] for h in record["history"]]
    assert record["training"]["best_epoch"] == losses.index(min(losses)) + 1
    assert record["training"]["best_val_loss"] == pytest.approx(min(losses))
    assert record["inference"]["merged_tokens_per_s"] is None  # nothing to merge


def test_bf16_pinned_on_a_cpu_without_bf16_units_warns_before_training(workspace, monkeypatch, capsys):
    from layoutpeft import hardware

    root, params = workspace
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    params = {**params, "train": {**params["train"], "precision": "bf16", "max_epochs": 1}}
    record = train_and_evaluate(root, params, "lora", 0, "bf16")
    assert (
        "train: WARNING: train.precision is bf16, but this CPU has no avx512_bf16/amx_bf16 (flags: avx2 fma)"
        in capsys.readouterr().err
    )
    assert record["precision"] == "bf16"  # pinned: still bf16, as asked
