"""Test-set variance: a two-level bootstrap over seeds and test forms, paired across variants.

The seed t-intervals treat the 50 test forms as fixed; they are one sample of forms. Each run
record keeps per-form entity counts (scores.per_form: {form: {type: [tp, fp, fn]}}), so micro F1
can be recomputed on any resample of forms. One resample draws seeds with replacement (from
the seeds both variants have, for a difference) and forms with replacement, and scores every
variant on the same draw: F1 of a draw is the mean over its seeds of the micro F1 summed over
its forms. The interval is the percentile interval of `RESAMPLES` draws from a seeded numpy
generator (scipy.stats.bootstrap resamples one level of observations; this design has two, seeds
and forms crossed, so the draws are made here and only the percentiles are taken).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
SEED = 0
METHOD = (
    f"two-level percentile bootstrap: seeds and test forms resampled together with replacement, "
    f"the same draws for both sides of a difference; {RESAMPLES} draws, numpy generator seed {SEED}"
)

PerForm = Mapping[str, Mapping[str, Sequence[int]]]  # {form: {entity type: [tp, fp, fn]}}


def count_array(per_seed: Mapping[int, PerForm], seeds: Sequence[int], forms: Sequence[str]) -> np.ndarray:
    """(seeds, forms, 3) array of [tp, fp, fn] summed over entity types (micro F1 sums them)."""
    return np.array(
        [[np.sum([counts for counts in per_seed[s][f].values()], axis=0) for f in forms] for s in seeds], dtype=float
    ).reshape(len(seeds), len(forms), 3)


def micro_f1(totals: np.ndarray) -> np.ndarray:
    """F1 from [..., 3] totals of tp, fp, fn (0 where nothing was predicted or expected)."""
    tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def draws(arrays: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> list[np.ndarray]:
    """For each (seeds, forms, 3) array (all of the same shape, seeds aligned), the F1 of every draw."""
    n_seeds, n_forms = arrays[0].shape[:2]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_forms, np.full(n_forms, 1 / n_forms), size=resamples)  # forms drawn, as counts
    picked = rng.integers(0, n_seeds, size=(resamples, n_seeds))  # seeds drawn
    out = []
    for counts in arrays:
        per_seed = micro_f1(np.einsum("bf,sfk->bsk", weights, counts))  # (draws, seeds)
        out.append(np.take_along_axis(per_seed, picked, axis=1).mean(axis=1))
    return out


def interval(values: np.ndarray, estimate: float) -> dict:
    low, high = np.percentile(values, [2.5, 97.5])
    return {"mean": estimate, "ci95_low": float(low), "ci95_high": float(high), "method": METHOD}


def forms_of(per_seed: Mapping[Any, PerForm]) -> list[str] | None:
    """The forms every seed scored (None when they differ: not the same test split)."""
    sets = {tuple(sorted(p)) for p in per_seed.values()}
    return list(sets.pop()) if len(sets) == 1 else None


def f1_interval(per_seed: Mapping[int, PerForm], resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """Mean F1 over seeds with its bootstrap interval over seeds and forms; None without runs or
    with different test forms between seeds."""
    seeds = sorted(per_seed)
    forms = forms_of(per_seed) if seeds else None
    if not forms:
        return None
    counts = count_array(per_seed, seeds, forms)
    (values,) = draws([counts], resamples, seed)
    return interval(values, float(micro_f1(counts.sum(axis=1)).mean()))


def paired_difference(
    a: Mapping[int, PerForm], b: Mapping[int, PerForm], resamples: int = RESAMPLES, seed: int = SEED
) -> dict | None:
    """a - b in F1 over the seeds both have, with its paired bootstrap interval (the same seeds and
    forms drawn for both); None with no shared seed or different test forms."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    forms = forms_of({**{("a", s): a[s] for s in seeds}, **{("b", s): b[s] for s in seeds}})
    if not forms:
        return None
    mine, theirs = count_array(a, seeds, forms), count_array(b, seeds, forms)
    va, vb = draws([mine, theirs], resamples, seed)
    estimate = float(micro_f1(mine.sum(axis=1)).mean() - micro_f1(theirs.sum(axis=1)).mean())
    return {**interval(va - vb, estimate), "n_pairs": len(seeds), "mean_diff": estimate}
