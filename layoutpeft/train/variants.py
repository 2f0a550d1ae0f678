"""Resolve params.yaml's variants and sweeps into one JSON per studied variant.

A variant may inherit another (`base:`) and sweeps expand a base over values, one line each:
`sweeps: {lora: {r: [4, 8]}}` -> `lora_r4`, `lora_r8` (one key at a time); list values read by
short codes, `{lora: {targets: [[query, value]]}}` -> `lora_t-qv`; and a `grid:` crosses its axes,
`{lora: {grid: {targets: [[query, value], [query, key, value]], r: [4, 16]}}}` -> `lora_t-qv_r4`,
`lora_t-qv_r16`, `lora_t-qkv_r4`, `lora_t-qkv_r16`. Each train@/evaluate@ stage
depends on its own resolved file, data/variants/<name>.json, so a change reruns exactly the
variants whose resolved settings changed, inherited keys included. Every studied variant
is checked against the method catalogue here, before any training starts.
"""

from __future__ import annotations

import difflib
import itertools
import json
from pathlib import Path

from layoutpeft.atomic import staged_dir
from layoutpeft.config import StudyConfig, get
from layoutpeft.errors import ParamsError
from layoutpeft.paths import VARIANTS_DIR as OUT_DIR

# Short names in generated variant names: `lora_t-qv` is lora with targets [query, value]. Target
# modules (methods.TARGET_MODULES) by letter, in that order: o = Wo, i/f = the FFN's input/output.
SHORT_KEYS = {"targets": "t", "feedforward": "ff", "virtual_tokens": "vt"}
TARGET_SHORT = {"query": "q", "key": "k", "value": "v", "attention_output": "o", "intermediate": "i", "output": "f"}
GRID = "grid"  # sweeps.<base>.grid: {key: values, ...} expands to the product of its axes


def value_text(key: str, value) -> str:
    """How a swept value reads in a variant name: numbers as written (r4), strings and lists after
    a hyphen (t-qv, rank_scaling-rslora); lists of target modules by their short codes, in the
    catalogue's order, so [value, query] and [query, value] name the same set."""
    if isinstance(value, list):
        if all(isinstance(v, str) and v in TARGET_SHORT for v in value):
            order = list(TARGET_SHORT)
            return "-" + "".join(TARGET_SHORT[v] for v in sorted(set(value), key=order.index))
        return "-" + "-".join(str(v) for v in value)
    if isinstance(value, str):
        return f"-{value}"
    return str(value)


def point_name(base: str, point: dict) -> str:
    """<base>_<key><value>[_<key><value>...] for one point of a sweep (keys in the order declared)."""
    return "_".join([base] + [SHORT_KEYS.get(k, k) + value_text(k, v) for k, v in point.items()])


def _axis_values(key, values, where: str) -> list:
    if not isinstance(key, str) or not key:
        raise ParamsError(f"params.yaml: {where}: keys must be variant keys, got {key!r}")
    scalar = (int, float, str)
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, scalar) or (isinstance(v, list) and v and all(isinstance(x, scalar) for x in v)) for v in values)
    ):
        raise ParamsError(
            f"params.yaml: {where}.{key} must be a non-empty list of numbers, strings or "
            "lists of them (e.g. targets: [[query, value], [query, key, value]])"
        )
    return values


def sweep_points(base: str, axes: dict) -> list[dict]:
    """The settings each sweep of `base` adds: one per value of each plain axis (one key at a time),
    and the product of the axes of each `grid` (a mapping, or a list of mappings)."""
    where = f"sweeps.{base}"
    if not isinstance(axes, dict):
        raise ParamsError(f"params.yaml: {where} must map keys to lists of values (and `grid:` to a mapping)")
    points = []
    for key, values in axes.items():
        if key == GRID:
            grids = values if isinstance(values, list) else [values]
            for i, grid in enumerate(grids):
                at = f"{where}.{GRID}" + (f".{i}" if isinstance(values, list) else "")
                if not isinstance(grid, dict) or not grid:
                    raise ParamsError(f"params.yaml: {at} must map keys to lists of values (their product is swept)")
                lists = [_axis_values(k, v, at) for k, v in grid.items()]
                points += [dict(zip(grid, combo, strict=False)) for combo in itertools.product(*lists)]
        else:
            points += [{key: value} for value in _axis_values(key, values, where)]
    return points


def expand_sweeps(variants: dict, sweeps: dict) -> dict:
    """Add one variant per sweep point, named by point_name (`lora_r4`, `lora_t-qv_r16`); an explicitly
    written variant of that name wins. Two points that would share a name are an error."""
    expanded = dict(variants)
    generated: dict[str, dict] = {}
    for base, axes in sweeps.items():
        if base not in variants:
            raise ParamsError(f"params.yaml: sweeps.{base}: no variant named {base!r} to sweep")
        for point in sweep_points(base, axes):
            name = point_name(base, point)
            spec = {"base": base, **point}
            if name in generated and generated[name] != spec:
                raise ParamsError(
                    f"params.yaml: sweeps.{base}: two sweep points are both named {name!r} ({generated[name]} and {spec})"
                )
            generated[name] = spec
            expanded.setdefault(name, spec)
    return expanded


def did_you_mean(name: str, names) -> str:
    """' (closest: a, b)' among the defined and generated variant names, or ''."""
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (closest: {', '.join(close)})" if close else ""


def resolve(name: str, variants: dict, chain: tuple = ()) -> dict:
    """Flatten `base:` inheritance for one variant."""
    if name not in variants:
        raise ParamsError(
            f"params.yaml: variant {name!r} is not defined in variants: or sweeps:"
            + (f" (base of {chain[-1]!r})" if chain else "")
        )
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
            raise ParamsError(
                f"params.yaml: study.variants names {name!r}, which is not defined in variants: or "
                f"sweeps:{did_you_mean(name, expanded)}"
            )
    for name in expanded:
        if name not in study.variants:
            validate_variant(name, resolve(name, expanded), None, check_runtime=False)  # keys and values only
    return {
        name: validate_variant(name, resolve(name, expanded), prompt_reserve, check_runtime=check_runtime)
        for name in study.variants
    }


def load_variant(name: str, folder: Path = OUT_DIR) -> dict:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ParamsError(f"{path}: no resolved variant {name!r} (run the `variants` stage; is it in study.variants?)")
    return json.loads(path.read_text())


def write_variants(resolved: dict, out_dir: Path = OUT_DIR) -> None:
    with staged_dir(out_dir) as staged:
        for name, settings in resolved.items():
            (staged / f"{name}.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
