"""Write outputs so that a failure never leaves a half-written file or folder behind.

Files go to a temporary name beside the target and are renamed over it; folders are built
next to the target and swapped in only once complete. The previous output stays intact
until the swap. A staging folder is named `.<target>.staging.<pid>.<host>.<random>`: an
interrupted process removes its own (Ctrl-C, or SIGTERM under errors.run_main), and the next
staged_dir for the same target removes those a dead process of this host left (SIGKILL).
Modes follow the umask (0644 files, 0755 folders by default), never the 0600/0700 of
temporary files.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: Path) -> None:
    """Give a staged tree the modes the umask gives new files and folders."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temporary file in the same folder, then rename)."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _make_readable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def swap_in(staged: Path, target: Path) -> None:
    """Replace `target` (file or folder, may be absent) with `staged`; the old one is removed last."""
    _make_readable(staged)
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.staging."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove staging folders of `target` left by dead processes of this host; returns them."""
    prefix, host = _staging_prefix(target), socket.gethostname()
    removed = []
    for path in target.parent.glob(glob.escape(prefix) + "*"):
        pid_text, _, rest = path.name[len(prefix) :].partition(".")
        owner_host = rest.rpartition(".")[0]
        if not pid_text.isdigit() or owner_host != host or _pid_alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `target`; on success it replaces `target`, on error or
    interrupt it is removed. Stale staging folders of `target` (killed processes) go first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    prefix = f"{_staging_prefix(target)}{os.getpid()}.{socket.gethostname()}."
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    try:
        yield tmp
        swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
