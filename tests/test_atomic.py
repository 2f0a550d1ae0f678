"""Staging folders never outlive their process: Ctrl-C and SIGTERM remove them at once, and the
next staged_dir for the same target removes one that a killed (SIGKILL) process left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from layoutpeft.atomic import remove_stale_staging, staged_dir

REPO = Path(__file__).resolve().parents[1]

# A stage-like program: run_main around a staged_dir that waits to be interrupted.
STAGE = """
import sys, time
from pathlib import Path
from layoutpeft.atomic import staged_dir
from layoutpeft.errors import run_main

def main(argv):
    with staged_dir(Path(argv[0]) / "run") as staged:
        (staged / "live").mkdir()
        time.sleep(120)

sys.exit(run_main("train", main, sys.argv[1:]))
"""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def staging(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".run.staging.*"))


def start_stage(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT back to its default in the child: a shell without job control starts background commands
    # with SIGINT ignored (POSIX), and Python then installs no KeyboardInterrupt handler; a stage run by
    # DVC in the foreground has the default, which is what this test is about.
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(folder)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(folder.glob(".run.staging.*/live")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def test_sigterm_and_sigint_remove_the_staging_folder(tmp_path):
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = start_stage(tmp_path)
        assert len(staging(tmp_path)) == 1 and f".run.staging.{proc.pid}.{socket.gethostname()}." in staging(tmp_path)[0]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == status, err
        assert err.strip() == f"layoutpeft train: interrupted ({signal.Signals(sig).name})"
        assert staging(tmp_path) == [] and not (tmp_path / "run").exists()


def test_a_killed_process_staging_folder_goes_at_the_next_start(tmp_path):
    proc = start_stage(tmp_path)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate()
    left = staging(tmp_path)
    assert len(left) == 1
    with staged_dir(tmp_path / "run") as staged:
        (staged / "done").write_text("ok")
    assert staging(tmp_path) == [] and (tmp_path / "run" / "done").read_text() == "ok"


def test_only_dead_processes_of_this_host_are_swept(tmp_path):
    host = socket.gethostname()
    names = {
        "dead": f".run.staging.{dead_pid()}.{host}.abc",
        "alive": f".run.staging.{os.getpid()}.{host}.def",
        "elsewhere": f".run.staging.{dead_pid()}.other-host.example.ghi",
        "other_target": f".run-1.staging.{dead_pid()}.{host}.jkl",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    assert remove_stale_staging(tmp_path / "run") == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
