"""End to end: a small seed study through the whole DVC pipeline, in temporary git + DVC repositories.

One study (variants full, lora, lora_r4 from `sweeps: {lora: {r: [4]}}`, seeds 0 and 1, one
epoch of the tiny random BERT) is built once per module with `dvc repro` and committed on `main`.
Every other test works in a `git clone` of it that shares its DVC cache (`dvc cache dir --local`),
so outputs are checked out, not retrained. No two tests run the same stage with the same
dependencies, so a stage restored from the shared run cache never stands in for a real run.

- the study itself: every stage ran, summary.json / summary.md / plots;
- `dvc exp run -S variants.lora.r=8` reruns exactly lora's train/evaluate stages + aggregate,
  then nothing; a changed target list reruns lora and lora_r4 (which inherits it), not full;
- a joint grid sweep (targets x r) added by one -S line runs only its points; changing one grid
  value (r 8 -> 16) runs only the new point;
- the pull-request report (`python -m layoutpeft report --base main`) on a branch holding that
  experiment shows exactly lora as changed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from fixtures import git, make_project, run
from fixtures import run_dvc as _run_dvc

pytestmark = pytest.mark.slow

VARIANTS = ["full", "lora", "lora_r4"]
SEEDS = [0, 1]
STUDY = {
    "study.variants": VARIANTS,
    "study.seeds": SEEDS,
    "study.reference": "full",
    "sweeps": {"lora": {"r": [4]}},
    "train.max_epochs": 1,
    "study.tune_lr": True,
    "study.lr_grid": [0.5, 2.0],  # full tries 0.5x and 2x its lr ...
    "variants.lora.lr_grid": [1.0e-3, 4.0e-3],  # ... lora (and its sweep lora_r4) its own absolute grid
    "study.extend_grid": 0,  # two lrs: the best is always at an end (extension: tests/test_protocol.py)
}
PLOT_CSVS = ("f1_vs_rank.csv", "pareto.csv", "cost.csv", "learning_curves.csv")
# One torch thread per stage: on a small shared CPU, torch's default of one thread per core
# oversubscribes it and makes every tiny stage slower (about 2 s per train stage on 2 cores).
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)


def run_dvc(repo: Path, *args: str):
    return _run_dvc(repo, *args, env=ENV)


def ran(process) -> list[str]:
    """Names of the stages DVC ran, in order, from its "Running stage '<name>':" lines.

    Also fails when DVC restored a stage from its run cache instead of running it, so that the
    list is the whole story."""
    assert "is cached - skipping run" not in process.stdout + process.stderr, process.stdout
    return RUNNING.findall(process.stdout)


def stages_of(variants: list[str], seeds: list[int] = SEEDS) -> list[str]:
    """A variant's stages: its lr tuning, then train and evaluate per seed."""
    return [f"tune@{v}" for v in variants] + [
        f"{kind}@{v}-{s}" for kind in ("train", "evaluate") for v in variants for s in seeds
    ]


def summary(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "summary.json").read_text())


def own_part(entry: dict) -> dict:
    """A summary entry less what depends on the family of comparisons (Holm's p, the verdict and the
    equivalence decision made from it, the Bonferroni seed count): what the variant's own runs and the
    reference's decide. Another variant rerun moves the family, not these."""
    entry = json.loads(json.dumps(entry))
    vs = entry.get("vs_reference") or {}
    for key in ("p_holm", "verdict", "equivalence"):
        vs.pop(key, None)
    for key in ("family", "seeds_needed_corrected"):
        (vs.get("power") or {}).pop(key, None)
    return entry


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "commit.gpgsign=false", "commit", "-q", "-m", message)


def clone(study: Path, dest: Path) -> Path:
    """A clone of the committed study sharing its DVC cache, with every output checked out."""
    git(study.parent, "clone", "-q", str(study), str(dest))
    git(dest, "config", "user.email", "tests@example.invalid")
    git(dest, "config", "user.name", "layoutpeft tests")
    run_dvc(dest, "cache", "dir", "--local", str(study / ".dvc" / "cache"))
    run_dvc(dest, "checkout", "-q")
    status = run_dvc(dest, "status", "--json")
    assert json.loads(status.stdout) == {}, status.stdout
    return dest


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_funsd_zip, tiny_checkpoint):
    """(repo, `dvc repro` process): the small study, reproduced and committed on `main`."""
    zip_path, md5 = tiny_funsd_zip
    repo = make_project(tmp_path_factory.mktemp("study") / "study", zip_path, md5, tiny_checkpoint, overrides=STUDY)
    git(repo, "branch", "-M", "main")
    repro = run_dvc(repo, "repro")
    commit(repo, "small study")  # as a user would: dvc.lock, metrics/summary.*, metrics/data.json
    return repo, repro


@pytest.fixture(scope="module")
def lora_r8(study, tmp_path_factory):
    """(repo, `dvc exp run` process): a clone on branch `lora-r8` after
    `dvc exp run -S variants.lora.r=8` (uncommitted; test_pr_report commits it)."""
    repo = clone(study[0], tmp_path_factory.mktemp("lora_r8") / "repo")
    git(repo, "checkout", "-q", "-b", "lora-r8")
    return repo, run_dvc(repo, "exp", "run", "-S", "variants.lora.r=8")


def test_repro_runs_the_whole_study_and_commits(study):
    repo, repro = study
    names = ran(repro)
    print("dvc repro ran:", names)
    assert sorted(names) == sorted(["download", "tokenize", "variants", *stages_of(VARIANTS), "aggregate"])
    assert len(names) == len(set(names)) == 3 + len(VARIANTS) + 2 * len(VARIANTS) * len(SEEDS) + 1
    assert set(names[:3]) == {"download", "tokenize", "variants"} and names[-1] == "aggregate"
    assert names.index("download") < names.index("tokenize")
    for variant in VARIANTS:
        for seed in SEEDS:
            assert (
                names.index(f"tune@{variant}")
                < names.index(f"train@{variant}-{seed}")
                < names.index(f"evaluate@{variant}-{seed}")
            )
    for variant in VARIANTS:  # each variant's lr was chosen from its own grid on validation, and used
        tuned = json.loads((repo / "data" / "lr" / f"{variant}.json").read_text())
        assert tuned["tuned"] and len(tuned["trials"]) == 2 and tuned["chosen_lr"] in tuned["grid"]
        assert sorted(t["lr"] for t in tuned["trials"]) == sorted(tuned["grid"])
        if variant.startswith("lora"):
            assert tuned["grid"] == STUDY["variants.lora.lr_grid"]
        best = max(tuned["trials"], key=lambda t: t["best_val_f1"])["best_val_f1"]
        assert [t for t in tuned["trials"] if t["lr"] == tuned["chosen_lr"]][0]["best_val_f1"] == best
        record = json.loads((repo / "metrics" / "runs" / f"{variant}-0.json").read_text())
        assert record["variant_params"]["lr"] == tuned["chosen_lr"]

    result = summary(repo)
    assert result["reference"] == "full" and result["seeds"] == SEEDS
    assert list(result["variants"]) == VARIANTS
    for name, entry in result["variants"].items():
        assert entry["n_seeds"] == 2 and entry["seeds"] == SEEDS and entry["missing_seeds"] == [], name
        assert entry["f1"] is not None and entry["f1"]["std"] is not None, name
        assert (repo / "models" / f"{name}-0").is_dir() and (repo / "metrics" / "runs" / f"{name}-1.json").is_file()
    assert result["variants"]["full"]["vs_reference"] is None
    for name in ("lora", "lora_r4"):
        vs = result["variants"][name]["vs_reference"]
        assert isinstance(vs, dict) and vs["n_pairs"] == 2, (name, vs)
        assert set(vs) == {
            "test",
            "n_pairs",
            "mean_diff",
            "ci95_low",
            "ci95_high",
            "p_value",
            "pairs",
            "p_holm",
            "equivalence",
            "verdict",
            "power",
            "bootstrap",
        }
        assert vs["test"] == "paired t" and sorted(vs["pairs"]) == ["0", "1"]
    assert list(json.loads((repo / "metrics" / "study.json").read_text())) == VARIANTS
    params = {name: result["variants"][name]["params"] for name in VARIANTS}
    assert params["full"]["method"] == "full"
    assert params["lora"]["r"] == 16 and params["lora_r4"]["r"] == 4
    assert params["lora_r4"]["targets"] == params["lora"]["targets"] == ["query", "key", "value", "attention_output"]

    table = (repo / "metrics" / "summary.md").read_text()
    for name in VARIANTS:
        assert f"| {name}" in table, name
    for name in PLOT_CSVS:
        lines = (repo / "plots" / name).read_text().splitlines()
        assert len(lines) >= 2, name  # a header and at least one row
    # lora and lora_r4 differ only in r: one rank series of two points.
    assert len((repo / "plots" / "f1_vs_rank.csv").read_text().splitlines()) == 3
    images = sorted(p.name for p in (repo / "plots" / "images").glob("*.png"))
    assert images, "no PNG in plots/images/"
    assert all((repo / "plots" / "images" / p).stat().st_size > 0 for p in images)

    # Committed as a user would: git holds the lock file; every output is cached by DVC (its
    # .gitignore files keep them out of git), and nothing is left over.
    committed = set(git(repo, "ls-files").stdout.split())
    assert {"dvc.lock", "params.yaml"} <= committed
    assert not any(
        p.startswith(("models/", "data/", "plots/", "metrics/")) and not p.endswith("/.gitignore") for p in committed
    ), sorted(committed)
    assert git(repo, "status", "--porcelain").stdout == ""
    assert json.loads(run_dvc(repo, "status", "--json").stdout) == {}
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "main"


def test_exp_run_changing_lora_rank_reruns_only_lora(study, lora_r8):
    repo, exp = lora_r8
    names = ran(exp)
    print("dvc exp run -S variants.lora.r=8 ran:", names)
    assert sorted(names) == sorted(["variants", *stages_of(["lora"]), "aggregate"]), names
    assert names[0] == "variants" and names[-1] == "aggregate"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["variants"]["lora"]["r"] == 8 and params["sweeps"] == {"lora": {"r": [4]}}
    before, after = summary(study[0]), summary(repo)
    assert after["variants"]["lora"]["params"]["r"] == 8
    assert after["variants"]["lora"]["params"]["alpha"] == 16.0  # the default alpha = 2r follows r
    assert after["variants"]["lora_r4"]["params"]["r"] == 4
    for name in ("full", "lora_r4"):  # not rerun: the same runs, so the same summary entry
        assert own_part(after["variants"][name]) == own_part(before["variants"][name]), name
    assert after["variants"]["lora"]["n_seeds"] == 2
    assert after["variants"]["lora"]["trainable_params"] < before["variants"]["lora"]["trainable_params"]

    again = run_dvc(repo, "repro")
    assert ran(again) == [], again.stdout
    assert json.loads(run_dvc(repo, "status", "--json").stdout) == {}


def test_exp_run_changing_lora_targets_reruns_lora_and_its_sweep(study, tmp_path):
    repo = clone(study[0], tmp_path / "targets")
    exp = run_dvc(repo, "exp", "run", "-S", "variants.lora.targets=[query,value]")
    names = ran(exp)
    print("dvc exp run -S variants.lora.targets=[query,value] ran:", names)
    # lora_r4 = {base: lora, r: 4} inherits lora's targets; full does not depend on lora at all.
    assert sorted(names) == sorted(["variants", *stages_of(["lora", "lora_r4"]), "aggregate"]), names
    assert names[0] == "variants" and names[-1] == "aggregate"
    assert not any("full" in name for name in names)

    before, after = summary(study[0]), summary(repo)
    for name in ("lora", "lora_r4"):
        assert after["variants"][name]["params"]["targets"] == ["query", "value"], name
    assert after["variants"]["lora"]["params"]["r"] == 16 and after["variants"]["lora_r4"]["params"]["r"] == 4
    assert after["variants"]["full"] == before["variants"]["full"]


def test_exp_run_on_one_grid_value_reruns_only_its_variants(study, tmp_path):
    """A joint grid (targets x r) declared in one -S line runs its named points; then one value of the
    grid changed (r 8 -> 16) runs only the new point: the unchanged point and the rest are not rerun."""
    from layoutpeft.study.profiles import render_value

    repo = clone(study[0], tmp_path / "grid")
    grid = {"targets": [["query", "value"]], "r": [4, 8]}
    points = ["lora_t-qv_r4", "lora_t-qv_r8"]
    first = run_dvc(
        repo,
        "exp",
        "run",
        "-S",
        f"+sweeps.lora.grid={render_value(grid)}",  # + adds a key
        "-S",
        f"study.variants={render_value(VARIANTS + points)}",
    )
    names = ran(first)
    print("grid added, ran:", names)
    assert sorted(names) == sorted(["variants", *stages_of(points), "aggregate"]), names
    after_first = summary(repo)
    assert after_first["variants"]["lora_t-qv_r8"]["params"]["targets"] == ["query", "value"]
    assert after_first["variants"]["lora_t-qv_r8"]["params"]["r"] == 8
    assert after_first["variants"]["lora_t-qv_r4"]["params"]["alpha"] == 8.0

    points = ["lora_t-qv_r4", "lora_t-qv_r16"]
    second = run_dvc(
        repo, "exp", "run", "-S", "sweeps.lora.grid.r=[4,16]", "-S", f"study.variants={render_value(VARIANTS + points)}"
    )
    names = ran(second)
    print("sweeps.lora.grid.r=[4,16], ran:", names)
    assert sorted(names) == sorted(["variants", *stages_of(["lora_t-qv_r16"]), "aggregate"]), names
    after = summary(repo)
    assert list(after["variants"]) == VARIANTS + points
    for name in (*VARIANTS, "lora_t-qv_r4"):  # not rerun: the same runs, so the same summary entry
        assert own_part(after["variants"][name]) == own_part(after_first["variants"][name]), name
    assert after["variants"]["lora_t-qv_r16"]["params"]["r"] == 16
    assert ran(run_dvc(repo, "repro")) == []


def test_pr_report_shows_exactly_lora_changed(study, lora_r8):
    main_repo = study[0]
    repo, _ = lora_r8
    commit(repo, "lora r 16 -> 8")  # the pull request's branch, committed with its results
    main_sha = git(repo, "rev-parse", "main").stdout.strip()
    head_sha = git(repo, "rev-parse", "--short", "HEAD").stdout.strip()
    assert git(main_repo, "rev-parse", "main").stdout.strip() == main_sha

    proc = run([sys.executable, "-m", "layoutpeft", "report", "--base", "main", "--out", "reports/study.md"], cwd=repo, env=ENV)
    assert "report: reports/study.md (3 variants compared, 0 added, 0 removed)" in proc.stdout
    text = (repo / "reports" / "study.md").read_text()
    lines = text.splitlines()

    assert lines[0] == f"# Study report: `{head_sha}` (HEAD) vs `main` (`{main_sha[:7]}`)"
    assert "- **Seeds:** base [0, 1], head [0, 1]" in lines
    # (lora's own flag depends on its scores: only the counts of variants are pinned down here)
    assert any(
        line.startswith("- **Variants:** 3 on both sides, 1 with a changed definition, 0 added, 0 removed;") for line in lines
    )
    # summary.json is a DVC-cached output: read at the base through dvc.api (the shared local cache)
    assert "- Base summary: dvc.api.read('metrics/summary.json', rev='main')" in lines
    assert "[!WARNING]" not in text  # no shared setting (data/model/train/evaluate, seeds) differs

    rows = {
        cells[0]: cells
        for cells in (
            [c.strip() for c in line.strip("|").split(" | ")] for line in lines if re.match(r"\| (full|lora|lora_r4) \|", line)
        )
    }
    assert list(rows) == VARIANTS
    # The definition column compares the resolved variant settings: alpha (default 2r) follows r.
    assert rows["lora"][1] == "changed: alpha: 32 → 16; r: 16 → 8"
    assert rows["full"][1] == "same" and rows["lora_r4"][1] == "same"
    for name in ("full", "lora_r4"):  # unchanged runs: identical F1 on both sides, ΔF1 0, no flag
        assert rows[name][2] == rows[name][3] and rows[name][2].endswith("(n=2)"), rows[name]
        assert rows[name][4].startswith("+0.0 [+0.0, +0.0]") and rows[name][6] == "", rows[name]
    for name in VARIANTS:  # both summaries keep per-seed F1 for seeds 0 and 1: paired
        assert rows[name][5] == "paired (n=2)", rows[name]
    assert "→" in rows["lora"][7]  # fewer trainable params at rank 8

    params_section = text.split("\n## Params changed")[1].split("\n## ")[0]
    assert "### `variants` (params.yaml)" in params_section
    assert [line for line in params_section.splitlines() if line.startswith("| `")] == ["| `variants.lora.r` | 16 → 8 |"]
    assert "## Variants added / removed\n\nNone." in text
    assert "no other metrics file changed" in text  # metrics/data.json: the same data on both sides
    # Base and head PNGs side by side: the base's plots/ is in the (shared) local DVC cache.
    plots_section = text.split("\n## Plots\n")[1]
    images = sorted(p.name for p in (main_repo / "plots" / "images").glob("*.png"))
    assert [line[4:] for line in plots_section.splitlines() if line.startswith("### ")] == images
    assert plots_section.count("| Base | Head |") == len(images)
    for name in images:
        for side in ("base", "head"):
            assert (repo / "reports" / "plots" / f"{side}_plots_images_{name}").stat().st_size > 0
