"""The statistics of a seed study, and the only place that computes any (aggregate and report use it).

- `seed_stats`: mean, std and 95 % t-interval over seeds;
- `paired_comparison`: difference of two sets of runs over the seeds both have (paired t);
- `welch_comparison` / `welch_interval`: difference of two means from (mean, std, n) alone (Welch t),
  for when the runs cannot be paired;
- `holm`: Holm's family-wise correction of a set of p-values (statsmodels' multipletests);
- `equivalence`: two one-sided paired t-tests against a margin (statsmodels' ttost_paired);
- `power_line`: the power a paired comparison had for its observed difference, and the seeds that
  80 % would take at its observed paired SD (statsmodels' TTestPower);
- `pareto_flags`: which (cost, score) points no other point beats.

A comparison is a dict {test, n_pairs, mean_diff, ci95_low, ci95_high, p_value}; CI and p are
None where they are undefined (one value, no spread), never NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from scipy import stats as sps

PAIRED = "paired t"
WELCH = "Welch t"
ALPHA = 0.05
TARGET_POWER = 0.8


Seed = TypeVar("Seed", int, str, "int | str")  # a seed key: int, or str where a summary kept it as text


def t_quantile(df: float, level: float = 0.95) -> float:
    return float(sps.t.ppf(0.5 + level / 2, df))


def t_halfwidth(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the t-interval for a mean of n values with sample std `std`."""
    return t_quantile(n - 1, level) * std / math.sqrt(n)


def seed_stats(values: Iterable[float | None]) -> dict | None:
    """{mean, std, ci95_low, ci95_high} over the non-null values; std and CI null with one value;
    None with no value."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None
    mean = math.fsum(xs) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95_low": None, "ci95_high": None}
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_halfwidth(std, n)
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def half_width(stat: Mapping | None) -> float | None:
    """Half of a stats dict's 95 % interval; None without one."""
    if not stat or stat.get("ci95_high") is None or stat.get("ci95_low") is None:
        return None
    return (stat["ci95_high"] - stat["ci95_low"]) / 2


def _finite(p: float) -> float | None:
    return p if math.isfinite(p) else None


def paired_comparison(a: Mapping[Seed, float], b: Mapping[Seed, float]) -> dict | None:
    """a - b over the seeds both have: {test, n_pairs, mean_diff, ci95_low, ci95_high, p_value}.

    CI and p are None with one pair; p is None when every difference is the same (the t statistic
    is undefined: scipy answers nan or, in recent versions, inf with p = 0, neither a p-value).
    None with no shared seed."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    xs, ys = [a[s] for s in shared], [b[s] for s in shared]
    diffs = [x - y for x, y in zip(xs, ys, strict=True)]
    diff = seed_stats(diffs)
    assert diff is not None  # at least one shared seed
    p_value = None
    if len(shared) >= 2 and max(diffs) - min(diffs) > 1e-12 * max(1.0, abs(diff["mean"])):
        p_value = _finite(float(sps.ttest_rel(xs, ys).pvalue))
    return {
        "test": PAIRED,
        "n_pairs": len(shared),
        "mean_diff": diff["mean"],
        "ci95_low": diff["ci95_low"],
        "ci95_high": diff["ci95_high"],
        "p_value": p_value,
    }


def welch_interval(
    mean_a: float, std_a: float | None, n_a: int, mean_b: float, std_b: float | None, n_b: int, level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """(b - a, low, high): Welch's t-interval for the difference of two independent means.

    low/high are None when either side has fewer than two values (no std). With both stds zero
    the interval collapses onto the difference."""
    diff = mean_b - mean_a
    if std_a is None or std_b is None or n_a < 2 or n_b < 2:
        return diff, None, None
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va**2 / (n_a - 1) if va else 0.0) + (vb**2 / (n_b - 1) if vb else 0.0))
    half = t_quantile(df, level) * se
    return diff, diff - half, diff + half


def welch_comparison(a: Mapping, n_a: int, b: Mapping, n_b: int) -> dict:
    """b - a from two stats dicts ({mean, std, ...}) and their counts, as a comparison dict
    (n_pairs is None: nothing is paired)."""
    diff, low, high = welch_interval(a["mean"], a.get("std"), n_a, b["mean"], b.get("std"), n_b)
    p_value = None
    if low is not None and low != high:
        p_value = _finite(
            float(sps.ttest_ind_from_stats(b["mean"], b["std"], n_b, a["mean"], a["std"], n_a, equal_var=False).pvalue)
        )
    return {"test": WELCH, "n_pairs": None, "mean_diff": diff, "ci95_low": low, "ci95_high": high, "p_value": p_value}


def holm(p_values: Mapping[str, float | None], alpha: float = ALPHA) -> dict[str, float | None]:
    """{name: Holm-adjusted p} over the names with a p-value (None stays None): the family is every
    comparison given, so a variant's adjusted p depends on how many others were compared."""
    from statsmodels.stats.multitest import multipletests

    named = [(name, p) for name, p in p_values.items() if p is not None]
    adjusted = dict.fromkeys(p_values)
    if named:
        _, corrected, _, _ = multipletests([p for _, p in named], alpha=alpha, method="holm")
        adjusted.update({name: float(p) for (name, _), p in zip(named, corrected, strict=True)})
    return adjusted


def _shared(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def equivalence(a: Mapping[int, float], b: Mapping[int, float], margin: float, alpha: float = ALPHA) -> dict | None:
    """Two one-sided paired t-tests (TOST) that |a - b| < margin over the shared seeds:
    {margin, p_value, equivalent}; p is the larger of the two one-sided p-values. None with fewer
    than two pairs or no spread (no t statistic)."""
    from statsmodels.stats.weightstats import ttost_paired

    xs, ys = _shared(a, b)
    diffs = [x - y for x, y in zip(xs, ys, strict=True)]
    if len(diffs) < 2 or max(diffs) - min(diffs) <= 1e-12:
        return None
    p, _, _ = ttost_paired(_array(xs), _array(ys), -margin, margin)
    p = _finite(float(p))
    return {"margin": margin, "p_value": p, "equivalent": p is not None and p < alpha}


def _array(values):
    import numpy as np

    return np.asarray(values, dtype=float)


def power_line(
    a: Mapping[int, float], b: Mapping[int, float], family: int = 1, alpha: float = ALPHA, target: float = TARGET_POWER
) -> dict | None:
    """For a paired comparison a - b: its observed mean difference and paired SD, the power the
    study's n pairs had to detect that difference at `alpha` (two-sided paired t), and the number
    of seeds (pairs) that `target` power would take, at `alpha` and at alpha / family (the
    Bonferroni bound, which Holm never needs more than). None with fewer than two pairs or no spread."""
    from statsmodels.stats.power import TTestPower

    xs, ys = _shared(a, b)
    diffs = [x - y for x, y in zip(xs, ys, strict=True)]
    stats = seed_stats(diffs)
    if stats is None or stats["std"] is None or stats["std"] <= 0 or stats["mean"] == 0:
        return None
    effect = abs(stats["mean"]) / stats["std"]
    analysis = TTestPower()

    def seeds_needed(level: float) -> int | None:
        at_two = float(analysis.power(effect_size=effect, nobs=2, alpha=level))
        if not math.isfinite(at_two) or at_two >= target:  # nan: the noncentral t overflows at huge effects
            return 2  # the fewest pairs a t-test takes (the solver finds no root below)
        with warnings.catch_warnings():  # no root (a tiny effect): statsmodels warns and answers nan, kept as None
            warnings.simplefilter("ignore")
            n = float(analysis.solve_power(effect_size=effect, alpha=level, power=target, alternative="two-sided"))
        return math.ceil(n) if math.isfinite(n) else None

    power = float(analysis.power(effect_size=effect, nobs=len(diffs), alpha=alpha))
    return {
        "n_pairs": len(diffs),
        "mean_diff": stats["mean"],
        "sd_diff": stats["std"],
        "effect_size": effect,
        "alpha": alpha,
        "power": power if math.isfinite(power) else None,
        "target_power": target,
        "seeds_needed": seeds_needed(alpha),
        "family": family,
        "seeds_needed_corrected": seeds_needed(alpha / family) if family > 1 else None,
    }


def pareto_flags(points: Sequence[tuple[float, float]]) -> list[bool]:
    """points = [(cost, score)]: True where no other point has <= cost and >= score with one of
    them strictly better."""
    flags = []
    for i, (cost_i, score_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and score_j >= score_i and (cost_j < cost_i or score_j > score_i)
            for j, (cost_j, score_j) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags
