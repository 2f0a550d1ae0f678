"""Labels from the data: the schema is the dataset's entity types (renamed, merged or dropped by
data.labels), written with the tokenized data and read from there by train, evaluate, aggregate,
predict and export; bad BIO and mismatched splits are one-line errors naming file and document."""

from __future__ import annotations

import json

import pytest
import torch

from layoutpeft.funsd import Document
from layoutpeft.labels import LabelError, bio_labels, check_label_map, mapped_bio, schema_of

from fixtures import TINY_DATA_SETTINGS, forms_with_signature, make_funsd_zip
from trained_runs import LORA, make_workspace

SIGNATURE_LABELS = bio_labels(["HEADER", "QUESTION", "ANSWER", "SIGNATURE"])


def doc(doc_id, labels, source="f.json"):
    return Document(doc_id=doc_id, source=source, words=["w"] * len(labels), labels=labels)


def test_bio_is_checked_and_mapped():
    merged = check_label_map({"header": "question", "answer": None})
    assert mapped_bio(["B-HEADER", "I-HEADER", "B-QUESTION", "O", "B-ANSWER", "I-ANSWER"], merged, "d") == [
        "B-QUESTION",
        "I-QUESTION",
        "B-QUESTION",
        "O",
        "O",
        "O",
    ]
    with pytest.raises(LabelError, match=r"^ds/train: document 7: word 1: tag 'I-ANSWER' follows 'B-QUESTION'"):
        mapped_bio(["B-QUESTION", "I-ANSWER"], {}, "ds/train: document 7")
    with pytest.raises(LabelError, match=r"word 0: tag 'I-ANSWER' follows 'nothing'"):
        mapped_bio(["I-ANSWER"], {}, "d")
    with pytest.raises(LabelError, match=r"word 1: tag 'S-ANSWER' is not BIO"):
        mapped_bio(["O", "S-ANSWER"], {}, "d")


def test_schema_from_training_and_test_must_match():
    train = [doc("a", ["B-ZIP", "B-QUESTION", "I-QUESTION"]), doc("b", ["B-ANSWER", "B-HEADER"])]
    # FUNSD's types first in FUNSD's order, then the others sorted
    assert schema_of(train, [doc("t", ["B-ZIP", "B-QUESTION", "B-ANSWER", "B-HEADER"])], "test") == bio_labels(
        ["HEADER", "QUESTION", "ANSWER", "ZIP"]
    )
    with pytest.raises(LabelError, match=r"^t\.json: document t: entity type CITY is not in the training split"):
        schema_of(train, [doc("t", ["B-CITY", "B-ZIP", "B-QUESTION", "B-ANSWER", "B-HEADER"], "t.json")], "test")
    with pytest.raises(LabelError, match=r"^testing_data: the test split has no HEADER entity"):
        schema_of(train, [doc("t", ["B-ZIP", "B-QUESTION", "B-ANSWER"])], "testing_data")


def tokenized_from(tmp_path, forms, label_map=None, checkpoint=None):
    from layoutpeft.data.download import download
    from layoutpeft.data.windows import tokenize

    zip_path, md5 = make_funsd_zip(tmp_path / "dataset.zip", forms)
    download(str(zip_path), md5, tmp_path / "data" / "raw")
    tokenize(
        tmp_path / "data" / "raw",
        tmp_path / "data" / "tokenized",
        tmp_path / "metrics" / "data.json",
        {**TINY_DATA_SETTINGS, "checkpoint": str(checkpoint), "labels": label_map},
    )
    return tmp_path


def test_merged_label_map_in_the_schema(tmp_path, tiny_checkpoint):
    from layoutpeft.data.batching import load_meta, load_windows

    root = tokenized_from(tmp_path, None, check_label_map({"header": "question"}), tiny_checkpoint)
    meta = load_meta(root / "data" / "tokenized")
    assert meta["labels"] == ["O", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]
    assert meta["label_map"] == {"HEADER": "QUESTION"}
    first = load_windows("train", root / "data" / "tokenized")[0]
    # the standard form starts with the header "company report": now a question (ids 1, 2)
    assert first["labels"][1:3].tolist() == [1, 2]


def test_test_type_missing_from_training_names_file_and_document(tmp_path, tiny_checkpoint):
    forms = forms_with_signature()
    for spec in forms["training_data"].values():
        spec["form"] = [e for e in spec["form"] if e["label"] != "signature"]
    with pytest.raises(LabelError) as caught:
        tokenized_from(tmp_path, forms, None, tiny_checkpoint)
    message = str(caught.value)
    assert "\n" not in message and "testing_data/annotations/test_00.json: document test_00: entity type SIGNATURE" in message
    assert not (tmp_path / "data" / "tokenized").exists()  # nothing half-written


@pytest.fixture(scope="module")
def signature_workspace(tmp_path_factory, tiny_checkpoint):
    """A workspace whose data has a fourth entity type, with lora-0 trained and evaluated on it."""
    source = tokenized_from(tmp_path_factory.mktemp("signature_data"), forms_with_signature(), None, tiny_checkpoint)
    return make_workspace(tmp_path_factory.mktemp("signature_ws"), source, tiny_checkpoint, {"lora": (LORA, "zero")})


def test_fourth_type_trains_evaluates_aggregates_predicts_and_exports(signature_workspace, tmp_path):
    from layoutpeft.study.summary import build_summary
    from layoutpeft.study.tables import summary_csv
    from layoutpeft.use.export import export_run
    from layoutpeft.use.predict import predict_forms

    root = signature_workspace
    meta = json.loads((root / "data" / "tokenized" / "meta.json").read_text())
    assert meta["labels"] == SIGNATURE_LABELS and meta["entity_types"][-1] == "SIGNATURE"
    log = json.loads((root / "models" / "lora-0" / "train_log.json").read_text())
    assert log["data"]["labels"] == SIGNATURE_LABELS

    record = json.loads((root / "metrics" / "runs" / "lora-0.json").read_text())
    assert record["labels"] == SIGNATURE_LABELS
    assert list(record["scores"]["per_type"]) == ["HEADER", "QUESTION", "ANSWER", "SIGNATURE"]
    assert record["scores"]["per_type"]["SIGNATURE"]["support"] == 3  # one per test form

    summary = build_summary({"lora": {0: record}}, [0], "lora")
    entry = summary["variants"]["lora"]
    assert entry["f1_SIGNATURE"]["mean"] == pytest.approx(record["scores"]["per_type"]["SIGNATURE"]["f1"])
    assert "f1_SIGNATURE_mean" in summary_csv(summary).splitlines()[0]

    predicted = predict_forms(
        root / "models" / "lora-0",
        [root / "data/raw/testing_data/annotations/test_00.json"],
        root / "data" / "tokenized",
        device="cpu",
    )
    assert predicted["labels"] == SIGNATURE_LABELS
    words = predicted["documents"][0]["words"]
    assert [w["gold"] for w in words[-2:]] == ["B-SIGNATURE", "I-SIGNATURE"]
    assert predicted["scores"]["per_type"]["SIGNATURE"]["support"] == 1

    out = tmp_path / "export"
    export_run(
        root / "models" / "lora-0",
        out,
        merge=True,
        runs_dir=root / "metrics" / "runs",
        summary=root / "metrics" / "summary.json",
        tokenized=root / "data" / "tokenized",
        data_report=root / "metrics" / "data.json",
    )
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(SIGNATURE_LABELS))
    assert model.classifier.out_features == 9
    card = (out / "README.md").read_text()
    assert "HEADER / QUESTION / ANSWER / SIGNATURE, 9 labels" in card and "8 `I-SIGNATURE`" in card
    assert isinstance(model(input_ids=torch.tensor([[2, 3]])).logits, torch.Tensor)


def test_evaluate_refuses_data_with_another_schema(signature_workspace, tmp_path, tiny_tokenized):
    from layoutpeft.config import EvaluateConfig
    from layoutpeft.errors import LayoutpeftError
    from layoutpeft.train import runs

    with pytest.raises(LayoutpeftError, match="trained with labels .* but .*meta.json has .*: retrain"):
        runs.evaluate(
            signature_workspace / "models" / "lora-0",
            EvaluateConfig(batch_size=8, timing_repeats=1),
            tiny_tokenized / "data" / "tokenized",
            tmp_path / "run.json",
        )
    assert not (tmp_path / "run.json").exists()
