"""Sources of merged rows, on real servers. A message with one copy records nothing beyond its
row and its owner; when a second copy arrives (in a later page or run) both copies are recorded,
so the merge, verify, repair and cleanup see every source of the row. An unchanged rerun stages
no list again; a list whose `unread:{h}` counters alone changed is staged again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis
from psycopg import sql

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.pg.loader import LoadStats, TableLoader
from kvmigrate.adapters.pg.owners import owner_of
from kvmigrate.engine import phases
from kvmigrate.entities.messages import MESSAGES_TABLE
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config, build_config
from kvmigrate.model.records import SourcedRow
from kvmigrate.phases.cleanup import run_cleanup

READ_ISO = "2025-06-01T13:00:00+00:00"


def _msg(mid: str, **extra: Any) -> dict[str, Any]:
    return {"id": mid, "from": "sam", "to": "hal", "text": mid, "createdAt": "2025-06-01T12:00:00Z",
            "read": False, **extra}


def _sources(pg: psycopg.Connection) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for pk, key in pg.execute("SELECT pk, source_key FROM kvmigrate.fill_sources WHERE tbl = 'messages'"):
        out.setdefault(pk, set()).add(key)
    return out


def _owners(pg: psycopg.Connection) -> dict[str, str]:
    """Each message row's owner (adapters.pg.owners): its row_origin row, or its own key's record."""
    query = sql.SQL("SELECT t.id, o.source_key FROM messages t LEFT JOIN LATERAL ({}) o ON true").format(
        owner_of(MESSAGES_TABLE, sql.SQL("t.id")))
    return dict(pg.execute(query).fetchall())


def _config(pg_url: str, kv_url: str) -> Config:
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    return config


def test_one_copy_records_no_source_and_a_second_copy_records_both(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.set("msg:m1", orjson.dumps(_msg("m1")))
    kv.set("msg:m2", orjson.dumps(_msg("m2")))
    config = _config(pg_url, kv_url)
    commands.backfill(config)
    assert _sources(pg) == {}  # each row is its one copy
    assert _owners(pg) == {"m1": "msg:m1", "m2": "msg:m2"}
    # owned by the record named after it: said by its ledger row, with no row_origin row
    assert pg.execute("SELECT key FROM kvmigrate.ledger WHERE owns_row ORDER BY key").fetchall() == [
        ("msg:m1",), ("msg:m2",)]
    assert pg.execute("SELECT count(*) FROM kvmigrate.row_origin WHERE tbl = 'messages'").fetchone() == (0,)

    # a second copy of m1, read, in the oldest archive, found by a later run
    kv.set("vibe:messages", orjson.dumps([_msg("m1", read=True, readAt=READ_ISO)]))
    commands.backfill(config)
    assert _sources(pg) == {"m1": {"msg:m1", "vibe:messages"}}
    assert pg.execute("SELECT id, read, payload FROM messages ORDER BY id").fetchall() == [
        ("m1", True, {"_extra": {"read_at": READ_ISO}}), ("m2", False, None)]
    assert commands.verify(config, recheck_delay=0).clean

    # the archive copy goes: repair forgets it, and the row is its one remaining copy again (the
    # read time only that copy held goes too: a lossy repair, which must be allowed)
    kv.delete("vibe:messages")
    lossy = build_config(pg_url=pg_url, kv_url=kv_url, env={}, allow_lossy_repair=True)
    repaired = commands.verify(lossy, recheck_delay=0, repair=True)
    assert repaired.entities["messages"].repaired == 1
    assert pg.execute("SELECT id, read, payload FROM messages ORDER BY id").fetchall() == [
        ("m1", False, None), ("m2", False, None)]
    assert _sources(pg) == {"m1": {"msg:m1"}}
    assert commands.verify(config, recheck_delay=0).clean


def test_copies_of_a_message_in_pages_of_one_first_run_are_merged_whichever_page_came_first(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    # A first load looks up recorded copies only for ids it loaded earlier in the run: each
    # page here is its own transaction, and SCAN brings the archive before or after any msg:*.
    ids = [f"m{i:02d}" for i in range(60)]
    for mid in ids:
        kv.set(f"msg:{mid}", orjson.dumps(_msg(mid)))
    kv.set("vibe:messages", orjson.dumps([_msg(mid, read=True, readAt=READ_ISO) for mid in ids]))
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10, load_batch=1)
    commands.setup(config)
    commands.backfill(config)
    assert _sources(pg) == {mid: {f"msg:{mid}", "vibe:messages"} for mid in ids}
    # each row's owner is its highest-ranked copy, whichever page recorded one first
    assert _owners(pg) == {mid: f"msg:{mid}" for mid in ids}
    assert pg.execute("SELECT count(*) FROM messages WHERE read AND payload = %s::jsonb",
                      (orjson.dumps({"_extra": {"read_at": READ_ISO}}).decode(),)).fetchone() == (60,)
    assert commands.verify(config, recheck_delay=0).clean


def _to_cutover(config: Config) -> None:
    with psycopg.connect(config.require_pg()) as conn:
        kv = connect_kv(config.require_kv(), RequestBudget())
        for phase in (phases.DUAL, phases.CUTOVER):
            phases.set_phase(conn, kv, "messages", phase, reason="test")


def test_cleanup_verifies_a_one_copy_message_alone_and_keeps_a_copy_whose_row_has_another_source(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    """Both keys change after verify, and Postgres got the same change (a dual write): the
    one-copy message verifies from its own value; the copy of a merged row cannot (its other
    copy decides the row too), so it is kept."""
    kv.set("msg:solo", orjson.dumps(_msg("solo")))
    kv.set("msg:twin", orjson.dumps(_msg("twin")))
    kv.set("vibe:messages", orjson.dumps([_msg("twin")]))
    config = _config(pg_url, kv_url)
    commands.backfill(config, entities=["messages"])
    assert _sources(pg) == {"twin": {"msg:twin", "vibe:messages"}}
    assert commands.verify(config, entities=["messages"], recheck_delay=0).clean
    _to_cutover(config)
    for mid in ("solo", "twin"):
        kv.set(f"msg:{mid}", orjson.dumps(_msg(mid, text=f"{mid}, edited")))
        pg.execute("UPDATE messages SET content = %s WHERE id = %s", (f"{mid}, edited", mid))
    result = run_cleanup(config, entities=["messages"], archive_dir=tmp_path, yes=True)
    assert not kv.exists("msg:solo")
    assert kv.exists("msg:twin")
    kept = {reason: k.examples for reason, k in result.entities["messages"].kept.items()}
    assert any("msg:twin" in examples for examples in kept.values()), kept


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Source keys of the rows each table loaded, per backfill (cleared by the test)."""
    seen: dict[str, set[str]] = {}
    load = TableLoader.load

    def spy(self: TableLoader, rows: Sequence[SourcedRow], **kw: Any) -> LoadStats:
        if rows:
            seen.setdefault(self.spec.name, set()).update(r.source_key for r in rows)
        return load(self, rows, **kw)

    monkeypatch.setattr(TableLoader, "load", spy)
    return seen


def test_an_unchanged_rerun_stages_no_list_and_a_counter_change_stages_only_its_list(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, staged: dict[str, set[str]]) -> None:
    for i in range(3):
        kv.lpush("messages:hal", orjson.dumps({"id": f"h{i}", "from": "tia", "to": "hal", "body": f"b{i}",
                                               "timestamp": 1748779200000 + i, "read_at": None}))
        kv.lpush("messages:ivy", orjson.dumps({"id": f"i{i}", "from": "tia", "to": "ivy", "body": f"b{i}",
                                               "timestamp": 1748779200000 + i, "read_at": None}))
    kv.hset("unread:hal", "tia", "2")
    kv.hset("unread:ivy", "tia", "1")
    config = _config(pg_url, kv_url)
    commands.backfill(config)
    assert staged["messages"] == {"messages:hal", "messages:ivy"}
    assert pg.execute("SELECT count(*) FROM messages WHERE NOT read").fetchone() == (3,)

    staged.clear()
    again = commands.backfill(config)
    assert sum(t.rows_written for t in again.tallies.values()) == 0
    assert "messages" not in staged, staged

    kv.hset("unread:hal", "tia", "0")  # hal viewed the thread: only the counters changed
    commands.backfill(config)
    assert staged["messages"] == {"messages:hal"}
    assert pg.execute("SELECT id FROM messages WHERE NOT read").fetchall() == [("i2",)]


def test_a_message_owned_by_its_own_key_is_extra_under_that_key_once_gone_and_deleting_it_forgets_the_owner(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    # a first load records these owners in the ledger rows of msg:m1 and msg:m2 (see adapters.pg.owners)
    for mid in ("m1", "m2"):
        kv.set(f"msg:{mid}", orjson.dumps(_msg(mid)))
    config = _config(pg_url, kv_url)
    commands.backfill(config)
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger WHERE owns_row").fetchone() == (2,)
    kv.delete("msg:m1")  # the app's weekly clean-up
    found = commands.verify(config, recheck_delay=0)
    assert [(d.kind, d.pk, d.key) for d in found.entities["messages"].extra] == [("extra", "m1", "msg:m1")]
    deleted = commands.verify(config, recheck_delay=0, repair_extra=True, yes=True)
    assert deleted.extra_deleted == 1
    assert pg.execute("SELECT key FROM kvmigrate.ledger WHERE owns_row").fetchall() == [("msg:m2",)]
    # the app writes m1 again: repair copies it, and it has its owner again (in row_origin now)
    kv.set("msg:m1", orjson.dumps(_msg("m1")))
    assert commands.verify(config, recheck_delay=0, repair=True).entities["messages"].repaired == 1
    assert _owners(pg) == {"m1": "msg:m1", "m2": "msg:m2"}
    assert commands.verify(config, recheck_delay=0).clean


def test_a_msg_record_naming_another_id_owns_that_row_in_row_origin_and_an_app_row_has_no_owner(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.set("msg:k1", orjson.dumps(_msg("other")))  # the value names another id than its key
    config = _config(pg_url, kv_url)
    commands.backfill(config)
    assert pg.execute("SELECT pk, source_key FROM kvmigrate.row_origin WHERE tbl = 'messages'").fetchall() == [
        ("other", "msg:k1")]
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger WHERE owns_row").fetchone() == (0,)
    # a row named after the key, written by the app alone: msg:k1 does not own it
    pg.execute("INSERT INTO messages (id, from_handle, to_handle, content) VALUES ('k1', 'sam', 'hal', 'app')")
    pg.commit()
    assert _owners(pg) == {"other": "msg:k1", "k1": None}
    found = commands.verify(config, recheck_delay=0)
    assert [(d.pk, d.key) for d in found.entities["messages"].extra] == [("k1", "")]


def test_a_message_whose_ledger_row_is_upserted_still_records_its_owner(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    # users first: the ledger is no longer empty, so the messages' ledger rows are staged and
    # upserted, not copied in; the owner each message row gets must still be said there
    kv.hset("vibe:handles", mapping={h: orjson.dumps({"handle": h}) for h in ("sam", "hal")})
    kv.set("msg:m1", orjson.dumps(_msg("m1")))
    config = _config(pg_url, kv_url)
    commands.backfill(config, entities=["users"])
    commands.backfill(config, entities=["messages"])
    assert _owners(pg) == {"m1": "msg:m1"}
    assert pg.execute("SELECT key FROM kvmigrate.ledger WHERE owns_row").fetchall() == [("msg:m1",)]
    assert commands.verify(config, recheck_delay=0).clean
