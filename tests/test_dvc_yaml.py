"""dvc.yaml says exactly what each stage depends on: the code it imports and the params it reads.

DVC only knows what `deps:` and `params:` list. A forgotten module or key lets a changed
training loop reuse stale models; an extra one reruns 155 trainings for nothing. Code: each
stage's command names its module; we follow its `stages.*`/`layoutpeft.*` imports
(transitively, function-level imports included) and require exactly those in `deps:`, except
modules that cannot change a stage's numbers
(and what they import to check input). Params: each stage's `read_params(params)` (what
its main() reads) runs on params.yaml with every key access recorded; the keys it touched must
be exactly the keys its `params:` list covers.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "layoutpeft")
# Cannot change a stage's numbers: params parsing (values tracked as `params:`), version and
# commit recording, error texts, known-harmless library messages silenced, atomic writing, path
# names (dvc.yaml spells them out), and reading an already-resolved variant JSON (tracked as a
# data dependency).
NEUTRAL = {
    "layoutpeft/__init__.py",
    "layoutpeft/config.py",
    "layoutpeft/provenance.py",
    "layoutpeft/errors.py",
    "layoutpeft/known_messages.py",
    "layoutpeft/atomic.py",
    "layoutpeft/paths.py",
}
# Neutral for the stages that only read its resolved JSON (train@, evaluate@), not for `variants`.
READS_RESOLVED_VARIANTS = {"layoutpeft/train/variants.py"}


def module_file(name: str) -> str:
    path = name.replace(".", "/")
    return f"{path}/__init__.py" if (ROOT / path).is_dir() else f"{path}.py"


def is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/")).is_dir()


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PACKAGES and is_package(node.module):
                # `from layoutpeft.train import engine`: the modules named (a sub-package's
                # __init__.py holds only its docstring, test_subpackage_inits_hold_no_code).
                found |= {module_file(f"{node.module}.{alias.name}") for alias in node.names}
            elif node.module.split(".")[0] in PACKAGES:
                found.add(module_file(node.module))
        elif isinstance(node, ast.Import):
            found |= {module_file(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def closure(module: str, neutral: set[str] = NEUTRAL) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path not in neutral:  # what a neutral module imports to check input is neutral too
            todo += sorted(imports_of(ROOT / path) - seen)
    return seen


def stages():
    """(name, definition) of every stage; a foreach stage's definition is its `do:` body."""
    found = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return sorted((name, stage.get("do", stage)) for name, stage in found.items())


IDS = [name for name, _ in stages()]


@pytest.mark.parametrize("name,stage", stages(), ids=IDS)
def test_code_deps_are_exactly_the_imported_modules(name, stage):
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    runs = name.removesuffix("_extra")  # train_extra / evaluate_extra: train@ / evaluate@ for study.extra_runs
    assert module == f"stages.{runs}", f"stage {name!r} should run stages/{runs}.py, runs {module}"
    neutral = NEUTRAL if name == "variants" else NEUTRAL | READS_RESOLVED_VARIANTS
    needed = closure(module_file(module), neutral) - neutral
    listed = {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
    assert not sorted(needed - listed), f"dvc.yaml stage {name!r}: add {sorted(needed - listed)} to deps"
    assert not sorted(listed - needed), f"dvc.yaml stage {name!r}: {sorted(listed - needed)} are not imported by it"


def test_closure_follows_function_level_imports(tmp_path, monkeypatch):
    package = tmp_path / "stages"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from stages import b\n")
    (package / "b.py").write_text("from stages.c import x\n")
    (package / "c.py").write_text("x = 1\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert closure("stages/a.py") == {"stages/a.py", "stages/b.py", "stages/c.py"}


def test_subpackage_inits_hold_no_code():
    """Importing layoutpeft.train.engine runs layoutpeft/train/__init__.py too: it is no stage's dep
    only because it cannot change a number (a docstring, nothing else)."""
    inits = sorted((ROOT / "layoutpeft").glob("*/__init__.py"))
    assert len(inits) >= 5
    for init in inits:
        body = ast.parse(init.read_text()).body
        assert len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), (
            f"{init.relative_to(ROOT)} should hold only a docstring"
        )


WHOLE = "/*"  # marks a mapping that was iterated: all of it was read


class Recording(dict):
    """A params mapping that records the dotted path of every key looked up in it."""

    def __init__(self, data: dict, log: set, prefix: str = ""):
        super().__init__({k: Recording(v, log, f"{prefix}{k}.") if isinstance(v, dict) else v for k, v in data.items()})
        self._log, self._prefix = log, prefix

    def _touch(self, key):
        self._log.add(f"{self._prefix}{key}")

    def __getitem__(self, key):
        self._touch(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._touch(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self._touch(key)
        return super().get(key, default)

    # Iterating a mapping reads all of it.
    def _whole(self):
        if self._prefix:
            self._log.add(self._prefix[:-1] + WHOLE)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()


def leaves(params: dict, paths: set[str]) -> set[str]:
    """Every leaf key of params.yaml under any of `paths` (a path to a mapping covers its whole subtree)."""
    out = set()

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out.add(prefix)

    for path in paths:
        node = params
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            walk(node, path)
    return out


@pytest.mark.parametrize("name,stage", stages(), ids=IDS)
def test_params_are_exactly_what_the_stage_reads(name, stage, monkeypatch):
    import layoutpeft.modeling

    monkeypatch.setattr(layoutpeft.modeling, "check_checkpoint", lambda spec: None)  # no hub/disk lookups
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    log: set[str] = set()
    importlib.import_module(f"stages.{name.removesuffix('_extra')}").read_params(Recording(params, log))
    keys = {p for p in log if not p.endswith(WHOLE)}
    deepest = {p for p in keys if not any(q.startswith(p + ".") for q in keys)}
    read = leaves(params, deepest | {p[: -len(WHOLE)] for p in log if p.endswith(WHOLE)})
    declared = leaves(params, {p for p in stage.get("params", []) if isinstance(p, str)})
    assert not sorted(read - declared), f"dvc.yaml stage {name!r} reads {sorted(read - declared)} without listing them"
    assert not sorted(declared - read), f"dvc.yaml stage {name!r} lists {sorted(declared - read)} but never reads them"


def test_root_outputs_are_already_git_ignored():
    """DVC appends an output at the repository root (plots) to the tracked root .gitignore unless
    it is ignored already: a fresh clone would show .gitignore modified after its first run."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {out if isinstance(out, str) else next(iter(out)) for stage in stages.values() for out in stage.get("outs", [])}
    at_root = sorted(out.rstrip("/") for out in outs if "/" not in out.rstrip("/"))
    assert at_root == ["plots"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert all(f"/{out}" in ignored for out in at_root)
