"""The README documents every command and the exit codes exactly as the code defines them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from kvmigrate.cli import app
from kvmigrate.model.errors import EXIT_CODES
from tests.helpers import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_readme_exit_code_table_matches_the_code() -> None:
    table = dict(re.findall(r"^\| (\d) \| (.+?) \|$", README, re.M))
    assert {int(k): v for k, v in table.items()} == EXIT_CODES


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_and_is_in_the_readme(name: str) -> None:
    result = cli(name, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert f"`kvmigrate {name}" in README, f"{name} is missing from the README"


def test_version_prints_without_a_command() -> None:
    from kvmigrate import __version__

    result = cli("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"kvmigrate {__version__}"
