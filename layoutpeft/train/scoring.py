"""Window predictions -> one label per word -> entity-level scores with seqeval.

Each word is scored exactly once: its label sits on its first sub-token, in exactly one
window (the tokenize stage guarantees it). Scores are seqeval's default (conlleval) mode,
the one the LayoutLM paper reports; strict IOB2 F1 is given beside it.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from layoutpeft.labels import entity_types

SCHEME = {"scheme": "IOB2", "mode": "conlleval (seqeval default)"}


def word_labels(windows: list[dict], predictions: list[torch.Tensor],
                labels: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted label sequences per document, words in reading order.

    `predictions[i]` holds predicted label ids for the tokens of `windows[i]` (same length);
    `labels`: the BIO label of each id (the data's schema).
    """
    gold: dict[str, dict[int, str]] = defaultdict(dict)
    pred: dict[str, dict[int, str]] = defaultdict(dict)
    for window, predicted in zip(windows, predictions, strict=True):
        labelled = window["labels"] != -100
        for word, label, guess in zip(window["word_ids"][labelled].tolist(), window["labels"][labelled].tolist(),
                                      predicted[labelled].tolist(), strict=True):
            if word in gold[window["doc_id"]]:
                raise ValueError(f"{window['doc_id']}: word {word} is labelled in more than one window")
            gold[window["doc_id"]][word] = labels[label]
            pred[window["doc_id"]][word] = labels[guess]
    docs = sorted(gold)
    return ([[gold[d][w] for w in sorted(gold[d])] for d in docs],
            [[pred[d][w] for w in sorted(pred[d])] for d in docs])


def score(y_true: list[list[str]], y_pred: list[list[str]], labels: list[str]) -> dict:
    """Entity scores, overall and per type of the schema `labels` (every type, even one never found)."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    per_type = {kind: {"precision": float(report.get(kind, {}).get("precision", 0.0)),
                       "recall": float(report.get(kind, {}).get("recall", 0.0)),
                       "f1": float(report.get(kind, {}).get("f1-score", 0.0)),
                       "support": int(report.get(kind, {}).get("support", 0))} for kind in entity_types(labels)}
    return {**SCHEME,
            "precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
            "f1_strict": float(f1_score(y_true, y_pred, mode="strict", scheme=IOB2, zero_division=0)),
            "words": sum(len(s) for s in y_true),
            "per_type": per_type}
