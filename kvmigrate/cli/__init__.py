"""The command line: a thin Typer layer over `kvmigrate.api`.

Each command parses its options, builds a Config, calls one library function and renders the
result: the report on stdout (or one JSON envelope with `--json`); progress, warnings and
errors on stderr. Errors print one `error:` line and a `hint:` line, and exit with the documented code (README, "Exit codes").
"""

from kvmigrate.cli import admin, migrate, tryout  # noqa: F401  (registers the commands, in help order)
from kvmigrate.cli.base import app, main

__all__ = ["app", "main"]
