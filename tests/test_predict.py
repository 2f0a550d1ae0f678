"""layoutpeft predict: training's windows, one label per word, the evaluate scores, the PNG, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from layoutpeft.commands import predict as predict_cmd
from layoutpeft.errors import run_main

from fixtures import PAGE, STANDARD, form_of, png_bytes
from trained_runs import LORA, make_workspace, pipeline_labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenized, tiny_checkpoint):
    """A workspace with lora-0 trained and evaluated on the tiny fixture."""
    return make_workspace(tmp_path_factory.mktemp("predict_ws"), tiny_tokenized, tiny_checkpoint, {"lora": (LORA, "zero")})


@pytest.fixture
def workspace(trained, monkeypatch):
    monkeypatch.chdir(trained)
    return trained


def predict(capsys, *argv):
    code = run_main("predict", predict_cmd.main, ["--run", "lora-0", *map(str, argv)])
    return code, capsys.readouterr()


TEST_DATA = "data/raw/testing_data"


def test_multi_window_form_labels_every_word_exactly_once(workspace, tmp_path, capsys):
    from layoutpeft.funsd import load_split

    out = tmp_path / "pred.json"
    code, streams = predict(capsys, f"{TEST_DATA}/annotations/test_01.json", "--out", out)
    assert code == 0, streams.err
    record = json.loads(out.read_text())
    (doc,) = record["documents"]
    words = {d.doc_id: d.words for d in load_split(workspace / TEST_DATA)}["test_01"]
    assert len(words) == 59 and doc["windows"] == 2  # the fixture's long test form spans two windows
    assert [w["index"] for w in doc["words"]] == list(range(59))
    assert [w["text"] for w in doc["words"]] == words
    predicted = [w["label"] for w in doc["words"]]
    assert predicted == pipeline_labels(workspace / "models" / "lora-0", workspace / "data" / "tokenized")["test_01"]
    assert all(0 < w["score"] <= 1 for w in doc["words"])
    assert doc["words"][0]["gold"] == "B-HEADER" and doc["scores"]["words"] == 59
    # entities: conlleval reading of the labels, union boxes in pixels
    for entity in doc["entities"]:
        span = [doc["words"][i] for i in entity["words"]]
        assert span[0]["label"].endswith(entity["type"])
        assert entity["box"] == [
            min(w["box"][0] for w in span),
            min(w["box"][1] for w in span),
            max(w["box"][2] for w in span),
            max(w["box"][3] for w in span),
        ]
    assert "F1" in streams.out  # with --out, the scores are printed on stdout


def test_folder_is_scored_exactly_as_evaluate(workspace, capsys):
    code, streams = predict(capsys, TEST_DATA)
    assert code == 0
    record = json.loads(streams.out)  # the JSON on stdout; the human lines on stderr
    evaluated = json.loads((workspace / "metrics" / "runs" / "lora-0.json").read_text())["scores"]
    assert record["scores"] == evaluated
    assert [len(d["words"]) for d in record["documents"]] == [9, 59, 9]
    assert f"F1 {evaluated['f1']:.3f}" in streams.err.splitlines()[-1]


def test_png_draws_entities_and_a_legend(workspace, tmp_path, capsys):
    from PIL import Image

    from layoutpeft.use.draw import COLOURS

    pngs = tmp_path / "pngs"
    code, streams = predict(capsys, TEST_DATA, "--png", pngs, "--out", tmp_path / "p.json")
    assert code == 0, streams.err
    assert sorted(p.name for p in pngs.iterdir()) == ["test_00.png", "test_01.png", "test_02.png"]
    record = json.loads((tmp_path / "p.json").read_text())
    doc = record["documents"][1]
    image = Image.open(pngs / "test_01.png").convert("RGB")
    assert image.size[0] > doc["width"] and image.size[1] >= doc["height"]  # legend in a right margin
    entity = doc["entities"][0]
    x0, y0 = entity["box"][:2]
    assert image.getpixel((x0, y0)) == COLOURS[entity["type"]]
    legend = {image.getpixel((x, y)) for x in range(doc["width"], image.size[0]) for y in range(image.size[1])}
    assert set(COLOURS.values()) <= legend

    small = tmp_path / "small"
    code, streams = predict(capsys, TEST_DATA, "--png", small, "--png-width", "100", "--out", tmp_path / "q.json")
    assert code == 0, streams.err
    thumbnail = Image.open(small / "test_01.png")
    assert thumbnail.size[0] == 100 and abs(thumbnail.size[1] - image.size[1] * 100 / image.size[0]) <= 1


def write_form(folder, name, annotation, size=PAGE, image=True):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(annotation if isinstance(annotation, str) else json.dumps(annotation))
    if image:
        (folder / f"{name}.png").write_bytes(png_bytes(size))
    return path


def unlabelled(form: dict) -> dict:
    return {"form": [{k: v for k, v in e.items() if k != "label"} for e in form["form"]]}


def test_unlabelled_form_beside_its_image(workspace, tmp_path, capsys):
    path = write_form(tmp_path / "in", "mine", unlabelled(form_of(STANDARD)))
    code, streams = predict(capsys, path)
    assert code == 0, streams.err
    record = json.loads(streams.out)
    (doc,) = record["documents"]
    assert record["scores"] is None and "scores" not in doc and all("gold" not in w for w in doc["words"])
    assert len(doc["words"]) == 9 and doc["image"].endswith("mine.png")


def no_box(form: dict) -> dict:
    form = json.loads(json.dumps(form))
    del form["form"][2]["words"][0]["box"]
    return form


BAD_INPUTS = {
    "no_form": ({"words": []}, PAGE, True, "missing 'form' list"),
    "not_json": ("{oops", PAGE, True, "not valid JSON"),
    "word_without_box": (no_box(form_of(STANDARD)), PAGE, True, "form[2].words[0]: missing 'box'"),
    "image_too_small": (form_of(STANDARD), (100, 50), True, "lies outside the 100x50 page image"),
    "no_image": (form_of(STANDARD), PAGE, False, "no page image found"),
    "some_labels": (
        {"form": form_of(STANDARD)["form"][:2] + unlabelled(form_of(STANDARD))["form"][2:]},
        PAGE,
        True,
        "form[2] has no 'label'",
    ),
}


def one_line_error(code, streams, *needles):
    assert code == 2
    lines = streams.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layoutpeft predict: error: "), streams.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert streams.out == ""


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(workspace, tmp_path, capsys, case):
    annotation, size, image, message = BAD_INPUTS[case]
    good = write_form(tmp_path / "in", "good", form_of(STANDARD))
    bad = write_form(tmp_path / "in", case, annotation, size=size, image=image)
    out, pngs = tmp_path / "out.json", tmp_path / "pngs"
    one_line_error(*predict(capsys, good, bad, "--out", out, "--png", pngs), str(bad), message)
    assert not out.exists() and not pngs.exists()


def test_missing_run_and_missing_tokenized_data(workspace, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = run_main("predict", predict_cmd.main, ["--run", "nope-0", TEST_DATA, "--out", str(out)])
    one_line_error(code, capsys.readouterr(), "models/nope-0", "no trained run", "lora-0")
    one_line_error(*predict(capsys, TEST_DATA, "--tokenized", tmp_path / "none", "--out", out), "meta.json: missing")
    one_line_error(*predict(capsys, tmp_path / "nothing.json"), "nothing.json: no such file")
    assert not out.exists()


def test_same_stem_twice_gets_two_pngs(workspace, tmp_path, capsys):
    first = write_form(tmp_path / "a", "form", form_of(STANDARD))
    second = write_form(tmp_path / "b", "form", form_of(STANDARD))
    code, streams = predict(capsys, first, second, "--png", tmp_path / "pngs", "--out", tmp_path / "p.json")
    assert code == 0, streams.err
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["form-2.png", "form.png"]
    shutil.rmtree(tmp_path / "pngs")


# Word boxes (pixels) of one 20-pixel-high text line and what follows it.
LINE = [[100, 100, 160, 120], [170, 100, 230, 120]]


@pytest.mark.parametrize(
    "third, pieces",
    [
        ([100, 125, 150, 145], [[0, 1, 2]]),  # the next line of a wrapped block: one entity
        ([240, 100, 290, 120], [[0, 1, 2]]),  # the next word on the same line
        ([100, 600, 150, 620], [[0, 1], [2]]),  # half a page below: a new entity
        ([500, 102, 560, 122], [[0, 1], [2]]),  # same line, across a 270-pixel blank (another column)
        ([100, 165, 150, 185], [[0, 1], [2]]),  # after a blank line taller than a word
    ],
)
def test_an_entity_never_spans_a_large_spatial_gap(third, pieces):
    """Consecutive B/I words in input order form one entity only where they are near each other."""
    from layoutpeft.use.predict import entities_of

    labels = ["B-ANSWER", "I-ANSWER", "I-ANSWER", "O"]
    boxes = [*LINE, third, [0, 0, 10, 10]]
    found = entities_of(labels, boxes, [0.9, 0.8, 0.7, 0.5], ["a", "b", "c", "d"])
    assert [e["words"] for e in found] == pieces
    assert {e["type"] for e in found} == {"ANSWER"}
    for entity in found:  # each piece's own union box, not one covering the gap
        span = [boxes[i] for i in entity["words"]]
        assert entity["box"] == [
            min(b[0] for b in span),
            min(b[1] for b in span),
            max(b[2] for b in span),
            max(b[3] for b in span),
        ]
    if len(pieces) == 2:
        assert found[1]["box"] == third and found[1]["score"] == 0.7
