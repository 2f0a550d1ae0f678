"""Stage `variants`: resolve params.yaml's variants and sweeps into one JSON per studied variant.

A variant may inherit another (`base:`) and sweeps expand a base over values
(`sweeps: {lora: {r: [4, 8]}}` -> `lora_r4`, `lora_r8`). Each train@/evaluate@ stage
depends on its own resolved file, data/variants/<name>.json, so a change reruns exactly the
variants whose resolved settings changed, inherited keys included. Every studied variant
is checked against the method catalogue here, before any training starts.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from stages.params import ParamsError, get, load_params

OUT_DIR = Path("data/variants")


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


def studied_variants(params: dict) -> dict[str, dict]:
    """name -> resolved, validated settings for every variant in study.variants."""
    from stages.methods import validate_variant

    variants = get(params, "variants", dict)
    sweeps = get(params, "sweeps", dict, default={}) or {}
    names = get(params, "study.variants", list)
    seeds = get(params, "study.seeds", list)
    if not names:
        raise ParamsError("params.yaml: study.variants is empty")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ParamsError(f"params.yaml: study.seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(names)) != len(names):
        raise ParamsError("params.yaml: study.variants lists a variant twice")
    prompt_reserve = get(params, "data.prompt_reserve", int, default=None)
    expanded = expand_sweeps(variants, sweeps)
    resolved = {}
    for name in names:
        if not isinstance(name, str):
            raise ParamsError(f"params.yaml: study.variants entries must be variant names, got {name!r}")
        resolved[name] = validate_variant(name, resolve(name, expanded), prompt_reserve)
    reference = get(params, "study.reference", str, default=None)
    if reference is not None and reference not in expanded:
        raise ParamsError(f"params.yaml: study.reference {reference!r} is not a defined variant")
    return resolved


def load_variant(name: str, folder: Path = OUT_DIR) -> dict:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ParamsError(f"{path}: no resolved variant {name!r} (run the `variants` stage; is it in study.variants?)")
    return json.loads(path.read_text())


def write_variants(resolved: dict, out_dir: Path = OUT_DIR) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".variants-") as tmp:
        staged = Path(tmp) / "variants"
        staged.mkdir()
        for name, settings in resolved.items():
            (staged / f"{name}.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(staged), out_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(OUT_DIR))
    args = parser.parse_args(argv)
    resolved = studied_variants(load_params(args.params))
    write_variants(resolved, Path(args.out))
    print(f"variants: {len(resolved)} resolved into {args.out}/: {', '.join(resolved)}")


if __name__ == "__main__":
    main()
