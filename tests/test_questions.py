"""summary.md's answers to the seed study's questions (layoutpeft/study/questions.py), on small
summaries built here, and on the committed reference study."""

from __future__ import annotations

import json
from pathlib import Path

from scipy import stats as sps

from layoutpeft.study import formatting as fmt
from layoutpeft.study import questions
from layoutpeft.study.stats import seed_stats

ROOT = Path(__file__).resolve().parents[1]
QKVO = ["query", "key", "value", "attention_output"]


def entry(params: dict, f1s: list[float], own: int = 1000, time_s: float = 100.0, memory_mb: float = 900.0, quiet=None) -> dict:
    f1 = seed_stats(f1s)
    assert f1 is not None
    f1["per_seed"] = {str(s): v for s, v in enumerate(f1s)}
    return {
        "method": params["method"],
        "params": {**params, "lr": 1e-3, "lr_grid": [1e-3]},
        "lr_tuning": {"tuned": True},
        "f1": f1,
        "method_params": own,
        "train_time_s": seed_stats([time_s] * len(f1s)),
        "peak_memory_mb": seed_stats([memory_mb] * len(f1s)),
        "quiet_costs": quiet,
    }


def lora(r: int = 16, targets=QKVO, method: str = "lora") -> dict:
    return {"method": method, "r": r, "alpha": 2 * r, "dropout": 0.1, "targets": targets, "rank_scaling": "alpha_2r"}


def table(text: str, heading: str) -> list[list[str]]:
    """The rows of the markdown table under `### heading`, cells stripped, header first."""
    block = text.split(f"### {heading}\n", 1)[1].split("\n\n###", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows if not set(row) <= set("|-: ")]


def test_targets_by_rank_in_the_seed_studys_shape():
    summary = {
        "variants": {
            "lora": entry(lora(), [0.50, 0.52, 0.54], own=294912),
            "lora_qv": entry(lora(targets=["value", "query"]), [0.40, 0.42, 0.44], own=147456),
            "lora_r4": entry(lora(r=4), [0.45, 0.46, 0.47], own=73728),
            "vera": entry({"method": "vera", "r": 256, "targets": QKVO}, [0.3, 0.31, 0.32]),
        }
    }
    rows = table(questions.markdown(summary), "LoRA: target matrices x rank")
    assert rows[0] == ["targets", "r 4", "r 16"]
    by_targets = {row[0]: row[1:] for row in rows[1:]}
    assert set(by_targets) == {"Wq, Wk, Wv, Wo", "Wq, Wv"}  # the catalogue's order, whatever the params' order
    assert by_targets["Wq, Wv"][0] == "–"  # not run at r 4
    half = 100 * (seed_stats([0.40, 0.42, 0.44])["ci95_high"] - 0.42)
    assert by_targets["Wq, Wv"][1] == f"42.0 ± {half:.1f} (147 k)"
    assert by_targets["Wq, Wk, Wv, Wo"][0].startswith("46.0 ± ")


def test_rank_series_per_method_and_qlora_against_lora_paired_and_corrected():
    lo16, q16, lo4, q4 = [0.50, 0.52, 0.55], [0.49, 0.50, 0.54], [0.45, 0.46, 0.47], [0.40, 0.44, 0.47]
    quiet_lora = {"weights_bytes": 100e6, "tensor_peak_bytes": 900e6}
    quiet_qlora = {"weights_bytes": 30e6, "tensor_peak_bytes": 820e6}
    summary = {
        "variants": {
            "lora": entry(lora(), lo16, time_s=100, quiet=quiet_lora),
            "qlora": entry(lora(method="qlora"), q16, time_s=130, quiet=quiet_qlora),
            "lora_r4": entry(lora(r=4), lo4),
            "qlora_r4": entry(lora(r=4, method="qlora"), q4),
            "vera_r16": entry({"method": "vera", "r": 16, "targets": QKVO}, [0.30, 0.31, 0.32]),
            "vera": entry({"method": "vera", "r": 256, "targets": QKVO}, [0.33, 0.34, 0.35]),
        }
    }
    text = questions.markdown(summary)
    ranks = table(text, "F1 against rank")
    assert ranks[0] == ["series", "scale", "r 4", "r 16", "r 256"]
    assert {row[0]: row[2:] for row in ranks[1:]}["vera"][0] == "–"
    assert {row[0] for row in ranks[1:]} == {"lora", "qlora", "vera"}
    pairs = table(text, "QLoRA against LoRA")
    assert [row[0] for row in pairs[1:]] == ["4", "16"]
    r16 = pairs[2]
    p = sps.ttest_rel(q16, lo16).pvalue
    p4 = sps.ttest_rel(q4, lo4).pvalue
    holm16 = min(1.0, 2 * p) if p <= p4 else min(1.0, max(2 * p4, p))  # Holm over the two pairs
    diff = 100 * sum(q - lo for q, lo in zip(q16, lo16, strict=True)) / 3
    assert r16[3].startswith(f"{diff:+.1f} [")
    assert r16[3].endswith(f"{fmt.p_value(p)} (Holm {fmt.p_value(holm16).replace('p=', '').replace('p<', '<')})")
    assert r16[4] == f"{fmt.seconds(100)} / {fmt.seconds(130)}"
    assert r16[6] == "100 MB / 30 MB" and r16[7] == "900 MB / 820 MB"
    assert pairs[1][6] == "– / –"  # no quiet measurement of r 4


def test_prompt_length_rows_per_method():
    summary = {
        "variants": {
            "prompt_tuning_vt5": entry({"method": "prompt_tuning", "virtual_tokens": 5}, [0.2, 0.21, 0.22]),
            "prompt_tuning": entry({"method": "prompt_tuning", "virtual_tokens": 20}, [0.25, 0.26, 0.27]),
            "prefix_tuning_vt5": entry({"method": "prefix_tuning", "virtual_tokens": 5}, [0.3, 0.31, 0.32]),
            "prefix_tuning": entry({"method": "prefix_tuning", "virtual_tokens": 20}, [0.35, 0.36, 0.37]),
            "prefix_tuning_vt50": entry({"method": "prefix_tuning", "virtual_tokens": 50}, [0.38, 0.39, 0.4]),
        }
    }
    rows = table(questions.markdown(summary), "Soft-prompt length")
    assert rows[0] == ["method", "5 tokens", "20 tokens", "50 tokens"]
    by_method = {row[0]: row[1:] for row in rows[1:]}
    assert by_method["prompt_tuning"][2] == "–" and by_method["prefix_tuning"][2].startswith("39.0 ± ")


def test_a_study_without_those_variants_gets_no_section():
    summary = {"variants": {"full": entry({"method": "full"}, [0.5, 0.52]), "lora": entry(lora(), [0.48, 0.5])}}
    assert questions.markdown(summary) == ""


def test_the_reference_study_answers_only_its_two_lora_target_sets():
    summary = json.loads((ROOT / "results" / "reference-minilm" / "summary.json").read_text())
    text = questions.markdown(summary)
    assert [line for line in text.splitlines() if line.startswith("### ")] == ["### LoRA: target matrices x rank"]
    rows = table(text, "LoRA: target matrices x rank")
    assert rows[0] == ["targets", "r 16"]
    assert sorted(row[0] for row in rows[1:]) == ["Wq, Wk, Wv, Wo", "Wq, Wk, Wv, Wo, FFN in, FFN out"]
