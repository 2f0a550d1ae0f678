"""One-line errors for bad input.

Anything a user can fix (a params key, a file, a value) raises a `LayoutpeftError` whose
message names the key, file or value at fault. Entry points run under `run_main`, which
prints such an error as one line, `layoutpeft <command>: error: <message>`, and exits 2.
Unexpected exceptions keep their traceback. `--debug` or LAYOUTPEFT_DEBUG=1 shows the
traceback of user errors too.

SIGTERM is raised as `Terminated` (a KeyboardInterrupt), like Ctrl-C: `finally:` blocks run,
so an interrupted stage leaves no staging folder (atomic.staged_dir), and the command exits
130 (SIGINT) or 143 (SIGTERM) with one line. Known-harmless library messages are silenced
first (layoutpeft.known_messages).

REFUSE_ENV lists commands that must not run at all (exit 3 before any work): a collector's
`dvc repro` sets it for the training stages, so a stage missing from the run cache fails at
once and dvc, which stops at a failed stage, starts no other.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from layoutpeft.known_messages import quiet_libraries

REFUSE_ENV = "LAYOUTPEFT_REFUSE_STAGES"
REFUSED = 3


class LayoutpeftError(Exception):
    """Bad input a user can fix; the message names the file, key or value."""


class ParamsError(LayoutpeftError, ValueError):
    """A params.yaml key is missing, of the wrong type, or out of range."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that cleanup runs as it does for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def terminate_as_interrupt() -> Callable[[], None]:
    """Turn SIGTERM into `Terminated` (main thread only; a handler someone else set stays).
    Returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None
    signal.signal(signal.SIGTERM, _raise_terminated)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("LAYOUTPEFT_DEBUG", "") not in ("", "0")


def run_main(command: str, main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`; a LayoutpeftError becomes one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if command in os.environ.get(REFUSE_ENV, "").split(","):
        print(f"layoutpeft {command}: refused ({REFUSE_ENV}={os.environ[REFUSE_ENV]}): not run", file=sys.stderr)
        return REFUSED
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    quiet_libraries()
    restore_sigterm = terminate_as_interrupt()
    try:
        result = main(argv)
    except LayoutpeftError as err:
        if debug:
            raise
        message = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
        print(f"layoutpeft {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"layoutpeft {command}: interrupted ({'SIGTERM' if terminated else 'SIGINT'})", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        restore_sigterm()
    return result if isinstance(result, int) else 0
