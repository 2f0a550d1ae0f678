"""Human formats, one family for every table (metrics/summary.md, the stage's stdout, the PR report).

Scores are shown in percent with the half-width of their 95 % interval ("72.0 ± 5.0"),
differences in percentage points ("+2.0 [+0.1, +3.9], p=0.041 (Holm 0.12)"), counts with three significant
digits ("152 k"), durations in s / min / h ("5.2 min"), memory in MB / GB (10^6 / 10^9 bytes).
A missing value is "–" everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from layoutpeft.study.stats import half_width

DASH = "–"
LONG_LIST = 8


def count(n: float | None) -> str:
    """152000 -> "152 k", 1234567 -> "1.23 M", 950 -> "950"."""
    if n is None:
        return DASH
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)}"


def share(fraction: float | None) -> str:
    """0.0066 -> "0.66 %", 1.0 -> "100 %"."""
    if fraction is None:
        return DASH
    return f"{100 * fraction:.2g} %" if fraction < 0.1 else f"{100 * fraction:.0f} %"


def seconds(s: float | None) -> str:
    """45 -> "45 s", 312 -> "5.2 min", 9000 -> "2.5 h"."""
    if s is None:
        return DASH
    if abs(s) < 120:
        return f"{s:.0f} s"
    if abs(s) < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def megabytes(mb: float | None) -> str:
    """900 -> "900 MB", 1450 -> "1.45 GB", 12345 -> "12.3 GB" (MB = 10^6 bytes)."""
    if mb is None:
        return DASH
    return f"{mb / 1000:.3g} GB" if abs(mb) >= 1000 else f"{mb:.0f} MB"


def size(n_bytes: float | None) -> str:
    """A file size: 4620 -> "4.6 kB", 6302868 -> "6.3 MB", 97169118 -> "97.2 MB" (k, M, G = 10^3, 10^6, 10^9)."""
    if n_bytes is None:
        return DASH
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def percent(stat: Mapping | None, with_ci: bool = True) -> str:
    """A stats dict {mean, ci95_low, ci95_high} of a fraction: 0.72 ± 0.0497 -> "72.0 ± 5.0"."""
    if not stat or stat.get("mean") is None:
        return DASH
    half = half_width(stat)
    text = f"{100 * stat['mean']:.1f}"
    return f"{text} ± {100 * half:.1f}" if with_ci and half is not None else text


def p_value(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"


def delta(comparison: Mapping | None, with_ci: bool = True, with_p: bool = True) -> str:
    """A comparison dict (layoutpeft.study.stats) of fractions in points: "+2.0 [+0.1, +3.9], p=0.041"."""
    if not comparison or comparison.get("mean_diff") is None:
        return DASH
    text = f"{100 * comparison['mean_diff']:+.1f}"
    if with_ci and comparison.get("ci95_low") is not None:
        text += f" [{100 * comparison['ci95_low']:+.1f}, {100 * comparison['ci95_high']:+.1f}]"
    if not with_p:
        return text
    text += f", {p_value(comparison.get('p_value'))}"
    if "p_holm" in comparison:  # the family-wise corrected p every verdict uses (layoutpeft.summary.judge)
        text += f" (Holm {p_value(comparison['p_holm']).replace('p=', '').replace('p<', '<')})"
    return text


def seeds(entry: Mapping, n_expected: int) -> str:
    """ "3/3", or "2/3, missing: 1"."""
    text = f"{entry['n_seeds']}/{n_expected}"
    if entry.get("missing_seeds"):
        text += ", missing: " + ", ".join(str(s) for s in entry["missing_seeds"])
    return text


def missing_seeds(missing: Mapping[str, Sequence[int]]) -> str:
    """{'full': [1, 2], 'lora': [1]} -> 'full seeds 1, 2; lora seed 1'."""
    return "; ".join(f"{v} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" for v, seeds in missing.items())


def value(v: Any) -> str:
    """A params value as written in params.yaml: 0.0005, [query, value], true."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
    return str(v)


def change(old: Any, new: Any) -> str:
    """old → new, summarising long lists by what was added and removed."""
    if old is None:
        return f"(none) → {value(new)}"
    if new is None:
        return f"{value(old)} → (none)"
    if isinstance(old, list) and isinstance(new, list) and max(len(old), len(new)) > LONG_LIST:
        added = [v for v in new if v not in old]
        removed = [v for v in old if v not in new]
        parts = [f"{len(old)} → {len(new)} items"]
        if removed:
            parts.append("removed " + ", ".join(value(v) for v in removed))
        if added:
            parts.append("added " + ", ".join(value(v) for v in added))
        if not added and not removed:
            parts.append("reordered")
        return "; ".join(parts)
    return f"{value(old)} → {value(new)}"


def cost_change(pair: Sequence[float | None], fmt: Callable[[float | None], str]) -> str:
    """`base → head (+x %)` in the format `fmt`, or one value when both agree as shown."""
    old, new = pair
    if old is None and new is None:
        return DASH
    if old is None or new is None:
        return f"{fmt(old)} → {fmt(new)}"
    if fmt(old) == fmt(new):
        return fmt(new)
    rel = f" ({(new - old) / old * 100:+.0f} %)" if old else ""
    return f"{fmt(old)} → {fmt(new)}{rel}"
