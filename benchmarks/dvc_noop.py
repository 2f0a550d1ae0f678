"""How long does `dvc repro` take when nothing changed, on the default study?

The default study is every variant x every seed in params.yaml (31 x 5 = 155 train and 155
evaluate stages). Training them all takes days, and the no-op cost does not depend on what the
outputs contain, only on how many stages, dependencies and files DVC must check. So this
script copies dvc.yaml, params.yaml and stages/ into a temporary git + DVC project, writes
small stand-in outputs with the real file layout (one file per raw FUNSD file, one adapter
and log per run, ...), records them with `dvc commit -f` as if every stage had run, and then
times `dvc repro` (and `dvc status`) `--repeats` times. It fails if `dvc repro` runs anything.

    python benchmarks/dvc_noop.py            # prints the figures, writes benchmarks/results/
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, argument_parser

import yaml


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def write_stand_in(path: Path, stage: str) -> int:
    """Small files in the layout the real stage writes; returns how many files."""
    if path.suffix in (".json", ".md", ".csv"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n" if path.suffix == ".json" else "stand-in\n")
        return 1
    path.mkdir(parents=True, exist_ok=True)
    if path.as_posix() == "data/raw":  # the FUNSD zip: 199 forms, one PNG and one JSON each
        names = [
            f"dataset/{split}/{kind}/{i:04d}.{ext}"
            for split, n in (("training_data", 149), ("testing_data", 50))
            for i in range(n)
            for kind, ext in (("annotations", "json"), ("images", "png"))
        ]
    elif path.as_posix() == "data/tokenized":
        names = [f"{split}/data-00000-of-00001.arrow" for split in ("train", "validation", "test")]
        names += [f"{split}/{f}" for split in ("train", "validation", "test") for f in ("dataset_info.json", "state.json")]
        names += ["meta.json"]
    elif path.as_posix() == "data/variants":
        params = yaml.safe_load(Path("params.yaml").read_text())
        names = [f"{v}.json" for v in params["study"]["variants"]]
    elif path.parts[0] == "models":  # an adapter run: weights, config, logs, DVCLive folder
        names = [
            "adapter_model.safetensors",
            "adapter_config.json",
            "train_log.json",
            "live/metrics.json",
            "live/plots/metrics/train/loss.tsv",
            "live/plots/metrics/val/loss.tsv",
        ]
    else:  # plots/
        names = ["f1_vs_rank.csv", "pareto.csv", "cost.csv", "learning_curves.csv", "images/pareto.png"]
    for name in names:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(f"{stage} {name}\n")
    return len(names)


def main(argv=None) -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary project (to profile it)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>-dvc-noop.json)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="layoutpeft-noop-"))
    try:
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(ROOT / name, work / name)
        shutil.copytree(ROOT / "stages", work / "stages", ignore=shutil.ignore_patterns("__pycache__"))
        dvc = [sys.executable, "-m", "dvc"]
        run(["git", "init", "-q"], work)
        run(dvc + ["init", "-q"], work)

        os.chdir(work)
        from dvc.repo import Repo

        with Repo(str(work)) as repo:
            stages = list(repo.index.stages)
            outs = {(str(Path(out.def_path)), stage.addressing) for stage in stages for out in stage.outs}
        n_files = sum(write_stand_in(Path(path), stage) for path, stage in sorted(outs))
        commit_s, _ = run(dvc + ["commit", "-f", "-q"], work)

        repro, status = [], []
        for _ in range(args.repeats):
            seconds, text = run(dvc + ["repro"], work)
            if "Running stage" in text:
                sys.exit(f"dvc repro ran stages with nothing changed:\n{text}")
            repro.append(seconds)
            status.append(run(dvc + ["status"], work)[0])
    finally:
        os.chdir(ROOT)
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    import dvc as dvc_package

    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "dvc": dvc_package.__version__,
        },
        "stages": len(stages),
        "tracked_outputs": len(outs),
        "output_files": n_files,
        "commit_s": commit_s,
        "repro_noop_s": {"median": statistics.median(repro), "min": min(repro), "max": max(repro), "values": repro},
        "status_s": {"median": statistics.median(status), "min": min(status), "max": max(status), "values": status},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    print(f"default study: {result['stages']} stages, {n_files} output files")
    print(
        f"dvc repro, nothing changed: median {result['repro_noop_s']['median']:.1f} s "
        f"(min {min(repro):.1f}, max {max(repro):.1f}, {args.repeats} runs)"
    )
    print(f"dvc status:                 median {result['status_s']['median']:.1f} s")
    out = Path(args.out or ROOT / f"benchmarks/results/{result['date']}-dvc-noop.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
