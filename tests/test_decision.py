"""layoutpeft.study.decision: the "which to pick" lines of the summary, from hand-made summaries."""

from __future__ import annotations

from layoutpeft.study.decision import which_to_pick
from layoutpeft.study.stats import paired_comparison, seed_stats


def entry(per_seed: dict[int, float], trainable: int, total: int = 1_000_000, saved: int | None = None) -> dict:
    f1 = seed_stats(per_seed.values())
    return {
        "f1": {**f1, "per_seed": {str(s): v for s, v in per_seed.items()}},
        "trainable_params": trainable,
        "trainable_share": trainable / total,
        "saved_bytes": saved,
    }


def summary(reference: str = "full", **variants: dict) -> dict:
    for e in variants.values():
        ref = variants.get(reference)
        e["vs_reference"] = paired_comparison(e["f1"]["per_seed"], ref["f1"]["per_seed"]) if ref and e is not ref else None
    return {"reference": reference, "variants": variants}


def test_highest_f1_best_efficient_method_its_close_rivals_and_the_front():
    lines = which_to_pick(
        summary(
            full=entry({0: 0.50, 1: 0.52, 2: 0.51}, 1_000_000, saved=4_000_000),
            lora=entry({0: 0.46, 1: 0.47, 2: 0.45}, 60_000, saved=240_000),
            loha=entry({0: 0.455, 1: 0.47, 2: 0.452}, 80_000),  # within lora's noise
            head=entry({0: 0.20, 1: 0.21, 2: 0.22}, 2_000),
        )
    )  # far below it
    text = "\n".join(lines)
    assert "- Highest F1: **full** 51.0 ± 2.5 (1 M trainable parameters, 100 %; stored: 4 MB)." in lines
    assert lines[3].startswith(
        "- Best parameter-efficient: **lora** 46.0 ± 2.5 (60 k trainable parameters, 6 %; "
        "stored: 240 kB); F1 points vs full: -5.0 ["
    )
    assert "Not distinguishable from lora" in text and "loha -0.1 [" in text and "head" not in lines[4]
    assert lines[5] == (
        "- Pareto front of F1 against trainable parameters, cheapest first: head (2 k, 21.0) → "
        "lora (60 k, 46.0) → full (1 M, 51.0)."
    )  # loha costs more than lora for no more F1


def test_a_parameter_efficient_winner_is_said_so_once():
    lines = which_to_pick(summary(full=entry({0: 0.40, 1: 0.41}, 1_000_000), lora=entry({0: 0.45, 1: 0.47}, 60_000)))
    assert lines[2].startswith("- Highest F1, and parameter-efficient: **lora** 46.0")
    assert not any(line.startswith("- Best parameter-efficient") for line in lines)


def test_too_few_shared_seeds_are_named_not_compared():
    lines = which_to_pick(
        summary(full=entry({0: 0.5, 1: 0.5}, 1_000_000), lora=entry({0: 0.45, 1: 0.46}, 60_000), ia3=entry({2: 0.44}, 5_000))
    )
    assert "- Too few shared seeds to compare with lora: ia3." in lines
    assert not any("Not distinguishable" in line for line in lines)


def test_nothing_scored_says_nothing():
    assert which_to_pick({"reference": "full", "variants": {"full": {"f1": None}}}) == []
