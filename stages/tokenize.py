"""Stage `tokenize`: data/raw (FUNSD) -> data/tokenized (Arrow windows) + metrics/data.json.

Windows at word boundaries, every word labelled exactly once (checked), a validation split
carved from the training documents (data.val_fraction, data.split_seed); see layoutpeft.data.windows.
"""

from __future__ import annotations

import sys

from layoutpeft.config import DataConfig, ModelConfig, load_params
from layoutpeft.data.windows import tokenize
from layoutpeft.errors import run_main
from layoutpeft.paths import DATA_REPORT, RAW_DIR
from layoutpeft.paths import TOKENIZED_DIR as OUT_DIR


def read_params(params: dict, check_source: bool = False) -> dict:
    """What tokenize reads: data.* (but url/md5; data.labels when set) and model.checkpoint."""
    data = DataConfig.from_params(params)
    return {
        "checkpoint": ModelConfig.checkpoint_from_params(params, check_source),
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
        "max_length": data.max_length,
        "prompt_reserve": data.prompt_reserve,
        "labels": data.labels,
        "dataset_columns": data.dataset_columns,
        "dataset_boxes": data.dataset_boxes,
    }


def main(argv: list[str]) -> None:
    settings = read_params(load_params(), check_source=True)
    report = tokenize(RAW_DIR, OUT_DIR, DATA_REPORT, settings)
    for split in ("train", "validation", "test"):
        r = report[split]
        print(f"tokenize: {split}: {r['documents']} documents, {r['words']} words, {r['windows']} windows")
    print(f"tokenize: [UNK] share {report['unk_share']:.2%}")


if __name__ == "__main__":
    sys.exit(run_main("tokenize", main))
