"""Stage `variants`: resolve params.yaml's variants and sweeps into data/variants/<name>.json.

`base:` inheritance and `sweeps:` are flattened, so each train@/evaluate@ stage depends on
exactly its own variant's resolved settings. Every variant is checked against the method
catalogue and against the backbone model.checkpoint is (a target it lacks, a LayoutLM-only
method), with the study's seeds and reference, here: before any stage trains.
"""

from __future__ import annotations

import sys

from layoutpeft.config import ModelConfig, choice, load_params
from layoutpeft.errors import run_main
from layoutpeft.modeling import ARCHITECTURES, backbone_of
from layoutpeft.paths import VARIANTS_DIR
from layoutpeft.train.methods import check_backbone
from layoutpeft.train.variants import studied_variants, write_variants


def read_params(params: dict, check_runtime: bool = False) -> tuple[dict[str, dict], tuple[str, str]]:
    """Every studied variant, resolved and checked (with the study's seeds and reference), and the
    model (checkpoint, architecture) whose backbone they must fit."""
    model = ModelConfig.checkpoint_from_params(params), choice(params, "model.architecture", ARCHITECTURES, default="auto")
    return studied_variants(params, check_runtime=check_runtime), model


def check_backbones(resolved: dict[str, dict], model: tuple[str, str]) -> None:
    """What the checkpoint's backbone cannot do, refused before the first tune@ (train@ checks again)."""
    backbone = backbone_of(*model)
    for name, variant in resolved.items():
        check_backbone(name, variant, backbone)


def main(argv: list[str]) -> None:
    resolved, model = read_params(load_params(), check_runtime=True)
    check_backbones(resolved, model)
    write_variants(resolved, VARIANTS_DIR)
    print(f"variants: {len(resolved)} resolved into {VARIANTS_DIR}/: {', '.join(resolved)}")


if __name__ == "__main__":
    sys.exit(run_main("variants", main))
