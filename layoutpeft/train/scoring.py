"""Window predictions -> one label per word -> entity-level scores with seqeval.

Each word is scored exactly once: its label sits on its first sub-token, in exactly one
window (the tokenize stage guarantees it). Scores are seqeval's default (conlleval) mode,
the one the LayoutLM paper reports; strict IOB2 F1 is given beside it.

`per_form` keeps each test form's entity counts per type, [true positives, false positives,
false negatives] (seqeval's entities, conlleval mode), so F1 can be recomputed for any subset of
forms: the bootstrap over forms (layoutpeft.study.bootstrap) resamples them.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from layoutpeft.labels import entity_types

SCHEME = {"scheme": "IOB2", "mode": "conlleval (seqeval default)"}


def word_labels(windows: list[dict], predictions: list[torch.Tensor], labels: list[str], with_docs: bool = False):
    """Gold and predicted label sequences per document, words in reading order (documents sorted
    by id; with_docs: their ids as a third item).

    `predictions[i]` holds predicted label ids for the tokens of `windows[i]` (same length);
    `labels`: the BIO label of each id (the data's schema).
    """
    gold: dict[str, dict[int, str]] = defaultdict(dict)
    pred: dict[str, dict[int, str]] = defaultdict(dict)
    for window, predicted in zip(windows, predictions, strict=True):
        labelled = window["labels"] != -100
        for word, label, guess in zip(
            window["word_ids"][labelled].tolist(), window["labels"][labelled].tolist(), predicted[labelled].tolist(), strict=True
        ):
            if word in gold[window["doc_id"]]:
                raise ValueError(f"{window['doc_id']}: word {word} is labelled in more than one window")
            gold[window["doc_id"]][word] = labels[label]
            pred[window["doc_id"]][word] = labels[guess]
    docs = sorted(gold)
    sequences = ([[gold[d][w] for w in sorted(gold[d])] for d in docs], [[pred[d][w] for w in sorted(pred[d])] for d in docs])
    return (*sequences, docs) if with_docs else sequences


def form_counts(y_true: list[str], y_pred: list[str], types: list[str]) -> dict[str, list[int]]:
    """One form's {entity type: [tp, fp, fn]} for every type of the schema, from seqeval's entities
    (default mode: an entity counts when its type, start and end all match)."""
    from seqeval.metrics.sequence_labeling import get_entities

    true, pred = set(get_entities(y_true)), set(get_entities(y_pred))
    counts = {}
    for kind in types:
        t, p = {e for e in true if e[0] == kind}, {e for e in pred if e[0] == kind}
        counts[kind] = [len(t & p), len(p - t), len(t - p)]
    return counts


def score(y_true: list[list[str]], y_pred: list[list[str]], labels: list[str], docs: list[str] | None = None) -> dict:
    """Entity scores, overall and per type of the schema `labels` (every type, even one never found);
    with `docs` (the forms' ids, in the order of the sequences), per-form counts too."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    types = entity_types(labels)
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    per_type = {
        kind: {
            "precision": float(report.get(kind, {}).get("precision", 0.0)),
            "recall": float(report.get(kind, {}).get("recall", 0.0)),
            "f1": float(report.get(kind, {}).get("f1-score", 0.0)),
            "support": int(report.get(kind, {}).get("support", 0)),
        }
        for kind in types
    }
    return {
        **SCHEME,
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "f1_strict": float(f1_score(y_true, y_pred, mode="strict", scheme=IOB2, zero_division=0)),
        "words": sum(len(s) for s in y_true),
        "per_type": per_type,
        **({"per_form": {doc: form_counts(t, p, types) for doc, t, p in zip(docs, y_true, y_pred, strict=True)}} if docs else {}),
    }
