"""layoutpeft plan / study: DVC's stages to run, counts, estimates from records and from a probe, progress.

The stages a plan lists are checked against what DVC then does: `dvc repro` / `dvc exp run` in a
tiny project, their "Running stage" and "is cached - skipping run" lines.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from types import SimpleNamespace

import pytest

from layoutpeft.study.estimate import Record, Timings, Training, load_records, pack, run_probe, this_device, training_seconds
from layoutpeft.study.plan import RESTORE, RUN, describe, parse_duration, plan_study
from layoutpeft.study.progress import Progress

from fixtures import cpu_train_config, run

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
CACHED = re.compile(r"^Stage '([^']+)' is cached - skipping run", re.MULTILINE)


def names(plan, state=RUN) -> set[str]:
    return {s.name for s in plan.status.by_state(state)}


def dvc(project, *args):
    return run([sys.executable, "-m", "dvc", *args], cwd=project, env=ENV)


@pytest.fixture
def in_project(make_tiny_project, monkeypatch):
    project = make_tiny_project({"train.max_epochs": 1})
    monkeypatch.chdir(project)
    return project


@pytest.mark.slow
def test_plan_lists_what_dvc_runs_then_only_what_changed_then_the_run_cache(in_project):
    project = in_project
    before = plan_study(project, workers=[1], probe_steps=1)
    stages = {
        "download",
        "tokenize",
        "variants",
        "tune@full",
        "tune@lora",
        "train@full-0",
        "train@lora-0",
        "evaluate@full-0",
        "evaluate@lora-0",
        "aggregate",
    }
    assert names(before) == stages
    assert [t.stage for t in before.seed_runs] == ["train@full-0", "train@lora-0"] and before.trials == []
    assert len(before.status.to_run("evaluate")) == 2

    repro = dvc(project, "repro")
    assert set(RUNNING.findall(repro.stdout)) == names(before)
    assert names(plan_study(project, workers=[1])) == set()

    # One variant's setting changes: DVC's own comparison says which stages rerun.
    changed = plan_study(project, sets=["variants.lora.r=8"], workers=[1])
    assert names(changed) == {"variants", "tune@lora", "train@lora-0", "evaluate@lora-0", "aggregate"}
    assert [t.stage for t in changed.trainings] == ["train@lora-0"]
    exp = dvc(project, "exp", "run", "-S", "variants.lora.r=8")
    assert set(RUNNING.findall(exp.stdout)) == names(changed)

    # Back to r 16: every stage of it is in the run cache, and dvc restores instead of training.
    run(["git", "checkout", "params.yaml"], cwd=project)
    back = plan_study(project, workers=[1])
    assert names(back, RESTORE) >= {"tune@lora", "train@lora-0", "evaluate@lora-0"} and back.trainings == []
    again = dvc(project, "repro")
    # aggregate reads whole folders of restored outputs, whose folder hash the plan does not predict:
    # it counts as to run (it takes seconds), and DVC finds it in the run cache too.
    assert set(CACHED.findall(again.stdout)) - {"aggregate"} == names(back, RESTORE)
    assert set(RUNNING.findall(again.stdout)) <= names(back) <= set(RUNNING.findall(again.stdout)) | {"aggregate"}

    # Tuning on: each variant's grid (study.lr_grid x its lr, or its own lr_grid) counted as trials.
    tuned = plan_study(project, sets=["study.tune_lr=true"], workers=[1])
    grids = {v: sum(t.variant == v for t in tuned.trials) for v in ("full", "lora")}
    assert grids == {"full": 3, "lora": 4}
    # ... and with successive halving the trials dropped at the rung are planned to stop there.
    halved = plan_study(
        project, sets=["study.tune_lr=true", "train.max_epochs=4", "study.halving={rungs: [1], keep: 2}"], workers=[1]
    )
    assert sorted(t.epochs for t in halved.trials if t.variant == "lora") == [1, 1, 4, 4]
    assert "but 3 tuning trials that stop at a halving rung" in describe(halved)  # full's 3-value grid drops one


def record(path, variant, checkpoint, train_cfg, device, threads, epochs, fit_s, method="full"):
    train = train_cfg.as_dict()
    data = {
        "variant_params": {**variant, "lr": 1e-3},
        "method": method,
        "model": {"checkpoint": checkpoint},
        "train_params": train,
        "precision": device.precision,
        "train_environment": {"device_name": device.name, "cpu_threads": threads},
        "training": {"epochs_run": epochs, "wall_time_s": fit_s},
        "inference": {"seconds_per_pass": 2.0},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_estimate_from_recorded_runs_equals_their_recorded_times(tmp_path):
    import torch

    cfg = cpu_train_config(max_epochs=30, batch_size=16)
    device = this_device("cpu", "fp32")
    full, lora = {"method": "full"}, {"method": "lora", "r": 8}
    record(tmp_path / "results/x/runs/full-0.json", full, "ckpt", cfg, device, 1, 30, 1200.0)
    record(tmp_path / "results/x/runs/full-1.json", full, "ckpt", cfg, device, 1, 30, 1300.0)
    record(tmp_path / "metrics/runs/lora-0.json", lora, "ckpt", cfg, device, 1, 30, 900.0, method="lora")
    record(tmp_path / "metrics/runs/other-0.json", full, "ckpt", cfg, device, 2, 30, 50.0)  # another thread count
    records = load_records(tmp_path)
    assert len(records) == 4 and all(isinstance(r, Record) for r in records)

    def no_probe(*args, **kwargs):
        raise AssertionError("recorded settings must not be probed")

    timings = Timings(records, "ckpt", cfg, device, torch.device("cpu"))
    timings.probe = no_probe
    for variant, recorded in ((full, 1250.0), (lora, 900.0)):
        timing = timings.epoch(variant, threads=1)
        assert timing.source.startswith("recorded") and timing.recorded_fit_s == pytest.approx(recorded)
        assert training_seconds(Training("train@x-2", "x", variant, 30), timing) == pytest.approx(recorded)
        # a longer schedule: the same seconds per epoch
        assert training_seconds(Training("train@x-2", "x", variant, 60), timing) == pytest.approx(2 * recorded)
    assert timings.epoch(full, threads=2).recorded_fit_s == pytest.approx(50.0)
    # another method of the same model and settings: scaled from the recorded ones by the method cost
    scaled = timings.epoch({"method": "head"}, threads=1)
    assert "method cost" in scaled.source and scaled.epoch_s < timings.epoch(full, threads=1).epoch_s
    # other settings (batch 8) or another model: nothing recorded matches
    assert Timings(records, "ckpt", cpu_train_config(max_epochs=30, batch_size=8), device, None).matching(1) == []
    assert Timings(records, "other", cfg, device, None).matching(1) == []


def test_probe_runs_in_seconds_on_a_tiny_model(tiny_checkpoint, tiny_tokenized):
    import torch

    start = time.perf_counter()
    probe = run_probe(
        str(tiny_checkpoint),
        cpu_train_config(batch_size=4),
        torch.device("cpu"),
        threads=1,
        tokenized=tiny_tokenized / "data" / "tokenized",
        steps=2,
    )
    assert time.perf_counter() - start < 60
    assert probe.step_s > 0 and probe.forward_s_per_token > 0 and probe.epoch_s > probe.step_s
    assert probe.windows["train"] > 0 and probe.windows["test"] > 0 and probe.data.endswith("tokenized")
    assert f"{probe.step_s:.2f} s/step" in probe.describe()
    # before tokenization: FUNSD's sizes
    early = run_probe(
        str(tiny_checkpoint),
        cpu_train_config(batch_size=4),
        torch.device("cpu"),
        threads=1,
        tokenized=tiny_tokenized / "missing",
        steps=1,
    )
    assert early.windows["test"] == 52 and "not tokenized" in early.data


def test_plan_estimates_from_a_probe_without_records(in_project, tiny_checkpoint):
    plan = plan_study(in_project, workers=[1, 2], probe_steps=1)
    assert plan.timing_notes and all("probe:" in note for note in plan.timing_notes)
    assert plan.estimates[1] > 0 and plan.estimates[2] <= plan.estimates[1]
    assert plan.device.kind == "cpu" and plan.device.name


def test_pack_is_longest_first():
    assert pack([5, 4, 3, 3, 3], 1) == 18
    assert pack([5, 4, 3, 3, 3], 2) == 10  # longest first onto the least loaded: [5, 3] and [4, 3, 3]
    assert pack([], 3) == 0


def test_parse_duration():
    assert parse_duration("8h") == 8 * 3600 and parse_duration("1h30m") == 5400 and parse_duration("2d") == 172800
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45 and parse_duration("1.5") == 5400
    with pytest.raises(Exception, match="--budget"):
        parse_duration("soon")


def fake_plan(stages: dict[str, tuple[int, float]], epochs: int):
    """A StudyPlan stand-in: stage -> (trainings, estimated seconds)."""
    costs = [
        SimpleNamespace(stage=name, seconds=seconds, trainings=[SimpleNamespace(epochs=epochs) for _ in range(n)])
        for name, (n, seconds) in stages.items()
    ]
    return SimpleNamespace(costs={1: costs}, max_epochs=epochs)


def test_progress_counts_trainings_epochs_and_time_left():
    now = [0.0]
    plan = fake_plan(
        {"tune@lora": (2, 200.0), "train@lora-0": (1, 100.0), "train@full-0": (1, 100.0), "evaluate@lora-0": (0, 10.0)}, epochs=10
    )
    progress = Progress(plan, clock=lambda: now[0])
    assert progress.total == 4
    assert progress.feed("Running stage 'tune@lora':") is None
    now[0] = 10.0
    line = progress.feed("  lr 0.001    epoch   1  train loss 1.0  val loss 1.0  val F1 0.1  (9.0s)")
    assert line.startswith("[study] training 1/4 (tune@lora lr 0.001), epoch 1/10,")
    # on pace: 10 s per epoch as estimated -> 19 epochs of this stage and 210 s of the others left
    assert progress.seconds_left() == pytest.approx(190 + 210)
    now[0] = 30.0  # twice as slow as estimated: the time left doubles
    progress.feed("  lr 0.001    epoch   2  train loss 1.0  val loss 1.0  val F1 0.1  (9.0s)")
    assert progress.pace() == pytest.approx(1.5)
    progress.feed("  lr 0.003    epoch   1  train loss 1.0  val loss 1.0  val F1 0.1  (9.0s)")
    assert "training 2/4 (tune@lora lr 0.003)" in progress.line(1)
    progress.feed("Stage 'train@full-0' is cached - skipping run, checking out outputs")
    assert progress.total == 3
    progress.feed("Running stage 'train@lora-0':")
    line = progress.feed("  epoch   1  train loss 1.0  val loss 1.0  val F1 0.1  (9.0s)")
    assert "training 3/3 (train@lora-0), epoch 1/10" in line


def test_study_chooses_by_device_and_says_so():
    from layoutpeft.commands.study import choose

    assert choose("", has_gpu=True)[:2] == (None, [])
    profile, sets, why = choose("", has_gpu=False)
    assert profile == "reference" and sets == [] and "no GPU" in why
    # the reference pins bf16: a CPU without bf16 units would emulate it about 10x slower
    profile, sets, why = choose("", has_gpu=False, cpu_bf16=False)
    assert profile == "reference" and sets == ["train.precision=fp32"] and "no bf16 units" in why
    assert choose("laptop+offline", has_gpu=True) == ("laptop+offline", [], "chosen with PROFILE=laptop+offline")
    assert choose("params.yaml", has_gpu=False)[0] is None


def test_make_study_calls_layoutpeft_study():
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nstudy: setup\n", 1)[1].split("\n\n", 1)[0]
    assert "layoutpeft study $(if $(PROFILE),--profile $(PROFILE))" in recipe
    assert shutil.which("make") is None or "dvc repro" not in recipe


def test_study_plan_only_says_which_study_first_then_its_plan(in_project):
    proc = run([sys.executable, "-m", "layoutpeft", "study", "--profile", "params.yaml", "--plan-only"], cwd=in_project, env=ENV)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("study: params.yaml (chosen with PROFILE=params.yaml); estimated ")
    assert lines[1].startswith("plan: params.yaml: dvc repro")
    assert any(line.startswith("DVC: 10 of 10 stages to run") for line in lines)
    assert not (in_project / "dvc.lock").exists()  # nothing ran


def test_study_runs_dvc_as_profile_does_filtered_and_in_its_own_group(monkeypatch, capsys):
    """`layoutpeft study` launches dvc through layoutpeft.quiet_dvc (DVC's known first-run lines
    filtered, as under `layoutpeft profile`) in its own process group (an interrupt reaches it once)."""
    import types

    from layoutpeft.commands import study

    command = [sys.executable, "-m", "dvc", "repro"]
    plan = types.SimpleNamespace(name="params.yaml", estimates={1: 60.0}, command=command)
    monkeypatch.setattr(study, "plan_study", lambda *a, **k: plan)
    monkeypatch.setattr(study, "describe", lambda p: "plan: (described)")
    monkeypatch.setattr(study, "Progress", lambda p: types.SimpleNamespace(feed=lambda line: None))
    launched = {}

    class FakeDvc:
        def __init__(self, cmd, **kwargs):
            launched.update(cmd=cmd, **kwargs)
            self.stdout = iter(["Running stage 'download':\n"])
            self.pid = 0

        def wait(self):
            return 0

    monkeypatch.setattr(study.subprocess, "Popen", FakeDvc)
    assert study.main(["--profile", "params.yaml"]) == 0
    assert launched["cmd"] == [sys.executable, "-m", "layoutpeft.quiet_dvc", "repro"]
    assert launched["start_new_session"] is True
    assert "Running stage 'download':" in capsys.readouterr().out
