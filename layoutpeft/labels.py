"""The entity label schema: the types a dataset's annotations carry, renamed, merged or dropped by
`data.labels`, as BIO labels (`O`, then `B-<type>`, `I-<type>` per type).

The tokenize stage writes the schema into data/tokenized/meta.json and each run records it in its
train_log.json; every later stage (train, evaluate, aggregate, predict, export, the card) reads it
from there, so a dataset with other entity types needs no code change.
"""

from __future__ import annotations

from collections.abc import Iterable

from layoutpeft.errors import LayoutpeftError, ParamsError

OUTSIDE = "O"
# FUNSD's types keep their published order (and today's label ids); any other type follows, sorted.
FUNSD_ORDER = ("HEADER", "QUESTION", "ANSWER")
LABEL_MAP_KEY = "params.yaml: key 'data.labels'"


class LabelError(LayoutpeftError, ValueError):
    """A tag sequence that is not valid BIO, or splits whose entity types differ."""


def bio_labels(types: Iterable[str]) -> list[str]:
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]


# Runs recorded before the schema was written with the data were all trained on FUNSD's three types.
LEGACY_LABELS = bio_labels(FUNSD_ORDER)


def entity_types(labels: Iterable[str]) -> list[str]:
    """The types of a BIO label list, in its order."""
    return [label[2:] for label in labels if label.startswith("B-")]


def order_types(found: Iterable[str]) -> list[str]:
    found = set(found)
    return [t for t in FUNSD_ORDER if t in found] + sorted(found - set(FUNSD_ORDER))


def has_bio_prefix(name: str) -> bool:
    return name[:2].upper() in ("B-", "I-")


def check_label_map(mapping) -> dict[str, str | None]:
    """`data.labels` ({dataset type: new type, or null / "O" to drop it}) with names upper-cased."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ParamsError(f"{LABEL_MAP_KEY} must be a mapping {{dataset type: new type or null}}, got {mapping!r}")
    checked = {}
    for key, value in mapping.items():
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise ParamsError(f"{LABEL_MAP_KEY}: {key!r} must map to a type name or null (drop), got {value!r}")
        if value is not None and (has_bio_prefix(value) or value.strip() != value):
            raise ParamsError(f"{LABEL_MAP_KEY}: {key!r} -> {value!r}: give the type name without B-/I- or spaces")
        new = None if value is None or value.upper() == OUTSIDE else value.upper()
        checked[str(key).upper()] = new
    return checked


def map_type(kind: str, mapping: dict[str, str | None]) -> str | None:
    """The type a dataset type becomes (None: dropped, its words are O)."""
    kind = kind.upper()
    return mapping.get(kind, kind)


def split_tag(tag: str, where: str) -> tuple[str, str | None]:
    """`O` -> ("O", None); `B-X` / `I-X` -> (prefix, X). Anything else is not a BIO tag."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    if isinstance(tag, str) and len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise LabelError(f"{where}: tag {tag!r} is not BIO (expected O, B-<type> or I-<type>)")


def mapped_bio(tags: list[str], mapping: dict[str, str | None], where: str) -> list[str]:
    """Check that `tags` is valid BIO/IOB2 (an I-X only continues a B-X or I-X) and apply `mapping`."""
    out, previous = [], None
    for index, tag in enumerate(tags):
        prefix, kind = split_tag(tag, f"{where}: word {index}")
        if prefix == "I" and previous != kind:
            raise LabelError(
                f"{where}: word {index}: tag {tag!r} follows {tags[index - 1] if index else 'nothing'!r} "
                "(not valid BIO: I-<type> must continue a B-<type> or I-<type> of the same type)"
            )
        previous = kind
        new = map_type(kind, mapping) if kind is not None else None
        out.append(OUTSIDE if new is None else f"{prefix}-{new}")
    return out


def schema_of(train_docs, test_docs, test_source: str) -> list[str]:
    """BIO labels over the training documents' types; the test split must have exactly those types.

    Documents carry `labels` (BIO strings), `doc_id` and `source` (the file or dataset row they came from)."""
    train_types = order_types(t for doc in train_docs for t in entity_types(doc.labels))
    if not train_types:
        raise LabelError(
            f"{train_docs[0].source if train_docs else 'training split'}: no entity in the training split "
            f"(every word is {OUTSIDE} after {LABEL_MAP_KEY})"
        )
    for doc in test_docs:
        unknown = sorted(set(entity_types(doc.labels)) - set(train_types))
        if unknown:
            raise LabelError(
                f"{doc.source}: document {doc.doc_id}: entity type {unknown[0]} is not in the training "
                f"split (its types: {', '.join(train_types)}); map or drop it in {LABEL_MAP_KEY}"
            )
    in_test = {t for doc in test_docs for t in entity_types(doc.labels)}
    missing = [t for t in train_types if t not in in_test]
    if missing:
        raise LabelError(
            f"{test_source}: the test split has no {missing[0]} entity (training has "
            f"{', '.join(train_types)}); map or drop it in {LABEL_MAP_KEY}"
        )
    return bio_labels(train_types)


def labels_of_record(record: dict) -> list[str]:
    """The BIO labels a run was trained with (train_log.json / a run record); older runs: FUNSD's."""
    return list((record.get("data") or {}).get("labels") or LEGACY_LABELS)
