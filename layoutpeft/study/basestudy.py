"""A base for every pull-request comparison: the base branch's study on the head's profile.

The PR workflow runs a profile (e.g. `ci`) on the head and compares it with the base branch
(`layoutpeft report --base origin/main --profile ci`). The base's committed study is usable
only when it was run with that profile's settings; otherwise (or when its summary cannot be
read: no remote, never pushed) `ensure_base_study` computes it:

1. `git worktree add --detach <repo>-base-<sha7> <base>` next to the repository (so relative
   paths such as the offline profile's `../shared/...` resolve as in the repository);
2. the worktree uses the repository's DVC cache (`dvc cache dir --local`) and its local DVC
   config, so every stage the base shares with the head (data stages, variants whose code and
   settings the PR does not touch) comes back from the run cache instead of running; with a
   remote, `--pull` also restores stages other jobs pushed;
3. there, the head's profile definition (profiles.yaml of the head) applied to the base's
   params.yaml: `dvc exp run -S ...` as `layoutpeft profile` builds it;
4. the result is committed on a detached commit (kept under refs/layoutpeft/base/<profile>), the
   revision the report then compares with; the worktree is removed (the cache keeps the outputs).

Both sides then ran the same profile overrides, so the report compares like with like; the
report says which profile each side ran and where the base came from.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from layoutpeft.config import load_yaml
from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.profiles import PROFILES_FILE, build_command, get_profile, load_profiles, lookup, run_env
from layoutpeft.study.report import SUMMARY, git, read_base_summary

IDENTITY = ["-c", "user.name=layoutpeft", "-c", "user.email=layoutpeft@localhost", "-c", "commit.gpgsign=false"]


class BaseStudyError(LayoutpeftError):
    """The base study could not be found or computed."""


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    print(f"base study: {' '.join(map(str, cmd[2:] if cmd[0] == sys.executable else cmd))}", file=sys.stderr, flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=run_env(), text=True, capture_output=True)
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise BaseStudyError(f"{what} failed in {cwd}: {last}")
    return proc


def profile_values(profile: str, profiles_path: Path) -> dict:
    return get_profile(load_profiles(profiles_path), profile, where=str(profiles_path))


def base_ran_profile(base: str, values: dict, cwd: Path) -> bool:
    """True when the base's committed params.yaml already has every value the profile sets."""
    text = git("show", f"{base}:params.yaml", cwd=cwd)
    if text is None:
        return False
    from ruamel.yaml import YAML

    params = YAML(typ="safe", pure=True).load(text) or {}
    missing = object()
    return all(lookup(params, key, missing) == value for key, value in values.items())


def cache_dir(root: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=root, env=run_env(), capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else str(root / ".dvc" / "cache")


def ensure_base_study(
    base: str, profile: str, cwd: Path | None = None, pull: bool = False, workdir: Path | None = None, keep: bool = False
) -> tuple[str, str]:
    """(revision to compare with, note for the report). See the module docstring."""
    root = Path(cwd or ".").resolve()
    sha = git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", cwd=root)
    if sha is None:
        raise BaseStudyError(f"--base {base!r} is not a git revision here (git fetch origin <branch>)")
    profiles_path = root / PROFILES_FILE
    values = profile_values(profile, profiles_path)
    if base_ran_profile(base, values, root):
        summary, source = read_base_summary(base, cwd=root)
        if summary is not None:
            return base, f"Base study: `{base}`'s committed study, which ran with profile `{profile}`'s settings ({source})"
    workdir = Path(workdir) if workdir else root.parent / f"{root.name}-base-{sha[:7]}"
    if workdir.exists():
        _run(["git", "worktree", "remove", "--force", str(workdir)], root, "git worktree remove")
    _run(["git", "worktree", "add", "--detach", "-q", str(workdir), sha], root, "git worktree add")
    try:
        local = root / ".dvc" / "config.local"
        if local.is_file():
            shutil.copyfile(local, workdir / ".dvc" / "config.local")
        _run([sys.executable, "-m", "dvc", "cache", "dir", "--local", cache_dir(root)], workdir, "dvc cache dir")
        try:
            cmd = build_command(
                profile, ["--pull"] if pull else [], profiles_path=profiles_path, params_path=workdir / "params.yaml"
            )
        except LayoutpeftError as err:
            raise BaseStudyError(f"profile {profile!r} (head's {PROFILES_FILE}) on base {base}: {err}") from err
        _run(cmd, workdir, f"profile {profile} on base {base}")
        if not (workdir / SUMMARY).is_file():
            raise BaseStudyError(f"profile {profile} on base {base} wrote no {SUMMARY}")
        _run(["git", *IDENTITY, "add", "-A"], workdir, "git add")
        _run(
            [
                "git",
                *IDENTITY,
                "commit",
                "-q",
                "--no-verify",
                "--allow-empty",
                "-m",
                f"layoutpeft: base study of {sha[:7]} with profile {profile}",
            ],
            workdir,
            "git commit",
        )
        study = git("rev-parse", "HEAD", cwd=workdir)
        assert study is not None
        git("update-ref", f"refs/layoutpeft/base/{profile.replace('+', '-')}", study, cwd=root)
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(workdir)], cwd=root, capture_output=True)
    return study, (
        f"Base study: computed for this report, profile `{profile}` (head's {PROFILES_FILE}) run on "
        f"`{base}` (`{sha[:7]}`) in a git worktree sharing this cache; commit `{study[:7]}`"
    )


def head_ran_profile(profile: str, cwd: Path | None = None) -> bool:
    root = Path(cwd or ".")
    values = profile_values(profile, root / PROFILES_FILE)
    params = load_yaml(root / "params.yaml", "params file") or {}
    missing = object()
    return all(lookup(params, key, missing) == value for key, value in values.items())
