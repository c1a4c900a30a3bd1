"""The console-script entry point: `kvmigrate --version` answers without importing the CLI
(which loads psycopg, redis-py, rich and every command); anything else runs the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    """Run kvmigrate's command line."""
    if sys.argv[1:] == ["--version"]:
        from kvmigrate import __version__

        sys.stdout.write(f"kvmigrate {__version__}\n")
        return
    from kvmigrate.cli import main as cli_main

    cli_main()
