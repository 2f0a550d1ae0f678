"""Sweeps declared in one line (list values with readable names, joint grids), and the rank convention.

End to end through DVC (a grid value changed reruns only its variants): tests/test_study_pipeline.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from layoutpeft.config import ModelConfig, load_params
from layoutpeft.errors import ParamsError
from layoutpeft.labels import LEGACY_LABELS
from layoutpeft.study.plots import rank_series, scaling_note
from layoutpeft.train.methods import TARGET_MODULES, Schedule, lora_config, validate_variant
from layoutpeft.train.variants import TARGET_SHORT, expand_sweeps, resolve, studied_variants

ROOT = Path(__file__).resolve().parents[1]
LORA = {"method": "lora", "r": 16, "targets": ["query", "key", "value", "attention_output"], "lr": 1e-3}
ALL_LINEAR = ["query", "key", "value", "attention_output", "intermediate", "output"]


def generated(sweeps: dict, variants: dict | None = None) -> dict:
    """The variants the sweeps add, resolved (base settings + the point's values), in declaration order."""
    variants = variants or {"lora": LORA}
    expanded = expand_sweeps(variants, sweeps)
    return {n: resolve(n, expanded) for n in expanded if n not in variants}


def test_joint_targets_by_rank_grid_expands_to_the_named_product():
    grid = {"targets": [["query", "value"], ["query", "key", "value", "attention_output"], ALL_LINEAR], "r": [4, 16, 64]}
    points = generated({"lora": {"grid": grid}})
    assert list(points) == [f"lora_t-{t}_r{r}" for t in ("qv", "qkvo", "qkvoif") for r in (4, 16, 64)]
    assert points["lora_t-qv_r64"] == {**LORA, "targets": ["query", "value"], "r": 64}
    assert points["lora_t-qkvoif_r4"] == {**LORA, "targets": ALL_LINEAR, "r": 4}
    # each point validates as its own variant, alpha following its own r
    assert validate_variant("lora_t-qv_r64", points["lora_t-qv_r64"])["alpha"] == 128.0


def test_plain_axes_one_key_at_a_time_beside_a_grid():
    points = generated(
        {
            "lora": {
                "r": [4, 8],
                "targets": [["value", "query"]],
                "grid": [{"r": [1], "dropout": [0.0, 0.1]}, {"rank_scaling": ["rslora"]}],
            }
        }
    )
    assert list(points) == [
        "lora_r4",
        "lora_r8",
        "lora_t-qv",
        "lora_r1_dropout0.0",
        "lora_r1_dropout0.1",
        "lora_rank_scaling-rslora",
    ]
    assert points["lora_t-qv"]["targets"] == ["value", "query"] and points["lora_t-qv"]["r"] == 16


def test_every_target_has_a_distinct_letter():
    assert list(TARGET_SHORT) == list(TARGET_MODULES)
    assert len(set(TARGET_SHORT.values())) == len(TARGET_SHORT)


def test_prompt_length_sweep_names():
    base = {"prompt_tuning": {"method": "prompt_tuning", "virtual_tokens": 20, "lr": 0.1}}
    assert list(generated({"prompt_tuning": {"virtual_tokens": [5, 50]}}, base)) == ["prompt_tuning_vt5", "prompt_tuning_vt50"]


def test_an_explicit_variant_of_the_same_name_wins():
    variants = {"lora": LORA, "lora_r4": {"base": "lora", "r": 4, "dropout": 0.2}}
    assert expand_sweeps(variants, {"lora": {"r": [4]}})["lora_r4"] == variants["lora_r4"]


@pytest.mark.parametrize(
    "sweeps, message",
    [
        ({"lora": {"grid": {"r": []}}}, "sweeps.lora.grid.r must be a non-empty list"),
        ({"lora": {"grid": [{"r": [1]}, "r"]}}, "sweeps.lora.grid.1 must map keys"),
        ({"lora": {"grid": {}}}, "sweeps.lora.grid must map keys"),
        ({"lora": {"targets": [[{"q": 1}]]}}, "sweeps.lora.targets must be a non-empty list of numbers, strings or lists"),
        ({"lora": {"targets": [["query", "value"], ["value", "query"]]}}, "both named 'lora_t-qv'"),
        ({"lora": [4, 8]}, "sweeps.lora must map keys"),
        ({"lorax": {"r": [4]}}, "no variant named 'lorax'"),
    ],
)
def test_bad_sweeps_are_named(sweeps, message):
    with pytest.raises(ParamsError) as err:
        expand_sweeps({"lora": LORA}, sweeps)
    assert str(err.value).startswith("params.yaml: sweeps.") and message in str(err.value)


def study_params(**study) -> dict:
    params = load_params(ROOT / "params.yaml")
    params["study"].update(study)
    return params


def test_a_grid_point_with_a_bad_value_is_named_before_training():
    params = study_params(variants=["full"], reference="full")
    params["sweeps"]["lora"] = {"grid": {"targets": [["query", "Wq"]], "r": [4]}}
    with pytest.raises(ParamsError, match=r"variant 'lora_t-query-Wq_r4'.*unknown module\(s\) \['Wq'\]"):
        studied_variants(params, check_runtime=False)


def test_an_unknown_studied_name_suggests_the_generated_ones():
    params = study_params(variants=["full", "lora_t-qv_r8"], reference="full")
    params["sweeps"]["lora"] = {"grid": {"targets": [["query", "value"]], "r": [4, 16]}}
    with pytest.raises(ParamsError, match=r"'lora_t-qv_r8', which is not defined .* \(closest: lora_t-qv_r4"):
        studied_variants(params, check_runtime=False)


def profile_params(name: str) -> dict:
    from layoutpeft.study.profiles import get_profile, load_profiles

    params = load_params(ROOT / "params.yaml")
    for key, value in get_profile(load_profiles(ROOT / "profiles.yaml"), name).items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = copy.deepcopy(value)
    return params


def test_ablation_profile_declares_the_studies_of_issues_29_and_31():
    params = profile_params("ablation")
    resolved = studied_variants(params, check_runtime=False)
    lora = {n: s for n, s in resolved.items() if s["method"] == "lora"}
    qkvo = ["query", "key", "value", "attention_output"]
    assert sorted(tuple(s["targets"]) for s in lora.values() if s["r"] == 16) == sorted(
        map(tuple, [["query", "value"], ["query", "key", "value"], qkvo, ALL_LINEAR])
    )
    assert sorted(s["r"] for s in lora.values() if s["targets"] == qkvo) == [1, 4, 16, 64]
    assert sorted(s["r"] for s in resolved.values() if s["method"] == "qlora") == [4, 16, 64]
    assert sorted(s["r"] for s in resolved.values() if s["method"] == "vera") == [16, 256]
    assert sorted(s["virtual_tokens"] for s in resolved.values() if s["method"] == "prompt_tuning") == [5, 10, 20]
    assert sorted(s["virtual_tokens"] for s in resolved.values() if s["method"] == "prefix_tuning") == [5, 20, 50]
    assert {"dora", "lokr", "adalora", "p_tuning", "loha"} <= {s["method"] for s in resolved.values()}
    assert {s.get("rank_scaling") for s in resolved.values() if "rank_scaling" in s} == {"alpha_2r"}
    assert len(params["study"]["seeds"]) >= 3
    # the reference study's data and trial protocol, so that the variants both ran are comparable
    reference = load_params(ROOT / "results" / "reference-minilm" / "params.yaml")
    same = {k: v for k, v in reference["data"].items() if k not in ("url", "md5")}  # its copy, not its address
    assert {k: params["data"][k] for k in same} == same
    assert params["train"]["collapse_epochs"] == reference["train"].get("collapse_epochs", 0) == 0
    # prompt tuning's longer prompts need a larger reserve, which would re-window the data
    params["study"]["variants"].append("prompt_tuning_vt50")
    with pytest.raises(ParamsError, match="'prompt_tuning_vt50'.*exceeds data.prompt_reserve = 20"):
        studied_variants(params, check_runtime=False)


# ------------------------------------------------------------------ the rank convention
@pytest.mark.parametrize(
    "rule, alpha, use_rslora", [("alpha_2r", 8.0, False), ("alpha_fixed", 32.0, False), ("rslora", 8.0, True)]
)
def test_rank_convention_sets_alpha_and_use_rslora(rule, alpha, use_rslora):
    variant = validate_variant("v", {**LORA, "r": 4, "rank_scaling": rule})
    assert variant["alpha"] == alpha
    config = lora_config(variant, Schedule(total_steps=1))
    assert config.lora_alpha == alpha and config.use_rslora is use_rslora and config.r == 4
    # at r 16 every convention gives the same scale, 2
    at16 = validate_variant("v", {**LORA, "rank_scaling": rule})
    assert at16["alpha"] / (16**0.5 if use_rslora else 16) == 2.0
    # an explicit alpha replaces the default under every convention
    assert validate_variant("v", {**LORA, "rank_scaling": rule, "alpha": 5})["alpha"] == 5.0


def test_rank_convention_is_checked():
    with pytest.raises(ParamsError, match="key 'rank_scaling' = 'sqrt' must be one of"):
        validate_variant("v", {**LORA, "rank_scaling": "sqrt"})
    with pytest.raises(ParamsError, match="unknown key 'rank_scaling' for method 'loha'"):
        validate_variant("v", {"method": "loha", "r": 4, "lr": 1e-3, "rank_scaling": "rslora"})


@pytest.mark.parametrize("rule, scale", [("alpha_2r", 2.0), ("alpha_fixed", 8.0), ("rslora", 4.0)])
def test_rank_convention_reaches_the_peft_layers(tiny_checkpoint, rule, scale):
    from layoutpeft.train import engine

    variant = validate_variant("v", {**LORA, "r": 4, "rank_scaling": rule})
    model, _ = engine.build_model(
        ModelConfig(str(tiny_checkpoint), "zero"),
        variant,
        torch.device("cpu"),
        Schedule(total_steps=2, steps_per_epoch=1),
        labels=LEGACY_LABELS,
    )
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict)}
    assert scalings == {scale}  # PEFT's alpha / r (rsLoRA: alpha / sqrt(r)) at r 4


def test_rank_series_keep_conventions_apart_and_state_them():
    params = {}
    for rule in ("alpha_2r", "alpha_fixed", "rslora"):
        for r in (4, 16, 64):
            name = "lora" + ("" if rule == "alpha_2r" else f"_{rule}") + ("" if r == 16 else f"_r{r}")
            params[name] = validate_variant(name, {**LORA, "r": r, "rank_scaling": rule})
    series = rank_series(params)
    assert {k: [r for _, r in v] for k, v in series.items()} == {
        "lora": [4, 16, 64],
        "lora_alpha_fixed": [4, 16, 64],
        "lora_rslora": [4, 16, 64],
    }
    assert scaling_note(params["lora_r4"]) == "alpha = 2r, scale 2"
    assert scaling_note(params["lora_alpha_fixed_r4"]) == "alpha fixed at 32, scale alpha/r"
    assert scaling_note(params["lora_rslora_r64"]) == "rsLoRA: alpha 8, scale alpha/sqrt(r)"
