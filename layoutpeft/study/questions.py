"""The seed study's own questions, answered from a study's summary where it ran their variants
(issue #29): LoRA's target matrices x rank, F1 against rank per method, QLoRA against LoRA in F1,
time and memory, and the soft-prompt length. summary.md ends with these sections; a study without
the variants a question needs gets no section for it (the reference study answers only the targets one).

Test entity F1 in %, mean ± 95 % t half-width over seeds. QLoRA - LoRA is paired over the seeds both
ran (layoutpeft.study.stats), Holm-corrected over the pairs of the table: the family is that question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from layoutpeft.study import formatting as fmt
from layoutpeft.study.plots import comparable_params, rank_rows, scaling_note
from layoutpeft.study.stats import holm, paired_comparison
from layoutpeft.train.variants import TARGET_SHORT

FFN = {"intermediate": "FFN in", "output": "FFN out"}


def targets_text(targets: Iterable[str]) -> str:
    """[query, value] -> "Wq, Wv" (the seed study's names), in the catalogue's order."""
    order = list(TARGET_SHORT)
    return ", ".join(FFN.get(t, f"W{TARGET_SHORT.get(t, t)}") for t in sorted(set(targets), key=order.index))


def _with_f1(summary: dict) -> dict[str, dict]:
    """{variant: its settings (a tuned lr is not a difference of definition)} for variants with F1."""
    out = {}
    for name, entry in summary["variants"].items():
        settings = comparable_params(entry)
        if entry.get("f1") and isinstance(settings, dict):
            out[name] = settings
    return out


def _groups(settings: dict[str, dict], axes: tuple[str, ...], methods: set[str] | None = None) -> list[list[str]]:
    """Variants whose settings differ only in `axes` (and in alpha where it follows r: alpha_2r's
    default), each group in the summary's order; groups with one member are left out."""
    groups: dict[str, list[str]] = {}
    for name, s in settings.items():
        if methods is not None and s.get("method") not in methods:
            continue
        if any(axis not in s for axis in axes):
            continue
        follows_r = "r" in axes and s.get("rank_scaling", "alpha_2r") == "alpha_2r" and s.get("alpha") == 2 * s["r"]
        key = json.dumps(
            {k: v for k, v in s.items() if k not in axes and not (k == "alpha" and follows_r)}, sort_keys=True, default=str
        )
        groups.setdefault(key, []).append(name)
    return [members for members in groups.values() if len(members) > 1]


def _grid(heading: str, note: str, first: list[str], columns: list, column_text, rows: list[tuple[list[str], dict]]) -> list[str]:
    """A markdown table: `first` label columns, then one column per value of `columns`; a missing cell is a dash."""
    lines = [f"### {heading}", "", note, "", "| " + " | ".join(first + [column_text(c) for c in columns]) + " |"]
    lines.append("|" + "---|" * len(first) + "---:|" * len(columns))
    lines += ["| " + " | ".join(labels + [cells.get(c, fmt.DASH) for c in columns]) + " |" for labels, cells in rows]
    return lines + [""]


def _cell(entry: dict) -> str:
    own = entry.get("method_params")
    return fmt.percent(entry["f1"]) + (f" ({fmt.count(own)})" if own is not None else "")


def targets_section(summary: dict) -> list[str]:
    """LoRA's target sets (rows) x rank (columns): the seed study's ablation table."""
    settings = _with_f1(summary)
    lines: list[str] = []
    for members in _groups(settings, ("targets", "r"), {"lora"}):
        cells: dict[str, dict] = {}  # {target set: {r: cell}}, target sets in the summary's order
        for n in members:
            cells.setdefault(targets_text(settings[n]["targets"]), {})[settings[n]["r"]] = _cell(summary["variants"][n])
        if len(cells) < 2:
            continue
        lines += _grid(
            "LoRA: target matrices x rank",
            f"Rank convention: {scaling_note(settings[members[0]])}.",
            ["targets"],
            sorted({settings[n]["r"] for n in members}),
            lambda r: f"r {r:g}",
            [([label], row) for label, row in cells.items()],
        )
    return lines


def rank_section(summary: dict) -> list[str]:
    """F1 against rank for every method swept over r (LoRA, QLoRA, VeRA, ...), as plotted."""
    rows = rank_rows(summary)
    if not rows:
        return []
    ranks = sorted({row[2] for row in rows})
    series: dict[str, dict[float, str]] = {}
    notes: dict[str, str] = {}
    for label, name, r, *_, scaling in rows:
        series.setdefault(label, {})[r] = _cell(summary["variants"][name])
        notes[label] = scaling
    return _grid(
        "F1 against rank",
        "The plot: `plots/f1_vs_rank.png`.",
        ["series", "scale"],
        ranks,
        lambda r: f"r {r:g}",
        [([label, notes[label]], cells) for label, cells in series.items()],
    )


def qlora_pairs(summary: dict) -> list[tuple[str, str]]:
    """(lora, qlora) variants with the same settings but the method."""
    settings = _with_f1(summary)
    pairs = []
    for group in _groups(settings, ("method",), {"lora", "qlora"}):
        lora = [n for n in group if settings[n]["method"] == "lora"]
        qlora = [n for n in group if settings[n]["method"] == "qlora"]
        pairs += [(a, b) for a in lora for b in qlora]
    return sorted(pairs, key=lambda p: (settings[p[0]].get("r", 0), p))


def _per_seed(entry: dict) -> dict:
    return entry["f1"].get("per_seed") or {}


def _quiet(entry: dict, key: str) -> str:
    value = (entry.get("quiet_costs") or {}).get(key)
    return fmt.size(value) if value is not None else fmt.DASH


def qlora_section(summary: dict) -> list[str]:
    """QLoRA against LoRA at each shared setting: F1, its paired difference, train time, memory."""
    pairs = qlora_pairs(summary)
    if not pairs:
        return []
    variants = summary["variants"]
    compared = {f"{b} - {a}": paired_comparison(_per_seed(variants[b]), _per_seed(variants[a])) for a, b in pairs}
    adjusted = holm({k: c["p_value"] if c else None for k, c in compared.items()})
    for key, comparison in compared.items():
        if comparison is not None:
            comparison["p_holm"] = adjusted[key]
    lines = [
        "### QLoRA against LoRA",
        "",
        "Δ = QLoRA - LoRA in points, paired over seeds [95 % CI], p (Holm over these pairs).",
        "Train time and peak memory: means over seeds as recorded in each run (the memory's kind in",
        "summary.md); frozen weights and step tensors: the quiet benchmark's one-step measurement",
        "(`benchmarks/quiet_costs.py`; weights + gradients + AdamW state + saved activations), where the study has it.",
        "",
        "| r | LoRA F1 | QLoRA F1 | Δ F1 | train time LoRA / QLoRA | peak memory LoRA / QLoRA "
        "| weights LoRA / QLoRA | step tensors LoRA / QLoRA |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for a, b in pairs:
        ea, eb = variants[a], variants[b]
        r = (comparable_params(ea) or {}).get("r")
        time_a, time_b = (fmt.seconds(_mean(e.get("train_time_s"))) for e in (ea, eb))
        mem_a, mem_b = (fmt.megabytes(_mean(e.get("peak_memory_mb"))) for e in (ea, eb))
        lines.append(
            f"| {fmt.value(r)} | {fmt.percent(ea['f1'])} | {fmt.percent(eb['f1'])} | {fmt.delta(compared[f'{b} - {a}'])} "
            f"| {time_a} / {time_b} | {mem_a} / {mem_b} "
            f"| {_quiet(ea, 'weights_bytes')} / {_quiet(eb, 'weights_bytes')} "
            f"| {_quiet(ea, 'tensor_peak_bytes')} / {_quiet(eb, 'tensor_peak_bytes')} |"
        )
    return lines + [""]


def _mean(stat: dict | None) -> float | None:
    return stat["mean"] if stat else None


def prompt_length_section(summary: dict) -> list[str]:
    """Soft prompts (prompt, prefix and P-tuning) over their number of virtual tokens."""
    settings = _with_f1(summary)
    groups = _groups(settings, ("virtual_tokens",))
    if not groups:
        return []
    lengths = sorted({settings[n]["virtual_tokens"] for g in groups for n in g})
    rows = [
        ([str(settings[group[0]]["method"])], {settings[n]["virtual_tokens"]: _cell(summary["variants"][n]) for n in group})
        for group in groups
    ]
    return _grid(
        "Soft-prompt length",
        "F1 against the number of virtual tokens (prompt tuning's take input positions, prefixes do not).",
        ["method"],
        lengths,
        lambda v: f"{v} tokens",
        rows,
    )


def markdown(summary: dict) -> str:
    """The sections this study can answer, under one heading; "" when it can answer none."""
    body = targets_section(summary) + rank_section(summary) + qlora_section(summary) + prompt_length_section(summary)
    if not body:
        return ""
    intro = (
        "Each variant at its own lr (the table above). Test entity F1 in %, mean ± 95 % t half-width over "
        "seeds, the method's own trainable weights in brackets."
    )
    return "\n".join(["## The seed study's questions", "", intro, "", *body])
