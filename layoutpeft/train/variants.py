"""Resolve params.yaml's variants and sweeps into one JSON per studied variant.

A variant may inherit another (`base:`) and sweeps expand a base over values
(`sweeps: {lora: {r: [4, 8]}}` -> `lora_r4`, `lora_r8`). Each train@/evaluate@ stage
depends on its own resolved file, data/variants/<name>.json, so a change reruns exactly the
variants whose resolved settings changed, inherited keys included. Every studied variant
is checked against the method catalogue here, before any training starts.
"""
from __future__ import annotations

import json
from pathlib import Path

from layoutpeft.atomic import staged_dir
from layoutpeft.config import StudyConfig, get
from layoutpeft.errors import ParamsError
from layoutpeft.paths import VARIANTS_DIR as OUT_DIR


def expand_sweeps(variants: dict, sweeps: dict) -> dict:
    """Add <base>_<key><value> variants; an explicitly written variant of that name wins."""
    expanded = dict(variants)
    for base, axes in sweeps.items():
        if base not in variants:
            raise ParamsError(f"params.yaml: sweeps.{base}: no variant named {base!r} to sweep")
        if not isinstance(axes, dict):
            raise ParamsError(f"params.yaml: sweeps.{base} must map keys to lists of values")
        for key, values in axes.items():
            if not isinstance(values, list) or not all(isinstance(v, (int, float, str)) for v in values):
                raise ParamsError(f"params.yaml: sweeps.{base}.{key} must be a list of numbers or strings")
            for value in values:
                expanded.setdefault(f"{base}_{key}{value}", {"base": base, key: value})
    return expanded


def resolve(name: str, variants: dict, chain: tuple = ()) -> dict:
    """Flatten `base:` inheritance for one variant."""
    if name not in variants:
        raise ParamsError(f"params.yaml: variant {name!r} is not defined in variants: or sweeps:"
                          + (f" (base of {chain[-1]!r})" if chain else ""))
    if name in chain:
        raise ParamsError(f"params.yaml: variants.{name}: circular base chain {' -> '.join(chain + (name,))}")
    spec = variants[name]
    if not isinstance(spec, dict):
        raise ParamsError(f"params.yaml: variants.{name} must be a mapping, got {spec!r}")
    spec = dict(spec)
    base = spec.pop("base", None)
    if base is None:
        return spec
    return {**resolve(base, variants, chain + (name,)), **spec}


def studied_variants(params: dict, check_runtime: bool = True) -> dict[str, dict]:
    """name -> resolved, validated settings for every variant in study.variants.

    Every defined variant and every sweep value is checked against its method too (a sweep over
    a key its method does not take fails even when that sweep is not studied); what only
    matters at run time (bitsandbytes for QLoRA) is checked for the studied ones."""
    from layoutpeft.train.methods import validate_variant

    study = StudyConfig.from_params(params)
    variants = get(params, "variants", dict)
    sweeps = get(params, "sweeps", dict, default={}) or {}
    prompt_reserve = get(params, "data.prompt_reserve", int, default=None)
    expanded = expand_sweeps(variants, sweeps)
    for name in study.variants:
        if name not in expanded:
            raise ParamsError(f"params.yaml: study.variants names {name!r}, which is not defined in variants: or sweeps:")
    for name in expanded:
        if name not in study.variants:
            validate_variant(name, resolve(name, expanded), None, check_runtime=False)  # keys and values only
    return {name: validate_variant(name, resolve(name, expanded), prompt_reserve, check_runtime=check_runtime)
            for name in study.variants}


def load_variant(name: str, folder: Path = OUT_DIR) -> dict:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ParamsError(f"{path}: no resolved variant {name!r} (run the `variants` stage; is it in study.variants?)")
    return json.loads(path.read_text())


def write_variants(resolved: dict, out_dir: Path = OUT_DIR) -> None:
    with staged_dir(out_dir) as staged:
        for name, settings in resolved.items():
            (staged / f"{name}.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
