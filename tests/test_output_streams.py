"""stdout carries the data, stderr the talk: a report, a table or the SQL of `setup --dry-run`
goes to stdout (so it can be redirected to a file), progress, warnings and errors to stderr;
with `--json` stdout holds one envelope, a usage error included; tables are laid out in the
terminal's width."""

from __future__ import annotations

import orjson
import psycopg

from tests.fixtures.faults import run_module
from tests.helpers import cli


def test_setup_dry_run_writes_the_sql_to_stdout_and_nothing_else(pg_url: str, pg: psycopg.Connection) -> None:
    done = run_module("--pg-url", pg_url, "setup", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE" in done.stdout and "CREATE TABLE" not in done.stderr
    assert "-- would apply 001_" in done.stdout
    assert pg.execute("SELECT to_regclass('public.users')").fetchone() == (None,)


def test_errors_and_hints_go_to_stderr_and_leave_stdout_empty() -> None:
    done = run_module("--pg-url", "postgresql://u@127.0.0.1:1/x", "status", env={"KVMIGRATE_CONNECT_RETRIES": "0"})
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("error: ") == 1 and "hint: " in done.stderr


def test_a_report_goes_to_stdout(pg_url: str, kv_url: str) -> None:
    assert cli("--pg-url", pg_url, "setup").exit_code == 0
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "status")
    assert result.exit_code == 0, result.output
    assert "users" in result.stdout and result.stderr == ""


def test_a_usage_error_under_json_still_prints_one_envelope() -> None:
    for args in (["--json", "status", "--no-such-option"], ["status", "--json", "--max-requests", "x"],
                 ["--json", "verify", "--max-requests", "0"], ["--json", "no-such-command"]):
        done = run_module(*args)
        assert done.returncode == 2, (args, done.stderr)
        body = orjson.loads(done.stdout)
        assert body["exit_code"] == 2 and body["ok"] is False and body["error"]["message"], body
        assert "Usage" in done.stderr  # the usual usage text too, on stderr


def test_tables_follow_the_terminal_width(pg_url: str, kv_url: str) -> None:
    assert cli("--pg-url", pg_url, "setup").exit_code == 0
    widths = {}
    for columns in ("60", "200"):
        result = cli("--pg-url", pg_url, "--kv-url", kv_url, "status", env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        table = [line for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└"]  # text lines wrap themselves
        assert table, result.stdout
        widths[columns] = max(len(line) for line in table)
    assert widths["60"] <= 60 < widths["200"], widths
