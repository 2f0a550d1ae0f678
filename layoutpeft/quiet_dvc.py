"""`python -m layoutpeft.quiet_dvc ARGS` = `python -m dvc ARGS` without DVC's first-run lines.

`layoutpeft profile` runs dvc through this: the same DVC, in-process, with one logging filter
(layoutpeft.known_messages.quiet_dvc_first_checkout) for the "No file hash info found ... It
won't be created." warnings that `dvc exp run` prints for every output no stage has made yet.
"""

from __future__ import annotations

import sys

from layoutpeft.known_messages import quiet_dvc_first_checkout

if __name__ == "__main__":
    quiet_dvc_first_checkout()
    from dvc.cli import main

    sys.exit(main(sys.argv[1:]))
