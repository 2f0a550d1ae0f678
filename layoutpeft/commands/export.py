"""layoutpeft export --run <variant>-<seed> <out_dir> [--merge] [--force]: a Hugging Face folder with a model card.

--merge    a plain Transformers folder (AutoModelForTokenClassification.from_pretrained(out_dir), no
           PEFT): the adapter folded into the base. For methods that merge (LoRA, DoRA, LoHa, LoKr,
           AdaLoRA, VeRA, IA3); refused for QLoRA (4-bit base) and prompt methods (nothing to merge).
(default)  the PEFT adapter folder (PeftModel.from_pretrained on the base checkpoint, as README.md shows).
           full / head / bitfit have no adapter: they always export the plain folder.
--force    replace out_dir if it exists and is not empty.

The folder is checked (loaded back as its README says, it must reproduce the run's logits) before
it replaces out_dir; on any error nothing is written.

    layoutpeft export --run lora-0 exports/lora-0 --merge
"""

from __future__ import annotations

import argparse

from layoutpeft.paths import DATA_REPORT, MODELS_DIR, RUNS_DIR, SUMMARY_JSON, TOKENIZED_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layoutpeft export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out_dir", help="the folder to write (absent or empty, unless --force)")
    p.add_argument("--run", required=True, help="the trained run, <variant>-<seed> (a folder of --models-dir)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into a plain Transformers model")
    p.add_argument("--force", action="store_true", help="replace out_dir if it is not empty")
    p.add_argument("--models-dir", default=str(MODELS_DIR), help="where the runs are (default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the one-line result
    from layoutpeft.use.export import export_run
    from layoutpeft.use.predict import run_folder

    run_dir = run_folder(args.models_dir, args.run)
    result = export_run(
        run_dir,
        args.out_dir,
        merge=args.merge,
        force=args.force,
        runs_dir=RUNS_DIR,
        summary=SUMMARY_JSON,
        tokenized=TOKENIZED_DIR,
        data_report=DATA_REPORT,
    )
    what = "plain Transformers folder" if result.kind == "merged" else "PEFT adapter folder"
    print(
        f"export: {args.run} -> {result.out_dir} ({what}: {', '.join(result.files)}); reproduces the run's "
        f"logits on {result.checked_windows} windows (max |diff| {result.max_logit_diff:.1e})"
    )
    return 0
