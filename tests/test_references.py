"""Foreign keys checked once per page and table (adapters.pg.references), on a real Postgres:
the rows a page writes never refer to a missing user, a user they refer to cannot be deleted
before the page commits, and Postgres keeps checking every row wherever the page cannot."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.pg import references
from kvmigrate.adapters.pg.loader import SourcedRow, TableLoader
from kvmigrate.engine.batch import table_specs
from kvmigrate.entities import ENTITIES
from kvmigrate.model.config import build_config

SPECS = table_specs(ENTITIES)
T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)


def _orphans(pg: psycopg.Connection) -> int:
    row = pg.execute("SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.handle ="
                     " m.from_handle) OR NOT EXISTS (SELECT 1 FROM users u WHERE u.handle = m.to_handle)").fetchone()
    return int(row[0]) if row else -1


def test_a_backfill_checks_references_per_page_and_leaves_no_message_without_its_users(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    kv.hset("vibe:handles", mapping={"sam": orjson.dumps({"handle": "sam"})})
    for i in range(40):  # half to a registered user, half to handles nobody registered
        to = "sam" if i % 2 else f"ghost{i}"
        kv.set(f"msg:m{i}", orjson.dumps({"id": f"m{i}", "from": "hal", "to": to, "text": "hi",
                                         "createdAt": "2025-06-01T12:00:00Z"}))
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10, load_batch=5)
    commands.setup(config)
    with caplog.at_level(logging.INFO, logger="kvmigrate"):
        commands.backfill(config)
    assert "foreign keys: checked once per page and table" in caplog.text
    assert pg.execute("SELECT count(*) FROM messages").fetchone() == (40,)
    assert _orphans(pg) == 0
    assert pg.execute("SELECT count(*) FROM users WHERE settings->>'placeholder' = 'true'").fetchone() == (21,)
    assert commands.verify(config, recheck_delay=0).clean


def test_a_user_a_page_refers_to_cannot_be_deleted_before_the_page_commits(
        conn: psycopg.Connection, pg_url: str) -> None:
    conn.execute("INSERT INTO users (handle) VALUES ('sam'), ('hal')")
    conn.commit()
    loader = TableLoader(conn, SPECS["messages"], per_transaction=True, lock_refs=True)
    conn.commit()  # its stage is made: the page below is a transaction of its own
    row = SourcedRow({"id": "m1", "from_handle": "hal", "to_handle": "sam", "content": "hi", "payload": None,
                      "read": False, "created_at": T0}, 40, "msg:m1", "")
    with psycopg.connect(pg_url, autocommit=True) as app:
        app.execute("SET lock_timeout = '300ms'")
        with conn.transaction():
            references.skip_row_checks(conn)
            loader.load([row])
            with pytest.raises(psycopg.errors.LockNotAvailable):
                app.execute("DELETE FROM users WHERE handle = 'sam'")
        # committed: the app's own session checks the reference as usual
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            app.execute("DELETE FROM users WHERE handle = 'sam'")
    assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)


def test_a_loaded_table_with_a_trigger_of_its_own_keeps_postgres_checking_every_row(
        conn: psycopg.Connection) -> None:
    conn.execute("CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER audit BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION touch()")
    conn.commit()
    conn.execute("SELECT 1")  # a transaction is open: the probe must not leave the setting in it
    assert references.per_page_refusal(conn, list(SPECS.values())) == (
        "table messages has trigger audit, which every row must fire")
    assert conn.execute("SHOW session_replication_role").fetchone() == ("origin",)


def test_a_foreign_key_the_loader_does_not_cover_keeps_postgres_checking_every_row(
        conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE messages ADD CONSTRAINT odd FOREIGN KEY (content) REFERENCES users (handle) NOT VALID")
    conn.commit()
    assert references.per_page_refusal(conn, list(SPECS.values())) == (
        "the foreign key on messages.content is not one the loader checks")


def test_a_role_that_may_not_skip_triggers_keeps_postgres_checking_every_row(conn: psycopg.Connection) -> None:
    conn.execute("DO $$ BEGIN CREATE ROLE kvm_test_plain NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    conn.commit()
    try:
        conn.execute("SET ROLE kvm_test_plain")
        assert references.per_page_refusal(conn, list(SPECS.values())) == (
            "this role may not set session_replication_role")
        conn.execute("RESET ROLE")
    finally:
        conn.rollback()
        conn.execute("RESET ROLE")
        conn.execute("DROP ROLE IF EXISTS kvm_test_plain")
        conn.commit()
