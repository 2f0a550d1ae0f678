"""Benchmarks measure their own checkout's code: benchmarks/_common puts it first on sys.path, which
works only if _common is imported before layoutpeft and before any sibling script that imports it.
A benchmark run from a pinned clone with another checkout's package installed (an editable install
of main, say) would otherwise measure main's code and record the clone's commit."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.stem != "_common")
SIBLINGS = {p.stem for p in SCRIPTS}


def top_level_imports(path: Path) -> list[str]:
    """The top-level module names a file imports at module level, in order."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_common_is_imported_before_the_package_it_guards(script):
    names = top_level_imports(script)
    guarded = [i for i, name in enumerate(names) if name == "layoutpeft" or name in SIBLINGS]
    if not guarded:
        return  # imports neither layoutpeft nor a script that does (flops.py)
    assert "_common" in names, f"{script.name} imports layoutpeft without benchmarks/_common"
    assert names.index("_common") < guarded[0], (
        f"{script.name} imports {names[guarded[0]]} before _common: another installed layoutpeft would be measured"
    )


def test_a_benchmark_in_a_clone_ignores_another_installed_layoutpeft(tmp_path):
    """A decoy layoutpeft ahead of site-packages (as PYTHONPATH puts it) is never imported: the
    chained import schedule_length -> defaults_seeds -> layoutpeft comes from this checkout."""
    decoy = tmp_path / "decoy" / "layoutpeft"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise SystemExit("decoy layoutpeft imported")\n')
    # the checkout itself behind the decoy too: _common must move it first, not only add it when absent
    paths = [str(tmp_path / "decoy"), str(BENCHMARKS.parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "schedule_length.py"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "decoy" not in done.stderr + done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Schedule length decided on validation" in done.stdout
