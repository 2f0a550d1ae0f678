"""Adding a method is one catalogue entry: a toy method registered here trains and evaluates
through the real stages (variants, tune, train, evaluate) with no other file touched."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from layoutpeft.train import methods

from fixtures import set_dotted, tiny_overrides


@pytest.fixture
def toy_method(monkeypatch):
    """LayerNorm-only tuning (+ head): a method PEFT does not have, as a user would add it."""
    toy = methods.Method(
        "layernorm",
        "LayerNorm weights and biases + classifier",
        methods.LR,
        trains=lambda name: methods.head(name) or "LayerNorm" in name,
    )
    monkeypatch.setitem(methods.CATALOGUE, toy.name, toy)
    return toy


def test_a_registered_method_runs_through_the_real_stages(
    toy_method, tiny_tokenized, tiny_funsd_zip, tiny_checkpoint, tmp_path, monkeypatch
):
    from stages import evaluate, train, tune, variants

    shutil.copytree(tiny_tokenized / "data", tmp_path / "data")
    params = yaml.safe_load(open(__import__("fixtures").REPO_ROOT / "params.yaml"))
    for key, value in {
        **tiny_overrides(*tiny_funsd_zip, tiny_checkpoint),
        "train.max_epochs": 1,
        "study.variants": ["ln"],
        "study.reference": "ln",
        "study.seeds": [0],
        "variants.ln": {"method": "layernorm", "lr": 1e-3},
    }.items():
        set_dotted(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    variants.main([])
    tune.main(["--variant", "ln"])
    train.main(["--variant", "ln", "--seed", "0"])
    evaluate.main(["--variant", "ln", "--seed", "0"])

    record = json.loads((tmp_path / "metrics" / "runs" / "ln-0.json").read_text())
    assert record["method"] == "layernorm" and 0.0 <= record["scores"]["f1"] <= 1.0
    saved = tmp_path / "models" / "ln-0" / "trainable.safetensors"
    from safetensors.torch import load_file

    names = set(load_file(saved))
    assert any("LayerNorm" in n for n in names) and any(n.startswith("classifier.") for n in names)
    assert not any("attention.self.query.weight" in n for n in names)
    assert record["parameters"]["trainable"] < record["parameters"]["total"]
