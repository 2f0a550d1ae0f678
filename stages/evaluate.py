"""Stage `evaluate@<variant>-<seed>`: score one trained run on the test split.

Rebuilds the model from models/<variant>-<seed>/ as its train_log.json records it, predicts
every test window, maps predictions back to words (each word once) and scores entities with
seqeval; measures inference throughput (and after merging, for mergeable adapters). Writes
metrics/runs/<variant>-<seed>.json, one self-describing record (docs/result-files.md).
"""

from __future__ import annotations

import sys

from layoutpeft.config import EvaluateConfig, load_params
from layoutpeft.errors import run_main
from layoutpeft.paths import MODELS_DIR, RUNS_DIR, TOKENIZED_DIR, run_key
from layoutpeft.train import runs
from stages.per_run import run_args


def read_params(params: dict) -> EvaluateConfig:
    return EvaluateConfig.from_params(params)


def main(argv: list[str]) -> None:
    args = run_args(argv, __doc__)
    cfg = read_params(load_params())
    key = run_key(args.variant, args.seed)
    record = runs.evaluate(MODELS_DIR / key, cfg, TOKENIZED_DIR, RUNS_DIR / f"{key}.json")
    s = record["scores"]
    print(
        f"evaluate: {key}: test P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} ({s['words']} words), "
        f"{record['inference']['tokens_per_s']:.0f} tokens/s"
    )


if __name__ == "__main__":
    sys.exit(run_main("evaluate", main))
