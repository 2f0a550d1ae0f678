"""Backbones as a params choice: LayoutLM (a BERT checkpoint), LiLT and LayoutLMv3 (text + layout) train
with LoRA on [query, value] and with full fine-tuning, export folders that from_pretrained reloads with
the run's logits, and refuse what they cannot do (a target they lack, LayoutLM-only methods) up front."""

from __future__ import annotations

import pytest
import torch

from layoutpeft.errors import ParamsError

from fixtures import REPO_ROOT, TINY_DATA_SETTINGS, make_backbone_checkpoint
from trained_runs import FULL, LORA, make_workspace


@pytest.fixture(scope="module", params=["layoutlm", "lilt", "layoutlmv3"])
def backbone(request, tmp_path_factory, tiny_tokenized, tiny_funsd_zip, tiny_checkpoint):
    """(architecture, workspace with lora-0 and full-0 trained and evaluated on it)."""
    from layoutpeft.data.download import download
    from layoutpeft.data.windows import tokenize

    arch = request.param
    source = tiny_tokenized
    checkpoint = tiny_checkpoint
    if arch != "layoutlm":  # the tiny fixture tokenized for this backbone's checkpoint (same vocabulary)
        checkpoint = make_backbone_checkpoint(tmp_path_factory.mktemp(arch) / "model", arch)
        source = tmp_path_factory.mktemp(f"{arch}_data")
        download(str(tiny_funsd_zip[0]), tiny_funsd_zip[1], source / "data" / "raw")
        tokenize(
            source / "data" / "raw",
            source / "data" / "tokenized",
            source / "metrics" / "data.json",
            {**TINY_DATA_SETTINGS, "checkpoint": str(checkpoint)},
        )
    root = make_workspace(
        tmp_path_factory.mktemp(f"{arch}_ws"), source, checkpoint, {"lora": (LORA, "zero"), "full": (FULL, "zero")}
    )
    return arch, root


CLASSES = {
    "layoutlm": "LayoutLMForTokenClassification",
    "lilt": "LiltForTokenClassification",
    "layoutlmv3": "LayoutLMv3ForTokenClassification",
}


@pytest.mark.parametrize("run", ["lora-0", "full-0"])
def test_trains_and_exports_a_folder_from_pretrained_reloads(backbone, run, tmp_path):
    import json

    from transformers import AutoModelForTokenClassification

    from layoutpeft.data.batching import load_meta, load_windows
    from layoutpeft.train.runs import load_trained
    from layoutpeft.use.export import export_run, logits_on

    arch, root = backbone
    log = json.loads((root / "models" / run / "train_log.json").read_text())
    assert log["training"]["optimizer_steps"] >= 1
    record = json.loads((root / "metrics" / "runs" / f"{run}.json").read_text())
    assert 0 <= record["scores"]["f1"] <= 1
    out = tmp_path / "export"
    export_run(
        root / "models" / run,
        out,
        merge=True,
        runs_dir=root / "metrics" / "runs",
        summary=root / "metrics" / "summary.json",
        tokenized=root / "data" / "tokenized",
        data_report=root / "metrics" / "data.json",
    )
    exported = AutoModelForTokenClassification.from_pretrained(out)
    assert type(exported).__name__ == CLASSES[arch]
    windows = load_windows("test", root / "data" / "tokenized")
    pad = load_meta(root / "data" / "tokenized")["pad_token_id"]
    torch.manual_seed(0)
    ours = logits_on(load_trained(root / "models" / run, torch.device("cpu")), windows, pad, 0)
    theirs = logits_on(exported, windows, pad, 0)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=False)) < 1e-4


def test_lora_targets_the_same_matrices_on_each_backbone(backbone):
    from layoutpeft.train.runs import load_trained

    arch, root = backbone
    model = load_trained(root / "models" / "lora-0", torch.device("cpu"))
    adapted = sorted({n.split(".layer.")[1].split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n})
    assert adapted == ["0.attention.self.query", "0.attention.self.value", "1.attention.self.query", "1.attention.self.value"]


def test_what_a_backbone_cannot_do_is_refused_before_training(tmp_path, tiny_tokenized):
    from layoutpeft.config import ModelConfig
    from layoutpeft.modeling import ModelSourceError, backbone_of
    from layoutpeft.train.methods import check_backbone, validate_variant
    from layoutpeft.train.runs import train

    from fixtures import cpu_train_config

    lilt = make_backbone_checkpoint(tmp_path / "lilt", "lilt")
    v3 = make_backbone_checkpoint(tmp_path / "v3", "layoutlmv3")
    layout_lora = validate_variant("layout_lora", {**LORA, "targets": ["query", "layout_query"]}, 8)
    check_backbone("layout_lora", layout_lora, "lilt")  # LiLT's layout stream has it
    with pytest.raises(
        ParamsError,
        match=r"^variant 'layout_lora': targets 'layout_query': layoutlmv3 has no such "
        r"module \(its targets: query, key, value, ",
    ):
        train(
            "layout_lora",
            0,
            layout_lora,
            ModelConfig(str(v3)),
            cpu_train_config(),
            tmp_path / "run",
            tiny_tokenized / "data" / "tokenized",
        )
    assert not (tmp_path / "run").exists()
    prompt = validate_variant("prompt", {"method": "prompt_tuning", "virtual_tokens": 4, "lr": 1e-2}, 8)
    with pytest.raises(ParamsError, match="method prompt_tuning cannot apply to lilt"):
        check_backbone("prompt", prompt, backbone_of(str(lilt)))
    with pytest.raises(
        ModelSourceError,
        match=r"^model.architecture: layoutlmv3, but model.checkpoint .* is a "
        r"'lilt' model",
    ):
        backbone_of(str(lilt), "layoutlmv3")


def test_predict_labels_forms_with_each_backbone(backbone):
    from layoutpeft.use.predict import predict_forms

    arch, root = backbone
    record = predict_forms(
        root / "models" / "lora-0",
        [root / "data/raw/testing_data/annotations/test_01.json"],
        root / "data" / "tokenized",
        device="cpu",
    )
    (doc,) = record["documents"]
    assert doc["windows"] == 2 and len(doc["words"]) == 59  # the long test form: every word labelled once
    assert {w["label"] for w in doc["words"]} <= set(record["labels"])
    assert record["scores"]["words"] == 59


def test_the_variants_stage_refuses_what_the_backbone_cannot_do(tmp_path, monkeypatch):
    """Before the first tune@ of the study: a LayoutLM-only method on a LiLT checkpoint."""
    import yaml

    from stages import variants as stage

    lilt = make_backbone_checkpoint(tmp_path / "lilt", "lilt")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["model"].update(checkpoint=str(lilt), architecture="auto")
    params["study"].update(variants=["lora", "prompt_tuning"], reference="lora")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(ParamsError, match=r"^variant 'prompt_tuning': method prompt_tuning cannot apply to lilt"):
        stage.main([])
    assert not (tmp_path / "project" / "data").exists()
    params["study"].update(variants=["lora"])
    (tmp_path / "project" / "params.yaml").write_text(yaml.safe_dump(params))
    stage.main([])
    assert (tmp_path / "project" / "data" / "variants" / "lora.json").is_file()
