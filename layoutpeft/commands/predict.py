"""layoutpeft predict --run <variant>-<seed> <input>... : label FUNSD-format forms with a trained run.

An input is a FUNSD annotation JSON with its page image beside it (annotations/x.json <->
images/x.png, or x.png in the same folder), or a folder of them. Labels in the input are
optional; when present, entity-level P/R/F1 (seqeval, as `evaluate` scores) is printed too.

Output JSON (stdout, or --out FILE): per document every word's predicted BIO label and its
softmax probability, and the entities (consecutive B-/I- words) with type and pixel box.
--png DIR draws each entity's box on the page in its type's colour, with a legend (--png-width PX: smaller).

    layoutpeft predict --run lora-0 data/raw/dataset/testing_data --out predictions.json --png pages/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from layoutpeft.paths import MODELS_DIR, TOKENIZED_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layoutpeft predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="FUNSD annotation JSON(s) or folder(s) of them")
    p.add_argument("--run", required=True, help="the trained run, <variant>-<seed> (a folder of --models-dir)")
    p.add_argument("--models-dir", default=str(MODELS_DIR), help="where the runs are (default: %(default)s)")
    p.add_argument(
        "--tokenized",
        default=str(TOKENIZED_DIR),
        help="tokenized data whose meta.json gives the window length (default: %(default)s)",
    )
    p.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
    p.add_argument("--png", metavar="DIR", help="write <form>.png with the predicted entities drawn")
    p.add_argument(
        "--png-width",
        type=int,
        metavar="PX",
        help="scale each drawn page down to at most PX pixels wide (for a report or a README)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: %(default)s)")
    return p


def png_names(documents: list[dict]) -> list[str]:
    """<stem>.png per document; a stem used twice gets -2, -3, ..."""
    names: list[str] = []
    used: dict[str, int] = {}
    for doc in documents:
        stem = Path(doc["annotation"]).stem
        used[stem] = used.get(stem, 0) + 1
        names.append(f"{stem}.png" if used[stem] == 1 else f"{stem}-{used[stem]}.png")
    return names


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line result
    from layoutpeft.atomic import write_json
    from layoutpeft.use.predict import PredictInputError, predict_forms, run_folder, score_lines

    if args.batch_size < 1:
        raise PredictInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.png_width is not None and args.png_width < 64:
        raise PredictInputError(f"--png-width must be >= 64 pixels, got {args.png_width}")
    if args.png and Path(args.png).exists() and not Path(args.png).is_dir():
        raise PredictInputError(f"--png {args.png}: exists and is not a folder")
    if args.out and Path(args.out).is_dir():
        raise PredictInputError(f"--out {args.out}: is a folder; give a file name")
    run_dir = run_folder(args.models_dir, args.run)
    record = predict_forms(run_dir, args.inputs, args.tokenized, device=args.device, batch_size=args.batch_size)

    if args.png:
        from layoutpeft.labels import entity_types
        from layoutpeft.use.draw import draw_entities, save_png, shrink

        for doc, name in zip(record["documents"], png_names(record["documents"]), strict=True):
            page = shrink(draw_entities(doc["image"], doc["entities"], entity_types(record["labels"])), args.png_width)
            doc["png"] = str(save_png(page, Path(args.png) / name))
    if args.out:
        write_json(args.out, record)
    else:
        json.dump(record, sys.stdout, indent=2)
        sys.stdout.write("\n")
    lines = score_lines(record)
    n_words = sum(len(d["words"]) for d in record["documents"])
    n_entities = sum(len(d["entities"]) for d in record["documents"])
    summary = [
        f"predict: {args.run}: {len(record['documents'])} form(s), {n_words} words, {n_entities} entities"
        + (f" -> {args.out}" if args.out else "")
    ] + lines
    print("\n".join(summary), file=sys.stdout if args.out else sys.stderr)
    return 0
