"""Stage `variants`: resolve params.yaml's variants and sweeps into data/variants/<name>.json.

`base:` inheritance and `sweeps:` are flattened, so each train@/evaluate@ stage depends on
exactly its own variant's resolved settings. Every variant is checked against the method
catalogue here, with the study's seeds and reference, before any training starts.
"""

from __future__ import annotations

import sys

from layoutpeft.config import load_params
from layoutpeft.errors import run_main
from layoutpeft.paths import VARIANTS_DIR
from layoutpeft.train.variants import studied_variants, write_variants


def read_params(params: dict, check_runtime: bool = False) -> dict[str, dict]:
    """Every studied variant, resolved and checked (with the study's seeds and reference)."""
    return studied_variants(params, check_runtime=check_runtime)


def main(argv: list[str]) -> None:
    resolved = read_params(load_params(), check_runtime=True)
    write_variants(resolved, VARIANTS_DIR)
    print(f"variants: {len(resolved)} resolved into {VARIANTS_DIR}/: {', '.join(resolved)}")


if __name__ == "__main__":
    sys.exit(run_main("variants", main))
