"""Run a named study profile: `dvc exp run -S key=value ...` with the overrides in profiles.yaml.

    python -m stages.profile NAME[+NAME...] [--print] [extra `dvc exp run` arguments ...]
    python -m stages.profile --list

profiles.yaml maps a profile name to dotted params.yaml keys and their values, e.g.
`ci: {study.variants: [head, lora_r4], train.max_epochs: 3}`; `laptop+offline` applies both
profiles, the later one winning where they share a key. Before dvc is called, every key is
checked against params.yaml and every name in a `study.variants` override against
`variants:`/`sweeps:`, so a typo fails at once and names the key. Values are rendered in the
Hydra override syntax that `dvc exp run -S` parses (lists as `[head,lora_r4]`, strings quoted
where needed), and the overrides are applied with DVC's own code to a scratch copy of
params.yaml and read back with stages.params.load_params: a value the stages would not read
as written is refused up front.

Everything after NAME except `--print` goes to `dvc exp run` unchanged (`--queue`, `--temp`,
`-n NAME`, `-f`, ...). An extra `-S key=value` replaces the profile's value for that key, so
one-off changes need no edit of profiles.yaml: this is also how CI or a reviewer points the
download at a mirror, `python -m stages.profile ci -S data.url=https://... -S data.md5=...`.
Profile values are literal: there is no environment-variable expansion (`${...}` would be
read by Hydra/OmegaConf as an interpolation, not by a shell).

The stages run with this Python: its folder goes first on PATH for dvc's `python -m stages.*`.
`dvc exp run` without `--temp`/`--queue` runs in the workspace and leaves the profile's
values in params.yaml and the study's results in metrics/ and plots/ (`git checkout
params.yaml` or `dvc exp apply` to go back or forth); with `--temp` or `--queue` the
workspace stays as it is and the experiment is kept as a DVC experiment ref.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from layoutpeft.config import ParamsError, load_params

PROFILES_FILE = Path("profiles.yaml")
PARAMS_FILE = Path("params.yaml")
SET_FLAGS = ("-S", "--set-param")
OWN_FLAGS = ("--print",)


class ProfileError(ValueError):
    """An unknown profile, a key not in params.yaml, or a value dvc could not read back."""


# ---------------------------------------------------------------- profiles and keys
def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, dict]:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: file not found (run from the repository root)")
    try:
        profiles = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError(f"{path}: expected a mapping of profile names to overrides")
    for name, overrides in profiles.items():
        if not isinstance(overrides, dict) or not overrides:
            raise ProfileError(f"{path}: profile {name!r} must map dotted params keys to values")
    return profiles


def get_profile(profiles: dict, name: str, where: str = "profiles.yaml") -> dict:
    """One profile's overrides; `a+b` merges profiles left to right (b's values win)."""
    merged: dict = {}
    for part in name.split("+"):
        if part not in profiles:
            raise ProfileError(f"{where}: unknown profile {part!r}; known: {', '.join(map(str, profiles))}")
        merged.update(profiles[part])
    return merged


def has_key(params: dict, dotted: str) -> bool:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def lookup(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def check_key(params: dict, key: str, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise ProfileError(f"{where}: keys must be dotted params.yaml names, got {key!r}")
    if not has_key(params, key):
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


def check_variant_names(params: dict, names: Any, where: str) -> None:
    """study.variants entries must be variants or sweep products (<base>_<key><value>)."""
    if not isinstance(names, list):
        return
    try:
        from layoutpeft.variants import expand_sweeps
        known = expand_sweeps(params.get("variants") or {}, params.get("sweeps") or {})
    except (ImportError, ParamsError):  # let the variants stage report a broken params.yaml
        return
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ProfileError(f"{where}: study.variants names unknown variant(s) {unknown} "
                           "(not in params.yaml variants: or sweeps:)")


# ---------------------------------------------------------------- rendering -S values
def _hydra_value(text: str) -> tuple[bool, Any]:
    """Parse `k=<text>` with Hydra's override parser (what dvc exp run -S uses)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        override = OverridesParser.create().parse_overrides([f"k={text}"])[0]
        return True, override.value()
    except Exception:  # noqa: BLE001 - any parse failure means "not this rendering"
        return False, None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


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
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        if "${" in value:
            raise ProfileError(f"{value!r}: `${{...}}` would be an OmegaConf interpolation in "
                               "dvc exp run -S; profile values are literal")
        ok, parsed = _hydra_value(value)
        if ok and _same(parsed, value) and value == value.strip():
            return value
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return quoted
    raise ProfileError(f"unsupported value {value!r} ({type(value).__name__})")


def render_value(value: Any, key: str = "value") -> str:
    """Hydra override text for `value`, checked by parsing it back."""
    text = _render(value)
    ok, parsed = _hydra_value(text)
    if not ok or not _same(parsed, value):
        raise ProfileError(f"{key}: cannot render {value!r} so that dvc exp run -S reads it back "
                           f"(got {text!r} -> {parsed!r})")
    return text


def check_roundtrip(params_path: str | Path, overrides: dict[str, tuple[str, Any]],
                    where: str | dict[str, str]) -> None:
    """Apply the -S texts with DVC's own code to a copy of params.yaml, read it back the way
    the stages do (stages.params.load_params), and compare with the profile's values.

    Catches what no parser alone shows: DVC re-writes a changed float with ruamel (YAML 1.2),
    e.g. 5e-05, which PyYAML (YAML 1.1) reads back as the string '5e-05'.
    """
    try:
        from dvc.utils.hydra import apply_overrides
    except ImportError:  # DVC moved it: the Hydra round trip in render_value still holds
        return
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(params_path, copy)
        apply_overrides(str(copy), [f"{key}={text}" for key, (text, _value) in overrides.items()])
        written = load_params(copy)
    for key, (_text, value) in overrides.items():
        got = lookup(written, key)
        if not _same(got, value):
            origin = where.get(key, "") if isinstance(where, dict) else where
            raise ProfileError(
                f"{origin}: {key}: dvc exp run -S would leave {got!r} in params.yaml as the stages "
                f"read it (stages.params.load_params), not {value!r}"
                + (" (DVC writes such floats without a decimal point, which PyYAML reads as a "
                   "string; read params.yaml with YAML 1.2 float rules to allow it)"
                   if isinstance(value, float) and isinstance(got, str) else ""))


# ---------------------------------------------------------------- extra arguments
def _set_param_keys(extra: list[str]) -> list[tuple[str, str]]:
    """(raw override, key) for each -S/--set-param in the extra dvc arguments."""
    found = []
    i = 0
    while i < len(extra):
        arg = extra[i]
        text = None
        if arg in SET_FLAGS and i + 1 < len(extra):
            text, i = extra[i + 1], i + 1
        elif arg.startswith("--set-param="):
            text = arg.split("=", 1)[1]
        elif arg.startswith("-S") and len(arg) > 2:
            text = arg[2:]
        if text is not None and "=" in text:
            key = text.split("=", 1)[0]
            found.append((text, key))
        i += 1
    return found


def _params_key(raw_key: str) -> str | None:
    """The params.yaml key an -S override targets, None for another file or an add/delete."""
    file, sep, key = raw_key.rpartition(":")
    if sep and file not in ("params.yaml", str(PARAMS_FILE)):
        return None
    key = key if sep else raw_key
    if key.startswith(("+", "~")):
        return None
    return key


# ---------------------------------------------------------------- the command
def build_command(name: str, extra: list[str] | None = None,
                  profiles_path: str | Path = PROFILES_FILE,
                  params_path: str | Path = PARAMS_FILE) -> list[str]:
    """The full `python -m dvc exp run ...` argv for a profile; raises ProfileError."""
    extra = list(extra or [])
    profiles = load_profiles(profiles_path)
    overrides = get_profile(profiles, name, where=str(profiles_path))
    try:
        params = load_params(params_path)
    except ParamsError as err:
        raise ProfileError(str(err)) from err
    where = f"{profiles_path}: profile {name!r}"

    replaced: dict[str, tuple[str, Any]] = {}
    for text, raw_key in _set_param_keys(extra):
        key = _params_key(raw_key)
        if key is None:
            continue
        check_key(params, key, where=f"extra -S {raw_key}")
        value_text = text.split("=", 1)[1]
        ok, value = _hydra_value(value_text)
        if not ok:
            raise ProfileError(f"extra -S {text!r}: dvc cannot parse this value; quote it, "
                               f"e.g. -S \"{key}='...'\"")
        replaced[key] = (value_text, value)

    rendered: dict[str, tuple[str, Any]] = {}
    for key, value in overrides.items():
        check_key(params, key, where)
        check_value(params, key, value, where)
        if key not in replaced:
            rendered[key] = (render_value(value, key=f"{where}: {key}"), value)
    if "study.variants" in rendered:
        check_variant_names(params, rendered["study.variants"][1], where)
    check_roundtrip(params_path, {**rendered, **replaced},
                    {**{k: where for k in rendered}, **{k: "extra -S" for k in replaced}})
    args = [a for key, (text, _value) in rendered.items() for a in ("-S", f"{key}={text}")]
    return [sys.executable, "-m", "dvc", "exp", "run", *args, *extra]


def describe(profiles: dict) -> str:
    lines = []
    for name, overrides in profiles.items():
        lines.append(f"{name}:")
        for key, value in overrides.items():
            lines.append(f"  {key} = {yaml.safe_dump(value, default_flow_style=True).strip()}"
                         .replace("\n...", ""))
    return "\n".join(lines)


USAGE = """usage: python -m stages.profile NAME[+NAME...] [--print] [dvc exp run args ...]
       python -m stages.profile --list"""


def main(argv: list[str] | None = None, profiles_path: str | Path = PROFILES_FILE,
         params_path: str | Path = PARAMS_FILE) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        try:
            listing = describe(load_profiles(profiles_path))
        except ProfileError as err:
            listing = f"({err})"
        if argv[:1] != ["--list"]:
            print(USAGE + "\n\nprofiles (" + str(profiles_path) + "):")
        print(listing)
        return 0 if argv else 2
    print_only = "--print" in argv
    rest = [a for a in argv if a not in OWN_FLAGS]
    if not rest or rest[0].startswith("-"):
        print(f"error: expected a profile name first\n{USAGE}", file=sys.stderr)
        return 2
    name, extra = rest[0], rest[1:]
    try:
        cmd = build_command(name, extra, profiles_path=profiles_path, params_path=params_path)
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if print_only:
        print(shlex.join(cmd))
        return 0
    print(f"profile {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=run_env())


def run_env() -> dict[str, str]:
    """os.environ with this interpreter's folder first on PATH: DVC runs each stage's
    `python -m stages.<name>` through the shell, and that `python` must be this environment's
    (the venv's) even when the venv is not activated."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


if __name__ == "__main__":
    sys.exit(main())
