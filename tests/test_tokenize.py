"""layoutpeft.data.windows and the tokenize stage on the tiny fixture: hand-counted windows, labels, boxes and report.

Window arithmetic at data.max_length 64, data.prompt_reserve 8: 64 - 2 - 8 = 54 content tokens
per window, windows of at most 56 with [CLS] and [SEP]. Token counts per form (fixtures.py):
standard 16 (9 words), train_01 17 (10 words), train_03 66 (59 words, 2 windows: 53 + 13),
test_01 66 (59 words, 2 windows: 54 + 12).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layoutpeft.config import ParamsError
from layoutpeft.data import windows as tk
from layoutpeft.data.download import download
from layoutpeft.funsd import AnnotationError, Document, load_split
from stages import tokenize as tokenize_stage

from fixtures import TINY_DATA_SETTINGS, TOKEN_ID, make_checkpoint, make_funsd_zip

SETTINGS = TINY_DATA_SETTINGS
CLS, SEP, UNK = TOKEN_ID["[CLS]"], TOKEN_ID["[SEP]"], TOKEN_ID["[UNK]"]
O, BH, IH, BQ, IQ, BA, IA = range(7)
X = -100

STANDARD_TOKENS = [
    "company",
    "report",
    "date",
    "2",
    "##0",
    "##2",
    "##4",
    "name",
    "john",
    "s",
    "##m",
    "##i",
    "##t",
    "##h",
    "page",
    "1",
]
STANDARD_WORD_IDS = [0, 1, 2, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6, 6, 7, 8]
STANDARD_LABELS = [BH, IH, BQ, BA, X, X, X, BQ, BA, IA, X, X, X, X, O, O]
STANDARD_BOXES = [
    [50, 50, 300, 150],
    [310, 50, 500, 150],
    [50, 200, 150, 300],
    [200, 200, 350, 300],
    [50, 400, 150, 500],
    [200, 400, 300, 500],
    [310, 400, 450, 500],
    [750, 900, 850, 980],
    [860, 900, 900, 980],
]


@pytest.fixture(scope="module")
def raw_dir(tiny_tokenized):
    return tiny_tokenized / "data" / "raw"


@pytest.fixture(scope="module")
def tokenized(tiny_tokenized):
    """(report, DatasetDict, meta, folder) of the shared tiny_tokenized fixture."""
    from datasets import load_from_disk

    out = tiny_tokenized / "data" / "tokenized"
    report = json.loads((tiny_tokenized / "metrics" / "data.json").read_text())
    return report, load_from_disk(str(out)), json.loads((out / "meta.json").read_text()), tiny_tokenized


def rows_of(dataset, doc_id):
    rows = [dict(r) for split in dataset.values() for r in split if r["doc_id"] == doc_id]
    return sorted(rows, key=lambda r: r["window"])


def test_report_counts(tokenized):
    report = tokenized[0]
    train, val, test = report["train"], report["validation"], report["test"]
    assert train["documents"] + val["documents"] == 8
    assert val["documents"] == 1  # round(8 * 0.15)
    # six standard forms of 9 words, train_01's 10, train_03's 59
    assert train["words"] + val["words"] == 6 * 9 + 10 + 59 == 123
    assert train["words_raw"] + val["words_raw"] == 125  # train_01's "" and " " words
    assert train["entities"] + val["entities"] == 6 * 6 + 8 + 7 == 51
    assert train["windows"] + val["windows"] == 9  # train_03 makes two
    assert train["tokens"] + val["tokens"] == 6 * 16 + 17 + 66 + 2 * 9 == 197
    # seed 0 holds out train_04 (a standard form with one [UNK])
    assert train["boxes_clamped"] == 1  # train_02's `company` box, [-10, -5, 250, 130] on a 200 x 100 page
    assert val == {
        "documents": 1,
        "words": 9,
        "words_raw": 9,
        "entities": 6,
        "boxes_clamped": 0,
        "windows": 1,
        "tokens": 18,
        "unk_share": pytest.approx(1 / 18),
        "pad_share_at_max_length": pytest.approx(1 - 18 / 56),
    }
    assert test == {
        "documents": 3,
        "words": 77,
        "words_raw": 77,
        "entities": 19,
        "boxes_clamped": 0,
        "windows": 4,
        "tokens": 98 + 2 * 4,
        "unk_share": 0.0,
        "pad_share_at_max_length": pytest.approx(1 - 106 / (4 * 56)),
    }
    assert report["window_length"] == 56
    assert report["tokenizer_vocab"] == 156
    assert report["unk_share"] == pytest.approx(1 / 303)  # the one `☃` of train_04


def test_datasets_and_meta(tokenized):
    report, dataset, meta, _ = tokenized
    assert sorted(dataset) == ["test", "train", "validation"]
    for split in ("train", "validation", "test"):
        assert dataset[split].num_rows == report[split]["windows"]
        assert sum(len(ids) for ids in dataset[split]["input_ids"]) == report[split]["tokens"]
    assert set(dataset["train"].column_names) == {"doc_id", "window", "input_ids", "bbox", "labels", "word_ids"}
    assert meta["labels"] == ["O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]
    assert meta["window_length"] == 56 and meta["pad_token_id"] == 0
    assert meta["val_documents"] == sorted(set(dataset["validation"]["doc_id"]))
    # random.Random(0) over the sorted ids: a change here changes every split made so far.
    assert meta["val_documents"] == ["train_04"]
    assert sorted(set(dataset["test"]["doc_id"])) == ["test_00", "test_01", "test_02"]


def test_standard_form_window(tokenized):
    _, dataset, _, _ = tokenized
    (row,) = rows_of(dataset, "train_00")
    assert row["input_ids"] == [CLS] + [TOKEN_ID[t] for t in STANDARD_TOKENS] + [SEP]
    assert row["word_ids"] == [-1] + STANDARD_WORD_IDS + [-1]
    assert row["labels"] == [X] + STANDARD_LABELS + [X]  # only the first sub-token of a word is labelled
    assert row["bbox"] == [[0, 0, 0, 0]] + [STANDARD_BOXES[w] for w in STANDARD_WORD_IDS] + [[1000] * 4]


def test_clamped_box_and_unk(tokenized):
    _, dataset, _, _ = tokenized
    (row,) = rows_of(dataset, "train_02")
    assert row["bbox"][1] == [0, 0, 1000, 1000]  # [-10, -5, 250, 130] on a 200 x 100 page
    (row,) = rows_of(dataset, "train_04")
    assert row["input_ids"][-2] == UNK and row["labels"][-2] == O
    (row,) = rows_of(dataset, "test_02")  # a 400 x 200 page: every box halves
    assert row["bbox"][1] == [25, 25, 150, 75]


def test_clamped_boxes_are_counted_and_named(tmp_path, raw_dir, tiny_checkpoint, capsys):
    """A box outside its page is clamped (as before) but no longer silently: one line, and a count per split."""
    report = tk.tokenize(
        raw_dir, tmp_path / "tokenized", tmp_path / "data.json", {**SETTINGS, "checkpoint": str(tiny_checkpoint)}
    )
    assert report["train"]["boxes_clamped"] + report["validation"]["boxes_clamped"] == 1
    assert json.loads((tmp_path / "data.json").read_text())["train"]["boxes_clamped"] == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("tokenize:")] == [
        f"tokenize: 1 word box(es) outside their page image clamped to the page edge (counted in "
        f"{tmp_path / 'data.json'} as boxes_clamped), e.g. {raw_dir / 'training_data' / 'annotations' / 'train_02.json'}: "
        "form[0].words[0] box [-10, -5, 250, 130] on a 200x100 page"
    ]
    assert "Saving the dataset" not in err  # datasets' progress bar: noise in a DVC log


def test_empty_words_dropped(tokenized):
    _, dataset, _, _ = tokenized
    (row,) = rows_of(dataset, "train_01")
    assert row["input_ids"][-3:] == [TOKEN_ID["1"], TOKEN_ID["ok"], SEP]
    assert row["labels"][-2] == BA  # "ok" opens its entity although "" came first
    assert max(row["word_ids"]) == 9


def test_long_training_document_is_split_at_a_word_boundary(tokenized):
    _, dataset, _, _ = tokenized
    first, second = rows_of(dataset, "train_03")
    assert [first["window"], second["window"]] == [0, 1]
    assert len(first["input_ids"]) == 55 and len(second["input_ids"]) == 15
    # 50 question words, company report date; "2024" (4 tokens) does not fit in the 54.
    assert first["word_ids"] == [-1] + list(range(53)) + [-1]
    assert first["labels"] == [X, BQ] + [IQ] * 49 + [BH, IH, BQ, X]
    assert second["input_ids"][:6] == [CLS, TOKEN_ID["2"], TOKEN_ID["##0"], TOKEN_ID["##2"], TOKEN_ID["##4"], TOKEN_ID["name"]]
    assert second["word_ids"] == [-1, 53, 53, 53, 53, 54, 55, 56, 56, 56, 56, 56, 57, 58, -1]
    assert second["labels"] == [X, BA, X, X, X, BQ, BA, IA, X, X, X, X, O, O, X]
    assert second["bbox"][0] == [0, 0, 0, 0] and second["bbox"][-1] == [1000] * 4


def test_long_test_document_is_split(tokenized):
    _, dataset, _, _ = tokenized
    first, second = rows_of(dataset, "test_01")
    assert len(first["input_ids"]) == 56  # exactly full: 16 + 38 tokens
    assert len(second["input_ids"]) == 14
    assert first["labels"][-2] == IA and second["labels"][1:-1] == [IA] * 12
    assert second["word_ids"][1:-1] == list(range(47, 59))


def test_every_word_labelled_exactly_once(tokenized, raw_dir):
    from layoutpeft.labels import LEGACY_LABELS

    LABEL2ID = {label: i for i, label in enumerate(LEGACY_LABELS)}

    _, dataset, _, _ = tokenized
    docs = load_split(raw_dir / "training_data") + load_split(raw_dir / "testing_data")
    assert len(docs) == 11
    for doc in docs:
        rows = rows_of(dataset, doc.doc_id)
        labelled = [(w, lab) for r in rows for w, lab in zip(r["word_ids"], r["labels"], strict=True) if lab != X]
        assert [w for w, _ in labelled] == list(range(len(doc.words))), doc.doc_id
        assert [lab for _, lab in labelled] == [LABEL2ID[lab] for lab in doc.labels], doc.doc_id
        for r in rows:
            assert len(r["input_ids"]) <= 56
            assert r["input_ids"][0] == CLS and r["input_ids"][-1] == SEP
            assert len(r["input_ids"]) == len(r["bbox"]) == len(r["labels"]) == len(r["word_ids"])
            assert all(0 <= v <= 1000 for box in r["bbox"] for v in box)


# --- pure functions ------------------------------------------------------------------------


def docs(n):
    return [Document(doc_id=f"d{i:02d}", words=["a"], boxes=[[0, 0, 1, 1]], labels=["O"]) for i in range(n)]


def test_split_validation_disjoint_deterministic_and_seeded():
    all_docs = docs(20)
    splits = {}
    for seed in range(4):
        train, val = tk.split_validation(all_docs, 0.25, seed)
        assert len(val) == 5 and len(train) == 15
        assert {d.doc_id for d in train}.isdisjoint(d.doc_id for d in val)
        assert {d.doc_id for d in train} | {d.doc_id for d in val} == {d.doc_id for d in all_docs}
        again = tk.split_validation(list(reversed(all_docs)), 0.25, seed)[1]  # input order does not matter
        assert sorted(d.doc_id for d in again) == sorted(d.doc_id for d in val)
        splits[seed] = frozenset(d.doc_id for d in val)
    assert len(set(splits.values())) == 4  # each seed picks other documents
    assert splits[0] != splits[1]


def test_split_validation_edges():
    assert tk.split_validation(docs(5), 0.0, 0)[1] == []
    assert len(tk.split_validation(docs(5), 0.01, 0)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(ParamsError, match="data.val_fraction"):
        tk.split_validation(docs(2), 0.9, 0)  # round(1.8) = 2: nothing left to train on


def test_word_that_tokenizes_to_nothing_becomes_unk(tiny_checkpoint):
    from layoutpeft.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_checkpoint))
    assert tk.word_pieces(tokenizer, ["date", "\x00", "2024"]) == [
        [TOKEN_ID["date"]],
        [UNK],
        [TOKEN_ID["2"], TOKEN_ID["##0"], TOKEN_ID["##2"], TOKEN_ID["##4"]],
    ]


def test_word_longer_than_a_window(tiny_checkpoint):
    from layoutpeft.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_checkpoint))
    doc = Document(doc_id="long_word", words=["date", "abcdefghij"], boxes=[[0, 0, 1, 1]] * 2, labels=["O", "O"])
    with pytest.raises(tk.WindowingError, match=r"long_word: word 1 \('abcdefghij'\) has 10 tokens.*\(6\)"):
        tk.windows_for(doc, tokenizer, 6, {"O": 0})


def test_check_lossless_catches_lost_and_repeated_words():
    doc = Document(doc_id="d", words=["a", "b", "c"], boxes=[[0, 0, 1, 1]] * 3, labels=["O"] * 3)
    good = [{"word_ids": [-1, 0, 1, -1], "labels": [X, 0, 0, X]}, {"word_ids": [-1, 2, -1], "labels": [X, 0, X]}]
    tk.check_lossless(doc, good)
    lost = [good[0], {"word_ids": [-1, 2, -1], "labels": [X, X, X]}]
    with pytest.raises(tk.WindowingError, match=r"d: words lost \[2\]"):
        tk.check_lossless(doc, lost)
    twice = [good[0], {"word_ids": [-1, 1, 2, -1], "labels": [X, 0, 0, X]}]
    with pytest.raises(tk.WindowingError, match=r"more than once \[1\]"):
        tk.check_lossless(doc, twice)


# --- settings ------------------------------------------------------------------------------

GOOD = {"data": {"val_fraction": 0.15, "split_seed": 0, "max_length": 64, "prompt_reserve": 8}, "model": {"checkpoint": "x"}}


def with_value(dotted, value):
    data = json.loads(json.dumps(GOOD))
    section, key = dotted.split(".")
    if value is DELETE:
        del data[section][key]
    else:
        data[section][key] = value
    return data


DELETE = object()


def test_read_settings():
    assert tokenize_stage.read_params(GOOD) == {
        "checkpoint": "x",
        "val_fraction": 0.15,
        "split_seed": 0,
        "max_length": 64,
        "prompt_reserve": 8,
        "labels": None,
        "dataset_columns": {"words": "words", "boxes": "bboxes", "tags": "ner_tags"},
        "dataset_boxes": "normalized",
    }
    merged = tokenize_stage.read_params(with_value("data.labels", {"header": "question", "Other": None}))
    assert merged["labels"] == {"HEADER": "QUESTION", "OTHER": None}
    with pytest.raises(ParamsError, match="data.val_fraction' must be in"):
        tokenize_stage.read_params(with_value("data.val_fraction", 0))  # early stopping needs a validation split


@pytest.mark.parametrize(
    "dotted, value, fragment",
    [
        ("data.labels", ["header"], "key 'data.labels' must be dict or NoneType, got ['header']"),
        ("data.labels", {"header": 3}, "key 'data.labels': 'header' must map to a type name or null"),
        ("data.labels", {"header": "B-QUESTION"}, "key 'data.labels': 'header' -> 'B-QUESTION': give the type name"),
        ("data.val_fraction", "abc", "key 'data.val_fraction' must be float, got 'abc'"),
        ("data.val_fraction", 0.95, "key 'data.val_fraction' must be in"),
        ("data.val_fraction", DELETE, "missing key 'data.val_fraction'"),
        ("data.split_seed", 1.5, "key 'data.split_seed' must be int"),
        ("data.split_seed", True, "key 'data.split_seed' must be int"),
        ("data.max_length", 600, "key 'data.max_length' must be in [8, 512]"),
        ("data.max_length", "512", "key 'data.max_length' must be int"),
        ("data.max_length", DELETE, "missing key 'data.max_length'"),
        ("data.prompt_reserve", 60, "key 'data.prompt_reserve' must be in [0, 56]"),
        ("data.prompt_reserve", -1, "key 'data.prompt_reserve' must be in"),
        ("model.checkpoint", DELETE, "missing key 'model.checkpoint'"),
        ("model.checkpoint", 3, "key 'model.checkpoint' must be str"),
    ],
)
def test_read_settings_errors_name_the_key(dotted, value, fragment):
    with pytest.raises(ParamsError) as caught:
        tokenize_stage.read_params(with_value(dotted, value))
    assert fragment in str(caught.value)


def test_main_params_error_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("data.val_fraction", "abc")))
    with pytest.raises(ParamsError, match="data.val_fraction"):
        tokenize_stage.main([])
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


# --- bad inputs: named error, data/tokenized and metrics/data.json untouched -----------------


def stale_outputs(folder: Path):
    out, report = folder / "data" / "tokenized", folder / "metrics" / "data.json"
    out.mkdir(parents=True)
    (out / "meta.json").write_text('{"old": true}')
    report.parent.mkdir(parents=True)
    report.write_text('{"old": true}')
    return out, report


def expect_tokenize_failure(folder: Path, raw: Path, checkpoint: Path, error, *fragments, **settings):
    out, report = stale_outputs(folder)
    with pytest.raises(error) as caught:
        tk.tokenize(raw, out, report, {**SETTINGS, "checkpoint": str(checkpoint), **settings})
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert [p.name for p in out.iterdir()] == ["meta.json"] and (out / "meta.json").read_text() == '{"old": true}'
    assert report.read_text() == '{"old": true}'
    assert not list((folder / "data").glob(".tokenize-*"))


def raw_from_zip(folder: Path, **zip_kwargs) -> Path:
    zip_path, md5 = make_funsd_zip(folder / "src.zip", **zip_kwargs)
    return download(str(zip_path), md5, folder / "raw")


FORM_OK = '{"form": [{"label": "other", "words": [{"text": "a", "box": [0, 0, 1, 1]}]}]}'


@pytest.mark.parametrize(
    "split, text, fragments",
    [
        ("training_data", '{"form": [', ["train_03.json", "malformed JSON"]),
        ("testing_data", '{"words": []}', ["test_01.json", "missing 'form'"]),
        ("training_data", '{"form": [{"label": "other"}]}', ["train_03.json", "form[0]", "missing 'words'"]),
        ("training_data", '{"form": [{"words": []}]}', ["train_03.json", "form[0]", "missing 'label'"]),
        (
            "testing_data",
            '{"form": [{"label": "other", "words": [{"text": "a"}]}]}',
            ["test_01.json", "form[0].words[0]", "'box'"],
        ),
        ("training_data", FORM_OK.replace('"other"', '""'), ["train_03.json", "label '' is not an entity type name"]),
    ],
)
def test_bad_annotation(tmp_path, tiny_checkpoint, split, text, fragments):
    name = "train_03" if split == "training_data" else "test_01"
    raw = raw_from_zip(tmp_path, annotation_text={f"{split}/{name}": text})
    expect_tokenize_failure(tmp_path, raw, tiny_checkpoint, AnnotationError, *fragments)


def test_missing_image(tmp_path, tiny_checkpoint):
    raw = raw_from_zip(tmp_path, skip_images=("testing_data/test_02",))
    expect_tokenize_failure(tmp_path, raw, tiny_checkpoint, AnnotationError, "test_02.json", "test_02.png", "missing")


def test_broken_tokenizer_is_refused(tmp_path, raw_dir):
    """The NOTES.md trap: a vocabulary of special tokens only makes every word [UNK]."""
    checkpoint = make_checkpoint(tmp_path / "broken", vocab=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    expect_tokenize_failure(tmp_path, raw_dir, checkpoint, tk.WindowingError, "[UNK]", "vocabulary of 5")


def test_window_too_small_for_a_word(tmp_path, raw_dir, tiny_checkpoint):
    # 8 - 2 - 3 = 3 content tokens: "2024" (4 tokens) cannot fit.
    expect_tokenize_failure(
        tmp_path, raw_dir, tiny_checkpoint, tk.WindowingError, "word 3 ('2024') has 4 tokens", max_length=8, prompt_reserve=3
    )
