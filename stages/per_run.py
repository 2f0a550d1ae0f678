"""The command line shared by the per-run stages, train@<variant>-<seed> and evaluate@<variant>-<seed>."""

from __future__ import annotations

import argparse


def run_args(argv: list[str], description: str | None) -> argparse.Namespace:
    """--variant NAME --seed N, both required."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--seed", type=int, required=True)
    return parser.parse_args(argv)
