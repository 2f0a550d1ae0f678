"""Ready-to-use recipes for M machines sharing a DVC remote: a Slurm job array and a GitHub
Actions matrix of self-hosted GPU runners (`layoutpeft shard --emit slurm|actions`).

Both follow the same three steps: `--prepare --push` (data stages once, on the remote), M
`--shard I/M --pull --push --require-gpu` (each pushes its run cache after every unit, so a
re-queued shard resumes), and one `--collect --pull` that restores every run from the run cache
and runs only aggregate. The committed copies, scale/slurm.sbatch and
.github/workflows/study-sharded.yml, are these functions' output for M = DEFAULT_SHARDS
(tests/test_shard.py checks that they match).
"""

from __future__ import annotations

DEFAULT_SHARDS = 4
SLURM_FILE = "scale/slurm.sbatch"
ACTIONS_FILE = ".github/workflows/study-sharded.yml"


def slurm(shards: int = DEFAULT_SHARDS) -> str:
    return f"""#!/bin/bash
# layoutpeft study as a Slurm job array: {shards} shards, one GPU each, sharing a DVC remote.
# Written by `layoutpeft shard --emit slurm --shards {shards}`; adapt the #SBATCH lines to your cluster.
#
# Needs: `make setup` done in the repository (its .venv), the study's params.yaml committed, and
# a DVC remote every node can reach (`dvc remote add -d storage s3://...` or a shared folder).
# Submit from the repository root (prepare -> shards -> collect):
#
#   mkdir -p logs
#   prep=$(sbatch --parsable --job-name=lp-prepare --wrap ".venv/bin/layoutpeft shard --prepare --push")
#   arr=$(sbatch --parsable --dependency=afterok:$prep --export=ALL,STUDY_SHA=$(git rev-parse HEAD) \\
#         scale/slurm.sbatch)
#   sbatch --dependency=afterok:$arr --job-name=lp-collect \\
#          --wrap ".venv/bin/layoutpeft shard --collect --pull && .venv/bin/dvc push"
#
# A failed or preempted task resumes where it stopped: `sbatch --array=I scale/slurm.sbatch`
# (finished units come back from the remote's run cache). The collector trains nothing: it
# stops with one line naming any run that no shard finished.
#SBATCH --job-name=lp-shard
#SBATCH --array=1-{shards}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=logs/shard-%A-%a.out
set -euo pipefail

repo=${{SLURM_SUBMIT_DIR:?submit from the repository root}}
count=${{SHARDS:-{shards}}}   # M: fixed, so that a task resubmitted alone (--array=I) keeps its shard
# Each task works in its own clone of the submitted commit (two dvc repro cannot share one
# workspace); the venv and the remote are the repository's. STUDY_SHA: the commit at submission.
work=${{TMPDIR:-/tmp}}/layoutpeft-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID
rm -rf "$work"
git clone -q "$repo" "$work"
git -C "$work" checkout -q "${{STUDY_SHA:-$(git -C "$repo" rev-parse HEAD)}}"
cp "$repo"/.dvc/config.local "$work"/.dvc/ 2>/dev/null || true   # a remote configured with --local
cd "$work"
export PATH="$repo/.venv/bin:$PATH" OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-8}}
layoutpeft shard --shard "$SLURM_ARRAY_TASK_ID/$count" --pull --push --require-gpu
"""


# The project set up on a runner, with the DVC remote's plugin (a step of every job below).
SETUP_STEP = """      - name: Set up the project
        run: |
          make setup
          .venv/bin/python -m pip install -q -c constraints.txt "dvc[${{ vars.DVC_REMOTE_EXTRA }}]"
          echo "$PWD/.venv/bin" >> "$GITHUB_PATH"
"""


def actions(shards: int = DEFAULT_SHARDS) -> str:
    matrix = ", ".join(str(i) for i in range(1, shards + 1))
    return f"""# The whole study on {shards} self-hosted GPU runners: prepare -> {shards} shards -> collect.
# Written by `layoutpeft shard --emit actions --shards {shards}`.
#
# Needs: self-hosted runners labelled `gpu` (one GPU each; CUDA torch, so no CPU wheel index),
# a DVC remote committed in .dvc/config, the repository variable DVC_REMOTE_EXTRA (the dvc
# plugin: s3, gs, azure, ssh) and the remote's credentials as secrets (S3 shown). Each shard
# pushes its run cache after every unit: re-running a failed shard job resumes it. The collector
# runs on a hosted runner (it trains nothing, it restores every run from the run cache).
name: study-sharded

on:
  workflow_dispatch:

permissions:
  contents: read

concurrency:
  group: study-sharded-${{{{ github.ref }}}}

env:
  DVC_NO_ANALYTICS: "1"
  SHARDS: "{shards}"
  AWS_ACCESS_KEY_ID: ${{{{ secrets.AWS_ACCESS_KEY_ID }}}}
  AWS_SECRET_ACCESS_KEY: ${{{{ secrets.AWS_SECRET_ACCESS_KEY }}}}

jobs:
  prepare:
    runs-on: [self-hosted, gpu]
    steps:
      - uses: actions/checkout@v4
{SETUP_STEP}      - name: Data stages once, on the remote
        run: layoutpeft shard --prepare --push

  shard:
    needs: prepare
    runs-on: [self-hosted, gpu]
    timeout-minutes: 4320
    strategy:
      fail-fast: false           # a dead shard loses only its own unfinished runs
      matrix:
        shard: [{matrix}]
    steps:
      - uses: actions/checkout@v4
{SETUP_STEP}      - name: Run shard ${{{{ matrix.shard }}}} of {shards}
        run: layoutpeft shard --shard "${{{{ matrix.shard }}}}/$SHARDS" --pull --push --require-gpu

  collect:
    needs: shard
    runs-on: ubuntu-latest
    env:
      PIP_EXTRA_INDEX_URL: https://download.pytorch.org/whl/cpu
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
{SETUP_STEP}      - name: Collect (restores every run from the run cache, runs aggregate only)
        run: |
          layoutpeft shard --collect --pull
          dvc push
      - uses: actions/upload-artifact@v4
        with:
          name: study-results
          path: |
            metrics/
            plots/
            dvc.lock
"""


RECIPES = {"slurm": (slurm, SLURM_FILE), "actions": (actions, ACTIONS_FILE)}
