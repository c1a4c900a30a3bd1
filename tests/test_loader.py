"""The loader against a real Postgres: precedence, fill merge, placeholders, zero-write reruns."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg

from kvmigrate.adapters.pg.arrays import text_array
from kvmigrate.adapters.pg.loader import SourcedRow, TableLoader, dedupe, fill_merge
from kvmigrate.entities.base import TableSpec

USERS = TableSpec("users", "handle", ("handle", "display_name", "one_liner", "created_at", "invited_by", "settings"),
                  user_refs=("invited_by",), merge="fill", json_columns=("settings",))
MESSAGES = TableSpec("messages", "id", ("id", "from_handle", "to_handle", "content", "payload", "read", "created_at"),
                     user_refs=("from_handle", "to_handle"), json_columns=("payload",))
T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)


def _load(conn: psycopg.Connection, spec: TableSpec, rows: list[SourcedRow]) -> int:
    loader = TableLoader(conn, spec)
    with conn.transaction():
        return loader.load(dedupe(spec, rows)).written


def _msg(mid: str, content: str, rank: int, src: str) -> SourcedRow:
    return SourcedRow({"id": mid, "from_handle": "alice", "to_handle": "bob", "content": content,
                       "payload": {"type": "dm"}, "read": False, "created_at": T0}, rank, src, "")


def test_higher_ranked_source_wins_whatever_the_load_order(conn: psycopg.Connection) -> None:
    _load(conn, MESSAGES, [_msg("m1", "from the msg record", 40, "msg:m1")])
    assert _load(conn, MESSAGES, [_msg("m1", "stale copy in the inbox list", 30, "messages:bob")]) == 0
    assert conn.execute("SELECT content FROM messages").fetchall() == [("from the msg record",)]


def test_rerun_of_unchanged_rows_writes_nothing(conn: psycopg.Connection) -> None:
    rows = [_msg(f"m{i}", f"hello {i}", 40, f"msg:m{i}") for i in range(50)]
    assert _load(conn, MESSAGES, rows) == 50
    assert _load(conn, MESSAGES, rows) == 0


def test_changed_source_value_updates_the_row(conn: psycopg.Connection) -> None:
    _load(conn, MESSAGES, [_msg("m1", "v1", 40, "msg:m1")])
    assert _load(conn, MESSAGES, [_msg("m1", "v2", 40, "msg:m1")]) == 1
    assert conn.execute("SELECT content FROM messages").fetchone() == ("v2",)


def test_missing_referenced_handles_get_placeholder_users(conn: psycopg.Connection) -> None:
    _load(conn, MESSAGES, [_msg("m1", "hi", 40, "msg:m1")])
    rows = conn.execute("SELECT handle, settings FROM users ORDER BY handle").fetchall()
    assert rows == [("alice", {"placeholder": True, "created_by": "kvmigrate"}),
                    ("bob", {"placeholder": True, "created_by": "kvmigrate"})]


def test_real_user_record_replaces_its_placeholder(conn: psycopg.Connection) -> None:
    _load(conn, MESSAGES, [_msg("m1", "hi", 40, "msg:m1")])
    _load(conn, USERS, [SourcedRow({"handle": "alice", "display_name": "Alice", "settings": {"verified": "x"}},
                                   40, "vibe:handles", "alice")])
    assert conn.execute("SELECT display_name, settings FROM users WHERE handle = 'alice'").fetchone() == (
        "Alice", {"verified": "x"})


def test_fill_merge_is_the_same_in_either_order(conn: psycopg.Connection) -> None:
    registry = SourcedRow({"handle": "carol", "display_name": None, "one_liner": "builds", "settings": {"a": 1, "b": 1}},
                          40, "vibe:handles", "carol")
    legacy = SourcedRow({"handle": "carol", "display_name": "Carol", "one_liner": "old", "settings": {"b": 2, "c": 2}},
                        10, "user:carol", "")
    _load(conn, USERS, [legacy])
    _load(conn, USERS, [registry])
    first = conn.execute("SELECT display_name, one_liner, settings FROM users WHERE handle = 'carol'").fetchone()
    conn.execute("TRUNCATE users CASCADE")
    conn.execute("DELETE FROM kvmigrate.row_origin")
    conn.commit()
    _load(conn, USERS, [registry])
    _load(conn, USERS, [legacy])
    second = conn.execute("SELECT display_name, one_liner, settings FROM users WHERE handle = 'carol'").fetchone()
    assert first == second == ("Carol", "builds", {"a": 1, "b": 1, "c": 2})
    assert _load(conn, USERS, [registry, legacy]) == 0


def test_fill_merge_in_python_matches_the_sql_rule() -> None:
    merged = fill_merge({"handle": "x", "display_name": None, "settings": {"a": 1}},
                        {"handle": "x", "display_name": "X", "settings": {"a": 0, "z": 9}}, ("settings",))
    assert merged == {"handle": "x", "display_name": "X", "settings": {"a": 1, "z": 9}}


def test_a_text_array_literal_round_trips_any_key(conn: psycopg.Connection) -> None:
    keys = ["msg:plain", 'a"quote', "back\\slash", "comma,brace{}", " spaced ", "", "NULL", "ünï😀", "tab\there",
            "new\nline", "\\\"", "{}"]
    got = conn.execute("SELECT unnest(%s::text[])", (text_array(keys),)).fetchall()
    assert [g for (g,) in got] == keys
