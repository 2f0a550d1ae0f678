"""Export a trained run as a Hugging Face folder with a model card.

Two formats:

* merged (`merge=True`, and always for full / head / bitfit, which have no adapter): a plain
  Transformers folder (config.json with id2label/label2id, model.safetensors, the tokenizer),
  loadable with `AutoModelForTokenClassification.from_pretrained(folder)` alone. A PEFT run is
  folded into its base with `merge_and_unload` (methods whose catalogue entry is `mergeable`).
* adapter (PEFT runs without `merge`): the run's adapter (adapter_config.json naming the
  run's model.checkpoint as base_model_name_or_path, adapter_model.safetensors with the trained
  head via modules_to_save), the tokenizer, `base_config.json` (the LayoutLM config with
  FUNSD's labels that the base is built with) and, where needed, `base_tensors.safetensors`:
  every base tensor that differs from the checkpoint as `from_pretrained` builds it (the new 2-D
  position tables of a BERT checkpoint, and any trained weight outside the adapter).

QLoRA cannot be merged: its base is 4-bit NF4, and folding the LoRA update in would mean
dequantising, adding and re-quantising (the update is mostly lost in the 4-bit rounding), or an
fp32 model nobody evaluated. Prompt methods cannot be merged either: their virtual tokens are
inputs, not weights; nor can prefix tuning: its prefixes are extra keys and values, not weights.
All of them export the adapter (prefix tuning's card names the layoutpeft function that lets
LayoutLM's attention take the prefixes, the one part PEFT does not provide).

Before the folder is swapped in, it is loaded back exactly as its README says (no layoutpeft
code but prefix tuning's enable_kv_prefix) and must reproduce the run's logits (as `load_trained` gives them) on test windows; the
largest difference is written in the card. Nothing is left in `out_dir` unless all went well.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layoutpeft.errors import LayoutpeftError
from layoutpeft.labels import labels_of_record

BASE_CONFIG = "base_config.json"
BASE_TENSORS = "base_tensors.safetensors"
TOLERANCE = 1e-3  # largest |logit difference| accepted between the export and the run


class ExportError(LayoutpeftError):
    """The run cannot be exported as asked, or the output folder is unusable."""


@dataclass
class ExportResult:
    out_dir: Path
    kind: str  # "merged" or "adapter"
    max_logit_diff: float
    checked_windows: int
    files: list[str]


# ----------------------------------------------------------------------------- checks
def check_out_dir(out_dir: Path, force: bool, run_dir: Path) -> None:
    """out_dir must be absent or an empty folder outside the run; --force replaces a folder, never one
    that holds the run or the working folder."""
    target = out_dir.resolve()
    if target == run_dir.resolve() or run_dir.resolve() in target.parents:
        raise ExportError(f"{out_dir}: inside the run folder {run_dir} (a DVC output of train); choose a folder outside it")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not force:
        raise ExportError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    for protected in (Path.cwd().resolve(), run_dir.resolve()):
        if protected == target or target in protected.parents:
            raise ExportError(f"{out_dir}: --force would replace a folder that holds {protected}; choose another output folder")


def export_kind(variant: dict, merge: bool, run: str) -> str:
    """'merged' or 'adapter' for this run's method, or an ExportError saying why not."""
    from layoutpeft.train.methods import method_of

    method = method_of(variant)
    name = variant["method"]
    if not method.peft:
        return "merged"  # full, head, bitfit: the trained tensors are plain model weights already
    if not merge:
        return "adapter"
    if method.quantized:
        raise ExportError(
            f"run {run} ({name}): --merge refused: its base is 4-bit NF4, and merging would dequantise it, add "
            "the LoRA update and re-quantise (losing most of the update to 4-bit rounding); export the adapter "
            "(without --merge) and load it onto the 4-bit base as its README shows"
        )
    if method.virtual_tokens:
        raise ExportError(
            f"run {run} ({name}): --merge refused: virtual tokens are inputs, not weights, so there "
            "is nothing to merge; export the adapter (without --merge)"
        )
    if method.merge_refused:
        raise ExportError(f"run {run} ({name}): --merge refused: {method.merge_refused}; export the adapter (without --merge)")
    if not method.mergeable:
        raise ExportError(f"run {run} ({name}): --merge refused: the method cannot be merged; export the adapter")
    return "merged"


# ----------------------------------------------------------------------------- loading as the card says
def plain_base(checkpoint: str, config_path: Path, quantized: bool):
    """The base as a user builds it from the card: from_pretrained with base_config.json, nothing else."""
    from transformers import AutoConfig, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    from layoutpeft.modeling import resolve_checkpoint
    from layoutpeft.train.methods import quantization_config

    config = AutoConfig.for_model(**json.loads(Path(config_path).read_text()))
    kwargs: dict[str, Any] = {"config": config}
    if quantized:
        kwargs["quantization_config"] = quantization_config("cpu")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized" tables/classifier: base_tensors and the adapter fill them
    try:
        return AutoModelForTokenClassification.from_pretrained(resolve_checkpoint(checkpoint), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def differing_base_tensors(peft_model, reference) -> dict[str, torch.Tensor]:
    """Base parameters of the run's PEFT model that `reference` (the plain base) does not already hold.

    Adapter tensors and modules_to_save copies are in the adapter file and left out here."""
    ref = dict(reference.named_parameters())
    out = {}
    for name, param in peft_model.get_base_model().named_parameters():
        if ".modules_to_save." in name or ".original_module." in name:
            continue
        plain = name.replace(".base_layer.", ".")
        if plain not in ref:
            continue  # an adapter tensor (lora_A, ia3_l, ...)
        if param.__class__.__name__ == "Params4bit" or ref[plain].__class__.__name__ == "Params4bit":
            continue  # 4-bit weights are rebuilt by quantising the checkpoint, as in training
        if param.shape != ref[plain].shape or not torch.equal(param.detach().cpu(), ref[plain].detach().cpu()):
            out[plain] = param.detach().cpu().contiguous().clone()
    return out


@torch.no_grad()
def logits_on(model, windows: list[dict], pad_token_id: int, n_virtual: int) -> list[torch.Tensor]:
    from layoutpeft.data.batching import batches
    from layoutpeft.train.engine import logits_of

    model.eval()
    out: list = [None] * len(windows)
    for indices, batch in batches(windows, 8, pad_token_id, group_by_length=True, n_virtual=n_virtual):
        logits = logits_of(model, batch, n_virtual).float()
        for row, index in enumerate(indices):
            out[index] = logits[row, : len(windows[index]["input_ids"])]
    return out


def probe_windows(tokenized: Path, tokenizer, n: int = 8) -> tuple[list[dict], str]:
    """Up to n test windows of the tokenized data, else synthetic windows; and where they came from."""
    from layoutpeft.data.batching import load_windows

    if (Path(tokenized) / "meta.json").is_file():
        try:
            windows = load_windows("test", Path(tokenized))[:n]
            if windows:
                return windows, "test windows"
        except Exception:  # noqa: BLE001 - unreadable data: fall back to synthetic windows
            pass
    generator = torch.Generator().manual_seed(0)
    windows = []
    for i in range(n):
        size = 16 + 4 * i
        ids = torch.randint(len(tokenizer.special_tokens_map) + 1, len(tokenizer), (size,), generator=generator)
        ids[0], ids[-1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        corner = torch.randint(0, 900, (size, 2), generator=generator)
        bbox = torch.cat([corner, corner + 50], dim=1)
        windows.append(
            {
                "doc_id": f"synthetic{i}",
                "window": 0,
                "input_ids": ids,
                "bbox": bbox,
                "labels": torch.full((size,), -100),
                "word_ids": torch.full((size,), -1),
            }
        )
    return windows, "synthetic windows (no tokenized data found)"


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------- export
def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    merge: bool = False,
    force: bool = False,
    *,
    runs_dir: str | Path = "metrics/runs",
    summary: str | Path = "metrics/summary.json",
    tokenized: str | Path = "data/tokenized",
    data_report: str | Path = "metrics/data.json",
) -> ExportResult:
    """Export the run in `run_dir` to `out_dir` (swapped in only when complete and checked)."""
    from layoutpeft.atomic import staged_dir
    from layoutpeft.modeling import layoutlm_config, load_tokenizer, set_labels
    from layoutpeft.train.methods import method_of, n_virtual_tokens
    from layoutpeft.train.runs import load_trained, read_train_log
    from layoutpeft.use import card

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    log = read_train_log(run_dir)
    run = run_dir.name
    variant = log["variant_params"]
    method = method_of(variant)
    kind = export_kind(variant, merge, run)
    check_out_dir(out_dir, force, run_dir)
    checkpoint = log["model"]["checkpoint"]
    cpu = torch.device("cpu")
    n_virtual = n_virtual_tokens(variant)
    labels = labels_of_record(log)  # the schema it was trained with

    torch.manual_seed(0)
    model = load_trained(run_dir, cpu)  # THE trained model, as evaluate scores it
    tokenizer = load_tokenizer(checkpoint)
    meta_path = Path(tokenized) / "meta.json"
    pad_token_id = json.loads(meta_path.read_text())["pad_token_id"] if meta_path.is_file() else tokenizer.pad_token_id
    windows, probe_source = probe_windows(Path(tokenized), tokenizer)
    expected = logits_on(model, windows, pad_token_id, n_virtual)

    with staged_dir(out_dir) as staged:
        if kind == "merged":
            from transformers import AutoModelForTokenClassification

            plain = model.merge_and_unload() if method.peft else model
            set_labels(plain.config, labels)
            plain.save_pretrained(staged)
            tokenizer.save_pretrained(staged)
            exported = AutoModelForTokenClassification.from_pretrained(staged)
            got = logits_on(exported, windows, pad_token_id, 0)
            extra = []
        else:
            from peft import PeftModel
            from safetensors.torch import load_file, save_file

            for item in sorted((run_dir / "adapter").iterdir()):
                if item.is_file() and item.name != "README.md":  # PEFT's template card; ours replaces it
                    shutil.copy2(item, staged / item.name)
            config_path = staged / "adapter_config.json"
            adapter_config = json.loads(config_path.read_text())
            adapter_config["base_model_name_or_path"] = checkpoint
            config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
            layoutlm_config(checkpoint, labels)[0].to_json_file(str(staged / BASE_CONFIG))
            tokenizer.save_pretrained(staged)
            base = plain_base(checkpoint, staged / BASE_CONFIG, method.quantized)
            tensors = differing_base_tensors(model, base)
            extra = sorted(tensors)
            if tensors:
                save_file(tensors, str(staged / BASE_TENSORS))
                base.load_state_dict(load_file(str(staged / BASE_TENSORS)), strict=False)
            if method.prepare_base:  # the card's recipe calls it too
                method.prepare_base(base)
            exported = PeftModel.from_pretrained(base, staged)
            got = logits_on(exported, windows, pad_token_id, n_virtual)
        diff = max_diff(expected, got)
        if not diff <= TOLERANCE:
            raise ExportError(
                f"{out_dir}: the exported folder does not reproduce run {run}: logits differ by "
                f"up to {diff:.2e} (> {TOLERANCE}) on {len(windows)} {probe_source}; nothing written"
            )
        info = {
            "run": run,
            "kind": kind,
            "checkpoint": checkpoint,
            "base_tensors": extra,
            "max_logit_diff": diff,
            "checked_windows": len(windows),
            "probe_source": probe_source,
            "method_summary": method.summary,
            "n_virtual": n_virtual,
            "quantized": method.quantized,
            "prepare_base": (f"{method.prepare_base.__module__}.{method.prepare_base.__name__}" if method.prepare_base else None),
        }
        text = card.model_card(
            log, info, runs_dir=Path(runs_dir), summary=Path(summary), tokenized=Path(tokenized), data_report=Path(data_report)
        )
        (staged / "README.md").write_text(text, encoding="utf-8")
        files = sorted(p.name for p in staged.iterdir())
    return ExportResult(out_dir=out_dir, kind=kind, max_logit_diff=diff, checked_windows=len(windows), files=files)
