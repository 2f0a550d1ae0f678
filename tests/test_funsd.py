"""stages/funsd.py: FUNSD annotations -> words, BIO labels and 0..1000 boxes."""

from __future__ import annotations

import json

import pytest

from layoutpeft.funsd import AnnotationError, entity_labels, entity_type, load_split, normalize_box, parse_annotation
from layoutpeft.labels import LEGACY_LABELS

from fixtures import STANDARD, entity, png_bytes


def test_funsd_label_set_and_ids():
    # FUNSD's three types keep the label ids every run recorded before the schema was written with the data.
    assert LEGACY_LABELS == ["O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]


@pytest.mark.parametrize(
    "label, n, expected",
    [
        ("other", 3, ["O", "O", "O"]),
        ("header", 3, ["B-HEADER", "I-HEADER", "I-HEADER"]),
        ("question", 1, ["B-QUESTION"]),
        ("answer", 2, ["B-ANSWER", "I-ANSWER"]),
    ],
)
def test_entity_labels(label, n, expected):
    assert entity_labels(entity_type(label, {}), n) == expected


@pytest.mark.parametrize(
    "label, label_map, expected",
    [
        ("header", {"HEADER": "QUESTION"}, "QUESTION"),
        ("header", {"HEADER": None}, None),
        ("Signature", {}, "SIGNATURE"),
        ("other", {}, None),
        ("other", {"OTHER": "MISC"}, "MISC"),
    ],
)
def test_entity_type_after_label_map(label, label_map, expected):
    assert entity_type(label, label_map) == expected


@pytest.mark.parametrize(
    "box, size, expected",
    [
        ([10, 5, 60, 15], (200, 100), [50, 50, 300, 150]),
        ([0, 0, 200, 100], (200, 100), [0, 0, 1000, 1000]),
        # beyond the page and negative: clamped to the 0..1000 grid (LayoutLM's tables have 1024 rows)
        ([-10, -5, 250, 130], (200, 100), [0, 0, 1000, 1000]),
        ([190, 95, 210, 101], (200, 100), [950, 950, 1000, 1000]),
        ([-3, 10, 5, 20], (200, 100), [0, 100, 25, 200]),
        # swapped corners are put in order
        ([60, 15, 10, 5], (200, 100), [50, 50, 300, 150]),
        # rounding to the nearest integer; floats accepted
        ([1, 2, 2, 3], (3, 3), [333, 667, 667, 1000]),
        ([10.4, 0.0, 20.6, 50.0], (1000, 100), [10, 0, 21, 500]),
    ],
)
def test_normalize_box(box, size, expected):
    assert normalize_box(box, *size) == expected


def test_normalize_box_never_leaves_the_grid():
    for box in ([-1e6, -1e6, 1e6, 1e6], [5000, 5000, 6000, 7000], [-50, -50, -1, -1]):
        result = normalize_box(box, 640, 480)
        assert all(0 <= v <= 1000 for v in result), (box, result)


def test_parse_standard_form():
    annotation = {"form": [entity(i, label, words) for i, (label, words) in enumerate(STANDARD)]}
    doc = parse_annotation(annotation, 200, 100, "some/dir/form_7.json")
    assert doc.doc_id == "form_7"
    assert doc.words == ["company", "report", "date", "2024", "name", "john", "smith", "page", "1"]
    assert doc.labels == ["B-HEADER", "I-HEADER", "B-QUESTION", "B-ANSWER", "B-QUESTION", "B-ANSWER", "I-ANSWER", "O", "O"]
    assert doc.boxes == [
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
    assert doc.n_words_raw == 9
    assert doc.n_entities == 6


def test_empty_words_are_dropped_and_the_first_kept_word_opens_the_entity():
    annotation = {
        "form": [
            entity(0, "answer", [("", [0, 0, 1, 1]), ("  ", [0, 0, 1, 1]), ("ok", [10, 10, 20, 20]), ("fine", [20, 10, 30, 20])]),
            entity(1, "question", [(" ", [0, 0, 1, 1])]),  # only empty words: no label at all
            entity(2, "header", [("\tTitle ", [40, 0, 80, 10])]),
        ]
    }
    doc = parse_annotation(annotation, 100, 100, "x.json")
    assert doc.words == ["ok", "fine", "Title"]  # text stripped, case kept (the tokenizer lowercases)
    assert doc.labels == ["B-ANSWER", "I-ANSWER", "B-HEADER"]
    assert doc.boxes == [[100, 100, 200, 200], [200, 100, 300, 200], [400, 0, 800, 100]]
    assert doc.n_words_raw == 6
    assert doc.n_entities == 3


def test_numbers_as_text_are_kept():
    annotation = {"form": [{"label": "answer", "words": [{"text": 42, "box": [0, 0, 1, 1]}]}]}
    doc = parse_annotation(annotation, 10, 10, "n.json")
    assert doc.words == ["42"] and doc.labels == ["B-ANSWER"]


WORD = {"text": "a", "box": [0, 0, 1, 1]}


@pytest.mark.parametrize(
    "annotation, fragments",
    [
        ({"words": []}, ["f.json", "'form'"]),
        ({"form": {"a": 1}}, ["f.json", "'form'"]),
        ([], ["f.json", "'form'"]),
        ({"form": ["text"]}, ["f.json", "form[0]"]),
        ({"form": [{"label": "other"}]}, ["f.json", "form[0]", "'words'"]),
        ({"form": [{"label": "other", "words": [WORD]}, {"words": [WORD]}]}, ["f.json", "form[1]", "'label'"]),
        # any label string is an entity type (data.labels maps them); these are not type names
        ({"form": [{"label": "", "words": [WORD]}]}, ["f.json", "form[0]", "''", "not an entity type"]),
        ({"form": [{"label": 3, "words": [WORD]}]}, ["f.json", "form[0]", "3"]),
        ({"form": [{"label": "B-header", "words": [WORD]}]}, ["f.json", "form[0]", "'B-header'"]),
        ({"form": [{"label": "other", "words": "a b"}]}, ["f.json", "form[0]", "'words'"]),
        ({"form": [{"label": "other", "words": [WORD, {"text": "b"}]}]}, ["f.json", "form[0].words[1]", "'box'"]),
        ({"form": [{"label": "other", "words": [{"box": [0, 0, 1, 1]}]}]}, ["f.json", "form[0].words[0]", "'text'"]),
        ({"form": [{"label": "other", "words": [{"text": "a", "box": [0, 0, 1]}]}]}, ["f.json", "words[0]", "'box'"]),
        ({"form": [{"label": "other", "words": [{"text": "a", "box": ["0", 0, 1, 1]}]}]}, ["f.json", "'box'"]),
        ({"form": [{"label": "other", "words": [{"text": "a", "box": None}]}]}, ["f.json", "'box'"]),
    ],
)
def test_bad_annotations_name_file_and_key(annotation, fragments):
    with pytest.raises(AnnotationError) as caught:
        parse_annotation(annotation, 100, 100, "dir/f.json")
    for fragment in fragments:
        assert fragment in str(caught.value)


def _write_split(folder, forms: dict, images=True, size=(200, 100)):
    (folder / "annotations").mkdir(parents=True)
    (folder / "images").mkdir()
    for name, content in forms.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / "annotations" / f"{name}.json").write_text(text)
        if images:
            (folder / "images" / f"{name}.png").write_bytes(png_bytes(size))


def test_load_split_sorted_by_name_and_sized_by_image(tmp_path):
    form = {"form": [{"label": "question", "words": [{"text": "date", "box": [20, 10, 40, 20]}]}]}
    _write_split(tmp_path / "split", {"b": form, "a": form, "c": form}, size=(400, 50))
    docs = load_split(tmp_path / "split")
    assert [d.doc_id for d in docs] == ["a", "b", "c"]
    assert docs[0].boxes == [[50, 200, 100, 400]]


def test_load_split_malformed_json(tmp_path):
    _write_split(tmp_path / "split", {"a": {"form": []}, "b": '{"form": [}'})
    with pytest.raises(AnnotationError, match=r"b\.json: malformed JSON"):
        load_split(tmp_path / "split")


def test_load_split_missing_image(tmp_path):
    _write_split(tmp_path / "split", {"a": {"form": []}})
    (tmp_path / "split" / "images" / "a.png").unlink()
    with pytest.raises(AnnotationError, match=r"a\.json: image .*a\.png is missing"):
        load_split(tmp_path / "split")


def test_load_split_without_annotations(tmp_path):
    (tmp_path / "split" / "annotations").mkdir(parents=True)
    with pytest.raises(AnnotationError, match="no annotation files"):
        load_split(tmp_path / "split")
