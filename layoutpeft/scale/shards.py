"""Scale the study out: its runs split into shards balanced by expected cost, run by DVC.

The study's expensive stages are tune@<variant> (a training per lr of the variant's grid) and
train@/evaluate@<variant>-<seed>. `plan()` splits them into N shards (greedy longest-first over
a small cost table per method, METHOD_COST). A unit of work never straddles two shards:

- with study.tune_lr on, a variant's unit is its tune@ stage plus all its seeds, because every
  train@<variant>-<seed> depends on data/lr/<variant>.json: run elsewhere, the tune would run
  twice (and could pick differently on another GPU);
- with study.tune_lr off, tune@ only writes the variant's own lr (no training, the same bytes
  everywhere), so each (variant, seed) is a unit and repeats the cheap tune@ stage it needs.

No stage's params, deps or command change: a shard runs `dvc repro <its stages>` (or `dvc exp
run --temp <its stages>`), so each stage is the same DVC run-cache entry a serial run makes and
a collector's `dvc repro` of the whole study restores every one of them and runs only aggregate.

How shards run (layoutpeft/commands/shard.py is the command line):
- one machine, N workers: `run_workers` runs the data stages once, then N concurrent `dvc exp
  run --temp <shard stages>` (each in its own temporary copy of the workspace, all sharing the
  workspace's cache and run cache), each with its own CUDA_VISIBLE_DEVICES and CPU threads, then
  the collector in the workspace;
- M machines sharing a default DVC remote: `run_shard` runs one shard in this workspace, one
  `dvc repro --pull` per step (a tune@ stage, or one run's train@ + evaluate@), pushing the run
  cache after each (a dead machine loses only its unfinished run); `collect` runs `dvc repro
  --pull` of the whole study and refuses to train.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from layoutpeft.config import StudyConfig, get, load_params
from layoutpeft.errors import REFUSE_ENV, REFUSED, LayoutpeftError
from layoutpeft.paths import RUNS_DIR, run_key
from layoutpeft.study.formatting import missing_seeds
from layoutpeft.train.tuning import TuningConfig, lr_grid, planned_epochs
from layoutpeft.train.variants import expand_sweeps, resolve

# Relative cost of one optimizer step per method (full fine-tuning = 1.0), MiniLM-L6, batch 16.
# The eight methods of the reference study: the quiet interleaved benchmark of 2026-12-07 (1 thread,
# fp32, AVX2; benchmarks/results/2026-12-07-quiet-costs-fp32). The others: s/step on a 2-core CPU
# under load (benchmarks/results/2026-11-22-cpu.md) times their ratio there to LoRA (DoRA, QLoRA,
# LoKr, AdaLoRA) or to prompt tuning (P-tuning); prefix tuning as prompt tuning (both add virtual
# tokens to every window). A method not listed counts as 1.0. Ranks and targets change a method's
# cost little next to the method itself; the order is what balancing needs.
METHOD_COST = {
    "full": 1.00,
    "head": 0.82,
    "bitfit": 0.82,
    "lora": 0.97,
    "dora": 1.08,
    "qlora": 0.96,
    "loha": 1.02,
    "lokr": 0.93,
    "adalora": 0.83,
    "vera": 1.08,
    "ia3": 0.93,
    "prompt_tuning": 0.99,
    "prefix_tuning": 0.99,
    "p_tuning": 0.97,
}
# evaluate@ (one pass over the test split, timed `evaluate.timing_repeats` times) per training:
# ~17 s next to 80-110 s trainings on the laptop profile (profiles.yaml).
EVALUATE_COST = 0.15
# Stages every shard needs first (cheap): run once before the shards (`--prepare`).
DATA_STAGES = ("download", "tokenize", "variants")
# Seconds between starting two workers' `dvc exp run --temp` (each first copies the workspace
# through a git stash; started together they worked here, staggered they need not race).
STAGGER_S = 2.0
# A collector's environment: the training stages exit at once instead of running (errors.run_main).
REFUSE_TRAINING = {REFUSE_ENV: "tune,train,evaluate"}
RUN_STAGE = re.compile(r"^Running stage '((?:tune|train|evaluate)@[^']+)'")


class ShardError(LayoutpeftError):
    """A bad shard spec, a worker that cannot see its GPU, or a collector that would train."""


@dataclass
class Unit:
    """Stages that must run in one shard, and their expected cost. `steps` group them for
    `run_shard`: one `dvc repro` (and push) per step, e.g. [[tune@v], [train@v-0, evaluate@v-0], ...]."""

    name: str
    steps: list[list[str]]
    cost: float

    @property
    def stages(self) -> list[str]:
        return [stage for step in self.steps for stage in step]


@dataclass
class Shard:
    index: int  # 1-based
    count: int
    units: list[Unit] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return sum(u.cost for u in self.units)

    @property
    def stages(self) -> list[str]:
        """The shard's stages in pipeline order (tune@, then train@, then evaluate@), no repeats."""
        seen = dict.fromkeys(s for u in self.units for s in u.stages)
        return sorted(
            seen, key=lambda s: ["tune", "train", "evaluate"].index(s.split("@")[0].removesuffix("_extra")) if "@" in s else -1
        )

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4); shards count from 1."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ShardError(f"--shard {text!r}: expected I/M, e.g. 1/4 (shard I of M, counting from 1)")
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ShardError(f"--shard {text}: I must be in 1..{count}")
    return index, count


def method_cost(method: str) -> float:
    return METHOD_COST.get(method, 1.0)


def units(params: dict) -> list[Unit]:
    """The study's units of work (see the module docstring), in study order."""
    study = StudyConfig.from_params(params, summary_keys=True)
    tuning = TuningConfig.from_params(params)
    variants = expand_sweeps(get(params, "variants", dict), get(params, "sweeps", dict, default={}) or {})
    out = []
    for name in study.variants:
        spec = resolve(name, variants)
        step = method_cost(str(spec.get("method")))
        run = step * (1 + EVALUATE_COST)
        tune = f"tune@{name}"
        # study.extra_runs: seeds added to this variant only, run by dvc.yaml's train_extra@/evaluate_extra@
        seeds = [(s, "") for s in study.seeds] + [(s, "_extra") for s in study.extra_seeds.get(name, ())]
        if tuning.enabled:
            steps = [[tune]] + [[f"train{x}@{run_key(name, s)}", f"evaluate{x}@{run_key(name, s)}"] for s, x in seeds]
            # successive halving trains fewer epochs than one whole schedule per grid lr
            trials = float(len(lr_grid(spec, tuning)))
            if tuning.rungs:
                max_epochs = get(params, "train.max_epochs", int)
                trials = planned_epochs(len(lr_grid(spec, tuning)), tuning, max_epochs) / max_epochs
            out.append(Unit(name, steps, step * trials + run * len(seeds)))
        else:
            out += [
                Unit(run_key(name, s), [[tune, f"train{x}@{run_key(name, s)}", f"evaluate{x}@{run_key(name, s)}"]], run)
                for s, x in seeds
            ]
    return out


def plan(params: dict, count: int) -> list[Shard]:
    """Split the study into `count` shards: longest unit first onto the least loaded shard.

    Deterministic for the same params.yaml, so M machines computing it agree on who runs what."""
    if count < 1:
        raise ShardError(f"the number of shards must be at least 1, got {count}")
    shards = [Shard(i + 1, count) for i in range(count)]
    order = sorted(enumerate(units(params)), key=lambda iu: (-round(iu[1].cost, 9), iu[0]))
    for _, unit in order:
        min(shards, key=lambda s: (round(s.cost, 9), s.index)).units.append(unit)
    return shards


def describe(shards: list[Shard], stages: bool = False) -> str:
    total = sum(s.cost for s in shards) or 1.0
    lines = [f"{len(shards)} shard(s); cost in full fine-tuning trainings (layoutpeft.scale.shards.METHOD_COST):"]
    for s in shards:
        lines.append(
            f"shard {s.label}: cost {s.cost:.2f} ({100 * s.cost / total:.0f} %), "
            f"{len(s.units)} unit(s): {' '.join(u.name for u in s.units) or '(none)'}"
        )
        if stages:
            lines.append(f"  stages: {' '.join(s.stages) or '(none)'}")
    empty = [s.label for s in shards if not s.units]
    if empty:
        lines.append(f"note: shard(s) {', '.join(empty)} have nothing to run (fewer units than shards)")
    return "\n".join(lines)


# ---------------------------------------------------------------- running dvc
def stage_env(extra: dict | None = None) -> dict[str, str]:
    """os.environ with this interpreter's folder first on PATH (dvc runs `python -m stages.*`)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def announce(text: str) -> None:
    print(f"shard: {text}", file=sys.stderr, flush=True)


def call(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> int:
    announce(shlex.join(cmd[2:] if cmd[:3] == [sys.executable, "-m", "dvc"] else cmd))
    return subprocess.call(cmd, env=stage_env(env), cwd=cwd)


def worker_env(index: int, count: int, gpus: list[str] | None, cpus: int | None = None) -> dict[str, str]:
    """Worker `index` (0-based) of `count`: its GPU, and an equal share of the CPU threads."""
    cpus = cpus or os.cpu_count() or 1
    threads = str(max(1, cpus // count))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def check_gpu(env: dict[str, str], who: str) -> None:
    """Fail in one line, before anything runs, when a worker's environment shows torch no CUDA device."""
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 3)"
    code = subprocess.call(
        [sys.executable, "-c", probe], env=stage_env(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if code != 0:
        raise ShardError(
            f"{who}: no CUDA device visible with CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))} "
            "(check --gpus against nvidia-smi); nothing was run"
        )


def prepare(push: bool = False) -> None:
    """The data stages every shard needs, once (and on the remote, with `push`)."""
    if call(dvc_cmd("repro", *DATA_STAGES)) != 0:
        raise ShardError(f"dvc repro {' '.join(DATA_STAGES)} failed (its output is above)")
    if push:
        push_run_cache()


def repro(*targets: str, pull: bool = False) -> list[str]:
    """`dvc repro [--pull] <targets>`. `--pull` (DVC 3) pulls the default remote's run cache and,
    for each stage found there, that run's outputs: `dvc pull --run-cache` alone fetches only the
    run-cache entries, not the outputs, so a fresh machine would rerun the stage."""
    return dvc_cmd("repro", *(["--pull"] if pull else []), *targets)


def push_run_cache() -> None:
    """`dvc push --run-cache` to the default remote: this workspace's outputs and run cache."""
    if call(dvc_cmd("push", "--run-cache")) != 0:
        raise ShardError("dvc push --run-cache failed (its output is above)")


def run_shard(
    params: dict, index: int, count: int, *, pull: bool = False, push: bool = False, require_gpu: bool = False
) -> Shard:
    """Run shard index/count here: one `dvc repro` per step (a tune@ stage, or one run's train@ +
    evaluate@), pushing the run cache after each with `push`. Stages already in the run cache
    (an earlier, interrupted try of this shard, pulled with `pull`) are restored, not rerun."""
    shard = plan(params, count)[index - 1]
    if require_gpu:
        check_gpu({}, f"shard {shard.label}")
    announce(describe([shard], stages=True).split("\n", 1)[1])
    for n, unit in enumerate(shard.units, 1):
        announce(f"shard {shard.label}: unit {n}/{len(shard.units)} {unit.name}")
        for step in unit.steps:
            if call(repro(*step, pull=pull)) != 0:
                raise ShardError(
                    f"shard {shard.label}: {' '.join(step)} failed (dvc's output is above); "
                    f"rerun `layoutpeft shard --shard {shard.label}` to resume"
                )
            if push:
                push_run_cache()
            announce(f"shard {shard.label}: done {' '.join(step)}")
    return shard


def run_workers(
    params: dict,
    count: int,
    *,
    gpus: list[str] | None = None,
    collect_after: bool = True,
    allow_train: bool = False,
    cpus: int | None = None,
) -> list[Shard]:
    """One machine, `count` workers: the data stages once, then one `dvc exp run --temp` per
    shard at the same time (each with its GPU and CPU threads), then the collector."""
    shards = plan(params, count)
    envs = [worker_env(i, count, gpus, cpus) for i in range(count)]
    if gpus is not None:
        for shard, env in zip(shards, envs, strict=True):
            check_gpu(env, f"worker {shard.index} (--gpus {','.join(gpus)})")
    announce(describe(shards))
    prepare()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    procs: list[tuple] = []
    for shard, env in zip(shards, envs, strict=True):
        if not shard.units:
            continue
        name = f"shard-{shard.index}of{count}-{stamp}"
        cmd = dvc_cmd("exp", "run", "--temp", "-n", name, *shard.stages)
        announce(f"worker {shard.index} ({' '.join(f'{k}={v}' for k, v in env.items())}): {shlex.join(cmd[2:])}")
        if procs:
            time.sleep(STAGGER_S)
        procs.append((shard, name, subprocess.Popen(cmd, env=stage_env(env))))
    failed = []
    for shard, _, proc in procs:
        if proc.wait() != 0:
            failed.append(shard.label)
    if failed:
        raise ShardError(
            f"worker(s) for shard {', '.join(failed)} failed (their output is above); rerun "
            "the same command to resume: finished stages come back from the run cache"
        )
    if collect_after:
        collect(allow_train=allow_train)
        names = [name for _, name, _ in procs]
        subprocess.call(dvc_cmd("exp", "remove", *names), env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return shards


def collect(*, pull: bool = False, allow_train: bool = False, partial: bool = False, targets: tuple[str, ...] = ()) -> list[str]:
    """`dvc repro` of the whole study: every tune@/train@/evaluate@ stage should come back from
    the run cache. Unless `allow_train`, stop dvc at the first such stage it would run and fail
    naming it (a shard that did not finish). With `partial`, a study still running: see
    `collect_partial`. Returns the stages dvc ran."""
    if partial:
        return collect_partial(pull=pull)
    cmd = repro(*targets, pull=pull)
    print(f"shard: collect: {shlex.join(cmd[2:])}", flush=True)  # on stdout, before dvc's lines
    # The training stages refuse to run (exit 3 at once) and dvc stops at the first failed stage,
    # so no other stage starts: no signal races a fast stage.
    refuse = {} if allow_train else REFUSE_TRAINING
    proc = subprocess.Popen(cmd, env=stage_env(refuse), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    ran, refused = [], None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        match = re.match(r"^Running stage '([^']+)'", line)
        if match:
            ran.append(match[1])
            if not allow_train and refused is None and RUN_STAGE.match(line):
                refused = match[1]
    code = proc.wait()
    if refused:
        raise ShardError(
            f"collect: {refused} is not in the run cache, so dvc started running it; stopped. "
            "Rerun the shard that has it (layoutpeft shard --plan M lists them), push its run "
            "cache, or pass --allow-train"
        )
    if code != 0:
        raise ShardError(f"collect: dvc repro exited {code} (its output is above)")
    announce(f"collect: dvc ran {', '.join(ran) or 'nothing'}; every tune@/train@/evaluate@ stage came from the run cache")
    return ran


def collect_partial(*, pull: bool = False, params_path: Path = Path("params.yaml")) -> list[str]:
    """What a study still running has finished: `dvc repro --ignore-errors` with the training
    stages refused, so each tune@/train@/evaluate@ stage in the run cache comes back, each other
    one fails at once (dvc then skips what depends on it), and aggregate summarises the runs
    there (the others are listed as missing seeds). Nothing trains. Returns the stages dvc ran."""
    cmd = dvc_cmd("repro", "--ignore-errors", *(["--pull"] if pull else []))
    print(f"shard: collect --partial: {shlex.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, env=stage_env(REFUSE_TRAINING), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ran = re.findall(r"^Running stage '([^']+)'", proc.stdout, re.MULTILINE)
    # --ignore-errors turns each failed stage into a warning; only the refusals are expected.
    failed = [cmd for cmd, code in re.findall(r"failed to run: (.+), exited with (-?\d+)", proc.stdout) if int(code) != REFUSED]
    if proc.returncode != 0 or failed:
        sys.stdout.write(proc.stdout)  # only on failure: otherwise one refusal line per unfinished stage
        raise ShardError(
            "collect --partial: "
            + (f"`{failed[0]}` failed" if failed else f"dvc repro exited {proc.returncode}")
            + " (dvc's output is above)"
        )
    study = StudyConfig.from_params(load(params_path), summary_keys=True)
    # every variant's seeds, with the ones study.extra_runs adds to some of them
    planned = {v: [*study.seeds, *study.extra_seeds.get(v, ())] for v in study.variants}
    unfinished = {v: [s for s in seeds if not (RUNS_DIR / f"{run_key(v, s)}.json").is_file()] for v, seeds in planned.items()}
    unfinished = {v: seeds for v, seeds in unfinished.items() if seeds}
    total = sum(map(len, planned.values()))
    done = total - sum(map(len, unfinished.values()))
    announce(
        f"collect --partial: {done} of {total} runs finished, summarised in metrics/summary.md; "
        + (f"not finished: {missing_seeds(unfinished)}" if unfinished else "the study is complete")
    )
    return ran


def load(path: str | Path = "params.yaml") -> dict:
    return load_params(path)
