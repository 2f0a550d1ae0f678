"""`layoutpeft shard`: the study split over workers and machines, on DVC's run cache.

- The plan: every tune@/train@/evaluate@ stage in exactly one shard, a variant's tune@ with its
  seeds when tuning, balanced by the cost table; the same plan for the same params.
- The recipes: the committed Slurm and Actions files are `--emit`'s output, parse, and call the
  shard command with the run cache pulled and pushed.
- A worker that cannot see its GPU, and train.device cuda without one, fail in one line.
- End to end (slow) on a tiny tuned study: 2 local workers, and 2 "machines" sharing a
  local-folder remote with one shard killed mid-run and rerun on a fresh clone, give the serial
  run's scores; the collectors' dvc output runs no tune@/train@/evaluate@ stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from layoutpeft.cli import main as cli_main
from layoutpeft.config import load_params
from layoutpeft.scale import shards
from layoutpeft.scale.shard_recipes import ACTIONS_FILE, DEFAULT_SHARDS, SLURM_FILE, actions, slurm

from fixtures import REPO_ROOT, git, run, run_dvc, subprocess_env

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def repo_params(**study) -> dict:
    params = load_params(REPO_ROOT / "params.yaml")
    params["study"].update(study)
    return params


def stage_names(params: dict) -> set[str]:
    names = set()
    for v in params["study"]["variants"]:
        names.add(f"tune@{v}")
        for s in params["study"]["seeds"]:
            names |= {f"train@{v}-{s}", f"evaluate@{v}-{s}"}
    return names


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_plan_runs_every_stage_once_with_its_tune_and_balances(count):
    params = repo_params()
    plan = shards.plan(params, count)
    seen = [stage for shard in plan for stage in shard.stages]
    assert sorted(seen) == sorted(stage_names(params))  # each exactly once
    for shard in plan:  # a variant's seeds run where its lr is tuned
        tuned = {s.split("@")[1] for s in shard.stages if s.startswith("tune@")}
        trained = {s.split("@")[1].rsplit("-", 1)[0] for s in shard.stages if s.startswith("train@")}
        assert trained == tuned
    costs = [s.cost for s in plan]
    biggest = max(u.cost for u in shards.units(params))
    assert max(costs) - min(costs) <= biggest + 1e-9  # greedy longest-first bound
    assert [s.stages for s in shards.plan(params, count)] == [s.stages for s in plan]  # deterministic


def test_untuned_study_splits_per_run_and_repeats_only_the_cheap_tune():
    params = repo_params(tune_lr=False, variants=["full", "head"], reference="full", seeds=[0, 1, 2])
    plan = shards.plan(params, 3)
    trains = [s for shard in plan for s in shard.stages if s.startswith(("train@", "evaluate@"))]
    assert sorted(trains) == sorted(n for n in stage_names(params) if not n.startswith("tune@"))
    assert all(len(shard.units) == 2 for shard in plan)  # 6 runs over 3 shards
    # full costs more per step than head (METHOD_COST): each shard gets one of the three full runs.
    assert sorted(sum(s.startswith("train@full") for s in shard.stages) for shard in plan) == [1, 1, 1]


def test_cost_table_follows_the_benchmark():
    assert shards.METHOD_COST["full"] == 1.0
    assert shards.METHOD_COST["head"] < shards.METHOD_COST["lora"] < shards.METHOD_COST["full"]
    assert shards.method_cost("some_new_method") == 1.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0/2", "layoutpeft shard: error: --shard 0/2: I must be in 1..2"),
        ("3/2", "layoutpeft shard: error: --shard 3/2: I must be in 1..2"),
        ("two", "layoutpeft shard: error: --shard 'two': expected I/M, e.g. 1/4 (shard I of M, counting from 1)"),
    ],
)
def test_bad_shard_spec_is_one_line(spec, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert cli_main(["shard", "--shard", spec]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


# ---------------------------------------------------------------- recipes
def test_committed_recipes_are_the_emitted_ones(capsys):
    for kind, path, make in (("slurm", SLURM_FILE, slurm), ("actions", ACTIONS_FILE, actions)):
        assert (REPO_ROOT / path).read_text() == make(DEFAULT_SHARDS), f"regenerate {path}: layoutpeft shard --emit {kind}"
        assert cli_main(["shard", "--emit", kind, "--shards", str(DEFAULT_SHARDS)]) == 0
        assert capsys.readouterr().out == make(DEFAULT_SHARDS)


def test_slurm_recipe_is_a_valid_job_array_calling_the_shard_command():
    text = slurm(3)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # shell syntax
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", text, flags=re.M))
    assert directives["array"] == "1-3" and directives["gres"] == "gpu:1" and "requeue" in directives
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert 'layoutpeft shard --shard "$SLURM_ARRAY_TASK_ID/$count" --pull --push --require-gpu' in body
    assert "layoutpeft shard --prepare --push" in text and "layoutpeft shard --collect --pull" in text
    assert "afterok:$prep" in text and "afterok:$arr" in text


def test_actions_recipe_is_a_matrix_of_gpu_runners_calling_the_shard_command():
    workflow = yaml.safe_load(actions(3))
    jobs = workflow["jobs"]
    assert list(jobs) == ["prepare", "shard", "collect"]
    assert jobs["shard"]["needs"] == "prepare" and jobs["collect"]["needs"] == "shard"
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    assert "gpu" in jobs["shard"]["runs-on"] and "self-hosted" in jobs["shard"]["runs-on"]
    assert workflow["env"]["SHARDS"] == "3"

    def runs(job):
        return "\n".join(step.get("run", "") for step in jobs[job]["steps"])

    assert "layoutpeft shard --prepare --push" in runs("prepare")
    assert 'layoutpeft shard --shard "${{ matrix.shard }}/$SHARDS" --pull --push --require-gpu' in runs("shard")
    assert "layoutpeft shard --collect --pull" in runs("collect")
    for job in jobs:
        for step in jobs[job]["steps"]:
            if "run" in step:
                subprocess.run(["bash", "-n"], input=step["run"], text=True, check=True)


# ---------------------------------------------------------------- GPUs
def test_worker_without_its_gpu_fails_in_one_line_before_anything_runs(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    proc = run(
        [sys.executable, "-m", "layoutpeft", "shard", "--workers", "2", "--gpus", "0,1"],
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT), **ONE_THREAD},
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "layoutpeft shard: error: worker 1 (--gpus 0,1): no CUDA device visible with CUDA_VISIBLE_DEVICES=0 "
        "(check --gpus against nvidia-smi); nothing was run"
    ], proc.stderr
    proc = run(
        [sys.executable, "-m", "layoutpeft", "shard", "--shard", "1/2", "--require-gpu"],
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT), **ONE_THREAD},
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "layoutpeft shard: error: shard 1/2: no CUDA device visible with CUDA_VISIBLE_DEVICES= "
        "(check --gpus against nvidia-smi); nothing was run"
    ], proc.stderr
    assert not (tmp_path / "dvc.lock").exists()


def test_worker_env_pins_one_gpu_and_shares_the_cpus():
    assert shards.worker_env(0, 2, ["0", "1"], cpus=16) == {
        "OMP_NUM_THREADS": "8",
        "MKL_NUM_THREADS": "8",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    assert shards.worker_env(1, 2, ["0", "1"], cpus=16)["CUDA_VISIBLE_DEVICES"] == "1"
    assert shards.worker_env(2, 3, None, cpus=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------- end to end
# Two variants of different cost, two seeds, each lr tuned from two values: 2 tune@, 4 train@
# and 4 evaluate@ stages; the plan gives one variant to each of 2 shards.
TUNED_STUDY = {
    "study.variants": ["head", "lora"],
    "study.reference": "head",
    "study.seeds": [0, 1],
    "study.tune_lr": True,
    "study.lr_grid": [1.0, 3.0],
    "study.extend_grid": 0,
    "train.max_epochs": 1,
    # params.yaml gives both their own wider grids (the reference study's); two lrs are enough here
    "variants.head.lr_grid": [3.0e-3, 9.0e-3],
    "variants.lora.lr_grid": [1.0e-3, 3.0e-3],
    "variants.prompt_tuning.virtual_tokens": 8,
    "variants.p_tuning.virtual_tokens": 8,
}
RUN_STAGE = re.compile(r"^Running stage '((?:tune|train|evaluate)@[^']+)'", re.M)


def shard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "layoutpeft", "shard", *args]


def scores(project: Path) -> dict:
    """metrics/runs/*.json without timings: what the study measured."""
    out = {}
    for path in sorted((project / "metrics" / "runs").glob("*.json")):
        data = json.loads(path.read_text())
        out[path.stem] = {
            "scores": data["scores"],
            "test_loss": data["test_loss"],
            "best_val_f1": data["training"]["best_val_f1"],
            "lr": data["variant_params"].get("lr"),
        }
    return out


def ran(text: str) -> list[str]:
    return RUN_STAGE.findall(text)


def clone(source: Path, folder: Path, remote: Path) -> Path:
    """A fresh 'machine': a git clone of the project with the shared remote as its default."""
    run(["git", "clone", "-q", str(source), str(folder)], cwd=source.parent)
    run_dvc(folder, "remote", "add", "-d", "--local", "shared", str(remote))
    return folder


@pytest.mark.slow
def test_workers_and_machines_match_a_serial_run(make_tiny_project, tmp_path):
    serial = make_tiny_project(TUNED_STUDY, name="serial")
    run_dvc(serial, "repro", env=ONE_THREAD)
    expected = scores(serial)
    assert sorted(expected) == ["head-0", "head-1", "lora-0", "lora-1"]
    assert all(expected[k] for k in expected), expected

    # 1 machine, 2 workers (`dvc exp run --temp` each), then the collector in the workspace.
    local = make_tiny_project(TUNED_STUDY, name="workers")
    proc = run(shard_cmd("--workers", "2"), cwd=local, env=ONE_THREAD)
    log = proc.stdout
    collect_log = log[log.index("shard: collect: dvc repro") :]
    assert ran(collect_log) == [], collect_log  # the collector trained nothing
    assert "Running stage 'aggregate'" in collect_log
    assert scores(local) == expected
    assert "Data and pipelines are up to date." in run_dvc(local, "status").stdout
    assert run_dvc(local, "exp", "list", "--name-only").stdout.strip() == ""  # shard experiments removed

    # 2 machines sharing a local-folder remote: prepare, shard 1/2, shard 2/2 killed mid-run and
    # rerun on a fresh clone, then a collector on a third clone.
    origin = make_tiny_project(TUNED_STUDY, name="origin")
    remote = tmp_path / "remote"
    remote.mkdir()
    first = clone(origin, tmp_path / "machine1", remote)
    run(shard_cmd("--prepare", "--push"), cwd=first, env=ONE_THREAD)
    one = run(shard_cmd("--shard", "1/2", "--pull", "--push"), cwd=first, env=ONE_THREAD)

    second = clone(origin, tmp_path / "machine2", remote)
    plan2 = shards.plan(load_params(second / "params.yaml"), 2)[1]
    first_run = plan2.units[0].steps[1]  # [train@<v>-0, evaluate@<v>-0]
    killed_log = tmp_path / "machine2.log"
    with open(killed_log, "w") as handle:
        proc = subprocess.Popen(
            shard_cmd("--shard", "2/2", "--pull", "--push"),
            cwd=second,
            text=True,
            env=subprocess_env(ONE_THREAD),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 600
        # Kill it once its first run is pushed and the next run's training has started.
        while time.time() < deadline and proc.poll() is None:
            text = killed_log.read_text()
            done = f"shard: shard 2/2: done {' '.join(first_run)}"
            if done in text and "Running stage 'train@" in text[text.index(done) :]:
                break
            time.sleep(0.5)
        assert proc.poll() is None, killed_log.read_text()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = killed_log.read_text()
    shutil.rmtree(second)  # the machine is gone

    replacement = clone(origin, tmp_path / "machine2b", remote)
    two = run(shard_cmd("--shard", "2/2", "--pull", "--push"), cwd=replacement, env=ONE_THREAD)
    resumed = two.stdout + two.stderr
    for stage in [*plan2.units[0].steps[0], *first_run]:  # finished before the kill: restored
        assert f"Stage '{stage}' is cached - skipping run" in resumed, resumed
        assert stage not in ran(resumed)
    # No run trained by two shards (the killed try's unfinished run is the only repeat).
    by_one, by_killed, by_resumed = set(ran(one.stdout)), set(ran(killed)), set(ran(resumed))
    assert not by_one & (by_killed | by_resumed)
    assert len(by_killed & by_resumed) <= 1, (by_killed, by_resumed)
    assert by_one | by_killed | by_resumed == stage_names(load_params(origin / "params.yaml"))

    collector = clone(origin, tmp_path / "collector", remote)
    done = run(shard_cmd("--collect", "--pull"), cwd=collector, env=ONE_THREAD)
    assert ran(done.stdout) == [], done.stdout
    assert "Running stage 'aggregate'" in done.stdout
    assert scores(collector) == expected
    for project in (local, collector):  # the same study summary and stages as the serial run
        assert json.loads((project / "metrics" / "study.json").read_text()) == json.loads(
            (serial / "metrics" / "study.json").read_text()
        )
        assert lock_shape(project) == lock_shape(serial)
        assert "Data and pipelines are up to date." in run_dvc(project, "status").stdout


def lock_shape(project: Path) -> dict:
    """dvc.lock without output hashes: each stage's command, params and code/data deps.
    (Output bytes hold wall times, data/lr/<v>.json's trials included, so they differ between
    any two runs, serial or not; the scores above do not.)"""
    stages = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {
        name: {
            "cmd": st["cmd"],
            "params": st.get("params"),
            "deps": {
                d["path"]: d["md5"]
                for d in st.get("deps", [])
                if d["path"].startswith(("stages/", "layoutpeft/", "data/raw", "data/tokenized", "data/variants"))
            },
        }
        for name, st in stages.items()
    }


@pytest.mark.slow
def test_train_device_cuda_without_a_gpu_stops_the_shard_with_one_line(make_tiny_project):
    project = make_tiny_project(
        {
            "study.variants": ["head"],
            "study.reference": "head",
            "train.device": "cuda",
            "variants.prompt_tuning.virtual_tokens": 8,
            "variants.p_tuning.virtual_tokens": 8,
        }
    )
    proc = run(shard_cmd("--shard", "1/1"), cwd=project, env={"CUDA_VISIBLE_DEVICES": "", **ONE_THREAD}, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("layoutpeft ")]
    assert lines == [
        "layoutpeft train: error: train.device is cuda, but no CUDA device is visible (CUDA_VISIBLE_DEVICES=)",
        "layoutpeft shard: error: shard 1/1: tune@head train@head-0 evaluate@head-0 failed (dvc's "
        "output is above); rerun `layoutpeft shard --shard 1/1` to resume",
    ], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "models" / "head-0").exists()


# ---------------------------------------------------------------- PR comparisons
def workflow_runs() -> str:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "study.yml").read_text())
    return "\n".join(step.get("run", "") for step in workflow["jobs"]["study"]["steps"])


def test_pr_workflow_reports_against_the_base_on_its_own_profile():
    runs = workflow_runs()
    assert "layoutpeft profile ci" in runs
    assert 'layoutpeft report --base "$BASE_REF" --profile ci $pull --out reports/study.md' in runs


# A ci-like profile for the tiny fixtures: not what the tiny project's params.yaml holds, so the
# base (which has no results at all) must be computed.
TINY_CI = {"study.variants": ["head", "lora"], "study.reference": "head", "study.seeds": [0, 1], "train.max_epochs": 1}


@pytest.mark.slow
def test_pr_report_computes_the_base_study_on_the_same_profile(make_tiny_project):
    """The workflow's two shell steps (`layoutpeft profile <p>`, `layoutpeft report --base <b>
    --profile <p>`) in a repository whose base commit has no results: every variant is compared."""
    project = make_tiny_project({"variants.prompt_tuning.virtual_tokens": 8, "variants.p_tuning.virtual_tokens": 8})
    profiles = yaml.safe_load((project / "profiles.yaml").read_text())
    profiles["tinyci"] = TINY_CI
    (project / "profiles.yaml").write_text(yaml.safe_dump(profiles, sort_keys=False))
    git(project, "commit", "-qam", "tiny ci profile")
    git(project, "branch", "base")
    from fixtures import edit_params

    edit_params(project / "params.yaml", {"variants.lora.r": 8})  # the PR: LoRA at rank 8
    git(project, "commit", "-qam", "lora r8")

    env = {"PYTHONPATH": str(project), **ONE_THREAD}
    run([sys.executable, "-m", "layoutpeft", "profile", "tinyci"], cwd=project, env=env)
    proc = run(
        [sys.executable, "-m", "layoutpeft", "report", "--base", "base", "--profile", "tinyci", "--out", "reports/study.md"],
        cwd=project,
        env=env,
    )
    assert proc.stdout.strip() == "report: reports/study.md (2 variants compared, 0 added, 0 removed)", proc.stdout
    log = proc.stderr
    # The base study reused the head's unchanged runs from the run cache and trained only LoRA.
    assert "Stage 'train@head-0' is cached - skipping run" in log, log
    assert "Running stage 'train@lora-0'" in log and "Running stage 'train@head-0'" not in log
    report = (project / "reports" / "study.md").read_text()
    assert "- Profile: both sides ran `tinyci`" in report
    assert "- Base study: computed for this report, profile `tinyci`" in report
    assert "Settings shared by every variant differ" not in report  # same profile on both sides
    assert "`base` (`" in report
    rows = [line for line in report.splitlines() if line.startswith(("| head |", "| lora |"))]
    assert len(rows) == 2 and all("—" not in row.split("|")[3] for row in rows), rows
    assert not (project.parent / f"{project.name}-base-{git(project, 'rev-parse', 'base').stdout.strip()[:7]}").exists()


@pytest.mark.slow
def test_collector_stops_instead_of_training_a_missing_run(make_tiny_project):
    project = make_tiny_project({"variants.prompt_tuning.virtual_tokens": 8, "variants.p_tuning.virtual_tokens": 8})
    proc = run(shard_cmd("--collect"), cwd=project, env=ONE_THREAD, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("layoutpeft shard")]
    assert len(lines) == 1 and re.fullmatch(
        r"layoutpeft shard: error: collect: tune@(full|lora) is not in the run cache, so dvc started running it; "
        r"stopped\. Rerun the shard that has it .*",
        lines[0],
    ), proc.stderr
    assert ran(proc.stdout) == [lines[0].split()[4]]
    assert not (project / "models").exists() and not (project / "metrics" / "study.json").exists()


@pytest.mark.slow
def test_partial_collect_summarises_the_finished_runs_and_trains_nothing(make_tiny_project):
    project = make_tiny_project(TUNED_STUDY, name="partial")
    plan = shards.plan(load_params(project / "params.yaml"), 2)
    finished, unfinished = (shard.units[0].name for shard in plan)  # one variant per shard
    run(shard_cmd("--shard", "1/2"), cwd=project, env=ONE_THREAD)
    records = scores(project)
    assert sorted(records) == [f"{finished}-0", f"{finished}-1"]
    proc = run(shard_cmd("--collect", "--partial"), cwd=project, env=ONE_THREAD)
    assert scores(project) == records  # restored, not retrained
    assert proc.stderr.strip().splitlines()[-1] == (
        f"shard: collect --partial: 2 of 4 runs finished, summarised in metrics/summary.md; not finished: {unfinished} seeds 0, 1"
    )
    summary = json.loads((project / "metrics" / "summary.json").read_text())
    assert summary["variants"][finished]["missing_seeds"] == [] and summary["variants"][finished]["f1"]
    assert summary["variants"][unfinished]["missing_seeds"] == [0, 1]
    assert not any((project / "models").glob(f"{unfinished}-*")) and not (project / "data" / "lr" / f"{unfinished}.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plan", "2", "--partial"], "--partial goes with --collect (a summary of the runs finished so far)"),
        (
            ["--collect", "--partial", "--allow-train"],
            "--partial never trains: drop --allow-train, or --partial to finish the study",
        ),
    ],
)
def test_partial_is_only_a_collector_option(args, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert cli_main(["shard", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"layoutpeft shard: error: {message}"]


def test_base_ran_profile_reads_the_base_params(tmp_path):
    from layoutpeft.study.basestudy import base_ran_profile

    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"]):
        git(repo, *args)
    (repo / "params.yaml").write_text("train:\n  max_epochs: 3\nstudy:\n  seeds: [0, 1]\n  variants: [head, lora_r4]\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    assert base_ran_profile("HEAD", {"train.max_epochs": 3, "study.seeds": [0, 1]}, repo)
    assert not base_ran_profile("HEAD", {"train.max_epochs": 4}, repo)
    assert not base_ran_profile("HEAD", {"train.nope": 3}, repo)


def test_report_profile_refuses_a_head_that_did_not_run_it(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # params.yaml is the full study, not the ci profile
    assert cli_main(["report", "--base", "HEAD", "--profile", "ci"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "layoutpeft report: error: params.yaml does not hold profile 'ci''s values: run `layoutpeft profile ci` "
        "first (the report would compare two different profiles)"
    ]


def test_a_refused_stage_does_no_work(monkeypatch, capsys):
    from layoutpeft.errors import REFUSE_ENV, run_main

    called = []
    monkeypatch.setenv(REFUSE_ENV, "tune,train,evaluate")
    assert run_main("train", called.append, []) == 3 and not called
    assert capsys.readouterr().err.startswith("layoutpeft train: refused")
    assert run_main("aggregate", called.append, []) == 0 and called == [[]]  # the collector's own stage runs


def test_extra_runs_are_planned_beside_their_variant():
    params = repo_params(
        variants=["full", "lora"], reference="full", seeds=[0, 1], extra_runs={"lora-5": {"variant": "lora", "seed": 5}}
    )
    plan = shards.plan(params, 2)
    seen = [stage for shard in plan for stage in shard.stages]
    assert sorted(seen) == sorted(stage_names(params) | {"train_extra@lora-5", "evaluate_extra@lora-5"})
    lora = next(shard for shard in plan if "tune@lora" in shard.stages)
    assert "train_extra@lora-5" in lora.stages  # where its lr is tuned


def test_partial_collect_counts_the_extra_runs_too(tmp_path, monkeypatch, capsys):
    """study.extra_runs adds seeds to some variants: the progress line counts and lists them."""
    monkeypatch.chdir(tmp_path)
    study = {
        "variants": ["full", "lora"],
        "seeds": [0, 1],
        "reference": "full",
        "extra_runs": {"lora-5": {"variant": "lora", "seed": 5}},
    }
    (tmp_path / "params.yaml").write_text(json.dumps({"study": study}))
    (tmp_path / "metrics" / "runs").mkdir(parents=True)
    for key in ("full-0", "full-1", "lora-0"):
        (tmp_path / "metrics" / "runs" / f"{key}.json").write_text("{}")
    monkeypatch.setattr(shards.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stdout=""))
    shards.collect_partial()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "shard: collect --partial: 3 of 5 runs finished, summarised in metrics/summary.md; not finished: lora seeds 1, 5"
    )
