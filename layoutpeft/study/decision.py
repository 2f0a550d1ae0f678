"""What a study says a user should pick: the question layoutpeft exists to answer, in a few lines.

From summary.json alone: the variant with the highest test F1; the best parameter-efficient one
and how far it trails; the other parameter-efficient variants these seeds cannot tell apart from it
(Holm-adjusted p >= 0.05 over that family of comparisons: with 3 seeds weak evidence of equality,
so the text says "not distinguishable", never "equal", unless an equivalence margin was tested);
the Pareto front of F1 against the method's own trainable weights (not the head and new 2-D tables
every method trains alike), cheapest first; and, per undecided comparison with the reference, the
seeds that 80 % power would take.
"""

from __future__ import annotations

from layoutpeft.study import formatting as fmt
from layoutpeft.study.stats import ALPHA, holm, paired_comparison, pareto_flags


def scored(summary: dict) -> dict[str, dict]:
    """The variants with at least one scored run."""
    return {name: e for name, e in summary["variants"].items() if (e.get("f1") or {}).get("mean") is not None}


def own_weights(entry: dict) -> float | None:
    """The method's own trainable weights; the whole trainable count for records without the split."""
    return entry.get("method_params") if entry.get("method_params") is not None else entry.get("trainable_params")


def has_split(found: dict[str, dict]) -> bool:
    return all(e.get("method_params") is not None for e in found.values())


def efficient(entry: dict) -> bool:
    share = entry.get("method_share") if entry.get("method_share") is not None else entry.get("trainable_share")
    return entry.get("method") != "full" and share is not None and share < 1.0


def describe(name: str, entry: dict) -> str:
    if entry.get("method") == "full":
        costs = f"all {fmt.count(entry.get('trainable_params'))} weights trained"
    elif entry.get("method_params") is not None:
        costs = f"{fmt.count(entry['method_params'])} own trainable weights"
        if entry.get("method_share") is not None:
            costs += f", {fmt.share(entry['method_share'])} of full fine-tuning's"
    else:
        costs = f"{fmt.count(entry.get('trainable_params'))} trainable parameters"
        if entry.get("trainable_share") is not None:
            costs += f", {fmt.share(entry['trainable_share'])}"
    if entry.get("method_bytes") is not None and entry.get("method") != "full":
        costs += f"; stored: adapter {fmt.size(entry['method_bytes'])}, {fmt.size(entry.get('saved_bytes'))} to ship"
    elif entry.get("saved_bytes") is not None:
        costs += f"; stored: {fmt.size(entry['saved_bytes'])}"
    return f"**{name}** {fmt.percent(entry['f1'])} ({costs})"


def difference(summary: dict, a: str, b: str) -> dict | None:
    """a - b in test F1, paired over the seeds both have (the stored comparison when b is the reference)."""
    variants = summary["variants"]
    if b == summary.get("reference") and variants[a].get("vs_reference"):
        return variants[a]["vs_reference"]
    return paired_comparison(variants[a]["f1"].get("per_seed") or {}, variants[b]["f1"].get("per_seed") or {})


def versus(summary: dict, others: list[str], top: str) -> dict[str, dict | None]:
    """{other: other - top}, with Holm-adjusted p over this family of comparisons."""
    diffs = {o: difference(summary, o, top) for o in others}
    adjusted = holm({o: (d or {}).get("p_value") for o, d in diffs.items()})
    return {o: None if d is None else {**d, "p_holm": adjusted[o]} for o, d in diffs.items()}


def which_to_pick(summary: dict) -> list[str]:
    """Markdown lines (empty when no variant has a score)."""
    found = scored(summary)
    if not found:
        return []
    by_f1 = sorted(found, key=lambda n: -found[n]["f1"]["mean"])
    best = by_f1[0]
    cheap = [n for n in by_f1 if efficient(found[n])]
    lines = [
        "**Which to pick** (test F1, mean ± 95 % CI over seeds; differences paired over shared seeds, "
        f"p raw and Holm-adjusted within each family of comparisons; a verdict needs Holm p < {ALPHA:g}):",
        "",
    ]
    if cheap and cheap[0] == best:
        lines.append(f"- Highest F1, and parameter-efficient: {describe(best, found[best])}.")
    else:
        lines.append(f"- Highest F1: {describe(best, found[best])}.")
    if cheap:
        top = cheap[0]
        if top != best:
            diff = difference(summary, top, best)
            lines.append(
                f"- Best parameter-efficient: {describe(top, found[top])}; F1 points vs {best}: "
                f"{fmt.delta(diff)}{verdict_text(diff, best)}."
            )
        close, unknown = [], []
        for other, diff in versus(summary, cheap[1:], top).items():
            if not diff or diff.get("p_holm") is None:
                unknown.append(other)
            elif diff["p_holm"] >= ALPHA:
                close.append(f"{other} {fmt.delta(diff)}")
        if close:
            lines.append(
                f"- Not distinguishable from {top} with these seeds (Holm-adjusted p ≥ {ALPHA:g} over the "
                f"{len(cheap) - 1} comparisons with {top}; not the same as equal): {'; '.join(close)}."
            )
        if unknown:
            lines.append(f"- Too few shared seeds to compare with {top}: {', '.join(unknown)}.")
    weights = {n: w for n in by_f1 if (w := own_weights(found[n])) is not None}
    flags = pareto_flags([(weights[n], found[n]["f1"]["mean"]) for n in weights])
    front = sorted((n for n, on in zip(weights, flags, strict=True) if on), key=lambda n: weights[n])
    if len(front) > 1:
        basis = (
            "the method's own trainable weights (the head and new 2-D tables every method trains are left out)"
            if has_split(found)
            else "trainable parameters"
        )
        lines.append(
            f"- Pareto front of F1 against {basis}, cheapest first: "
            + " → ".join(f"{n} ({fmt.count(own_weights(found[n]))}, {fmt.percent(found[n]['f1'], with_ci=False)})" for n in front)
            + "."
        )
    return lines + [""] + power_lines(summary)


def verdict_text(comparison: dict | None, reference: str) -> str:
    verdict = (comparison or {}).get("verdict")
    if verdict == "differs":
        return f": differs from {reference} after Holm's correction"
    if verdict == "equivalent":
        margin = ((comparison or {}).get("equivalence") or {}).get("margin_points")
        return f": equivalent to {reference} within ±{margin:g} points (two one-sided tests, Holm-adjusted)"
    if verdict == "undecided":
        return f": not shown to differ from {reference} after Holm's correction (see the power line)"
    return ""


def power_lines(summary: dict) -> list[str]:
    """One line per comparison with the reference that is undecided: the seeds 80 % power would take."""
    reference = summary.get("reference")
    lines = []
    for name, e in summary["variants"].items():
        vs = e.get("vs_reference") or {}
        power = vs.get("power")
        if vs.get("verdict") != "undecided" or not power:
            continue
        needed = power["seeds_needed"]
        corrected = power.get("seeds_needed_corrected")
        lines.append(
            f"- {name} vs {reference}: {100 * power['mean_diff']:+.2f} points, paired SD "
            f"{100 * power['sd_diff']:.2f} over {power['n_pairs']} seeds: "
            f"{'?' if power['power'] is None else format(power['power'], '.0%')} power to detect "
            f"that difference (α {power['alpha']:g}, paired t); {power['target_power']:.0%} power takes "
            f"{needed if needed is not None else '?'} seeds"
            + (
                f" ({corrected} at α {power['alpha']:g}/{power['family']}, the Bonferroni bound of Holm's correction)"
                if corrected is not None
                else ""
            )
            + "."
        )
    if not lines:
        return []
    return [
        "**Undecided comparisons: seeds needed** (at the observed difference and paired SD; "
        "add seeds to these variants only with `study.extra_runs`):",
        "",
        *lines,
        "",
    ]
