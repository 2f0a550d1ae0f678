"""What a study says a user should pick: the question layoutpeft exists to answer, in a few lines.

From summary.json alone: the variant with the highest test F1; the best parameter-efficient one
(trainable share below 100 %) and how far it trails; the other parameter-efficient variants these
seeds cannot tell apart from it (the paired 95 % interval of the difference includes 0: with 3 seeds
that is weak evidence of equality, and the text says "not distinguishable", never "equal"); and
the Pareto front of F1 against trainable parameters, cheapest first.
"""
from __future__ import annotations

from layoutpeft.study import formatting as fmt
from layoutpeft.study.stats import paired_comparison, pareto_flags


def scored(summary: dict) -> dict[str, dict]:
    """The variants with at least one scored run."""
    return {name: e for name, e in summary["variants"].items() if (e.get("f1") or {}).get("mean") is not None}


def describe(name: str, entry: dict) -> str:
    costs = f"{fmt.count(entry.get('trainable_params'))} trainable parameters"
    if entry.get("trainable_share") is not None:
        costs += f", {fmt.share(entry['trainable_share'])}"
    if entry.get("saved_bytes") is not None:
        costs += f"; stored: {fmt.size(entry['saved_bytes'])}"
    return f"**{name}** {fmt.percent(entry['f1'])} ({costs})"


def difference(summary: dict, a: str, b: str) -> dict | None:
    """a - b in test F1, paired over the seeds both have (the stored comparison when b is the reference)."""
    variants = summary["variants"]
    if b == summary.get("reference") and variants[a].get("vs_reference"):
        return variants[a]["vs_reference"]
    return paired_comparison(variants[a]["f1"].get("per_seed") or {}, variants[b]["f1"].get("per_seed") or {})


def which_to_pick(summary: dict) -> list[str]:
    """Markdown lines (empty when no variant has a score)."""
    found = scored(summary)
    if not found:
        return []
    by_f1 = sorted(found, key=lambda n: -found[n]["f1"]["mean"])
    best = by_f1[0]
    efficient = [n for n in by_f1 if found[n].get("trainable_share") is not None and found[n]["trainable_share"] < 1.0]
    lines = ["**Which to pick** (test F1, mean ± 95 % CI over seeds; differences paired over shared seeds):", ""]
    if efficient and efficient[0] == best:
        lines.append(f"- Highest F1, and parameter-efficient: {describe(best, found[best])}.")
    else:
        lines.append(f"- Highest F1: {describe(best, found[best])}.")
    if efficient:
        top = efficient[0]
        if top != best:
            lines.append(f"- Best parameter-efficient: {describe(top, found[top])}; F1 points vs {best}: "
                         f"{fmt.delta(difference(summary, top, best))}.")
        close, unknown = [], []
        for other in efficient[1:]:
            diff = difference(summary, other, top)
            if not diff or diff.get("ci95_low") is None:
                unknown.append(other)
            elif diff["ci95_low"] <= 0 <= diff["ci95_high"]:
                close.append(f"{other} {fmt.delta(diff)}")
        if close:
            lines.append(f"- Not distinguishable from {top} with these seeds (the paired 95 % CI of the difference "
                         f"in F1 points includes 0; not the same as equal): {'; '.join(close)}.")
        if unknown:
            lines.append(f"- Too few shared seeds to compare with {top}: {', '.join(unknown)}.")
    points = [n for n in by_f1 if found[n].get("trainable_params")]
    flags = pareto_flags([(found[n]["trainable_params"], found[n]["f1"]["mean"]) for n in points])
    front = sorted((n for n, on in zip(points, flags, strict=True) if on), key=lambda n: found[n]["trainable_params"])
    if len(front) > 1:
        lines.append("- Pareto front of F1 against trainable parameters, cheapest first: "
                     + " → ".join(f"{n} ({fmt.count(found[n]['trainable_params'])}, "
                                  f"{fmt.percent(found[n]['f1'], with_ci=False)})" for n in front) + ".")
    return lines + [""]
