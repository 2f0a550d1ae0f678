"""FUNSD annotations -> word-level BIO labels and 0-1000 boxes (pure functions, no I/O beyond reading).

An entity's `label` string is its type (upper-cased; FUNSD's `other` means no entity), renamed,
merged or dropped by `data.labels` (layoutpeft.labels): any set of types, not only FUNSD's three."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from layoutpeft.errors import LayoutpeftError
from layoutpeft.labels import has_bio_prefix, map_type

NO_ENTITY = "other"  # FUNSD's label for words outside any entity


class AnnotationError(LayoutpeftError, ValueError):
    """An annotation file that cannot be read as FUNSD."""


@dataclass
class Document:
    doc_id: str
    source: str = ""  # the file (or dataset and row) it was read from, for errors
    words: list[str] = field(default_factory=list)
    boxes: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    n_words_raw: int = 0  # words in the annotation, empty ones included
    n_entities: int = 0
    clamped: list[str] = field(default_factory=list)  # where a kept word's box lay outside the page


def outside_page(box, width: float, height: float) -> bool:
    x0, y0, x1, y1 = (float(v) for v in box)
    return min(x0, y0, x1, y1) < 0 or max(x0, x1) > width or max(y0, y1) > height


def normalize_box(box, width: float, height: float) -> list[int]:
    """Pixels -> LayoutLM's 0..1000 grid, clamped: its 2-D tables have 1024 rows, so 1001+ would pass silently."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))

    def scale(value: float, size: float) -> int:
        return int(min(1000, max(0, round(1000 * value / size))))

    return [scale(x0, width), scale(y0, height), scale(x1, width), scale(y1, height)]


def entity_type(funsd_label: str, label_map: dict) -> str | None:
    """The type an entity's label string stands for after `data.labels` (None: no entity)."""
    if funsd_label.lower() == NO_ENTITY and NO_ENTITY.upper() not in label_map:
        return None
    return map_type(funsd_label, label_map)


def entity_labels(kind: str | None, n_words: int) -> list[str]:
    if n_words == 0:
        return []
    if kind is None:
        return ["O"] * n_words
    return [f"B-{kind}"] + [f"I-{kind}"] * (n_words - 1)


def _check_box(box, where: str) -> None:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise AnnotationError(f"{where}: 'box' must be 4 numbers, got {box!r}")


def parse_annotation(annotation: dict, width: int, height: int, source: str, label_map: dict | None = None) -> Document:
    """Convert one FUNSD annotation dict; `source` names the file in errors; `label_map`: checked data.labels."""
    if not isinstance(annotation, dict) or not isinstance(annotation.get("form"), list):
        raise AnnotationError(f"{source}: missing 'form' list")
    doc = Document(doc_id=Path(source).stem, source=source)
    for index, entity in enumerate(annotation["form"]):
        where = f"{source}: form[{index}]"
        if not isinstance(entity, dict):
            raise AnnotationError(f"{where}: expected an object")
        for key in ("words", "label"):
            if key not in entity:
                raise AnnotationError(f"{where}: missing '{key}'")
        label = entity["label"]
        if not (isinstance(label, str) and label.strip() and label.strip() == label and not has_bio_prefix(label)):
            raise AnnotationError(f"{where}: label {label!r} is not an entity type name")
        words = entity["words"]
        if not isinstance(words, list):
            raise AnnotationError(f"{where}: 'words' must be a list")
        doc.n_entities += 1
        doc.n_words_raw += len(words)
        kept = []
        for w_index, word in enumerate(words):
            w_where = f"{where}.words[{w_index}]"
            if not isinstance(word, dict) or "box" not in word or "text" not in word:
                raise AnnotationError(f"{w_where}: missing 'box' or 'text'")
            _check_box(word["box"], w_where)
            if str(word["text"]).strip():  # empty words carry nothing to label
                kept.append(word)
                if outside_page(word["box"], width, height):
                    doc.clamped.append(f"{w_where} box {word['box']} on a {width}x{height} page")
        for word, label_text in zip(kept, entity_labels(entity_type(label, label_map or {}), len(kept)), strict=True):
            doc.words.append(str(word["text"]).strip())
            doc.boxes.append(normalize_box(word["box"], width, height))
            doc.labels.append(label_text)
    return doc


def load_split(split_dir: Path, label_map: dict | None = None) -> list[Document]:
    """Read every annotation of a FUNSD split folder (annotations/ + images/), sorted by name."""
    annotations = sorted((split_dir / "annotations").glob("*.json"))
    if not annotations:
        raise AnnotationError(f"{split_dir / 'annotations'}: no annotation files")
    documents = []
    for path in annotations:
        image = split_dir / "images" / f"{path.stem}.png"
        if not image.is_file():
            raise AnnotationError(f"{path}: image {image} is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AnnotationError(f"{path}: malformed JSON ({err})") from err
        with Image.open(image) as img:
            width, height = img.size
        documents.append(parse_annotation(data, width, height, str(path), label_map))
    return documents
