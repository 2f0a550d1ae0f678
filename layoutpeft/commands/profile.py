"""`layoutpeft profile`: run a named smaller study from profiles.yaml with `dvc exp run -S ...`.

    layoutpeft profile NAME[+NAME...] [--print] [dvc exp run arguments ...]
    layoutpeft profile --list

Everything after NAME except `--print` goes to `dvc exp run` unchanged (`--queue`, `--temp`,
`-n NAME`, `-f`, `--pull`, ...). An extra `-S key=value` replaces the profile's value for that
key, e.g. a download mirror: `layoutpeft profile ci -S data.url=https://... -S data.md5=...`.
`--print` shows the dvc command without running it. Bad keys, unknown profiles or variant
names fail before dvc runs, with one line naming profiles.yaml and the key.

dvc runs with this Python, whose folder goes first on PATH for the stages' `python -m stages.*`.
Without `--temp`/`--queue` the experiment runs in the workspace and leaves the profile's values
in params.yaml and the results in metrics/ and plots/ (`git checkout params.yaml` or
`dvc exp apply` to go back or forth); with them the workspace stays as it is.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from layoutpeft.study.profiles import PARAMS_FILE, PROFILES_FILE, ProfileError, build_command, describe, load_profiles, run_env

def main(argv: list[str], profiles_path: str | Path = PROFILES_FILE, params_path: str | Path = PARAMS_FILE) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--list":
        print(describe(load_profiles(profiles_path)))
        return 0
    print_only = "--print" in argv
    rest = [a for a in argv if a != "--print"]
    if not rest or rest[0].startswith("-"):
        raise ProfileError(f"expected a profile name first, got {' '.join(rest) or 'none'} "
                           "(layoutpeft profile --list shows them)")
    name, extra = rest[0], rest[1:]
    cmd = build_command(name, extra, profiles_path=profiles_path, params_path=params_path)
    if print_only:
        print(shlex.join(cmd))
        return 0
    print(f"profile {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=run_env())
