"""`layoutpeft study` (what `make study` runs): a study this machine can finish, its plan first.

    layoutpeft study                      with a GPU: params.yaml's study (`dvc repro`);
                                          without one: the reference profile (`dvc exp run -S ...`)
    layoutpeft study --profile NAME       this profile instead (make study PROFILE=laptop+offline)
    layoutpeft study --profile params.yaml   params.yaml's study on any machine
    layoutpeft study --plan-only          say which study and print its plan; train nothing

The first line says which study runs and why; then its plan (layoutpeft plan: stages, counts,
estimated time here); then dvc runs it, its output followed after every epoch by a line saying
which training of how many runs, its epoch and the time left (layoutpeft.study.progress).
Interrupted, the same command resumes: finished stages are in dvc.lock and the run cache, and
finished tuning trials in the trial cache.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from layoutpeft.study.plan import describe, duration, plan_study
from layoutpeft.study.progress import Progress

CPU_PROFILE = "reference"
PARAMS_STUDY = "params.yaml"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="layoutpeft study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="", help=f"a profiles.yaml name, or {PARAMS_STUDY} (default: by device)")
    parser.add_argument("--plan-only", action="store_true", help="print the choice and the plan; do not train")
    return parser.parse_args(argv)


def choose(profile: str, has_gpu: bool, cpu_bf16: bool = True) -> tuple[str | None, list[str], str]:
    """(profile or None for params.yaml's study, extra `-S` overrides, why)."""
    if profile == PARAMS_STUDY:
        return None, [], "chosen with PROFILE=params.yaml"
    if profile:
        return profile, [], f"chosen with PROFILE={profile}"
    if has_gpu:
        return None, [], "a GPU is visible"
    why = (
        "no GPU: the committed reference study's settings (params.yaml's full study would take far longer on a "
        "CPU; `make study PROFILE=params.yaml` runs it anyway)"
    )
    if not cpu_bf16:
        # The reference pins bf16, which a CPU without bf16 units emulates about 10x slower.
        return (
            CPU_PROFILE,
            ["train.precision=fp32"],
            why + "; in fp32: this CPU has no bf16 units (other numerics than the committed bf16 study)",
        )
    return CPU_PROFILE, [], why


def main(argv: list[str]) -> int:
    import torch

    from layoutpeft.commands.profile import quiet_dvc
    from layoutpeft.hardware import cpu_has_bf16
    from layoutpeft.study.profiles import run_env

    args = parse(argv)
    profile, sets, why = choose(args.profile, torch.cuda.is_available(), cpu_has_bf16())
    plan = plan_study(".", profile, sets, workers=[1])
    seconds = plan.estimates[1]
    print(f"study: {plan.name} ({why}); estimated {duration(seconds)} here on 1 worker", flush=True)
    print(describe(plan), flush=True)
    if args.plan_only:
        return 0
    print(f"study: running {' '.join(plan.command[2:])}", flush=True)
    progress = Progress(plan)
    # As `layoutpeft profile` runs dvc: known-harmless lines filtered, in its own process group so that
    # an interrupt reaches it once, as SIGINT (dvc then stops the stage and releases its locks).
    proc = subprocess.Popen(
        quiet_dvc(plan.command),
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            if note := progress.feed(line):
                sys.stdout.write(note + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (run_main raises it as an interrupt)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
        print("study: interrupted; the same command resumes it", file=sys.stderr)
        return 130
    return proc.wait()
