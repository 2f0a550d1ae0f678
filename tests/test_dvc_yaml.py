"""dvc.yaml's code dependencies are complete: editing any module a stage imports reruns that stage.

DVC only knows what `deps:` lists, so a forgotten module would let a changed training loop
reuse stale models. Each stage's command names its module; we follow its `stages.*` imports
(transitively, function-level imports included) and require every one of them in `deps:`,
except modules that cannot change a stage's numbers (they read params or record versions).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Readers and recorders: params.yaml parsing (its values are tracked as `params:`), version
# recording, and reading an already-resolved variant JSON (tracked as a data dependency).
NEUTRAL = {"stages/params.py", "stages/environment.py", "stages/variants.py"}


def stage_imports(module_file: Path) -> set[str]:
    tree = ast.parse(module_file.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stages":
                found |= {f"stages/{alias.name}.py" for alias in node.names}
            elif node.module.startswith("stages."):
                found.add(node.module.replace(".", "/") + ".py")
        elif isinstance(node, ast.Import):
            found |= {a.name.replace(".", "/") + ".py" for a in node.names if a.name.startswith("stages.")}
    return found


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += sorted(stage_imports(ROOT / path) - seen)
    return seen


def stages():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return sorted(spec.items())


@pytest.mark.parametrize("name,stage", stages(), ids=[name for name, _ in stages()])
def test_every_imported_stage_module_is_a_dependency(name, stage):
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    assert module == f"stages.{name}", f"stage {name!r} should run stages/{name}.py, runs {module}"
    needed = closure(module.replace(".", "/") + ".py") - NEUTRAL
    listed = {d for d in stage.get("deps", []) if isinstance(d, str)}
    missing = sorted(needed - listed)
    assert not missing, f"dvc.yaml stage {name!r}: add {missing} to deps (imported by stages/{name}.py)"


def test_closure_follows_function_level_imports(tmp_path, monkeypatch):
    # engine imports scoring at module level; a module importing engine inside a function must
    # still pull scoring in, or the completeness check above could miss a dependency.
    package = tmp_path / "stages"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from stages import b\n")
    (package / "b.py").write_text("from stages.c import x\n")
    (package / "c.py").write_text("x = 1\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert closure("stages/a.py") == {"stages/a.py", "stages/b.py", "stages/c.py"}
