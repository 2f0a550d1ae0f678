"""Tiny trained runs for the predict and export tests: a workspace as the stages leave it.

`make_workspace(root, tiny_tokenized, checkpoint, {"lora": ({settings}, "zero")})` copies the tiny
tokenized data (data/raw, data/tokenized, metrics/data.json) into `root` and trains + evaluates
each variant with seed 0 into models/<name>-0 and metrics/runs/<name>-0.json.
`pipeline_labels(run_dir, tokenized)` gives the pipeline's own predicted word labels on the test
split (engine.predict + scoring.word_labels, as evaluate computes them), per document id.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fixtures import cpu_train_config

LORA = {"method": "lora", "r": 4, "targets": ["query", "value"], "lr": 5e-3}
FULL = {"method": "full", "lr": 1e-3}


def make_workspace(root: Path, tiny_tokenized: Path, checkpoint: Path, variants: dict) -> Path:
    from layoutpeft.config import EvaluateConfig, ModelConfig
    from layoutpeft.train import runs
    from layoutpeft.train.methods import validate_variant

    root = Path(root)
    shutil.copytree(tiny_tokenized / "data", root / "data")
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    shutil.copy2(tiny_tokenized / "metrics" / "data.json", root / "metrics" / "data.json")
    tokenized = root / "data" / "tokenized"
    for name, (settings, position_init) in variants.items():
        run_dir = root / "models" / f"{name}-0"
        runs.train(
            name,
            0,
            validate_variant(name, settings, 8),
            ModelConfig(str(checkpoint), position_init),
            cpu_train_config(),
            run_dir,
            tokenized,
        )
        runs.evaluate(
            run_dir, EvaluateConfig(batch_size=8, timing_repeats=1), tokenized, root / "metrics" / "runs" / f"{name}-0.json"
        )
    return root


def pipeline_labels(run_dir: Path, tokenized: Path) -> dict[str, list[str]]:
    """doc_id -> predicted labels of its words, exactly as evaluate computes them."""
    import torch

    from layoutpeft.data.batching import load_meta, load_windows
    from layoutpeft.modeling import label_names
    from layoutpeft.train import engine
    from layoutpeft.train.methods import n_virtual_tokens
    from layoutpeft.train.runs import load_trained, read_train_log
    from layoutpeft.train.scoring import word_labels

    log = read_train_log(run_dir)
    windows = load_windows("test", tokenized)
    cpu = torch.device("cpu")
    model = load_trained(run_dir, cpu)
    result = engine.predict(model, windows, 8, load_meta(tokenized)["pad_token_id"], cpu, n_virtual_tokens(log["variant_params"]))
    _, predicted = word_labels(windows, result["predictions"], label_names(model))
    return dict(zip(sorted({w["doc_id"] for w in windows}), predicted, strict=True))


def labels_of(model, windows: list[dict], n_virtual: int = 0) -> list[list[str]]:
    """Word labels per document from `model` run one window at a time (no layoutpeft batching)."""
    import torch

    from layoutpeft.modeling import label_names
    from layoutpeft.train.scoring import word_labels

    predictions = []
    with torch.no_grad():
        model.eval()
        for w in windows:
            ids = w["input_ids"].unsqueeze(0)
            bbox = torch.cat([torch.zeros(1, n_virtual, 4, dtype=torch.long), w["bbox"].unsqueeze(0)], dim=1)
            out = model(input_ids=ids, bbox=bbox, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
            predictions.append(out.logits[0, n_virtual:].argmax(-1))
    return word_labels(windows, predictions, label_names(model))[1]
