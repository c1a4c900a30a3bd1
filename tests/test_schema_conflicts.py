"""A database that already holds another app's `users`: setup, setup --dry-run and doctor name
the objects in the way and say what to do (exit 2, nothing applied); `--schema NAME` installs
the app's tables in their own Postgres schema, used by every command. Against real servers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import redis

from kvmigrate.adapters.pg.migrations import apply_migrations
from kvmigrate.model.errors import SchemaConflict
from kvmigrate.model.urls import with_search_path
from tests.fixtures.data import mixed_keyspace
from tests.helpers import cli, cli_json


def _other_apps_users(pg: psycopg.Connection) -> None:
    pg.execute("CREATE TABLE public.users (id SERIAL PRIMARY KEY, email TEXT NOT NULL)")
    pg.execute("INSERT INTO public.users (email) VALUES ('shop@example.com')")
    pg.commit()


def _nothing_applied(pg: psycopg.Connection) -> None:
    row = pg.execute("SELECT to_regclass('kvmigrate.runs'), to_regclass('kvmigrate.schema_migrations'),"
                     " to_regclass('public.messages')").fetchone()
    pg.rollback()
    assert row == (None, None, None)


def test_setup_refuses_another_apps_users_table_before_applying_anything(pg_url: str, pg: psycopg.Connection) -> None:
    _other_apps_users(pg)
    result = cli("--pg-url", pg_url, "setup")
    assert result.exit_code == 2, result.output
    assert "public.users (a table already there; 002_app_tables.sql creates a table)" in result.stderr
    assert "--schema NAME" in result.stderr and "report it" not in result.output
    _nothing_applied(pg)

    dry = cli_json("--pg-url", pg_url, "setup", "--dry-run", expect=2)
    assert "public.users" in dry["error"]["message"] and "--schema" in dry["error"]["hint"]
    _nothing_applied(pg)


def test_doctor_names_the_conflicting_table_and_what_to_do(pg_url: str, kv_url: str, pg: psycopg.Connection) -> None:
    _other_apps_users(pg)
    doctor = cli_json("--pg-url", pg_url, "--kv-url", kv_url, "doctor", expect=1)
    schema = next(c for c in doctor["result"]["checks"] if c["name"] == "schema current")
    assert not schema["ok"]
    assert "setup` would refuse" in schema["detail"] and "public.users" in schema["detail"]
    assert "--schema NAME" in schema["detail"]


def test_indexes_and_types_in_the_way_are_conflicts_too(pg_url: str, pg: psycopg.Connection) -> None:
    pg.execute("CREATE TYPE public.streaks AS ENUM ('a', 'b')")
    pg.execute("CREATE TABLE public.notes (x INT)")
    pg.execute("CREATE INDEX idx_messages_thread ON public.notes (x)")
    pg.commit()
    result = cli("--pg-url", pg_url, "setup")
    assert result.exit_code == 2, result.output
    assert "public.streaks (a enum type already there" in result.stderr
    assert "public.idx_messages_thread (a index already there" in result.stderr
    _nothing_applied(pg)


def test_pending_schema_files_apply_all_or_nothing(pg_url: str, pg: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "001_first.sql").write_text("CREATE TABLE first_table (x INT);\n")
    (tmp_path / "002_second.sql").write_text("CREATE TABLE second_table (x INT REFERENCES nowhere (x));\n")
    with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        apply_migrations(conn, directory=tmp_path)
    row = pg.execute("SELECT to_regclass('first_table'), to_regclass('kvmigrate.schema_migrations')").fetchone()
    assert row == (None, None)  # the first file did not stay applied alone


def test_a_table_created_while_setup_runs_is_a_conflict_not_a_crash(pg_url: str, pg: psycopg.Connection,
                                                                    tmp_path: Path) -> None:
    # planned objects come from CREATE statements; one built by a DO block is found only by the server
    (tmp_path / "001_first.sql").write_text("DO $$ BEGIN EXECUTE 'CREATE TABLE public.' || 'users (x INT)'; END $$;\n")
    _other_apps_users(pg)
    with psycopg.connect(pg_url) as conn, pytest.raises(SchemaConflict, match="nothing was applied"):
        apply_migrations(conn, directory=tmp_path)


def test_search_path_is_added_to_the_urls_options_keeping_the_others() -> None:
    url = "postgresql://u:p%2Bw@h/db?sslmode=require&options=-c%20statement_timeout%3D5000"
    assert with_search_path(url, "vibe") == ("postgresql://u:p%2Bw@h/db?sslmode=require"
                                             "&options=-c%20statement_timeout%3D5000%20-c%20search_path%3Dvibe")
    result = cli("--pg-url", "postgresql://u@h/db", "--schema", "Bad-Name", "setup")
    assert result.exit_code == 2, result.output
    assert "bad schema name" in result.stderr


def test_a_migration_in_its_own_schema_beside_another_apps_public_users(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                        pg: psycopg.Connection) -> None:
    _other_apps_users(pg)
    mixed_keyspace(kv)
    urls = ("--pg-url", pg_url, "--kv-url", kv_url)
    dry = cli(*urls, "--schema", "vibe", "setup", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "CREATE SCHEMA IF NOT EXISTS vibe;" in dry.stdout
    setup = cli(*urls, "--schema", "vibe", "setup")
    assert setup.exit_code == 0, setup.output
    env = {"KVMIGRATE_PG_SCHEMA": "vibe"}  # the environment variable works like the option
    doctor = cli_json(*urls, "doctor", env=env)
    assert "app tables in schema vibe" in next(c["detail"] for c in doctor["result"]["checks"]
                                               if c["name"] == "schema current")

    assert cli(*urls, "backfill", "--schema", "vibe").exit_code == 0  # the option may follow the command
    verify = cli_json(*urls, "verify", env=env)
    assert verify["result"]["clean"] is True, verify["result"]
    dual = cli(*urls, "dual-write", "--entity", "streaks", "--settle", "0", env=env)
    assert dual.exit_code == 0, dual.output
    cutover = cli(*urls, "cutover", "--entity", "streaks", env=env)
    assert cutover.exit_code == 0, cutover.output

    assert pg.execute("SELECT count(*) FROM vibe.users").fetchone()[0] >= 3
    assert pg.execute("SELECT count(*) FROM vibe.streaks").fetchone()[0] >= 2
    assert pg.execute("SELECT email FROM public.users").fetchall() == [("shop@example.com",)]
    assert pg.execute("SELECT to_regclass('public.streaks')").fetchone() == (None,)

    # without --schema the connection would resolve public.users: refused, naming the option
    wrong = cli(*urls, "verify")
    assert wrong.exit_code == 2, wrong.output
    assert "set up in schema vibe" in wrong.stderr and "--schema vibe" in wrong.stderr
    again = cli(*urls, "--schema", "other", "setup")
    assert again.exit_code == 2, again.output
    assert "set up in schema vibe" in again.stderr
