"""A Hugging Face `datasets` dataset as input beside the FUNSD zip.

`data.dataset.path` names it: a hub name (as users run it, e.g. nielsr/funsd-layoutlmv3), or a
local folder holding `save_to_disk` output or one `<split>.parquet` / `<split>.jsonl` file per
split (tests and offline users). The download stage snapshots the two declared splits
(`data.dataset.splits`: {train: <name>, test: <name>}) into data/raw/dataset, so DVC versions
what was read; the tokenize stage turns each row into a Document (words, 0-1000 boxes, BIO
labels) with the declared columns (`data.dataset.columns`) and from there everything is as for
the zip: the same windows, validation split and lossless check.

Tags: a `Sequence(ClassLabel)` column (its names are the BIO tags) or BIO strings; checked as
BIO/IOB2 and mapped by `data.labels`. Boxes: `normalized` (0-1000, checked) or `pixels` (scaled
with the page's `width` / `height` columns, as FUNSD's are).
"""

from __future__ import annotations

from pathlib import Path

from layoutpeft.atomic import staged_dir
from layoutpeft.errors import LayoutpeftError
from layoutpeft.funsd import Document, normalize_box, outside_page
from layoutpeft.labels import mapped_bio

SNAPSHOT = "dataset"  # data/raw/dataset: the declared splits, saved as train / test
SPLITS = ("train", "test")
COLUMNS = ("words", "boxes", "tags")  # required; optional: id, width, height
BOX_MODES = ("normalized", "pixels")
FILE_KINDS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class DatasetInputError(LayoutpeftError, ValueError):
    """The dataset cannot be read, or a row is not a labelled form."""


def load_source(path: str, splits: dict[str, str]):
    """{"train": Dataset, "test": Dataset} from a hub name or a local path; errors name the path and split."""
    import datasets

    local = Path(path).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(local))
        elif local.is_dir():
            files = {}
            for split in splits.values():
                found = [local / f"{split}{suffix}" for suffix in FILE_KINDS if (local / f"{split}{suffix}").is_file()]
                if not found:
                    raise DatasetInputError(
                        f"data.dataset.path {path}: no {split}.parquet / {split}.jsonl and no "
                        "save_to_disk files (dataset_dict.json) in this folder"
                    )
                files[split] = str(found[0])
            kinds = {FILE_KINDS[Path(f).suffix] for f in files.values()}
            if len(kinds) > 1:
                raise DatasetInputError(f"data.dataset.path {path}: mixes Parquet and JSON-lines splits")
            loaded = datasets.load_dataset(kinds.pop(), data_files=files)
        elif path.startswith((".", "/", "~")):
            raise DatasetInputError(f"data.dataset.path {path}: no such folder")
        else:
            loaded = datasets.load_dataset(path)
    except DatasetInputError:
        raise
    except Exception as err:  # datasets raises many kinds; the user needs the path and the reason
        raise DatasetInputError(
            f"data.dataset.path {path}: cannot be loaded ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        raise DatasetInputError(f"data.dataset.path {path}: one split only; give a dataset with named splits")
    chosen = {}
    for role, name in splits.items():
        if name not in loaded:
            raise DatasetInputError(f"data.dataset.splits.{role}: {path} has no split {name!r} (its splits: {', '.join(loaded)})")
        chosen[role] = loaded[name]
    return chosen


def snapshot(path: str, splits: dict[str, str], out_dir: Path) -> Path:
    """Save the declared splits as data/raw/dataset (train, test); replaced only when complete."""
    from datasets import DatasetDict

    chosen = load_source(path, splits)
    with staged_dir(Path(out_dir)) as staged:
        DatasetDict(chosen).save_to_disk(str(staged / SNAPSHOT))
    return Path(out_dir) / SNAPSHOT


def tag_names(split, column: str, source: str) -> list[str] | None:
    """The BIO names of a Sequence(ClassLabel) tag column; None when the tags are strings."""
    feature = split.features.get(column)
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    if names is None and inner is not None and getattr(inner, "dtype", None) not in ("string", "large_string"):
        raise DatasetInputError(
            f"{source}: column {column!r} holds {inner.dtype} tags without ClassLabel names "
            "(declare a ClassLabel feature, or store the BIO strings)"
        )
    return names


def check_columns(split, columns: dict[str, str], box_mode: str, source: str) -> None:
    needed = [columns[c] for c in COLUMNS] + ([columns.get("width"), columns.get("height")] if box_mode == "pixels" else [])
    if box_mode == "pixels" and not (columns.get("width") and columns.get("height")):
        raise DatasetInputError(
            "params.yaml: data.dataset.boxes is pixels: declare data.dataset.columns.width and .height (the page size in pixels)"
        )
    missing = [c for c in needed + ([columns["id"]] if columns.get("id") else []) if c not in split.column_names]
    if missing:
        raise DatasetInputError(
            f"{source}: no column {missing[0]!r} (its columns: {', '.join(split.column_names)}); "
            "declare the names in data.dataset.columns"
        )


def documents_of(split, columns: dict[str, str], box_mode: str, label_map: dict, source: str) -> list[Document]:
    """One Document per row: non-empty words, 0-1000 boxes, BIO labels after data.labels."""
    check_columns(split, columns, box_mode, source)
    names = tag_names(split, columns["tags"], source)
    documents = []
    for row_index, row in enumerate(split):
        doc_id = str(row[columns["id"]]) if columns.get("id") else str(row_index)
        where = f"{source}: document {doc_id}"
        words, boxes, tags = row[columns["words"]], row[columns["boxes"]], row[columns["tags"]]
        if not (len(words) == len(boxes) == len(tags)):
            raise DatasetInputError(f"{where}: {len(words)} words, {len(boxes)} boxes and {len(tags)} tags (one each per word)")
        if names is not None:
            if any(not isinstance(t, int) or not 0 <= t < len(names) for t in tags):
                raise DatasetInputError(f"{where}: tag ids outside the {len(names)} ClassLabel names")
            tags = [names[t] for t in tags]
        labels = mapped_bio(list(tags), label_map, where)
        doc = Document(
            doc_id=doc_id, source=source, n_words_raw=len(words), n_entities=sum(1 for t in tags if str(t).startswith("B-"))
        )
        for w_index, (word, box, label) in enumerate(zip(words, boxes, labels, strict=False)):
            if not (
                isinstance(box, (list, tuple))
                and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
            ):
                raise DatasetInputError(f"{where}: word {w_index}: box {box!r} is not 4 numbers")
            if box_mode == "normalized":
                if not all(0 <= v <= 1000 for v in box):
                    raise DatasetInputError(
                        f"{where}: word {w_index}: box {list(box)} is outside 0-1000 (pixel boxes: "
                        "set data.dataset.boxes: pixels with the page size columns)"
                    )
                x0, y0, x1, y1 = (int(round(v)) for v in box)
                box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            else:
                width, height = row[columns["width"]], row[columns["height"]]
                if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
                    raise DatasetInputError(f"{where}: page size {width!r} x {height!r} is not two positive numbers")
                if outside_page(box, width, height):
                    doc.clamped.append(f"{where}: word {w_index} box {list(box)} on a {width}x{height} page")
                box = normalize_box(box, width, height)
            text = str(word).strip()
            if not text:  # empty words carry nothing to label (as in the zip route)
                if label.startswith("B-") and w_index + 1 < len(labels) and labels[w_index + 1].startswith("I-"):
                    labels[w_index + 1] = "B-" + labels[w_index + 1][2:]  # the entity starts at its next word
                continue
            doc.words.append(text)
            doc.boxes.append(box)
            doc.labels.append(label)
        documents.append(doc)
    return documents


def load_splits(raw_dir: Path, columns: dict[str, str], box_mode: str, label_map: dict):
    """(train documents, test documents, test source) from data/raw/dataset."""
    import datasets

    folder = Path(raw_dir) / SNAPSHOT
    loaded = datasets.load_from_disk(str(folder))
    return (
        documents_of(loaded["train"], columns, box_mode, label_map, f"{folder}/train"),
        documents_of(loaded["test"], columns, box_mode, label_map, f"{folder}/test"),
        f"{folder}/test",
    )
