"""Label FUNSD-format forms with a trained run: per-word BIO labels with scores, and entities.

An input is a FUNSD annotation JSON (`{"form": [{"label"?, "words": [{"text", "box"}]}]}`,
boxes in pixels) with its page image beside it: `annotations/x.json` <-> `images/x.png` (the
FUNSD layout) or `x.png` in the same folder. Labels are optional; when every entity of every
input has one, the predictions are also scored exactly as `evaluate` scores the test split.

Forms are read with the same parser and split into the same windows as in training
(`funsd.parse_annotation`, `windows.windows_for` with the tokenized data's window length), so
every non-empty word gets exactly one label: the one on its first sub-token. Empty words carry
nothing to label and are skipped, as in training. All inputs are checked before the model is
loaded, and nothing is written unless every input is good.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layoutpeft.errors import LayoutpeftError
from layoutpeft.funsd import AnnotationError, Document, parse_annotation
from layoutpeft.labels import entity_types, labels_of_record

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class PredictInputError(LayoutpeftError):
    """An input form, its image, the run or the tokenized data cannot be used."""


@dataclass
class Form:
    """One input form, read and checked."""

    annotation: Path
    image: Path
    width: int
    height: int
    doc: Document
    has_gold: bool
    # Per kept (non-empty) word, in reading order: (form index, word index) in the JSON, pixel box.
    sources: list[tuple[int, int]] = field(default_factory=list)
    pixel_boxes: list[list[int | float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs
def find_image(annotation: Path) -> Path:
    """FUNSD layout (annotations/x.json -> images/x.png), else x.<image suffix> beside the JSON."""
    folders = []
    if annotation.parent.name == "annotations":
        folders.append(annotation.parent.parent / "images")
    folders.append(annotation.parent)
    for folder in folders:
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / f"{annotation.stem}{suffix}", folder / f"{annotation.stem}{suffix.upper()}"):
                if candidate.is_file():
                    return candidate
    looked = " or ".join(str(f / f"{annotation.stem}.png") for f in folders)
    raise PredictInputError(f"{annotation}: no page image found (looked for {looked}, also .jpg/.tif)")


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Annotation files named directly, or every *.json of a folder (of its annotations/ if it has one)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = path / "annotations" if (path / "annotations").is_dir() else path
            found = sorted(folder.glob("*.json"))
            if not found:
                raise PredictInputError(f"{path}: folder holds no annotation *.json files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise PredictInputError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _image_size(image: Path, annotation: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise PredictInputError(f"{annotation}: page image {image} cannot be read ({err})") from err


def read_form(annotation: Path, label_map: dict | None = None) -> Form:
    """Read and check one input; PredictInputError names the file and what is wrong. Gold labels are
    mapped by the data.labels the run's data was tokenized with (`label_map`)."""
    try:
        data = json.loads(annotation.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PredictInputError(f"{annotation}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("form"), list):
        raise PredictInputError(
            f"{annotation}: missing 'form' list (expected a FUNSD annotation "
            '{"form": [{"words": [{"text": ..., "box": [x0, y0, x1, y1]}]}]})'
        )
    image = find_image(annotation)
    width, height = _image_size(image, annotation)

    entities = data["form"]
    labelled = ["label" in e for e in entities if isinstance(e, dict)]  # parse_annotation reports the rest
    has_gold = bool(labelled) and all(labelled)
    if not has_gold:
        if any(labelled):
            index = next(i for i, e in enumerate(entities) if isinstance(e, dict) and "label" not in e)
            raise PredictInputError(
                f"{annotation}: form[{index}] has no 'label' while other entities have one (label every entity, or none)"
            )
        # Unlabelled input: parse it as "other" everywhere; those labels are never used.
        data = copy.deepcopy(data)
        for e in data["form"]:
            if isinstance(e, dict):
                e["label"] = "other"
    try:
        doc = parse_annotation(data, width, height, str(annotation), label_map if has_gold else None)
    except AnnotationError as err:
        raise PredictInputError(str(err)) from err

    form = Form(annotation=annotation, image=image, width=width, height=height, doc=doc, has_gold=has_gold)
    for e_index, e in enumerate(data["form"]):
        for w_index, word in enumerate(e["words"]):
            if not str(word["text"]).strip():
                continue
            x0, y0, x1, y1 = word["box"]
            if min(x0, y0, x1, y1) < 0 or max(x0, x1) > width or max(y0, y1) > height:
                raise PredictInputError(
                    f"{annotation}: form[{e_index}].words[{w_index}] box {word['box']} lies outside the "
                    f"{width}x{height} page image {image.name} (does the image belong to this annotation?)"
                )
            form.sources.append((e_index, w_index))
            form.pixel_boxes.append(list(word["box"]))
    if not form.doc.words:
        raise PredictInputError(f"{annotation}: the form has no non-empty words to label")
    return form


# ----------------------------------------------------------------------------- the run
def run_folder(models_dir: str | Path, run: str) -> Path:
    """models/<variant>-<seed>, checked to hold a trained run."""
    from layoutpeft.train.runs import TRAIN_LOG

    folder = Path(models_dir) / run
    if not (folder / TRAIN_LOG).is_file():
        known = sorted(p.parent.name for p in Path(models_dir).glob(f"*/{TRAIN_LOG}"))
        hint = f"trained runs: {', '.join(known)}" if known else f"no trained runs in {models_dir}"
        raise PredictInputError(f"{folder}: no trained run {run!r} ({hint}; run `dvc repro train@...`)")
    return folder


def window_settings(tokenized: str | Path, checkpoint: str) -> dict:
    """The tokenized data's meta.json: window length and pad id, as in training."""
    path = Path(tokenized) / "meta.json"
    if not path.is_file():
        raise PredictInputError(
            f"{path}: missing; predict splits forms into the windows of the tokenized data "
            "(run `dvc repro tokenize`, or pass --tokenized)"
        )
    meta = json.loads(path.read_text())
    if meta.get("checkpoint") not in (None, checkpoint):
        raise PredictInputError(
            f"{path}: tokenized for {meta['checkpoint']!r}, but the run was trained on "
            f"{checkpoint!r} (tokenize for the run's checkpoint)"
        )
    return meta


# ----------------------------------------------------------------------------- predicting
def detached(a: list[float], b: list[float]) -> bool:
    """Whether word box `b` lies too far from the word box `a` before it to continue one entity:
    on the same line (vertical overlap of at least half the lower word's height) a blank wider
    than 3 word heights (another column), else a blank taller than one word height (not the next
    line of a wrapped block). FUNSD's multi-line answers and headers wrap onto adjacent lines."""
    height = max(a[3] - a[1], b[3] - b[1], 1)
    overlap_y = min(a[3], b[3]) - max(a[1], b[1])
    if overlap_y >= 0.5 * min(a[3] - a[1], b[3] - b[1]):
        return max(b[0] - a[2], a[0] - b[2], 0) > 3 * height
    return max(b[1] - a[3], a[1] - b[3], 0) > height


def entities_of(labels: list[str], boxes: list[list[float]], scores: list[float], words: list[str]) -> list[dict]:
    """Entities as seqeval (conlleval mode, as scored) reads the labels, split where a word is
    detached from the one before it (`detached`): an entity never spans a large spatial gap.
    Each has its type, words, text, union box and mean score."""
    from seqeval.metrics.sequence_labeling import get_entities

    found = []
    for kind, start, end in get_entities(list(labels)):
        pieces = [[start]]
        for i in range(start + 1, end + 1):
            if detached(boxes[i - 1], boxes[i]):
                pieces.append([])
            pieces[-1].append(i)
        for span in pieces:
            box = [
                min(boxes[i][0] for i in span),
                min(boxes[i][1] for i in span),
                max(boxes[i][2] for i in span),
                max(boxes[i][3] for i in span),
            ]
            found.append(
                {
                    "type": kind,
                    "words": span,
                    "text": " ".join(words[i] for i in span),
                    "box": box,
                    "score": sum(scores[i] for i in span) / len(span),
                }
            )
    return found


def label_windows(
    model, windows: list[dict], batch_size: int, pad_token_id: int, device: torch.device, n_virtual: int, dtype
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(label ids, softmax probabilities of those labels) per window, by the pipeline's own engine.predict."""
    from layoutpeft.train.engine import predict

    result = predict(model, windows, batch_size, pad_token_id, device, n_virtual, dtype, with_probs=True)
    return list(zip(result["predictions"], result["probabilities"], strict=True))


def as_tensors(record: dict) -> dict:
    window = {"doc_id": record["doc_id"], "window": record["window"]}
    for key in ("input_ids", "bbox", "labels", "word_ids"):
        window[key] = torch.tensor(record[key], dtype=torch.long)
    return window


def predict_forms(
    run_dir: str | Path, inputs: list[str | Path], tokenized: str | Path, device: str = "auto", batch_size: int = 8
) -> dict:
    """Label every input form with the run in `run_dir`; returns the output record (see docs)."""
    from layoutpeft.data.windows import WindowingError, check_lossless, windows_for
    from layoutpeft.modeling import load_tokenizer
    from layoutpeft.train.device import resolve_device, resolve_precision
    from layoutpeft.train.methods import n_virtual_tokens
    from layoutpeft.train.runs import load_trained, read_train_log
    from layoutpeft.train.scoring import score, word_labels

    run_dir = Path(run_dir)
    log = read_train_log(run_dir)
    checkpoint = log["model"]["checkpoint"]
    meta = window_settings(tokenized, checkpoint)
    labels = labels_of_record(log)
    label2id = {label: index for index, label in enumerate(labels)}
    forms = [read_form(p, meta.get("label_map")) for p in expand_inputs(inputs)]
    if not forms:
        raise PredictInputError("no input forms given")
    for form in forms:
        unknown = sorted({t for t in entity_types(form.doc.labels)} - set(entity_types(labels)))
        if form.has_gold and unknown:
            raise PredictInputError(
                f"{form.annotation}: entity type {unknown[0]} is not one the run predicts ({', '.join(entity_types(labels))})"
            )

    tokenizer = load_tokenizer(checkpoint)
    max_tokens = meta["window_length"] - 2
    doc_windows = []
    for index, form in enumerate(forms):
        form.doc.doc_id = str(index)  # unique even when two inputs share a stem
        try:
            records = windows_for(form.doc, tokenizer, max_tokens, label2id if form.has_gold else {"O": 0})
            check_lossless(form.doc, records)
        except WindowingError as err:
            raise PredictInputError(f"{form.annotation}: {err}") from err
        doc_windows.append([as_tensors(r) for r in records])

    torch_device = resolve_device(device)
    dtype = resolve_precision(log["precision"], torch_device) if torch_device.type == log["device"] else None
    model = load_trained(run_dir, torch_device)
    n_virtual = n_virtual_tokens(log["variant_params"])
    windows = [w for ws in doc_windows for w in ws]
    guesses = label_windows(model, windows, batch_size, meta["pad_token_id"], torch_device, n_virtual, dtype)

    documents, all_gold, all_pred = [], [], []
    all_docs: list[str] = []
    position = 0
    for form, ws in zip(forms, doc_windows, strict=True):
        results = guesses[position : position + len(ws)]
        position += len(ws)
        by_word: dict[int, str] = {}
        scores: dict[int, float] = {}
        for window, (ids, probs) in zip(ws, results, strict=True):
            first = window["labels"] != -100
            for word, label_id, prob in zip(
                window["word_ids"][first].tolist(), ids[first].tolist(), probs[first].tolist(), strict=True
            ):
                if word in by_word:
                    raise PredictInputError(f"{form.annotation}: word {word} labelled twice (windowing bug)")
                by_word[word], scores[word] = labels[label_id], prob
        n = len(form.doc.words)
        if sorted(by_word) != list(range(n)):
            raise PredictInputError(f"{form.annotation}: {n - len(by_word)} words left unlabelled (windowing bug)")
        predicted = [by_word[i] for i in range(n)]
        probabilities = [scores[i] for i in range(n)]
        words = []
        for i in range(n):
            e_index, w_index = form.sources[i]
            word = {
                "index": i,
                "form_index": e_index,
                "word_index": w_index,
                "text": form.doc.words[i],
                "box": form.pixel_boxes[i],
                "label": predicted[i],
                "score": probabilities[i],
            }
            if form.has_gold:
                word["gold"] = form.doc.labels[i]
            words.append(word)
        document = {
            "annotation": str(form.annotation),
            "image": str(form.image),
            "width": form.width,
            "height": form.height,
            "windows": len(ws),
            "words": words,
            "entities": entities_of(predicted, form.pixel_boxes, probabilities, form.doc.words),
        }
        if form.has_gold:
            gold_seq, pred_seq = word_labels(ws, [ids for ids, _ in results], labels)
            document["scores"] = score(gold_seq, pred_seq, labels)
            all_gold += gold_seq
            all_pred += pred_seq
            all_docs += [Path(form.annotation).stem] * len(gold_seq)  # one form: its file name, as tokenize names it
        documents.append(document)

    record = {
        "run": run_dir.name,
        "variant": log["variant"],
        "seed": log["seed"],
        "method": log["method"],
        "checkpoint": checkpoint,
        "window_length": meta["window_length"],
        "device": torch_device.type,
        "labels": labels,
        "documents": documents,
        "scores": None,
    }
    if forms and all(f.has_gold for f in forms):
        record["scores"] = score(all_gold, all_pred, labels, all_docs)  # as evaluate scores: per-form counts too
    return record


def score_lines(record: dict) -> list[str]:
    """Human lines: entity P/R/F1 per labelled document and over all of them."""
    lines = []
    for doc in record["documents"]:
        if doc.get("scores"):
            s = doc["scores"]
            lines.append(f"{doc['annotation']}: P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}")
    if record.get("scores") and len(record["documents"]) > 1:
        s = record["scores"]
        lines.append(
            f"all {len(record['documents'])} forms: P {s['precision']:.3f}  R {s['recall']:.3f}  "
            f"F1 {s['f1']:.3f}  (entity level, seqeval, as evaluate)"
        )
    return lines
