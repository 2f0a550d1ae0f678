"""Reading params.yaml with errors that name the key at fault.

Every stage calls `load_params()` first, so a typo or a wrong type fails in
well under a second, before any download, tokenization or training starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import yaml

PARAMS_FILE = Path("params.yaml")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `dvc exp run -S` writes 1e-05, which YAML 1.1 reads as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class ParamsError(ValueError):
    """A params.yaml key is missing, of the wrong type, or out of range."""


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    try:
        params = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return params


_MISSING = object()


def get(params: dict, dotted: str, kind: type | tuple[type, ...], default: Any = _MISSING,
        where: str = "params.yaml") -> Any:
    """Return params[dotted] checked against `kind`; ParamsError names the key otherwise."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise ParamsError(f"{where}: missing key '{dotted}'")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a `true` where a number is expected is a mistake.
    if isinstance(node, bool) and bool not in kinds:
        ok = False
    elif float in kinds and isinstance(node, int):
        ok = True
    else:
        ok = isinstance(node, kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        raise ParamsError(f"{where}: key '{dotted}' must be {names}, got {node!r}")
    return node


def number_in(params: dict, dotted: str, low: float, high: float, kind=float,
              where: str = "params.yaml", **kw) -> Any:
    value = get(params, dotted, kind, where=where, **kw)
    if not (low <= value <= high):
        raise ParamsError(f"{where}: key '{dotted}' must be in [{low}, {high}], got {value!r}")
    return value
