"""Where the pipeline keeps things, relative to the repository root (dvc.yaml names the same paths)."""

from pathlib import Path

RAW_DIR = Path("data/raw")
TOKENIZED_DIR = Path("data/tokenized")
DATA_REPORT = Path("metrics/data.json")
VARIANTS_DIR = Path("data/variants")
MODELS_DIR = Path("models")
RUNS_DIR = Path("metrics/runs")
SUMMARY_JSON = Path("metrics/summary.json")
SUMMARY_MD = Path("metrics/summary.md")
SUMMARY_CSV = Path("metrics/summary.csv")
STUDY_METRICS = Path("metrics/study.json")  # the DVC metrics file: F1 and ΔF1 per variant
PLOTS_DIR = Path("plots")


def run_key(variant: str, seed: int) -> str:
    return f"{variant}-{seed}"


LR_DIR = Path("data/lr")
