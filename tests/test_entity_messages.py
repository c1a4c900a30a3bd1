"""The messages entity: every generation and copy of a DM → exactly one `messages` row.

Pure transformer tests first (no server), then one end-to-end backfill on real servers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.entities import common as c
from kvmigrate.entities.messages import MESSAGES
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, Reject, Row

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
T0_MS = 1748779200000
READ_ISO = "2025-06-01T13:00:00+00:00"


def msg(value: Any, key: str = "msg:m1") -> Outcome:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return MESSAGES.transform(RawRecord(key, "string", raw, "", "msg"))


def lst(key: str, family: str, items: list[Any]) -> Outcome:
    raw = [i if isinstance(i, bytes) else orjson.dumps(i) for i in items]
    return MESSAGES.transform(RawRecord(key, "list", raw, "", family))


def archive(value: Any) -> Outcome:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return MESSAGES.transform(RawRecord("vibe:messages", "string", raw, "", "archive"))


def row(rank: int, **values: Any) -> Row:
    base = {"id": "m1", "from_handle": "alice", "to_handle": "bob", "content": "hi", "payload": None,
            "read": False, "created_at": T0}
    return Row("messages", {**base, **values}, rank)


def codes(out: Outcome) -> list[tuple[str, str]]:
    return [(label, r.code) for label, r in out.item_rejects]


# --- msg:{id} -------------------------------------------------------------------------------

def test_msg_record_keeps_payload_and_unmapped_fields_under_extra() -> None:
    out = msg({"id": "m1", "from": "@Alice", "to": "bob", "text": "hi", "v": 2,
               "payload": {"type": "handshake", "step": 1}, "signature": "c2ln", "signatureVerified": True,
               "createdAt": "2025-06-01T12:00:00.000Z", "read": True, "readAt": "2025-06-01T13:00:00Z",
               "consent": "accepted", "system": False})
    assert out.reject is None
    assert out.rows == (row(40, read=True, payload={
        "type": "handshake", "step": 1,
        "_extra": {"v": 2, "signature": "c2ln", "signatureVerified": True, "consent": "accepted",
                   "system": False, "read_at": READ_ISO}}),)
    assert out.stats == {"handle_normalised": 1}


def test_system_message_from_a_reserved_sender_is_an_ordinary_row() -> None:
    out = msg({"id": "msg_k1", "from": "vibe", "to": "bob", "text": "welcome", "system": True,
               "createdAt": "2025-06-01T12:00:00Z", "read": False})
    assert out.rows == (row(40, id="msg_k1", from_handle="vibe", content="welcome",
                            payload={"_extra": {"system": True}}),)


def test_msg_with_a_final_game_payload_also_yields_a_game_result() -> None:
    payload = {"type": "game", "version": 1, "game": "tictactoe", "idempotencyKey": "k",
               "state": {"board": "XXXOO....", "winner": "alice"}}
    out = msg({"id": "m1", "from": "bob", "to": "alice", "text": "", "payload": payload,
               "createdAt": "2025-06-01T12:00:00Z", "read": False})
    assert out.rows == (
        row(40, from_handle="bob", to_handle="alice", content="", payload=payload),
        Row("game_results", {"id": "dm_m1", "game": "tictactoe", "players": ["alice", "bob"],
                             "winner": "alice", "state": payload["state"], "created_at": T0}, 40),
    )


def test_msg_with_an_unfinished_game_is_only_a_message() -> None:
    payload = {"type": "game", "game": "chess", "state": {"turn": "black"}}
    out = msg({"id": "m1", "from": "alice", "to": "bob", "text": "e4", "payload": payload,
               "createdAt": T0_MS})
    assert [r.table for r in out.rows] == ["messages"]


def test_body_wins_over_text_and_a_different_text_is_kept() -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "text": "short", "body": "hi",
               "createdAt": "2025-06-01T12:00:00Z"})
    assert out.rows == (row(40, payload={"_extra": {"text": "short"}}),)
    same = msg({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "body": "hi", "createdAt": T0_MS})
    assert same.rows == (row(40),)
    rich = msg({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "body": {"md": "*hi*"},
                "createdAt": T0_MS})
    assert rich.rows == (row(40, payload={"_extra": {"body": {"md": "*hi*"}}}),)


@pytest.mark.parametrize(("fields", "content", "extra"), [
    ({"text": "hi"}, "hi", None),
    ({"body": "hi"}, "hi", None),
    ({"text": ""}, "", None),
    ({"body": "", "text": "hi"}, "", {"text": "hi"}),  # body is text, even empty: it wins
    ({"body": None, "text": "hi"}, "hi", None),
])
def test_one_content_field_or_both_give_the_same_row_as_the_rules_say(fields: dict[str, Any], content: str,
                                                                      extra: dict[str, Any] | None) -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "createdAt": T0_MS, **fields})
    assert out.rows == (row(40, content=content, payload=None if extra is None else {"_extra": extra}),)


@pytest.mark.parametrize("fields", [{"body": 5}, {"body": 0}, {"text": False}, {"body": 5, "text": None}])
def test_a_content_field_that_is_not_text_rejects_the_message(fields: dict[str, Any]) -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "createdAt": T0_MS, **fields})
    assert out.reject is not None and out.reject.code == "wrong_type"


@pytest.mark.parametrize(("fields", "read", "extra"), [
    ({"read": "true"}, True, None),
    ({}, False, None),
    ({"read": True, "readAt": None}, True, None),
    ({"read": False, "read_at": ""}, False, None),
    ({"read": False, "readAt": "2025-06-01T13:00:00Z"}, True, {"read_at": READ_ISO}),
])
def test_the_read_flag_with_and_without_a_read_time(fields: dict[str, Any], read: bool,
                                                    extra: dict[str, Any] | None) -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "createdAt": T0_MS, **fields})
    assert out.rows == (row(40, read=read, payload=None if extra is None else {"_extra": extra}),)


def test_disagreeing_aliases_and_a_non_object_payload_are_kept() -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "timestamp": T0_MS,
               "createdAt": "2025-06-01T12:00:00Z", "created_at": "2024-01-01T00:00:00Z",
               "read_at": "2025-06-01T13:00:00Z", "readAt": "not a time", "payload": "raw", "type": "dm"})
    assert out.rows == (row(40, read=True, payload={"type": "dm", "_extra": {
        "created_at": "2024-01-01T00:00:00Z", "read_at": READ_ISO, "readAt": "not a time",
        "payload": "raw"}}),)


def test_message_type_that_disagrees_with_its_payload_type_is_kept() -> None:
    out = msg({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "createdAt": T0_MS,
               "type": "dm", "payload": {"type": "handshake"}})
    assert out.rows[0].values["payload"] == {"type": "handshake", "_extra": {"type": "dm"}}


def test_msg_record_without_an_id_takes_the_id_in_its_key() -> None:
    out = msg({"from": "alice", "to": "bob", "text": "hi", "createdAt": T0_MS}, key="msg:msg_k2x9")
    assert out.rows == (row(40, id="msg_k2x9"),)
    assert out.stats == {}


def test_message_without_a_time_has_a_null_created_at() -> None:
    out = msg({"id": 17, "from": "alice", "to": "bob", "text": "hi", "createdAt": "null"})
    assert out.rows == (row(40, id="17", created_at=None),)


@pytest.mark.parametrize(("value", "code"), [
    (b"{nope", "invalid_json"),
    (b"[1]", "wrong_json_type"),
    (b"\xff\xfe", "invalid_utf8"),
    ({"id": "m1", "from": "alice", "to": "bob", "createdAt": T0_MS}, "missing_field"),
    ({"id": "m1", "from": "alice", "to": "bob", "text": 5, "createdAt": T0_MS}, "wrong_type"),
    ({"id": "m1", "to": "bob", "text": "hi"}, "missing_field"),
    ({"id": "m1", "from": "alice", "text": "hi"}, "missing_field"),
    ({"id": "m1", "from": "no spaces!", "to": "bob", "text": "hi"}, "invalid_handle"),
    ({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "createdAt": "tuesday"}, "bad_timestamp"),
    ({"id": "m1", "from": "alice", "to": "bob", "text": "a\u0000b"}, "nul_byte"),
    ({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "read": "maybe"}, "wrong_type"),
    ({"id": ["m1"], "from": "alice", "to": "bob", "text": "hi"}, "wrong_type"),
])
def test_broken_msg_record_is_rejected(value: Any, code: str) -> None:
    out = msg(value)
    assert out.reject is not None and out.reject.code == code, out.reject
    assert out.reject.message.startswith("msg:m1")
    assert out.rows == ()


def test_msg_key_of_another_redis_type_is_rejected() -> None:
    out = MESSAGES.transform(RawRecord("msg:m1", "hash", {b"text": b"hi"}, "", "msg"))
    assert out.reject == Reject("wrong_redis_type", "msg:m1 is a Redis hash, expected string")


# --- messages:{to} ---------------------------------------------------------------------------

def test_inbox_list_maps_old_text_items_read_at_and_defaults_to_the_key_handle() -> None:
    out = lst("messages:Bob", "inbox", [
        {"id": "m1", "from": "alice", "to": "bob", "body": "hi", "type": "dm", "timestamp": T0_MS,
         "read_at": "2025-06-01T13:00:00.000Z"},
        {"id": "m2", "from": "alice", "text": "old one", "type": "ping", "timestamp": str(T0_MS),
         "read_at": None},
    ])
    assert out.reject is None and out.item_rejects == () and out.refs == ()
    assert out.rows == (
        row(30, read=True, payload={"type": "dm", "_extra": {"read_at": READ_ISO}}),
        row(30, id="m2", content="old one", payload={"type": "ping"}),
    )
    assert out.stats == {"handle_normalised": 1}


def test_broken_inbox_items_are_item_rejects_and_the_good_ones_migrate() -> None:
    good = {"id": "m1", "from": "alice", "body": "hi", "timestamp": T0_MS}
    out = lst("messages:bob", "inbox", [
        good, b"{nope", b"m9", {"id": "m3", "from": "alice", "timestamp": T0_MS},
        {"id": "m4", "from": "@@x", "body": "hi"}, b"\xff", [1],
        {"id": "m5", "from": "alice", "body": "a\u0000"},
    ])
    assert out.reject is None
    assert out.rows == (row(30),)
    assert codes(out) == [("[1]", "invalid_json"), ("[2]", "invalid_json"), ("[3]", "missing_field"),
                          ("[4]", "invalid_handle"), ("[5]", "invalid_utf8"), ("[6]", "wrong_json_type"),
                          ("[7]", "nul_byte")]
    assert out.item_rejects[2][1] == Reject(
        "missing_field", "messages:bob [3]: message has neither `body` nor `text`")


def test_inbox_list_whose_items_are_all_broken_is_still_migrated() -> None:
    out = lst("messages:bob", "inbox", [b"{", b"}"])
    assert out.reject is None and out.rows == ()
    assert codes(out) == [("[0]", "invalid_json"), ("[1]", "invalid_json")]


def test_inbox_key_of_another_redis_type_is_rejected() -> None:
    out = MESSAGES.transform(RawRecord("messages:bob", "string", b"[]", "", "inbox"))
    assert out.reject == Reject("wrong_redis_type", "messages:bob is a Redis string, expected list")


# --- thread:{a}:{b} --------------------------------------------------------------------------

def test_thread_list_of_json_messages_maps_to_rows() -> None:
    out = lst("thread:alice:bob", "thread", [
        {"id": "1748779200000-a1b2c3", "from": "alice", "to": "bob", "text": "first", "type": "dm",
         "timestamp": T0_MS, "read_at": None},
        {"id": "m2", "from": "Bob", "body": "reply", "type": "dm", "timestamp": T0_MS},
    ])
    assert out.rows == (
        row(20, id="1748779200000-a1b2c3", content="first", payload={"type": "dm"}),
        row(20, id="m2", from_handle="bob", to_handle="alice", content="reply", payload={"type": "dm"}),
    )
    assert out.refs == () and out.item_rejects == ()


def test_thread_list_of_ids_counts_dangling_references() -> None:
    out = lst("thread:alice:bob", "thread", [b"msg_k2x9", b'"msg_quoted"', b"", b'"'])
    assert out.rows == ()
    assert out.refs == ("msg_k2x9", "msg_quoted")
    assert codes(out) == [("[2]", "missing_field"), ("[3]", "invalid_json")]


def test_thread_mixing_both_generations_gives_rows_and_references() -> None:
    out = lst("thread:alice:bob", "thread", [
        b"msg_new", {"id": "m1", "from": "alice", "to": "bob", "body": "hi", "timestamp": T0_MS}])
    assert out.rows == (row(20),)
    assert out.refs == ("msg_new",)


def test_thread_item_without_to_and_a_stranger_sender_is_rejected() -> None:
    out = lst("thread:alice:bob", "thread", [{"id": "m1", "from": "carol", "body": "hi"}])
    assert codes(out) == [("[0]", "missing_field")]


# --- vibe:messages, id lists, counters --------------------------------------------------------

def test_archive_array_maps_each_message() -> None:
    out = archive([
        {"id": "1700000000000-zz9abc", "from": "solienne", "to": "alice", "text": "gm",
         "timestamp": 1700000000000, "read": True},
        {"id": "m1", "from": "alice", "to": "bob", "text": "hi", "timestamp": T0_MS},
        "not a message",
    ])
    assert out.rows == (
        row(10, id="1700000000000-zz9abc", from_handle="solienne", to_handle="alice", content="gm",
            read=True, created_at=datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)),
        row(10),
    )
    assert codes(out) == [("[2]", "wrong_json_type")]


@pytest.mark.parametrize(("raw", "code"), [(b'{"m1": {}}', "wrong_json_type"), (b"[", "invalid_json")])
def test_archive_that_is_not_an_array_is_rejected(raw: bytes, code: str) -> None:
    out = archive(raw)
    assert out.reject is not None and out.reject.code == code


@pytest.mark.parametrize(("key", "family"), [("inbox:bob", "inbox_ids"), ("outbox:alice", "outbox_ids")])
def test_inbox_and_outbox_id_lists_are_references_only(key: str, family: str) -> None:
    out = MESSAGES.transform(RawRecord(key, "list", [b"msg_a", b"msg_b", b"", b"\xff"], "", family))
    assert out.reject is None and out.rows == ()
    assert out.refs == ("msg_a", "msg_b")
    assert codes(out) == [("[2]", "missing_field"), ("[3]", "invalid_utf8")]


def test_unread_counters_are_migrated_into_nothing() -> None:
    out = MESSAGES.transform(RawRecord("unread:bob", "hash", {b"alice": b"3"}, "", "unread"))
    assert out == Outcome()


# --- one message, many copies -----------------------------------------------------------------

def test_same_message_in_msg_inbox_and_thread_gives_the_same_row() -> None:
    a = {"id": "m1", "from": "alice", "to": "bob", "text": "hi", "createdAt": "2025-06-01T12:00:00.000Z",
         "read": True, "readAt": "2025-06-01T13:00:00.000Z"}
    b = {"id": "m1", "from": "alice", "to": "bob", "body": "hi", "type": "dm", "timestamp": T0_MS,
         "read_at": "2025-06-01T13:00:00Z"}
    from_msg = msg(a).rows[0]
    from_inbox = lst("messages:bob", "inbox", [b]).rows[0]
    from_thread = lst("thread:alice:bob", "thread", [b]).rows[0]
    assert from_inbox.values == from_thread.values
    assert (from_msg.rank, from_inbox.rank, from_thread.rank) == (40, 30, 20)
    # The documented difference: the list copies carry `type`, msg:{id} records do not.
    assert from_msg.values == {**from_inbox.values, "payload": {"_extra": {"read_at": READ_ISO}}}
    assert from_inbox.values["payload"] == {"type": "dm", "_extra": {"read_at": READ_ISO}}


def test_message_without_an_id_dedupes_across_lists() -> None:
    item = {"from": "@Alice", "to": "bob", "text": "no id", "timestamp": T0_MS}
    in_archive = archive([item]).rows[0]
    in_inbox = lst("messages:bob", "inbox", [{**item, "from": "alice", "to": None}]).rows[0]
    in_thread = lst("thread:alice:bob", "thread", [item]).rows[0]
    key = orjson.dumps(["alice", "bob", T0.isoformat(), "no id"])
    expected = "kvm_" + hashlib.sha256(key).hexdigest()[:24]
    assert in_archive.values["id"] == in_inbox.values["id"] == in_thread.values["id"] == expected
    assert in_archive.values == in_inbox.values == in_thread.values
    assert archive([item]).stats == {"derived_id": 1, "handle_normalised": 1}


def test_messages_differing_in_content_get_different_derived_ids() -> None:
    out = archive([{"from": "alice", "to": "bob", "text": t, "timestamp": T0_MS} for t in ("a", "b")])
    assert len({r.values["id"] for r in out.rows}) == 2


# --- end to end -------------------------------------------------------------------------------

def _message(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def test_backfill_lands_each_message_once_and_counts_dangling_ids(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    game = {"type": "game", "game": "tictactoe", "state": {"winner": "alice", "board": "XXX......"}}
    kv.set("msg:m1", _message(id="m1", **{"from": "alice"}, to="bob", text="gg", payload=game,
                              createdAt="2025-06-01T12:00:00Z", read=False))
    kv.rpush("messages:bob",
             _message(id="m1", **{"from": "alice"}, to="bob", body="stale copy", type="dm", timestamp=T0_MS),
             _message(id="m2", **{"from": "carol"}, body="only here", type="ping", timestamp=T0_MS,
                      read_at="2025-06-01T13:00:00Z"))
    kv.rpush("thread:alice:bob", b"m1", b"m_gone")
    kv.rpush("inbox:bob", b"m1", b"m_gone2")  # a derived index: in the ledger, never read
    kv.set("vibe:messages", orjson.dumps([
        {"id": "1700000000000-zz9abc", "from": "vibe", "to": "alice", "text": "welcome",
         "timestamp": 1700000000000},
        {"id": "m2", "from": "carol", "to": "bob", "text": "older copy", "timestamp": T0_MS},
    ]))
    kv.hset("unread:bob", "carol", "1")
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)

    result = commands.backfill(config)

    assert result.dangling_refs == 1
    assert result.tallies["messages"].migrated == 6 and result.tallies["messages"].rejected == 0
    with psycopg.connect(pg_url) as conn:
        messages = conn.execute("SELECT id, from_handle, to_handle, content, payload, read, created_at"
                                " FROM messages ORDER BY id").fetchall()
        users = conn.execute("SELECT handle, settings FROM users ORDER BY handle").fetchall()
        results = conn.execute(
            "SELECT id, game, players, winner, state, created_at FROM game_results").fetchall()
    assert messages == [
        ("1700000000000-zz9abc", "vibe", "alice", "welcome", None, False,
         datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)),
        ("m1", "alice", "bob", "gg", game, True, T0),  # unread:bob counts none from alice: read
        ("m2", "carol", "bob", "only here", {"type": "ping", "_extra": {"read_at": READ_ISO}}, True, T0),
    ]
    placeholder = {"placeholder": True, "created_by": "kvmigrate"}
    assert users == [(h, placeholder) for h in ("alice", "bob", "carol", "vibe")]
    assert results == [("dm_m1", "tictactoe", ["alice", "bob"], "alice", game["state"], T0)]

    again = commands.backfill(config)
    assert sum(t.rows_written for t in again.tallies.values()) == 0
    assert again.dangling_refs == 1


# --- read state: copies and counters -----------------------------------------------------------

def _inbox(items: list[dict[str, Any]], counters: dict[bytes, bytes] | None) -> list[tuple[str, bool]]:
    raw = [orjson.dumps(i) for i in items]
    out = MESSAGES.transform(RawRecord("messages:hal", "list", raw, "", "inbox", companion=counters))
    assert out.reject is None and out.item_rejects == ()
    return [(r.values["id"], r.values["read"]) for r in out.rows]


def _dm(mid: str, sender: str, **extra: Any) -> dict[str, Any]:
    return {"id": mid, "from": sender, "to": "hal", "body": mid, "timestamp": T0_MS, "read_at": None, **extra}


def test_inbox_read_state_comes_from_the_unread_counters_newest_first() -> None:
    items = [_dm("s3", "sam"), _dm("t1", "@Tia"), _dm("s2", "sam"), _dm("s1", "sam"), _dm("u1", "uma")]
    assert _inbox(items, {b"sam": b"2", b"Tia": b"1"}) == [
        ("s3", False), ("t1", False), ("s2", False), ("s1", True), ("u1", True)]
    assert _inbox(items, {}) == [(i["id"], True) for i in items]  # no hash: every message was seen
    assert _inbox(items, None) == [(i["id"], False) for i in items]  # counters not read: read_at decides
    # a read_at on the element still counts as read
    assert _inbox([_dm("s9", "sam", read_at=READ_ISO)], {b"sam": b"1"}) == [("s9", True)]


def test_a_message_read_in_any_copy_is_read_with_the_earliest_read_time() -> None:
    from kvmigrate.entities.messages import combine
    from kvmigrate.model.records import SourcedRow

    def row(value: dict[str, Any], key: str, rank: int) -> SourcedRow:
        out = msg(value, key) if key.startswith("msg:") else archive([value])
        return SourcedRow(out.rows[0].values, rank, key, "")

    base = {"id": "m1", "from": "sam", "to": "hal", "text": "hi", "createdAt": "2025-06-01T12:00:00Z"}
    copies = [row({**base, "read": False}, "msg:m1", 40),
              row({**base, "read": True, "readAt": "2025-06-01T14:00:00Z"}, "vibe:messages", 10),
              row({**base, "read": True, "readAt": READ_ISO}, "vibe:messages", 10)]
    for order in (copies, copies[::-1]):
        merged = combine(order).row
        assert merged.source_key == "msg:m1" and merged.values["read"] is True
        assert merged.values["payload"] == {"_extra": {"read_at": READ_ISO}}
    assert combine(copies[:1]).row.values["read"] is False


def test_read_state_across_copies_and_counters_end_to_end_and_verify_stays_clean(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    old = {"id": "m_old", "from": "sam", "to": "hal", "text": "old", "createdAt": "2025-06-01T12:00:00Z"}
    kv.set("msg:m_old", orjson.dumps({**old, "read": False}))  # the other client marked only the array copy
    kv.set("vibe:messages", orjson.dumps([{**old, "read": True, "readAt": READ_ISO}]))
    for i in range(5):  # send fallback: LPUSH, so the last pushed is the newest
        kv.lpush("messages:hal", orjson.dumps({"id": f"f{i}", "from": "tia", "to": "hal", "body": f"b{i}",
                                               "timestamp": T0_MS + i, "read_at": None}))
    kv.hset("unread:hal", "tia", "2")
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config)
    assert pg.execute("SELECT id, read FROM messages ORDER BY id").fetchall() == [
        ("f0", True), ("f1", True), ("f2", True), ("f3", False), ("f4", False), ("m_old", True)]
    assert pg.execute("SELECT payload FROM messages WHERE id = 'm_old'").fetchone() == (
        {"_extra": {"read_at": READ_ISO}},)
    assert commands.verify(config, recheck_delay=0).clean
    kv.hdel("unread:hal", "tia")  # the thread was viewed: the counters say every message is read now
    commands.backfill(config)
    assert pg.execute("SELECT count(*) FROM messages WHERE NOT read").fetchone() == (0,)
    assert commands.verify(config, recheck_delay=0).clean


#: Per key of a plain message: values that make a row, and values that reject it.
_PLAIN_VALUES: dict[str, tuple[list[Any], list[Any]]] = {
    "id": (["m7", 42, "", None], [True, 1.5]),
    "from": (["alice", " @Alice-X "], [None, "", 7, "not a handle!"]),
    "to": (["bob", "@bob", None], [""]),
    "text": (["hi", "", None], [3]),
    "body": (["hello", None], [["x"]]),
    "timestamp": ([None, "", "null", 1717243200123, "1717243200", "2024-06-01T12:00:00Z"], ["yesterday", True, 1e30]),
    "createdAt": (["2024-06-01T12:00:00+02:00", 1717243200.5], ["2024-13-01"]),
    "created_at": (["null", "2024-06-01"], [[]]),
    "read": ([None, True, False, "true", "0", 1], [2, "maybe"]),
}


_TIMES = ("timestamp", "createdAt", "created_at")


def _outcome_of(parse: Any, *args: Any, **kwargs: Any) -> Any:
    """What `parse` returns, or the (code, message) of the Bad it raises."""
    try:
        return parse(*args, **kwargs)
    except c.Bad as exc:
        return (exc.code, str(exc))


@pytest.mark.parametrize(("sender", "to", "default_to", "expected"), [
    ("alice", "bob", None, ("alice", "bob", 0)),
    (" @Alice", "Bob-X", None, ("alice", "bob_x", 2)),
    ("alice", "", "carol", ("alice", "carol", 0)),
    ("alice", None, "carol", ("alice", "carol", 0)),
    ("alice", "", None, ("missing_field", "message has no `to`")),
    ("", "bob", None, ("missing_field", "message has no `from`")),
    ("alice", " ", "carol", ("invalid_handle", "to ' ' is not a valid handle after normalising")),
    ("no spaces!", "bob", None, ("invalid_handle", "from 'no spaces!' is not a valid handle after normalising")),
    ("alice", 5, None, ("invalid_handle", "to is int, expected text")),
])
def test_the_two_handles_of_a_message_whichever_way_they_are_read(sender: Any, to: Any, default_to: str | None,
                                                                   expected: tuple[Any, ...]) -> None:
    """Two handles given as text take a shorter path than the rest (empty, missing, not
    text, invalid); both give these handles, or these rejects."""
    from kvmigrate.entities import messages as m_module

    assert _outcome_of(m_module._handles, {"from": sender, "to": to}, default_to) == expected


def test_the_fast_path_of_plain_messages_makes_what_the_general_rules_make() -> None:
    """A message of only id, from, to, text/body, one time and read takes a shorter path; it
    must give the same row, stats and rejects as the general rules, whatever the values."""
    import random

    from kvmigrate.entities import messages as m_module

    rng = random.Random(5)
    fast = 0
    for _ in range(4000):
        times = rng.sample(_TIMES, rng.choice([0, 1, 1, 1, 2]))
        m = {k: rng.choice(bad if rng.random() < 0.1 else good) for k, (good, bad) in _PLAIN_VALUES.items()
             if k in times or (k not in _TIMES and rng.random() < 0.8)}
        m = {k: v for k, v in m.items() if v is not None or rng.random() < 0.3}  # absent, or null
        default_to, default_id = rng.choice([None, "carol"]), rng.choice([None, "k9"])
        plain = _outcome_of(m_module._plain_message, m, default_to, default_id)
        general = _outcome_of(m_module._any_message, m, default_to, default_id)
        if plain is None:
            continue
        fast += not isinstance(plain, tuple)  # a row, not a reject
        assert plain == general, m
        assert _outcome_of(m_module.parse_message, m, default_to=default_to, default_id=default_id) == general
    assert fast > 500  # rows made by the fast path (not only rejects) were compared
