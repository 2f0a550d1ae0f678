"""`layoutpeft publish`: a study's results copied into results/<name>/ for git, README blocks regenerated;
the committed generated blocks are what their generators write."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from layoutpeft.errors import LayoutpeftError
from layoutpeft.study.formatting import missing_seeds
from layoutpeft.study.publish import publish, short_table, update_readme_block
from layoutpeft.study.summary import trained_on


def fake_study(root):
    (root / "metrics" / "runs").mkdir(parents=True)
    (root / "data" / "lr").mkdir(parents=True)
    (root / "plots" / "images").mkdir(parents=True)
    run = {
        "environment": {"device": "cpu", "git_commit": "abc", "cpu_flags": ["avx2", "avx512_bf16"]},
        "train_params": {"max_epochs": 30},
        "model": {"checkpoint": "package:x/model", "source_type": "bert", "new_tables": "train", "new_tables_lr": 1.5e-4},
        "precision": "bf16",
    }
    summary = {
        "reference": "full",
        "seeds": [0, 1],
        "variants": {"full": {"seeds": [0, 1], "missing_seeds": []}, "lora": {"seeds": [0], "missing_seeds": [1]}},
        "trained": trained_on({"full": {0: run, 1: run}, "lora": {0: run}}),
    }  # as aggregate writes it
    (root / "metrics" / "summary.json").write_text(json.dumps(summary))
    (root / "metrics" / "summary.md").write_text("| Variant |\n|---|\n| full |\n")
    (root / "metrics" / "study.json").write_text("{}")
    for key in ("full-0", "full-1", "lora-0"):
        (root / "metrics" / "runs" / f"{key}.json").write_text(json.dumps(run))
    (root / "metrics" / "runs" / "other-0.json").write_text("{}")  # not in the study: not published
    (root / "data" / "lr" / "lora.json").write_text('{"chosen_lr": 0.001}')
    (root / "plots" / "images" / "pareto.png").write_bytes(b"png")
    (root / "params.yaml").write_text("study: {}\n")


def test_publish_copies_exactly_the_study(tmp_path):
    fake_study(tmp_path)
    target = publish("ref", "layoutpeft profile reference+offline", root=tmp_path)
    assert sorted(p.name for p in (target / "runs").iterdir()) == ["full-0.json", "full-1.json", "lora-0.json"]
    assert (target / "lr" / "lora.json").is_file() and (target / "plots" / "pareto.png").is_file()
    text = (target / "README.md").read_text()
    assert "`layoutpeft profile reference+offline`" in text and "missing: lora seed 1" in text
    assert "CPU flags avx2 avx512_bf16" in text
    assert "package:x/model" in text and "bf16" in text and "new 2-D position tables train at lr 0.00015)" in text


def test_publish_refuses_without_a_summary_and_keeps_old_results(tmp_path):
    fake_study(tmp_path)
    publish("ref", "cmd", root=tmp_path)
    (tmp_path / "metrics" / "summary.json").unlink()
    with pytest.raises(LayoutpeftError, match="summary.json: missing"):
        publish("ref", "cmd", root=tmp_path)
    assert (tmp_path / "results" / "ref" / "summary.json").is_file()
    with pytest.raises(LayoutpeftError, match="results name"):
        publish("../x", "cmd", root=tmp_path)


def test_readme_block_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:ref -->\nold\n<!-- /results:ref -->\nb\n")
    assert update_readme_block(readme, "ref", "new table\n")
    assert readme.read_text() == "a\n<!-- results:ref -->\nnew table\n<!-- /results:ref -->\nb\n"
    assert not update_readme_block(readme, "other", "x")


def test_missing_runs_read_well():
    assert missing_seeds({"full": [1, 2], "lora": [1]}) == "full seeds 1, 2; lora seed 1"


def test_publish_command_puts_a_short_table_in_the_readme_and_keeps_the_story(tmp_path, monkeypatch):
    from layoutpeft.commands import publish as command

    fake_study(tmp_path)
    (tmp_path / "metrics" / "summary.md").write_text(
        "# Seed study\n\n| Variant | lr | F1 (%) | Δ F1 vs full (pts) |\n|---|---:|---:|---:|\n"
        "| **full** | 0.1 | 50.0 ± 1.0 | reference |\n\n| other table |\n|---|\n"
    )
    (tmp_path / "README.md").write_text("## Results\n<!-- results:ref -->\n<!-- /results:ref -->\n")
    monkeypatch.chdir(tmp_path)
    assert command.main(["ref", "--command", "cmd"]) == 0
    block = (tmp_path / "README.md").read_text()
    assert "| Variant | F1 (%) | Δ F1 vs full (pts) |\n| --- | ---: | ---: |\n| **full** | 50.0 ± 1.0 | reference |\n" in block
    assert "other table" not in block and "| lr |" not in block  # the first table, its short columns only
    assert "[results/ref/summary.md](results/ref/summary.md)" in block
    folder = tmp_path / "results" / "ref" / "README.md"
    text = folder.read_text()
    assert text.startswith("<!-- results:ref -->\n# Study results: ref\n") and "- **Reproduce:** `cmd`" in text

    # what was written by hand around the generated part survives a republish; the part is regenerated
    folder.write_text("Intro by hand.\n" + text + "\n## What the study shows\n\nBy hand.\n")
    assert command.main(["ref", "--command", "cmd2"]) == 0
    text = folder.read_text()
    assert text.startswith("Intro by hand.\n<!-- results:ref -->\n# Study results: ref\n")
    assert "- **Reproduce:** `cmd2`" in text and "`cmd`" not in text
    assert text.endswith("<!-- /results:ref -->\n\n## What the study shows\n\nBy hand.\n")


def block_of(readme: Path, name: str) -> str:
    match = re.search(rf"<!-- results:{name} -->\n(.*?)<!-- /results:{name} -->", readme.read_text(), re.S)
    assert match, f"{readme}: no results:{name} block"
    return match.group(1)


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_committed_readme_table_is_the_published_studys():
    expected = short_table(REPO_ROOT / "results" / "reference-minilm", REPO_ROOT)
    assert block_of(REPO_ROOT / "README.md", "reference-minilm") == expected.rstrip() + "\n"


def test_committed_benchmark_tables_are_their_result_files():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO_ROOT / "benchmarks" / "readme_tables.py")
    readme_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_tables)
    readme = REPO_ROOT / "benchmarks" / "README.md"
    blocks = re.findall(r"<!-- results:([\w.-]+) -->\n\*Generated from `([^`]+)`", readme.read_text())
    assert blocks, "benchmarks/README.md has no generated block"
    for name, result in blocks:
        assert block_of(readme, name) == readme_tables.body_of(Path(result)).rstrip() + "\n"


def test_cpu_flags_come_from_a_run_that_recorded_them(tmp_path):
    fake_study(tmp_path)
    first = tmp_path / "metrics" / "runs" / "full-0.json"  # recorded before CPU flags were part of a record
    first.write_text(first.read_text().replace(', "cpu_flags": ["avx2", "avx512_bf16"]', ""))
    assert "cpu_flags" not in first.read_text()
    assert ", CPU flags avx2 avx512_bf16); " in (publish("ref", "cmd", root=tmp_path) / "README.md").read_text()


def test_runs_over_several_commits_say_whether_their_code_agreed(tmp_path):
    fake_study(tmp_path)
    record = tmp_path / "metrics" / "runs" / "lora-0.json"
    record.write_text(record.read_text().replace('"git_commit": "abc"', '"git_commit": "def"'))
    assert "- **Code:** commit abc" not in (publish("ref", "cmd", root=tmp_path) / "README.md").read_text()

    def lock(train_md5: str) -> str:
        dep = "      - path: layoutpeft/train/engine.py\n        md5: {}\n"
        return (
            "schema: '2.0'\nstages:\n  train@full-0:\n    deps:\n"
            + dep.format("aaa")
            + "  train@lora-0:\n    deps:\n"
            + dep.format(train_md5)
            + "  aggregate:\n    deps:\n"
            + dep.format("zzz")
        )  # not a training stage: not compared

    (tmp_path / "dvc.lock").write_text(lock("aaa"))
    text = (publish("ref", "cmd", root=tmp_path) / "README.md").read_text()
    assert (
        "- **Code:** runs made at 2 commits (abc, def); every tune@/train@/evaluate@ stage ran the same code "
        "(dvc.lock: equal hashes of its stages/ and layoutpeft/ deps)"
    ) in text
    (tmp_path / "dvc.lock").write_text(lock("bbb"))
    text = (publish("ref", "cmd", root=tmp_path) / "README.md").read_text()
    assert "- **Code:** runs made at 2 commits (abc, def); their code differs between runs (see dvc.lock)" in text


def test_rerender_rebuilds_the_summary_from_the_committed_records_only(tmp_path):
    """The reference study's own records (copied): Holm-adjusted p and the method-only counts, no retraining."""
    import shutil
    from pathlib import Path

    from layoutpeft.study.publish import rerender

    source = Path(__file__).resolve().parents[1] / "results" / "reference-minilm"
    target = tmp_path / "results" / "ref"
    target.mkdir(parents=True)
    for name in ("runs", "lr"):
        shutil.copytree(source / name, target / name)
    shutil.copyfile(source / "params.yaml", target / "params.yaml")
    rerender("ref", results_dir=tmp_path / "results")
    summary = json.loads((target / "summary.json").read_text())
    lora = summary["variants"]["lora"]
    assert lora["vs_reference"]["p_value"] == pytest.approx(0.0462, abs=1e-4)
    assert lora["vs_reference"]["p_holm"] == pytest.approx(0.1385, abs=1e-4)  # 3 x 0.0462, the third smallest
    assert lora["method_params"] == 294_912 and summary["variants"]["vera"]["method_params"] == 15_360
    power = summary["variants"]["lora_qkvo_ffn"]["vs_reference"]["power"]
    assert (power["seeds_needed"], power["seeds_needed_corrected"]) == (6, 10)
    assert "(Holm 0.14)" in (target / "summary.md").read_text()
    assert sorted(p.name for p in (target / "plots").iterdir())[:2] == ["f1_vs_rank.png", "learning_curves.png"]
    with pytest.raises(LayoutpeftError, match="not a published study"):
        rerender("missing", results_dir=tmp_path / "results")
