"""Checks of the real FUNSD run (download + tokenize) against the counts in /work/shared/NOTES.md.

Usage: python .ci/check_real_data.py metrics/data.json data/tokenized
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXPECTED = {
    # (train + validation, test)
    "documents": (149, 50),
    "words": (21_888, 8_707),  # non-empty words
    "words_raw": (22_512, 8_973),  # every word of the annotations
    "entities": (7_411, 2_332),
}


def main(report_path: str, tokenized: str) -> None:
    report = json.loads(Path(report_path).read_text())
    failures = []

    def check(ok: bool, line: str) -> None:
        print(("PASS: " if ok else "FAIL: ") + line)
        if not ok:
            failures.append(line)

    for key, (train_expected, test_expected) in EXPECTED.items():
        train = report["train"][key] + report["validation"][key]
        test = report["test"][key]
        check(train == train_expected, f"{key}: train+validation {train} (expected {train_expected})")
        check(test == test_expected, f"{key}: test {test} (expected {test_expected})")
    check(
        report["validation"]["documents"] == 22,
        f"validation documents {report['validation']['documents']} (expected round(149 x 0.15) = 22)",
    )
    share = report["unk_share"]
    check(share < 0.01, f"[UNK] share {share:.3%} (expected < 1 %)")
    check(report["tokenizer_vocab"] == 30_522, f"tokenizer vocabulary {report['tokenizer_vocab']} (expected 30522)")

    # Independent lossless check: one labelled token per non-empty word, windows within bounds.
    from datasets import load_from_disk

    dataset = load_from_disk(tokenized)
    meta = json.loads((Path(tokenized) / "meta.json").read_text())
    window_length = report["window_length"]
    for split in ("train", "validation", "test"):
        labelled = sum(sum(1 for label in labels if label != -100) for labels in dataset[split]["labels"])
        longest = max(len(ids) for ids in dataset[split]["input_ids"])
        check(labelled == report[split]["words"], f"{split}: {labelled} labelled tokens = {report[split]['words']} words")
        check(longest <= window_length, f"{split}: longest window {longest} <= {window_length}")
        check(dataset[split].num_rows == report[split]["windows"], f"{split}: {dataset[split].num_rows} windows")
    train_ids, val_ids = set(dataset["train"]["doc_id"]), set(dataset["validation"]["doc_id"])
    check(
        not train_ids & val_ids and sorted(val_ids) == meta["val_documents"],
        "validation documents disjoint from train and listed in meta.json",
    )
    windows = report["train"]["windows"] + report["validation"]["windows"]
    check(
        windows > 149 and report["test"]["windows"] > 50,
        f"long documents split: {windows} train+validation windows, {report['test']['windows']} test windows",
    )

    if failures:
        sys.exit(f"real-data check: {len(failures)} failure(s)")
    print("PASS: real-data check")


if __name__ == "__main__":
    main(*sys.argv[1:3])
