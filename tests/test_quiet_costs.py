"""benchmarks/quiet_costs.py on the tiny fixtures: every variant measured, interleaved, its tensors split."""

from __future__ import annotations

import importlib.util
import json
import sys

import yaml

from fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("quiet_costs", REPO_ROOT / "benchmarks" / "quiet_costs.py")
quiet_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quiet_costs)


def test_interleaved_costs_of_each_variant(make_tiny_project, tiny_funsd_zip, tmp_path):
    project = make_tiny_project()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["study"].update(variants=["full", "head", "lora"], seeds=[0], reference="full")
    params["train"].update(batch_size=2, precision="fp32")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    zip_path, _ = tiny_funsd_zip
    out = tmp_path / "out"
    quiet_costs.main(
        [
            "--params",
            str(project / "params.yaml"),
            "--steps",
            "1",
            "--rounds",
            "2",
            "--cache",
            str(tmp_path / "cache"),
            "--zip",
            str(zip_path),
            "--out",
            str(out),
        ]
    )
    result = json.loads((out / "costs.json").read_text())
    assert list(result["variants"]) == ["full", "head", "lora"]
    full, head, lora = (result["variants"][n] for n in ("full", "head", "lora"))
    for v in (full, head, lora):
        assert len(v["step_times_s"]) == 2 and v["tokens_per_s"] > 0  # one timed step per round
        assert v["tensor_peak_bytes"] == sum(
            v[k] for k in ("weights_bytes", "gradient_bytes", "optimizer_state_bytes", "saved_activation_bytes")
        )
    # full fine-tuning keeps a gradient and two AdamW moments for every weight that takes part (the pooler
    # does not in token classification); head only for the head and the new tables
    assert 0.95 * full["weights_bytes"] < full["gradient_bytes"] < full["weights_bytes"]
    assert full["optimizer_state_bytes"] >= 2 * full["gradient_bytes"]
    hidden = 64  # fixtures.TINY_BERT
    assert head["gradient_bytes"] == 4 * (4 * 1024 * hidden + hidden * 7 + 7)  # new 2-D tables + head, fp32
    assert lora["weights_bytes"] > head["weights_bytes"]  # its adapter on top of the model
    assert result["precision"] == "fp32" and result["params"] == str(project / "params.yaml")
    assert "load_average" in result and result["environment"]["cpu_flags"] is not None
    assert "| lora |" in (out / "report.md").read_text()
