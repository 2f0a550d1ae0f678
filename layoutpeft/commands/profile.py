"""`layoutpeft profile`: run a named smaller study from profiles.yaml with `dvc exp run -S ...`.

    layoutpeft profile NAME[+NAME...] [--print] [dvc exp run arguments ...]
    layoutpeft profile --list
    layoutpeft profile --restore      back to the last successful profile run's params and outputs

Everything after NAME except `--print` goes to `dvc exp run` unchanged (`--queue`, `--temp`,
`-n NAME`, `-f`, `--pull`, ...). An extra `-S key=value` replaces the profile's value for that
key, e.g. a download mirror: `layoutpeft profile ci -S data.url=https://... -S data.md5=...`.
`--print` shows the dvc command without running it. Bad keys, unknown profiles or variant
names fail before dvc runs, with one line naming profiles.yaml and the key.

dvc runs with this Python, whose folder goes first on PATH for the stages' `python -m stages.*`,
through layoutpeft.quiet_dvc (DVC's first-run "No file hash info found" lines left out).
Without `--temp`/`--queue` the experiment runs in the workspace and leaves the profile's values
in params.yaml and the results in metrics/ and plots/; with them the workspace stays as it is.

A workspace run is named `<profile>-<UTC time>` (unless `-n` names it) and, once it succeeds,
recorded in .dvc/tmp/layoutpeft-profile.json: DVC keeps that experiment's params.yaml with its
dvc.lock and outputs, so after a later failed run `layoutpeft profile --restore` (`dvc exp
apply <name>`) brings the profile's params and every output back. (`git checkout params.yaml`
would put back the committed, full study, which dvc.lock does not describe.)

Ctrl-C or SIGTERM: dvc runs in its own process group and gets exactly one SIGINT per signal,
so it stops the running stage (which removes its half-written output) and releases its locks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from layoutpeft.atomic import write_json
from layoutpeft.study.profiles import PARAMS_FILE, PROFILES_FILE, ProfileError, build_command, describe, load_profiles, run_env

RECORD = Path(".dvc/tmp/layoutpeft-profile.json")
NAME_FLAGS = ("-n", "--name")
ELSEWHERE_FLAGS = ("--temp", "--queue", "--run-all")  # the experiment does not land in the workspace


def experiment_name(profile: str, now: float | None = None) -> str:
    """`ci-offline-20261207-011300`: a valid DVC experiment (git ref) name, unique per second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '-', profile)}-{stamp}"


def given_name(extra: list[str]) -> str | None:
    for i, arg in enumerate(extra):
        if arg in NAME_FLAGS and i + 1 < len(extra):
            return extra[i + 1]
        if arg.startswith("--name="):
            return arg.split("=", 1)[1]
    return None


def run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Run `cmd` in its own process group; each SIGINT/SIGTERM to this process becomes one SIGINT
    to that group (dvc, the stage it runs). Returns (exit status, first signal received or None).

    Sharing the terminal's group would let Ctrl-C reach dvc and its stage directly, but then
    this process could not tell a SIGTERM from its own parent apart from a Ctrl-C, and
    subprocess.call would SIGKILL dvc on KeyboardInterrupt: the stale lock entries DVC later
    warns about. dvc handles SIGINT: the stage removes its staging folder, dvc its locks."""
    received: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum, frame):
        received.append(signum)
        if child is not None:
            try:
                os.killpg(child.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        if received:  # a signal came before the child existed
            os.killpg(child.pid, signal.SIGINT)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status, (received[0] if received else None)


def quiet_dvc(cmd: list[str]) -> list[str]:
    """`python -m dvc ...` -> `python -m layoutpeft.quiet_dvc ...` (same DVC, known lines filtered)."""
    assert cmd[1:3] == ["-m", "dvc"], cmd
    return [cmd[0], "-m", "layoutpeft.quiet_dvc", *cmd[3:]]


def run_dvc(cmd: list[str], what: str) -> int:
    status, received = run_forwarding_signals(quiet_dvc(cmd), run_env())
    if received is not None:
        print(
            f"layoutpeft profile: {what} interrupted ({signal.Signals(received).name}); dvc stopped the "
            "running stage and released its locks",
            file=sys.stderr,
        )
        return 128 + received
    return status


def restore(record_path: Path = RECORD) -> int:
    """`dvc exp apply` the last successful workspace profile run: its params.yaml, dvc.lock, outputs."""
    try:
        record = json.loads(record_path.read_text())
        name = record["experiment"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ProfileError(
            f"{record_path}: no successful `layoutpeft profile` run recorded here; after a "
            "plain `dvc exp run`, go back with `git checkout params.yaml && dvc checkout`"
        ) from None
    cmd = [sys.executable, "-m", "dvc", "exp", "apply", name]
    print(f"profile --restore: {record['profile']} ({name}): {shlex.join(cmd)}", file=sys.stderr, flush=True)
    status = run_dvc(cmd, "restore")
    if status != 0:
        return status
    print(f"params.yaml and the outputs are back at profile {record['profile']}'s run {name}", file=sys.stderr)
    return 0


def main(argv: list[str], profiles_path: str | Path = PROFILES_FILE, params_path: str | Path = PARAMS_FILE) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--list":
        print(describe(load_profiles(profiles_path)))
        return 0
    if argv[0] == "--restore":
        if len(argv) > 1:
            raise ProfileError(f"--restore takes no arguments, got {' '.join(argv[1:])}")
        return restore()
    print_only = "--print" in argv
    rest = [a for a in argv if a != "--print"]
    if not rest or rest[0].startswith("-"):
        raise ProfileError(
            f"expected a profile name first, got {' '.join(rest) or 'none'} (layoutpeft profile --list shows them)"
        )
    name, extra = rest[0], rest[1:]
    cmd = build_command(name, extra, profiles_path=profiles_path, params_path=params_path)
    if print_only:
        print(shlex.join(cmd))
        return 0
    in_workspace = not any(a.split("=", 1)[0] in ELSEWHERE_FLAGS for a in extra)
    experiment = given_name(extra)
    if in_workspace and experiment is None:
        experiment = experiment_name(name)
        cmd += ["-n", experiment]
    print(f"profile {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    status = run_dvc(cmd, f"profile {name}")
    if status == 0 and in_workspace:
        write_json(RECORD, {"profile": name, "experiment": experiment, "command": cmd[1:]})
        print(
            f"profile {name}: recorded as experiment {experiment}; after a failed run, "
            "`layoutpeft profile --restore` brings back its params.yaml and outputs",
            file=sys.stderr,
        )
    return status
