"""layoutpeft.study.report / `layoutpeft report`: base-vs-head study comparison (pure table functions, the
choice of test, shared formats with the summary, the CI workflow, and end-to-end runs in a temporary
git + DVC repository, without training)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from layoutpeft.errors import LayoutpeftError
from layoutpeft.study import formatting as fmt
from layoutpeft.study import summary as summ
from layoutpeft.study import tables
from layoutpeft.study.comparison import (
    compare_summaries,
    compare_variant,
    group_params_diff,
    render_report,
    shared_setting_changes,
    trained_lines,
)
from layoutpeft.study.formatting import change as fmt_change
from layoutpeft.study.report import write_report
from layoutpeft.study.stats import welch_interval

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "report"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def comparison():
    return compare_summaries(load("base_summary.json"), load("head_summary.json"))


def row(comparison, name):
    return next(r for r in comparison["rows"] if r["variant"] == name)


# ---------------------------------------------------------------- table from two summaries
def test_variants_on_both_sides_added_and_removed(comparison):
    assert [r["variant"] for r in comparison["rows"]] == ["full", "head", "bitfit", "lora_r4"]
    assert comparison["added"] == ["lora_r8"]
    assert comparison["removed"] == ["ia3"]
    assert comparison["changed_definition"] == ["lora_r4"]
    assert comparison["flagged_up"] == ["lora_r4"]
    assert comparison["flagged_down"] == ["head"]


def test_lora_r4_row(comparison):
    # base 0.600 (std 0.010, n 3), head 0.650 (std 0.010, n 3): se = sqrt(2 * 0.01**2 / 3)
    # = 0.0081650, Welch df = 4, t(0.975, 4) = 2.776445, half-width 0.022670.
    r = row(comparison, "lora_r4")
    assert r["definition"] == ["lr: 0.0005 → 0.001"]
    assert r["delta"] == pytest.approx(0.050)
    assert r["delta_low"] == pytest.approx(0.027330, abs=1e-6)
    assert r["delta_high"] == pytest.approx(0.072670, abs=1e-6)
    assert r["flag"] == "▲"
    assert r["cis_overlap"] is False  # [0.575159, 0.624841] vs [0.625159, 0.674841]
    assert r["trainable_params"] == (152000, 152000)
    assert r["train_time_s"] == (200.0, 180.0)
    assert r["peak_memory_mb"] == (1500.0, 1450.0)


def test_head_row_drops(comparison):
    # base 0.400 (std 0.020), head 0.300 (std 0.010), n 3 each: se = 0.0129099,
    # Welch df = 2.941176, t = 3.21877, half-width 0.041554.
    r = row(comparison, "head")
    assert r["definition"] == []
    assert r["delta"] == pytest.approx(-0.100)
    assert (r["delta_low"], r["delta_high"]) == pytest.approx((-0.141554, -0.058446), abs=1e-6)
    assert r["flag"] == "▼"


def test_full_row_unchanged_and_bitfit_single_seed(comparison):
    full = row(comparison, "full")
    assert full["flag"] == "" and full["cis_overlap"] is True
    assert (full["delta_low"], full["delta_high"]) == pytest.approx((-0.023364, 0.027364), abs=1e-6)
    bitfit = row(comparison, "bitfit")
    assert (bitfit["head_n"], bitfit["flag"], bitfit["delta_low"]) == (1, "n<2", None)
    assert bitfit["delta"] == pytest.approx(0.010)


def test_flags_agree_with_scipy_welch_test(comparison):
    from scipy.stats import ttest_ind_from_stats

    for r in comparison["rows"]:
        if r["flag"] == "n<2":
            continue
        b, h = r["base_f1"], r["head_f1"]
        p = ttest_ind_from_stats(h["mean"], h["std"], r["head_n"], b["mean"], b["std"], r["base_n"], equal_var=False).pvalue
        assert (r["flag"] in ("▲", "▼")) == (p < 0.05), r["variant"]


def test_welch_interval_edge_cases():
    assert welch_interval(0.5, None, 1, 0.6, 0.01, 3) == pytest.approx((0.1, None, None), nan_ok=True)
    assert welch_interval(0.5, 0.0, 3, 0.6, 0.0, 3) == pytest.approx((0.1, 0.1, 0.1))
    # one side without spread: df falls back to the other side's n - 1 = 2, t = 4.302653
    diff, low, high = welch_interval(0.5, 0.0, 3, 0.6, 0.03, 3)
    assert (high - low) / 2 == pytest.approx(4.302653 * 0.03 / 3**0.5, rel=1e-6)


# ---------------------------------------------------------------- params diff
def test_changed_params_grouped_by_section():
    grouped = group_params_diff(load("params_diff.json"))
    assert grouped == {
        "params.yaml": {
            "study": [
                ("study.variants", ["full", "head", "bitfit", "lora_r4", "ia3"], ["full", "head", "bitfit", "lora_r4", "lora_r8"])
            ],
            "sweeps": [("sweeps.lora.r", [4], [4, 8])],
            "variants": [("variants.lora.lr", 0.0005, 0.001)],
        }
    }


def test_long_lists_show_what_was_added_and_removed():
    old = [f"v{i}" for i in range(10)]
    assert fmt_change(old, old[:8] + ["w"]) == "10 → 9 items; removed v8, v9; added w"
    assert fmt_change([4], [4, 8]) == "[4] → [4, 8]"
    assert fmt_change(None, 3) == "(none) → 3"


def test_shared_settings_warning():
    diff = load("params_diff.json")
    assert shared_setting_changes(diff) == []
    diff["params.yaml"]["train.max_epochs"] = {"old": 100, "new": 3, "diff": -97}
    diff["params.yaml"]["data.url"] = {"old": "a.zip", "new": "b.zip"}
    assert shared_setting_changes(diff) == ["data.url", "train.max_epochs"]
    assert shared_setting_changes({}, {"base_seeds": [0, 1, 2], "head_seeds": [0, 1]}) == ["study.seeds"]


# ---------------------------------------------------------------- rendered report
def test_rendered_report(comparison):
    diff = load("params_diff.json")
    text = render_report(
        base_label="`main` (`abc1234`)",
        head_label="workspace",
        comparison=comparison,
        params_grouped=group_params_diff(diff),
        shared_changes=shared_setting_changes(diff, comparison),
        metrics_diff={
            "metrics/study.json": {"lora_r4.f1": {"old": 0.6, "new": 0.65}},
            "metrics/data.json": {"train.words": {"old": 18579, "new": 18600, "diff": 21}},
        },
        plots=[{"title": "f1_vs_rank.png", "base": "plots/base_f1.png", "head": "plots/head_f1.png"}],
    )
    lines = text.splitlines()
    assert lines[0] == "# Study report: workspace vs `main` (`abc1234`)"
    for expected in [
        "| full | same | 70.0 ± 2.5 (n=3) | 70.2 ± 3.0 (n=3) | +0.2 [-2.3, +2.7], p=0.84 | Welch |  "
        "| 22.7 M | 5.0 min → 5.5 min (+10 %) | 2.1 GB | 90.8 MB |",
        "| head | same | 40.0 ± 5.0 (n=3) | 30.0 ± 2.5 (n=3) | -10.0 [-14.2, -5.8], p=0.005 | Welch | ▼ "
        "| 1.16 k | 100 s | 900 MB | 4.62 kB |",
        "| bitfit | same | 55.0 ± 3.7 (n=3) | 56.0 (n=1) | +1.0, p n/a | Welch | n<2 | 40 k | 2.5 min | 1.2 GB | 160 kB |",
        "| lora_r4 | changed: lr: 0.0005 → 0.001 | 60.0 ± 2.5 (n=3) | 65.0 ± 2.5 (n=3) "
        "| +5.0 [+2.7, +7.3], p=0.004 | Welch | ▲ | 152 k | 3.3 min → 3.0 min (-10 %) | 1.5 GB → 1.45 GB (-3 %) | 608 kB |",
        "- **Added:** `lora_r8`",
        "- **Removed:** `ia3`",
        "| lora_r8 | 66.0 ± 2.5 (n=3) | 304 k | 3.2 min | 1.5 GB | 1.22 MB |",
        "| `study.variants` | [full, head, bitfit, lora_r4, ia3] → [full, head, bitfit, lora_r4, lora_r8] |",
        "| `sweeps.lora.r` | [4] → [4, 8] |",
        "| `variants.lora.lr` | 0.0005 → 0.001 |",
        "| `train.words` | 18579 | 18600 | 21 |",
        "| ![base](plots/base_f1.png) | ![head](plots/head_f1.png) |",
    ]:
        assert expected in lines, expected
    assert "**Test and flag rule.**" in text and "Welch" in text and "paired" in text
    assert "1 numeric value(s) changed in `metrics/study.json`" in text
    assert "[!WARNING]" not in text  # no shared setting changed


def test_report_warns_when_shared_settings_differ(comparison):
    text = render_report(
        base_label="b", head_label="h", comparison=comparison, params_grouped={}, shared_changes=["train.max_epochs"]
    )
    assert "> [!WARNING]" in text and "`train.max_epochs`" in text


def test_the_report_says_what_each_side_was_trained_on(comparison):
    minilm = {"model": ["`package:m`, a BERT checkpoint turned LayoutLM"], "schedule": ["up to 30 epochs, batch 16"]}
    assert trained_lines(minilm, minilm) == [
        "- **Model:** `package:m`, a BERT checkpoint turned LayoutLM",
        "- **Schedule:** up to 30 epochs, batch 16",
    ]
    assert trained_lines(None, minilm)[1] == "- **Schedule:** up to 30 epochs, batch 16"
    short = {**minilm, "schedule": ["up to 3 epochs, batch 16"]}
    assert trained_lines(minilm, short)[1] == ("- **Schedule:** base up to 30 epochs, batch 16; head up to 3 epochs, batch 16")
    assert trained_lines({}, {}) == []  # summaries from before the key: nothing said
    text = render_report(
        base_label="b",
        head_label="h",
        comparison={**comparison, "head_trained": minilm, "base_trained": short},
        params_grouped={},
        shared_changes=[],
    )
    assert "- **Schedule:** base up to 3 epochs, batch 16; head up to 30 epochs, batch 16" in text.splitlines()


# ---------------------------------------------------------------- the workflow
def test_workflow_file():
    text = (ROOT / ".github" / "workflows" / "study.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert {"pull_request", "workflow_dispatch"} <= set(triggers)
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    steps = workflow["jobs"]["study"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    uses = [step.get("uses", "") for step in steps]
    assert "make setup" in runs
    assert ".venv/bin/layoutpeft profile ci" in runs
    assert ".venv/bin/layoutpeft report --base" in runs
    assert "cml comment update --target=pr --publish" in runs
    assert any(u.startswith("iterative/setup-cml@v2") for u in uses)
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11" and python["with"]["cache"] == "pip"
    comment = next(s for s in steps if "cml comment" in s.get("run", ""))
    assert comment["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


# ---------------------------------------------------------------- end to end, no training
PARAMS = """\
variants:
  full: {method: full, lr: 5.0e-5}
  head: {method: head, lr: 1.0e-3}
  lora: {method: lora, r: 16, dropout: 0.1, targets: [query, value], lr: 5.0e-4}
study:
  reference: full
  seeds: [0, 1, 2]
  variants: [full, head, lora]
"""
DVC_YAML = """\
stages:
  aggregate:
    cmd: python -c "print('the real stage writes metrics/summary.json')"
    params:
      - variants
      - study
    metrics:
      - metrics/summary.json:
          cache: false
"""


def fake_summary(params: dict, f1: dict[str, float]) -> dict:
    """What the aggregate stage would write for `params` (docs/result-files.md), F1 given."""
    seeds = params["study"]["seeds"]
    half = 4.302653 * 0.01 / 3**0.5  # t(0.975, 2) * std / sqrt(3)

    def stats(mean, std=0.01):
        return {"mean": mean, "std": std, "ci95_low": mean - half * std / 0.01, "ci95_high": mean + half * std / 0.01}

    variants = {}
    for name in params["study"]["variants"]:
        spec = params["variants"][name]
        variants[name] = {
            "method": spec["method"],
            "params": spec,
            "n_seeds": len(seeds),
            "seeds": seeds,
            "missing_seeds": [],
            "f1": stats(f1[name]),
            "precision": stats(f1[name]),
            "recall": stats(f1[name]),
            "trainable_params": 1000 * spec.get("r", 1),
            "total_params": 22_700_000,
            "trainable_share": 1000 * spec.get("r", 1) / 22_700_000,
            "saved_bytes": 4000,
            "train_time_s": stats(100.0, 1.0),
            "epoch_time_s": stats(5.0, 0.1),
            "epochs_run": stats(20.0, 0.0),
            "peak_memory_mb": stats(1000.0, 1.0),
            "inference_tokens_per_s": stats(5000.0, 10.0),
            "merged_inference_tokens_per_s": None,
            "vs_reference": None,
        }
    return {"reference": params["study"]["reference"], "seeds": seeds, "variants": variants}


def sh(*cmd, cwd):
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1", GIT_CONFIG_NOSYSTEM="1")
    )
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def init_repo(repo):
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "config", "user.email", "test@example.com", cwd=repo)
    sh("git", "config", "user.name", "test", cwd=repo)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=repo)


@pytest.mark.slow
def test_end_to_end_report_in_a_temporary_repository(tmp_path):
    repo = tmp_path / "study"
    init_repo(repo)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "metrics").mkdir()
    params = yaml.safe_load(PARAMS)
    f1 = {"full": 0.70, "head": 0.40, "lora": 0.68}
    (repo / "metrics" / "summary.json").write_text(json.dumps(fake_summary(params, f1), indent=2))
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "study on main", cwd=repo)
    main_sha = sh("git", "rev-parse", "--short", "HEAD", cwd=repo).strip()

    # A pull request: lora's rank 16 -> 8; the study rerun changes only lora's results.
    sh("git", "checkout", "-q", "-b", "lora-r8", cwd=repo)
    (repo / "params.yaml").write_text(PARAMS.replace("r: 16", "r: 8"))
    params["variants"]["lora"]["r"] = 8
    f1["lora"] = 0.64
    (repo / "metrics" / "summary.json").write_text(json.dumps(fake_summary(params, f1), indent=2))

    env = dict(os.environ, PYTHONPATH=str(ROOT), DVC_NO_ANALYTICS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "layoutpeft", "report", "--base", "main"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "report: reports/study.md (3 variants compared, 0 added, 0 removed)" in proc.stdout
    text = (repo / "reports" / "study.md").read_text()

    assert (
        text.splitlines()[0] == f"# Study report: workspace (uncommitted study on top of `{main_sha}`) vs `main` (`{main_sha}`)"
    )
    table = [line for line in text.splitlines() if re.match(r"\| (full|head|lora) \|", line)]
    assert [line.split(" | ")[:2] for line in table] == [["| full", "same"], ["| head", "same"], ["| lora", "changed: r: 16 → 8"]]
    # fake_summary keeps no per-seed values (as summaries before they were kept): Welch.
    assert table[0].split(" | ")[4:7] == ["+0.0 [-2.3, +2.3], p=1.00", "Welch", ""]
    assert table[1].split(" | ")[4:7] == ["+0.0 [-2.3, +2.3], p=1.00", "Welch", ""]
    # 0.68 -> 0.64 with std 0.01 on 3 seeds each: Δ -4.0 pts, half-width 2.2670 -> flagged.
    assert table[2].split(" | ")[4:8] == ["-4.0 [-6.3, -1.7], p=0.008", "Welch", "▼", "16 k → 8 k (-50 %)"]
    params_section = text.split("\n## Params changed")[1].split("\n## ")[0]
    assert [line for line in params_section.splitlines() if line.startswith("| `")] == ["| `variants.lora.r` | 16 → 8 |"]
    assert "### `variants` (params.yaml)" in params_section
    assert "## Variants added / removed\n\nNone." in text
    assert "[!WARNING]" not in text
    assert "Base summary: git show main:metrics/summary.json" in text

    # Committed on the branch, the head is labelled with its sha.
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "lora r8", cwd=repo)
    head_sha = sh("git", "rev-parse", "--short", "HEAD", cwd=repo).strip()
    proc = subprocess.run(
        [sys.executable, "-m", "layoutpeft", "report", "--base", "main", "--out", "out/r.md"],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (repo / "out" / "r.md").read_text().startswith(f"# Study report: `{head_sha}` (HEAD) vs `main`")

    # An unknown base is a clear one-line error.
    proc = subprocess.run(
        [sys.executable, "-m", "layoutpeft", "report", "--base", "nope"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "layoutpeft report: error: --base 'nope' is not a git revision here (fetch it first: git fetch origin "
        "<branch>, or check out with fetch-depth: 0)"
    ]


def test_no_base_summary_makes_every_variant_added():
    comparison = compare_summaries(None, load("head_summary.json"))
    assert comparison["rows"] == [] and comparison["removed"] == []
    assert comparison["added"] == ["full", "head", "bitfit", "lora_r4", "lora_r8"]
    text = render_report(base_label="b", head_label="h", comparison=comparison, params_grouped={}, shared_changes=[])
    assert "| (no variant on both sides) |" in text


@pytest.mark.slow
def test_base_summary_from_dvc_cache_when_not_in_git(tmp_path):
    """A summary tracked by DVC (cache: true) is read through dvc.api at the base revision."""
    from layoutpeft.study.report import read_base_summary

    repo = tmp_path / "cached"
    init_repo(repo)
    (repo / "metrics").mkdir()
    (repo / "metrics" / "summary.json").write_text((DATA / "base_summary.json").read_text())
    sh(sys.executable, "-m", "dvc", "add", "-q", "metrics/summary.json", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "base", cwd=repo)
    summary, source = read_base_summary("main", cwd=repo)
    assert summary == load("base_summary.json")
    assert source == "dvc.api.read('metrics/summary.json', rev='main')"
    assert read_base_summary("main~0", cwd=tmp_path / "cached")[0] is not None
    summary, source = read_base_summary("HEAD", cwd=tmp_path)  # not a repository at all
    assert summary is None and source.startswith("no metrics/summary.json at HEAD")


# ---------------------------------------------------------------- paired or Welch
def entry(per_seed: dict | None, **extra) -> dict:
    """A summary entry whose F1 comes from per-seed values (kept under `per_seed` unless None)."""
    from layoutpeft.study.stats import seed_stats

    values = per_seed or {0: 0.6, 1: 0.62, 2: 0.64}
    f1 = seed_stats(values.values())
    if per_seed is not None:
        f1["per_seed"] = {str(s): v for s, v in per_seed.items()}
    return {
        "method": "lora",
        "params": {"method": "lora"},
        "n_seeds": len(values),
        "seeds": sorted(values),
        "f1": f1,
        "trainable_params": 1000,
        "train_time_s": {"mean": 300.0},
        "peak_memory_mb": {"mean": 900.0},
        **extra,
    }


BASE_SEEDS = {0: 0.60, 1: 0.62, 2: 0.64}
HEAD_SEEDS = {0: 0.62, 1: 0.63, 2: 0.67}  # differences 0.02, 0.01, 0.03: mean 0.02, std 0.01


def test_shared_seeds_use_the_paired_test():
    r = compare_variant("lora", entry(BASE_SEEDS), entry(HEAD_SEEDS))
    half = 4.302653 * 0.01 / 3**0.5  # t(0.975, 2) * std of differences / sqrt 3
    t = 2 * 3**0.5
    assert r["comparison"]["test"] == "paired t" and r["test"] == "paired (n=3)"
    assert r["delta"] == pytest.approx(0.02)
    assert (r["delta_low"], r["delta_high"]) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-6)
    assert r["p_value"] == pytest.approx(1 - t / (2 + t * t) ** 0.5, abs=1e-9)  # 0.0742, closed form for df 2
    assert r["flag"] == ""  # the interval [-0.005, 0.045] holds 0
    # Welch on the same two sets of values would be wider: pairing removes the seed's shared effect.
    b, h = entry(BASE_SEEDS)["f1"], entry(HEAD_SEEDS)["f1"]  # std 0.02 and 0.0265
    _, low, high = welch_interval(b["mean"], b["std"], 3, h["mean"], h["std"], 3)
    assert high - low > 2 * (r["delta_high"] - r["delta_low"])


def test_paired_over_the_common_seeds_only():
    head = {**HEAD_SEEDS, 3: 0.99}  # a seed the base did not run: not paired
    r = compare_variant("lora", entry(BASE_SEEDS), entry(head))
    assert r["test"] == "paired (n=3)" and r["delta"] == pytest.approx(0.02)


@pytest.mark.parametrize(
    "base,head,why",
    [
        (None, HEAD_SEEDS, "base summary without per-seed values (older layout)"),
        (BASE_SEEDS, None, "head summary without per-seed values"),
        ({3: 0.6, 4: 0.62, 5: 0.64}, HEAD_SEEDS, "no seed in common"),
        ({0: 0.6, 4: 0.62, 5: 0.64}, HEAD_SEEDS, "one seed in common: no paired interval"),
    ],
)
def test_welch_otherwise(base, head, why):
    b = entry(base) if base is not None else entry(None)
    h = entry(head) if head is not None else entry(None)
    r = compare_variant("lora", b, h)
    assert r["comparison"]["test"] == "Welch t" and r["test"] == "Welch", why
    diff, low, high = welch_interval(b["f1"]["mean"], b["f1"]["std"], 3, h["f1"]["mean"], h["f1"]["std"], 3)
    assert (r["delta"], r["delta_low"], r["delta_high"]) == pytest.approx((diff, low, high))


def test_report_says_which_test_each_row_used():
    base = {"seeds": [0, 1, 2], "variants": {"lora": entry(BASE_SEEDS), "old": entry(None)}}
    head = {"seeds": [0, 1, 2], "variants": {"lora": entry(HEAD_SEEDS), "old": entry(HEAD_SEEDS)}}
    text = render_report(
        base_label="b", head_label="h", comparison=compare_summaries(base, head), params_grouped={}, shared_changes=[]
    )
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith(("| lora |", "| old |"))}
    header = next(line for line in text.splitlines() if line.startswith("| Variant |")).split(" | ")
    assert header[5] == "Test"
    assert rows["lora"][5] == "paired (n=3)" and rows["old"][5] == "Welch"
    assert rows["lora"][4] == "+2.0 [-0.5, +4.5], p=0.074"
    assert "`paired (n=k)`" in text and "`Welch`" in text  # the rule explains both


def test_summary_and_report_format_the_same_numbers_the_same_way():
    """summary.md and the report show 300 s, 2100 MB, 152000 params, an F1 the same way."""
    head = load("head_summary.json")
    study = summ.Study(Path("metrics/runs"), tuple(head["variants"]), tuple(head["seeds"]), head["reference"])
    table = tables.markdown_table(head, study)
    full_md = next(line for line in table.splitlines() if line.startswith("| **full** |"))
    report = render_report(
        base_label="b", head_label="h", comparison=compare_summaries(None, head), params_grouped={}, shared_changes=[]
    )
    full_report = next(line for line in report.splitlines() if line.startswith("| full |"))
    e = head["variants"]["full"]
    for text in (
        fmt.seconds(e["train_time_s"]["mean"]),
        fmt.megabytes(e["peak_memory_mb"]["mean"]),
        fmt.count(e["trainable_params"]),
        fmt.percent(e["f1"]),
    ):
        assert text in full_md and text in full_report, text
    assert "5.5 min" in full_md and "5.5 min" in full_report  # 330 s
    assert "70.2 ± 3.0" in full_md and "70.2 ± 3.0" in full_report


# ---------------------------------------------------------------- write_report: bad input
@pytest.fixture
def git_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    (repo / "params.yaml").write_text(PARAMS)
    sh("git", "add", "-A", cwd=repo)
    sh(
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "base",
        cwd=repo,
    )
    return repo


def test_write_report_unknown_base_names_it(git_repo):
    with pytest.raises(LayoutpeftError, match=r"^--base 'nope' is not a git revision here"):
        write_report("nope", Path("r.md"), cwd=git_repo)
    assert not (git_repo / "r.md").exists()


def test_write_report_without_a_summary_names_the_file(git_repo):
    with pytest.raises(LayoutpeftError, match=r"^metrics/summary.json not found"):
        write_report("main", Path("r.md"), cwd=git_repo)
    (git_repo / "metrics").mkdir()
    (git_repo / "metrics" / "summary.json").write_text('{"variants": ')
    with pytest.raises(LayoutpeftError, match=r"^metrics/summary.json: not readable JSON"):
        write_report("main", Path("r.md"), cwd=git_repo)
    assert not (git_repo / "r.md").exists()


@pytest.mark.slow
def test_write_report_pairs_shared_seeds(git_repo):
    """End to end through write_report: summaries with per-seed F1 on both sides -> paired rows."""
    base = {"reference": "lora", "seeds": [0, 1, 2], "variants": {"lora": entry(BASE_SEEDS)}}
    (git_repo / "metrics").mkdir()
    (git_repo / "metrics" / "summary.json").write_text(json.dumps(base))
    sh("git", "add", "-A", cwd=git_repo)
    sh(
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "study",
        cwd=git_repo,
    )
    head = {"reference": "lora", "seeds": [0, 1, 2], "variants": {"lora": entry(HEAD_SEEDS)}}
    (git_repo / "metrics" / "summary.json").write_text(json.dumps(head))
    result = write_report("main", Path("reports/study.md"), cwd=git_repo)
    assert result["out"] == git_repo / "reports" / "study.md"
    assert [r["test"] for r in result["rows"]] == ["paired (n=3)"]
    text = (git_repo / "reports" / "study.md").read_text()
    assert "| lora | same | 62.0 ± 5.0 (n=3) | 64.0 ± 6.6 (n=3) | +2.0 [-0.5, +4.5], p=0.074 | paired (n=3) |" in text
    assert "- Base summary: git show main:metrics/summary.json" in text
