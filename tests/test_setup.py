from __future__ import annotations

import threading

import psycopg
import pytest

from kvmigrate import api as commands
from kvmigrate.adapters.pg.migrations import load_migrations
from kvmigrate.model.config import build_config
from kvmigrate.model.errors import KvmigrateError
from tests.helpers import cli, cli_json

APP_TABLES = {"users", "messages", "board_posts", "streaks", "memories", "game_results", "invites",
              "user_connections", "friendships", "reports"}


def _tables(pg: psycopg.Connection, schema: str) -> set[str]:
    rows = pg.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
    ).fetchall()
    return {r[0] for r in rows}


def test_setup_applies_every_schema_file(pg_url: str, pg: psycopg.Connection) -> None:
    result = commands.setup(build_config(pg_url=pg_url, env={}))
    assert [m.filename for m in result.applied] == [m.filename for m in load_migrations()]
    assert APP_TABLES <= _tables(pg, "public")
    assert {"runs", "ledger", "rejects", "checkpoints", "phases", "verify_results"} <= _tables(pg, "kvmigrate")
    count = pg.execute("SELECT count(*) FROM kvmigrate.schema_migrations").fetchone()
    assert count == (len(load_migrations()),)


def test_setup_twice_applies_nothing_the_second_time(pg_url: str) -> None:
    cli_json("--pg-url", pg_url, "setup")
    second = cli("--pg-url", pg_url, "setup")
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output
    env = cli_json("--pg-url", pg_url, "setup")
    assert env["result"]["applied"] == []


def test_setup_dry_run_prints_sql_and_writes_nothing(pg_url: str, pg: psycopg.Connection) -> None:
    result = cli("--pg-url", pg_url, "setup", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE users" in result.output
    assert _tables(pg, "public") == set()
    assert pg.execute("SELECT to_regnamespace('kvmigrate')").fetchone() == (None,)


def test_setup_refuses_a_changed_schema_file(pg_url: str, pg: psycopg.Connection) -> None:
    commands.setup(build_config(pg_url=pg_url, env={}))
    pg.execute("UPDATE kvmigrate.schema_migrations SET checksum = 'tampered' WHERE version = 2")
    result = cli("--pg-url", pg_url, "setup")
    assert result.exit_code == 1, result.output
    assert "002_app_tables.sql was changed after it was applied" in result.output
    assert "hint:" in result.output
    with pytest.raises(KvmigrateError):
        commands.setup(build_config(pg_url=pg_url, env={}), dry_run=True)


def test_two_concurrent_setups_end_with_one_schema(pg_url: str, pg: psycopg.Connection) -> None:
    errors: list[BaseException] = []
    config = build_config(pg_url=pg_url, env={})

    def go() -> None:
        try:
            commands.setup(config)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = pg.execute("SELECT version FROM kvmigrate.schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in load_migrations()]


def test_setup_without_a_url_exits_2_naming_the_variables() -> None:
    result = cli("setup")
    assert result.exit_code == 2, result.output
    assert "KVMIGRATE_PG_URL" in result.output and "DATABASE_URL_UNPOOLED" in result.output
