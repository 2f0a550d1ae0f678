"""Study profiles: profiles.yaml -> the `dvc exp run -S key=value ...` command, checked first.

profiles.yaml maps a profile name to dotted params.yaml keys and their values, e.g.
`ci: {study.variants: [head, lora_r4], train.max_epochs: 3}`; `laptop+offline` applies both
profiles, the later one winning where they share a key. It is read as YAML 1.2 (ruamel), like
params.yaml. Before dvc is called, every key is checked against params.yaml, every name in
`study.variants` against `variants:`/`sweeps:`, and the study section as the profile leaves it
(seeds, reference) with StudyConfig, so a typo fails at once and names the key.

Values are rendered in the Hydra override syntax that `dvc exp run -S` parses (lists as
`[head,lora_r4]`, strings quoted where Hydra would read them otherwise) and parsed back with
Hydra's parser. That is the whole round trip: DVC writes the parsed value into params.yaml with
ruamel and the stages read it back with ruamel (layoutpeft.config.load_params), so what Hydra
parses is what the stages get (tests/test_profile.py checks this through DVC's own code).

An extra `-S key=value` (passed on to dvc) replaces the profile's value for that key. Profile
values are literal: `${...}` would be an OmegaConf interpolation in `-S`, so it is refused.
The command line itself is parsed in layoutpeft/commands/profile.py.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Any

from layoutpeft.config import StudyConfig, load_params, load_yaml
from layoutpeft.errors import LayoutpeftError, ParamsError

PROFILES_FILE = Path("profiles.yaml")
PARAMS_FILE = Path("params.yaml")
SET_FLAGS = ("-S", "--set-param")


class ProfileError(LayoutpeftError):
    """An unknown profile, a key not in params.yaml, or a value dvc could not read as written."""


# ---------------------------------------------------------------- profiles and keys
def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, dict]:
    path = Path(path)
    try:
        profiles = load_yaml(path, "profiles file")
    except ParamsError as err:
        raise ProfileError(str(err)) from err
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError(f"{path}: expected a mapping of profile names to overrides")
    for name, overrides in profiles.items():
        if not isinstance(overrides, dict) or not overrides:
            raise ProfileError(f"{path}: profile {name!r} must map dotted params keys to values")
    return profiles


def get_profile(profiles: dict, name: str, where: str = str(PROFILES_FILE)) -> dict:
    """One profile's overrides; `a+b` merges profiles left to right (b's values win)."""
    merged: dict = {}
    for part in name.split("+"):
        if part not in profiles:
            raise ProfileError(f"{where}: unknown profile {part!r}; known: {', '.join(map(str, profiles))}")
        merged.update(profiles[part])
    return merged


def lookup(params: dict, dotted: str, default: Any = None) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_ABSENT = object()


def check_key(params: dict, key: Any, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise ProfileError(f"{where}: keys must be dotted params.yaml names, got {key!r}")
    if lookup(params, key, _ABSENT) is _ABSENT:
        raise ProfileError(f"{where}: key {key!r} is not in params.yaml")


def check_value(params: dict, key: str, value: Any, where: str) -> None:
    """Refuse a list where params.yaml has a scalar and the like: the stages would fail later."""
    current = lookup(params, key)
    if current is None:
        return
    for kind in (list, dict):
        if isinstance(current, kind) != isinstance(value, kind):
            have = kind.__name__ if isinstance(current, kind) else type(current).__name__
            raise ProfileError(f"{where}: key {key!r} is a {have} in params.yaml, got {value!r}")


def check_study(params: dict, values: dict[str, Any], where: dict[str, str]) -> None:
    """The study section as the overrides leave it: variant names defined, seeds and reference valid."""
    effective = copy.deepcopy(params)
    for key, value in values.items():
        node = effective
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    names = lookup(effective, "study.variants")
    if isinstance(names, list):
        origin = where.get("study.variants", "params.yaml")
        try:
            from layoutpeft.train.variants import did_you_mean, expand_sweeps

            known = expand_sweeps(effective.get("variants") or {}, effective.get("sweeps") or {})
        except ParamsError:  # a broken variants:/sweeps: is the variants stage's to report
            known = None
        unknown = [n for n in names if known is not None and n not in known]
        if unknown:
            raise ProfileError(
                f"{origin}: study.variants names unknown variant(s) {unknown} "
                f"(not in params.yaml variants: or sweeps:){did_you_mean(unknown[0], known)}"
            )
    try:
        StudyConfig.from_params(effective)
    except ParamsError as err:
        detail = str(err).removeprefix("params.yaml: ")
        study_keys = [k for k in values if k.startswith("study.")]
        named = [k for k in study_keys if k in detail] or study_keys  # the override(s) the message is about
        origins = sorted({where[k] for k in named})
        raise ProfileError(f"{' and '.join(origins) or 'params.yaml'}: with these overrides, {detail}") from err


# ---------------------------------------------------------------- rendering -S values
def parse_override_value(text: str) -> tuple[bool, Any]:
    """(True, value) as `dvc exp run -S k=<text>` reads it (Hydra's override parser), else (False, None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return True, OverridesParser.create().parse_overrides([f"k={text}"])[0].value()
    except Exception:  # noqa: BLE001 - any parse failure means "dvc cannot read this"
        return False, None


def _quote(text: str) -> str:
    # Hydra's quoted strings: escape the quote, and double the backslashes before a quote
    # (the closing one included); other backslashes are literal.
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_render(str(k))}:{_render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        if "${" in value:
            raise ProfileError(
                f"{value!r}: `${{...}}` would be an OmegaConf interpolation in dvc exp run -S; profile values are literal"
            )
        ok, parsed = parse_override_value(value)
        return value if ok and parsed == value else _quote(value)
    raise ProfileError(f"unsupported value {value!r} ({type(value).__name__})")


def render_value(value: Any, key: str = "value") -> str:
    """Hydra override text for `value`, checked by parsing it back."""
    text = _render(value)
    ok, parsed = parse_override_value(text)
    if not ok or parsed != value or type(parsed) is not type(value):
        raise ProfileError(f"{key}: cannot write {value!r} so that dvc exp run -S reads it back (rendered {text!r})")
    return text


# ---------------------------------------------------------------- extra arguments
def set_param_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """(key, value text) for each -S/--set-param in the extra dvc arguments."""
    found = []
    i = 0
    while i < len(extra):
        arg, text = extra[i], None
        if arg in SET_FLAGS and i + 1 < len(extra):
            text, i = extra[i + 1], i + 1
        elif arg.startswith("--set-param="):
            text = arg.split("=", 1)[1]
        elif arg.startswith("-S") and len(arg) > 2:
            text = arg[2:]
        if text is not None and "=" in text:
            key, value = text.split("=", 1)
            found.append((key, value))
        i += 1
    return found


def params_key(raw_key: str) -> str | None:
    """The params.yaml key an -S override targets; None for another file or a +add/~delete."""
    file, sep, key = raw_key.rpartition(":")
    if sep and file not in ("params.yaml", str(PARAMS_FILE)):
        return None
    key = key if sep else raw_key
    return None if key.startswith(("+", "~")) else key


# ---------------------------------------------------------------- the command
def build_command(
    name: str, extra: list[str] | None = None, profiles_path: str | Path = PROFILES_FILE, params_path: str | Path = PARAMS_FILE
) -> list[str]:
    """The full `python -m dvc exp run ...` argv for profile `name`; raises ProfileError."""
    extra = list(extra or [])
    overrides = get_profile(load_profiles(profiles_path), name, where=str(profiles_path))
    try:
        params = load_params(params_path)
    except ParamsError as err:
        raise ProfileError(str(err)) from err
    where = f"{profiles_path}: profile {name!r}"

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for raw_key, text in set_param_overrides(extra):
        key = params_key(raw_key)
        if key is None:
            continue
        check_key(params, key, where=f"extra -S {raw_key}")
        ok, value = parse_override_value(text)
        if not ok:
            raise ProfileError(f"extra -S {raw_key}={text}: dvc cannot parse this value; quote it, e.g. -S \"{key}='...'\"")
        values[key], origin[key] = value, f"extra -S {key}"

    args: list[str] = []
    for key, value in overrides.items():
        check_key(params, key, where)
        check_value(params, key, value, where)
        if key not in values:
            args += ["-S", f"{key}={render_value(value, key=f'{where}: {key}')}"]
            values[key], origin[key] = value, where
    check_study(params, values, origin)
    return [sys.executable, "-m", "dvc", "exp", "run", *args, *extra]


def describe(profiles: dict) -> str:
    """`name:` then `  key = value` (as -S writes it) for each profile."""
    lines = []
    for name, overrides in profiles.items():
        lines.append(f"{name}:")
        for key, value in overrides.items():
            try:
                text = _render(value)
            except ProfileError:
                text = repr(value)
            lines.append(f"  {key} = {text}")
    return "\n".join(lines)


def run_env() -> dict[str, str]:
    """os.environ with this interpreter's folder first on PATH: DVC runs each stage's
    `python -m stages.<name>` through the shell, and that `python` must be this environment's
    (the venv's) even when the venv is not activated."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
