"""Subcommands of the `layoutpeft` command, one module each with `main(argv) -> int | None`.

Only these modules (and stages/) parse command lines; the library below them takes arguments."""
