"""What `dvc repro` (or `dvc exp run -S ...` with a profile) would run, decided by DVC's own code.

DVC itself is asked, in a sandbox: a temporary folder holding this workspace's dvc.yaml and
dvc.lock, a params.yaml with the profile's overrides applied by DVC's own `-S` code
(dvc.utils.hydra.apply_overrides, what `dvc exp run -S` calls), links to every other top-level
entry of the workspace, and this workspace's cache. DVC resolves the pipeline there (the
`matrix:` stages of the profile's variants and seeds) and compares each stage with its dvc.lock
entry: command, params and source files, exactly as `dvc status` does. Nothing in the workspace
is written.

What `dvc status` cannot know is what an upstream stage that reruns will write. Here it is
predicted where it is cheap and exact: the `variants` stage's files (written with the same
function into a temporary folder) and, with study.tune_lr off, the tune@ stages' files (the
variant's own lr, no training). Any other rerun output (tokenized data, a tuned lr, a model) is
taken as changed, so everything reading it reruns. A stage to run whose every input is then known
is looked up in DVC's run cache (StageCache): found there with its outputs cached, dvc restores
it instead of running it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from layoutpeft.errors import LayoutpeftError

UP_TO_DATE, RESTORE, RUN = "up to date", "restored from the run cache", "to run"
# Top-level entries the sandbox gets its own copy of (the rest are links to the workspace's).
OWN = {".git", ".dvc", "dvc.lock", "dvc.yaml", "params.yaml"}


class PlanError(LayoutpeftError):
    """The pipeline cannot be planned (no dvc.yaml, a profile DVC cannot apply, ...)."""


@dataclass
class StageStatus:
    name: str
    state: str  # UP_TO_DATE | RESTORE | RUN
    reason: str = ""

    @property
    def family(self) -> str:
        return self.name.split("@")[0]

    @property
    def item(self) -> str:
        return self.name.split("@", 1)[1] if "@" in self.name else ""


@dataclass
class DvcPlan:
    """Every stage of the pipeline in DVC's execution order, with what `dvc repro` would do to it."""

    stages: list[StageStatus]
    params: dict = field(default_factory=dict)  # the effective params.yaml (profile applied)

    def by_state(self, state: str) -> list[StageStatus]:
        return [s for s in self.stages if s.state == state]

    def to_run(self, family: str | None = None) -> list[StageStatus]:
        return [s for s in self.by_state(RUN) if family is None or s.family == family]


# ---------------------------------------------------------------- the sandbox
@contextlib.contextmanager
def sandbox(root: Path, overrides: list[str]) -> Iterator[Path]:
    """A temporary DVC project seeing the workspace `root` with params.yaml as `-S overrides` leave it."""
    from dvc.utils.hydra import apply_overrides

    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise PlanError(f"{root}/dvc.yaml: not found (run from the repository root)")
    tmp = Path(tempfile.mkdtemp(prefix="layoutpeft-plan-"))
    try:
        for entry in os.listdir(root):
            if entry not in OWN:
                os.symlink(root / entry, tmp / entry)
        for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
            if (root / name).is_file():
                shutil.copy2(root / name, tmp / name)
        if overrides:
            try:
                apply_overrides(str(tmp / "params.yaml"), list(overrides))
            except Exception as err:  # noqa: BLE001 - hydra/dvc errors name the override
                raise PlanError(f"params.yaml: cannot apply {' '.join(overrides)}: {err}") from err
        (tmp / ".dvc").mkdir()
        cache = cache_dir(root)
        (tmp / ".dvc" / "config").write_text(
            "[core]\n    no_scm = true\n    analytics = false\n" + (f"[cache]\n    dir = {cache}\n" if cache else "")
        )
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def cache_dir(root: Path) -> str | None:
    """The workspace's DVC cache folder (its config's cache.dir, else .dvc/cache)."""
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        return None
    with contextlib.closing(Repo(str(root))) as repo:
        return str(repo.cache.legacy.path)  # the cache.dir folder (DVC 3 keeps files/md5 and runs/ under it)


# ---------------------------------------------------------------- predicted outputs
def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # DVC 3 `hash: md5` of a file: the md5 of its bytes


def predicted_files(family: str, item: str, params: dict) -> dict[str, str] | None:
    """{relative path: md5} of what a rerun of this stage will write, where that is cheap and exact.

    None: unknown until it runs (a training, the tokenized data)."""
    if family == "variants":
        from layoutpeft.train.variants import studied_variants, write_variants

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "variants"
            write_variants(studied_variants(params, check_runtime=False), out)
            return {f"data/variants/{p.name}": md5_bytes(p.read_bytes()) for p in out.glob("*.json")}
    if family == "tune":
        from layoutpeft.atomic import write_json
        from layoutpeft.config import ModelConfig, TrainConfig
        from layoutpeft.train.tuning import TuningConfig, tune
        from layoutpeft.train.variants import studied_variants

        tuning = TuningConfig.from_params(params)
        if tuning.enabled:
            return None
        variant = studied_variants(params, check_runtime=False)[item]
        result = tune(
            item,
            variant,
            ModelConfig.from_params(params, check_source=False),
            TrainConfig.from_params(params),
            tuning,
            Path("data/tokenized"),
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = write_json(Path(tmp) / "lr.json", result)
            return {f"data/lr/{item}.json": md5_bytes(Path(path).read_bytes())}
    return None


# ---------------------------------------------------------------- DVC's decision, stage by stage
def dvc_plan(root: str | Path = ".", overrides: list[str] | None = None) -> DvcPlan:
    """What `dvc repro` would do in `root` with params.yaml changed by `overrides` (`-S` texts)."""
    from dvc.repo import Repo

    from layoutpeft.config import load_params

    with sandbox(Path(root), overrides or []) as tmp:
        params = load_params(tmp / "params.yaml")
        # DVC resolves stage paths against the working directory, as when `dvc` runs in a project.
        with working_dir(tmp), contextlib.closing(Repo(str(tmp))) as repo:
            return DvcPlan(decide(repo, tmp, params), params)


def execution_order(repo) -> list:
    from dvc.repo.reproduce import plan_repro

    return plan_repro(repo.index.graph)


def decide(repo, tmp: Path, params: dict) -> list[StageStatus]:
    """Each stage in DVC's order: up to date, restored from the run cache, or to run (and why)."""
    from dvc.dependency.param import ParamsDependency

    order = execution_order(repo)
    producers = {rel(out, tmp): stage for stage in order for out in stage.outs}  # output path -> stage
    states: dict[str, StageStatus] = {}
    # What the plan does to an upstream output: {path: md5 it will have, or None (rewritten, unknown)}.
    changed: dict[str, str | None] = {}
    for stage in order:
        locked = stage_locked(stage)
        reasons, unknown = [] if locked else ["never run"], False
        if locked and stage.changed_stage():
            reasons.append("command changed")
        params_changed = (
            sorted({key for dep in stage.deps if isinstance(dep, ParamsDependency) for key in (dep.status().get(str(dep)) or {})})
            if locked
            else []
        )
        if params_changed:
            reasons.append(f"params changed: {', '.join(params_changed)}")
        inputs: dict[str, str | None] = {}  # dep path -> md5 it will have when this stage runs
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                continue
            path = rel(dep, tmp)
            upstream = producers_of(path, producers)
            rewritten = [o for o in upstream if o in changed]
            if rewritten:
                # An upstream stage reruns: a file it is known to write, else unknown.
                new = changed.get(path)
                inputs[path] = new
                if new is None:
                    unknown = True
                    reasons.append(f"{path} changes ({', '.join(sorted({producers[o].name for o in rewritten}))})")
                elif new != locked_md5(dep):
                    reasons.append(f"{path} changes ({producers[rewritten[0]].name})")
            elif path in producers:
                # An upstream output left as its lock entry says: compare the two lock entries.
                inputs[path] = locked_md5(next(o for o in producers[path].outs if rel(o, tmp) == path))
                if inputs[path] != locked_md5(dep):
                    reasons.append(f"{path} changed")
            else:  # a source file, a folder of upstream outputs, a file inside an upstream folder: DVC hashes it
                status = dep.status() if locked else {}
                if status:
                    reasons.append(f"{path} {next(iter(status.values()))}")
                inputs[path] = None if status else locked_md5(dep)
        if not locked:
            reasons = ["never run"]
        state, restored = UP_TO_DATE, None
        if reasons:
            state = RUN
            if not unknown and all(v is not None for v in inputs.values()):
                restored = run_cached(repo, stage, inputs, tmp)
                state = RESTORE if restored is not None else RUN
        states[stage.name] = StageStatus(stage.name, state, "; ".join(dict.fromkeys(reasons)))
        if state != UP_TO_DATE:
            # Its outputs as the run cache has them (restored) or unknown (rerun); the files of them
            # that can be predicted exactly, either way.
            changed.update(restored or {rel(out, tmp): None for out in stage.outs})
            family, _, item = stage.name.partition("@")
            changed.update(predicted_files(family, item, params) or {})
    return [states[s.name] for s in order]


def rel(entry, tmp: Path) -> str:
    return Path(os.path.relpath(entry.fs_path, tmp)).as_posix()


def producers_of(path: str, producers: dict) -> list[str]:
    """The upstream outputs a dependency reads: the one holding it, or those inside it (a folder)."""
    return [out for out in producers if path == out or path.startswith(out + "/") or out.startswith(path + "/")]


def stage_locked(stage) -> bool:
    """Whether dvc.lock has an entry for this stage (its outputs then carry hashes)."""
    return any(bool(out.hash_info) for out in stage.outs)


def locked_md5(entry) -> str | None:
    return entry.hash_info.value if entry.hash_info else None


def run_cached(repo, stage, inputs: dict[str, str | None], tmp: Path) -> dict[str, str | None] | None:
    """{output path: md5} when DVC's run cache holds this stage with these inputs and its outputs
    are in the cache (dvc repro restores it then), else None."""
    from dvc.dependency.param import ParamsDependency
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta

    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            dep.save()
        else:
            dep.hash_info = HashInfo("md5", inputs[rel(dep, tmp)])
            dep.meta = Meta()  # the lock's meta carries the old md5 too, and the key is serialised from both
    cache = repo.stage_cache._load(stage)
    if not cache:
        return None
    cached = repo.stage_cache._create_stage(cache, wdir=stage.wdir)
    if not cached.outs_cached():
        return None
    return {rel(out, tmp): locked_md5(out) for out in cached.outs}
