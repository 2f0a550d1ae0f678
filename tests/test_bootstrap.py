"""Per-form entity counts (scoring) and the bootstrap over seeds and test forms (layoutpeft.bootstrap),
on hand-checked small cases."""

from __future__ import annotations

import numpy as np
import pytest

from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.study import bootstrap
from layoutpeft.train.scoring import form_counts, score

HIT = {"QUESTION": [1, 0, 0], "ANSWER": [0, 0, 0], "HEADER": [0, 0, 0]}  # form F1 1
MISS = {"QUESTION": [0, 1, 1], "ANSWER": [0, 0, 0], "HEADER": [0, 0, 0]}  # form F1 0


def test_per_form_counts_add_up_to_seqeval_micro_f1():
    y_true = [["B-QUESTION", "I-QUESTION", "O", "B-ANSWER"], ["B-HEADER", "O", "B-ANSWER", "I-ANSWER"], ["O"]]
    y_pred = [["B-QUESTION", "I-QUESTION", "O", "B-QUESTION"], ["B-HEADER", "O", "B-ANSWER", "O"], ["B-ANSWER"]]
    scores = score(y_true, y_pred, LEGACY_LABELS, ["f1", "f2", "f3"])
    assert scores["per_form"]["f1"] == {"HEADER": [0, 0, 0], "QUESTION": [1, 1, 0], "ANSWER": [0, 0, 1]}
    assert scores["per_form"]["f2"] == {"HEADER": [1, 0, 0], "QUESTION": [0, 0, 0], "ANSWER": [0, 1, 1]}
    assert scores["per_form"]["f3"]["ANSWER"] == [0, 1, 0]
    tp, fp, fn = np.sum([c for form in scores["per_form"].values() for c in form.values()], axis=0)
    assert (tp, fp, fn) == (2, 3, 2)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(scores["f1"])  # seqeval's own micro F1
    types = ["HEADER", "QUESTION", "ANSWER"]
    assert form_counts(["O"], ["O"], types) == {"HEADER": [0, 0, 0], "QUESTION": [0, 0, 0], "ANSWER": [0, 0, 0]}


def test_forms_resampled_one_seed_by_hand():
    """One seed, forms A (F1 1) and B (F1 0): a draw of two forms is AA (F1 1, p 1/4), AB (2/(2+1+1) = 0.5,
    p 1/2) or BB (0, p 1/4)."""
    result = bootstrap.f1_interval({0: {"A": HIT, "B": MISS}})
    assert result["mean"] == pytest.approx(0.5)
    assert (result["ci95_low"], result["ci95_high"]) == (0.0, 1.0)
    (values,) = bootstrap.draws([bootstrap.count_array({0: {"A": HIT, "B": MISS}}, [0], ["A", "B"])])
    share = {v: np.mean(values == v) for v in (0.0, 0.5, 1.0)}
    assert sum(share.values()) == pytest.approx(1.0)
    assert share[0.5] == pytest.approx(0.5, abs=0.04) and share[1.0] == pytest.approx(0.25, abs=0.04)


def test_seeds_resampled_by_hand():
    """Two seeds, one form each: seed 0 scores F1 1, seed 1 F1 0; draws of two seeds average to 1, 0.5 or 0."""
    result = bootstrap.f1_interval({0: {"A": HIT}, 1: {"A": MISS}})
    assert result["mean"] == pytest.approx(0.5) and (result["ci95_low"], result["ci95_high"]) == (0.0, 1.0)


def test_identical_variants_differ_by_exactly_zero_on_every_paired_draw():
    runs = {0: {"A": HIT, "B": MISS, "C": HIT}, 1: {"A": MISS, "B": MISS, "C": HIT}}
    diff = bootstrap.paired_difference(runs, runs)
    assert diff["mean_diff"] == 0.0 and diff["ci95_low"] == diff["ci95_high"] == 0.0  # unpaired draws would spread
    assert diff["n_pairs"] == 2 and "two-level" in diff["method"]


def test_paired_difference_uses_shared_seeds_and_is_reproducible():
    a = {0: {"A": HIT, "B": HIT}, 1: {"A": HIT, "B": MISS}, 2: {"A": HIT, "B": HIT}}
    b = {0: {"A": MISS, "B": HIT}, 1: {"A": MISS, "B": MISS}}
    first, again = bootstrap.paired_difference(a, b), bootstrap.paired_difference(a, b)
    assert first == again and first["n_pairs"] == 2
    # seed 0: 1.0 - 0.5 (A miss: 2/(2+1+1)); seed 1: 0.5 - 0.0
    assert first["mean_diff"] == pytest.approx(0.5)
    assert 0 <= first["ci95_low"] <= 0.5 <= first["ci95_high"]  # a is never worse than b on any form here
    assert bootstrap.paired_difference(a, {5: b[0]}) is None  # no shared seed
    assert bootstrap.f1_interval({0: {"A": HIT}, 1: {"B": HIT}}) is None  # different test forms
