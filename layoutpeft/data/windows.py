"""FUNSD documents -> windows of token ids, 0-1000 boxes and BIO labels (what the tokenize stage writes).

- Labels: BIO over the data's entity types (layoutpeft.labels: the schema, written to meta.json)
  on the first sub-token of each word; other tokens -100.
- Long documents are split into several windows at word boundaries, so no word is lost;
  `check_lossless` proves every non-empty word is labelled exactly once.
- A validation split is carved from the training documents (document level, fixed seed):
  model selection uses it, and the test split is never used for any choice.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from layoutpeft.atomic import staged_dir, write_json
from layoutpeft.config import DEFAULT_COLUMNS
from layoutpeft.data import hfdata
from layoutpeft.errors import LayoutpeftError, ParamsError
from layoutpeft.funsd import Document, load_split
from layoutpeft.labels import check_label_map, entity_types, schema_of

SEP_BOX = [1000, 1000, 1000, 1000]
PAD_BOX = [0, 0, 0, 0]


class WindowingError(LayoutpeftError):
    """A document cannot be windowed losslessly, or the tokenizer is broken."""


def split_validation(documents: list[Document], fraction: float, seed: int):
    """Document-level split; the same seed always picks the same documents."""
    order = sorted(range(len(documents)), key=lambda i: documents[i].doc_id)
    random.Random(seed).shuffle(order)
    n_val = round(len(documents) * fraction)
    if fraction > 0 and n_val == 0 and len(documents) > 1:
        n_val = 1
    if n_val >= len(documents):
        raise ParamsError(f"params.yaml: key 'data.val_fraction' = {fraction} leaves no training documents")
    val_ids = set(order[:n_val])
    train = [d for i, d in enumerate(documents) if i not in val_ids]
    val = [d for i, d in enumerate(documents) if i in val_ids]
    return train, val


def word_pieces(tokenizer, words: list[str]) -> list[list[int]]:
    """Token ids per word; a word the tokenizer reduces to nothing becomes [UNK] so it is not lost."""
    # verbose=False: a document longer than 512 tokens is expected here (windows_for splits it),
    # so transformers' "sequence length is longer than the specified maximum" warning misleads.
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    pieces: list[list[int]] = [[] for _ in words]
    for token_id, word_id in zip(encoded["input_ids"], encoded.word_ids(), strict=True):
        pieces[word_id].append(token_id)
    return [ids if ids else [tokenizer.unk_token_id] for ids in pieces]


def windows_for(doc: Document, tokenizer, max_tokens: int, label2id: dict[str, int]) -> list[dict]:
    """Split one document into windows of at most `max_tokens` content tokens (+ [CLS], [SEP])."""
    pieces = word_pieces(tokenizer, doc.words)
    windows: list[list[int]] = []  # word indices per window
    current: list[int] = []
    used = 0
    for word_index, ids in enumerate(pieces):
        if len(ids) > max_tokens:
            raise WindowingError(
                f"{doc.doc_id}: word {word_index} ({doc.words[word_index]!r}) has "
                f"{len(ids)} tokens, more than a window holds ({max_tokens})"
            )
        if used + len(ids) > max_tokens:
            windows.append(current)
            current, used = [], 0
        current.append(word_index)
        used += len(ids)
    if current:
        windows.append(current)

    records = []
    for window_index, word_indices in enumerate(windows):
        input_ids, bbox, labels, word_ids = [tokenizer.cls_token_id], [PAD_BOX], [-100], [-1]
        for w in word_indices:
            for position, token_id in enumerate(pieces[w]):
                input_ids.append(token_id)
                bbox.append(doc.boxes[w])
                labels.append(label2id[doc.labels[w]] if position == 0 else -100)
                word_ids.append(w)
        input_ids.append(tokenizer.sep_token_id)
        bbox.append(SEP_BOX)
        labels.append(-100)
        word_ids.append(-1)
        records.append(
            {
                "doc_id": doc.doc_id,
                "window": window_index,
                "input_ids": input_ids,
                "bbox": bbox,
                "labels": labels,
                "word_ids": word_ids,
            }
        )
    return records


def check_lossless(doc: Document, records: list[dict]) -> None:
    """Every word of the document carries its label exactly once across its windows."""
    seen: dict[int, int] = {}
    for record in records:
        for word, label in zip(record["word_ids"], record["labels"], strict=True):
            if label != -100:
                seen[word] = seen.get(word, 0) + 1
    lost = [w for w in range(len(doc.words)) if seen.get(w, 0) == 0]
    twice = [w for w, n in seen.items() if n > 1]
    if lost or twice:
        raise WindowingError(f"{doc.doc_id}: words lost {lost[:10]} / labelled more than once {twice[:10]}")


def tokenize_split(documents: list[Document], tokenizer, max_tokens: int, labels: list[str]) -> list[dict]:
    label2id = {label: index for index, label in enumerate(labels)}
    records = []
    for doc in documents:
        doc_records = windows_for(doc, tokenizer, max_tokens, label2id)
        check_lossless(doc, doc_records)
        records.extend(doc_records)
    return records


def split_report(documents: list[Document], records: list[dict], unk_id: int, max_length: int) -> dict:
    tokens = sum(len(r["input_ids"]) for r in records)
    unk = sum(r["input_ids"].count(unk_id) for r in records)
    return {
        "documents": len(documents),
        "words": sum(len(d.words) for d in documents),
        "words_raw": sum(d.n_words_raw for d in documents),
        "entities": sum(d.n_entities for d in documents),
        # Word boxes outside their page image, clamped to it (predict refuses such boxes instead).
        "boxes_clamped": sum(len(d.clamped) for d in documents),
        "windows": len(records),
        "tokens": tokens,
        "unk_share": unk / tokens if tokens else 0.0,
        # Share of computed tokens that are padding if every window were padded to max_length.
        "pad_share_at_max_length": 1 - tokens / (len(records) * max_length) if records else 0.0,
    }


def tokenize(raw_dir: Path, out_dir: Path, report_path: Path, settings: dict) -> dict:
    """Tokenize FUNSD's two splits (+ the carved validation split) into `out_dir` (Arrow + meta.json).

    settings: checkpoint, val_fraction, split_seed, max_length, prompt_reserve, labels (data.labels),
    dataset_columns and dataset_boxes (data.dataset.*, for a dataset snapshot in raw_dir/dataset)."""
    from datasets import Dataset, DatasetDict, disable_progress_bars

    disable_progress_bars()  # "Saving the dataset" bars for a sub-second save: noise in a DVC log

    from layoutpeft.modeling import load_tokenizer

    label_map = check_label_map(settings.get("labels"))
    if (Path(raw_dir) / hfdata.SNAPSHOT).is_dir():  # a Hugging Face dataset (data.dataset.path)
        train_docs, test_docs, test_source = hfdata.load_splits(
            raw_dir, settings.get("dataset_columns") or DEFAULT_COLUMNS, settings.get("dataset_boxes", "normalized"), label_map
        )
    else:
        train_docs = load_split(raw_dir / "training_data", label_map)
        test_docs = load_split(raw_dir / "testing_data", label_map)
        test_source = str(raw_dir / "testing_data")
    labels = schema_of(train_docs, test_docs, test_source)
    tokenizer = load_tokenizer(settings["checkpoint"])
    # [CLS] + [SEP], and room for prompt-tuning's virtual tokens, inside LayoutLM's 512 positions.
    max_tokens = settings["max_length"] - 2 - settings["prompt_reserve"]
    train_docs, val_docs = split_validation(train_docs, settings["val_fraction"], settings["split_seed"])
    splits = {"train": train_docs, "validation": val_docs, "test": test_docs}
    records = {name: tokenize_split(docs, tokenizer, max_tokens, labels) for name, docs in splits.items()}
    window_length = max_tokens + 2
    report: dict[str, Any] = {
        name: split_report(splits[name], records[name], tokenizer.unk_token_id, window_length) for name in splits
    }
    report["window_length"] = window_length
    report["tokenizer_vocab"] = len(tokenizer)
    all_tokens = sum(report[s]["tokens"] for s in splits)
    report["unk_share"] = sum(report[s]["unk_share"] * report[s]["tokens"] for s in splits) / all_tokens
    if report["unk_share"] > 0.05:
        # The tokenizer trap in NOTES.md: a 5-token vocabulary makes everything [UNK].
        raise WindowingError(
            f"{report['unk_share']:.1%} of tokens are [UNK]: the tokenizer of "
            f"{settings['checkpoint']} looks broken (vocabulary of {len(tokenizer)})"
        )

    clamped = [where for docs in splits.values() for d in docs for where in d.clamped]
    if clamped:
        print(
            f"tokenize: {len(clamped)} word box(es) outside their page image clamped to the page edge "
            f"(counted in {report_path} as boxes_clamped), e.g. {clamped[0]}",
            file=sys.stderr,
        )

    meta = {
        "labels": labels,
        "entity_types": entity_types(labels),
        "label_map": label_map,
        "checkpoint": settings["checkpoint"],
        "window_length": window_length,
        "pad_token_id": tokenizer.pad_token_id,
        "val_documents": sorted(d.doc_id for d in val_docs),
    }
    # The data report is a metrics file of the same stage: written after the data, both atomically.
    with staged_dir(out_dir) as staged:
        DatasetDict({name: Dataset.from_list(rows) for name, rows in records.items()}).save_to_disk(str(staged))
        (staged / "meta.json").write_text(json.dumps(meta, indent=2))
    write_json(report_path, report)
    return report
