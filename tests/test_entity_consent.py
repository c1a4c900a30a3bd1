"""DM consent: A's `consent:{from}:{to}` records and B's `consent:{status}:{h}` sets to exact
`user_connections` rows, the rule when they disagree (furthest status wins, recorded), every
reject, and the whole path on real servers (backfill, verify clean, cleanup)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.entities.consent import CONSENT, combine
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, Row, SourcedRow
from tests.helpers import cleanup_entity

T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)
T1 = datetime(2025, 6, 2, 12, tzinfo=timezone.utc)


def _a(key: str, value: dict[str, Any] | bytes, family: str = "record") -> Outcome:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return CONSENT.transform(RawRecord(key, "string", raw, "", family))


def _b(status: str, handle: str, members: list[bytes]) -> Outcome:
    return CONSENT.transform(RawRecord(f"consent:{status}:{handle}", "set", members, "", status))


def _row(src: str, dst: str, status: str, **values: Any) -> dict[str, Any]:
    return {"id": f"{src}:{dst}", "from_handle": src, "to_handle": dst, "status": status,
            "created_at": None, "updated_at": None, "details": {}, **values}


def test_codebase_a_record_becomes_one_exact_row_with_its_times_and_extra_fields() -> None:
    out = _a("consent:alice:bob", {"status": "accepted", "requestedAt": "2025-06-01T00:00:00.000Z",
                                   "respondedAt": "2025-06-02T12:00:00.000Z", "grandfathered": True,
                                   "message": "hi!", "from": "alice", "to": "@Bob"})
    assert out.reject is None and [(r.table, r.rank) for r in out.rows] == [("user_connections", 20)]
    assert out.rows[0].values == _row("alice", "bob", "accepted", created_at=T0, updated_at=T1,
                                      details={"grandfathered": True, "message": "hi!"})


def test_a_pending_record_without_a_response_is_updated_when_requested() -> None:
    out = _a("consent:ops-agent:Bob", {"status": "pending", "requestedAt": 1748736000000, "to": "carol"})
    assert out.rows[0].values == _row("ops_agent", "bob", "pending", created_at=T0, updated_at=T0,
                                      details={"to": "carol"})
    assert out.stats == {"handle_normalised": 1}


def test_codebase_b_set_member_is_the_requester_and_the_key_the_recipient() -> None:
    out = _b("accepted", "bob", [b"alice", b"@Carol", b"bad handle!"])
    assert [r.values for r in out.rows] == [_row("alice", "bob", "accepted"), _row("carol", "bob", "accepted")]
    assert {r.rank for r in out.rows} == {10}
    assert [(label, rej.code, rej.raw) for label, rej in out.item_rejects] == [
        ("[bad handle!]", "invalid_handle", b"bad handle!")]
    assert out.stats == {"handle_normalised": 1}


@pytest.mark.parametrize("status", ["pending", "blocked"])
def test_each_b_set_gives_its_own_status(status: str) -> None:
    assert [r.values for r in _b(status, "Dana", [b"eve"]).rows] == [_row("eve", "dana", status)]


def test_a_string_under_a_b_set_name_is_a_record_from_the_handle_pending() -> None:
    out = _a("consent:pending:bob", {"status": "blocked", "requestedAt": 1748736000000}, family="pending")
    assert out.rows == (Row("user_connections", _row("pending", "bob", "blocked", created_at=T0, updated_at=T0), 20,
                            {"raw": {"text": '{"status":"blocked","requestedAt":1748736000000}'}}),)


@pytest.mark.parametrize(("key", "value", "code"), [
    ("consent:alice:bob", {"status": "maybe"}, "bad_status"),
    ("consent:alice:bob", {"requestedAt": 1748736000000}, "missing_field"),
    ("consent:alice:bob", {"status": "pending", "requestedAt": "yesterday"}, "bad_timestamp"),
    ("consent:alice:bob", b"[1]", "wrong_json_type"),
    ("consent:alice:bob", b"{", "invalid_json"),
    ("consent:alice", {"status": "pending"}, "invalid_key"),
    ("consent:a:b:c", {"status": "pending"}, "invalid_key"),
    ("consent:al ice:bob", {"status": "pending"}, "invalid_handle"),
])
def test_bad_records_are_rejected_with_a_reason(key: str, value: dict[str, Any] | bytes, code: str) -> None:
    out = _a(key, value)
    assert out.reject is not None and out.reject.code == code and key in out.reject.message and not out.rows


def test_a_b_key_of_another_redis_type_is_rejected() -> None:
    out = CONSENT.transform(RawRecord("consent:accepted:bob", "list", [b"alice"], "", "accepted"))
    assert out.reject is not None and out.reject.code == "wrong_redis_type"


def _sources(*outcomes: tuple[str, Outcome]) -> list[SourcedRow]:
    return [SourcedRow(r.values, r.rank, key, "", r.meta) for key, out in outcomes for r in out.rows
            if r.values["id"] == "alice:bob"]


def _combined(rows: list[SourcedRow]) -> tuple[dict[str, Any], str, list[str]]:
    merged = combine(rows)
    assert combine(list(reversed(rows))) == merged  # never depends on scan order
    return dict(merged.row.values), merged.row.source_key, sorted(s.source_key for s in merged.merged_away)


def test_a_and_b_agreeing_make_one_row_from_a_with_nothing_merged_away() -> None:
    a = _a("consent:alice:bob", {"status": "accepted", "requestedAt": 1748736000000})
    rows = _sources(("consent:alice:bob", a), ("consent:accepted:bob", _b("accepted", "bob", [b"alice"])))
    values, owner, away = _combined(rows)
    assert (values["status"], values["created_at"], values["details"], owner, away) == (
        "accepted", T0, {}, "consent:alice:bob", [])


def test_when_a_and_b_disagree_the_furthest_status_wins_and_the_row_says_who_said_what() -> None:
    a = _a("consent:alice:bob", {"status": "pending", "requestedAt": 1748736000000, "message": "hey"})
    rows = _sources(("consent:alice:bob", a), ("consent:accepted:bob", _b("accepted", "bob", [b"alice"])),
                    ("consent:pending:bob", _b("pending", "bob", [b"alice"])))
    values, owner, away = _combined(rows)
    assert values == _row("alice", "bob", "accepted", created_at=T0, updated_at=T0, details={
        "message": "hey", "sources": {"consent:alice:bob": "pending", "consent:accepted:bob": "accepted",
                                      "consent:pending:bob": "pending"}})
    assert (owner, away) == ("consent:accepted:bob", ["consent:alice:bob"])  # A's record: merged, never silent


def test_a_block_anywhere_wins_over_an_accept() -> None:
    a = _a("consent:alice:bob", {"status": "accepted", "requestedAt": 1748736000000})
    rows = _sources(("consent:alice:bob", a), ("consent:blocked:bob", _b("blocked", "bob", [b"alice"])))
    values, owner, away = _combined(rows)
    assert (values["status"], owner, away) == ("blocked", "consent:blocked:bob", ["consent:alice:bob"])


def test_a_keys_collapsing_into_one_pair_keep_the_furthest_and_merge_the_other() -> None:
    old = _a("consent:Alice:bob", {"status": "pending", "requestedAt": "2025-05-01T00:00:00Z", "message": "m"})
    new = _a("consent:alice:bob", {"status": "accepted", "requestedAt": 1748736000000,
                                   "respondedAt": "2025-06-02T12:00:00Z"})
    values, owner, away = _combined(_sources(("consent:Alice:bob", old), ("consent:alice:bob", new)))
    assert (owner, away) == ("consent:alice:bob", ["consent:Alice:bob"])
    assert values["created_at"] == datetime(2025, 5, 1, tzinfo=timezone.utc) and values["updated_at"] == T1
    assert values["details"]["sources"] == {"consent:Alice:bob": "pending", "consent:alice:bob": "accepted"}


def _seed(kv: redis.Redis) -> None:
    p = kv.pipeline(transaction=False)
    p.set("consent:alice:bob", orjson.dumps({"status": "pending", "requestedAt": 1748736000000}))
    p.set("consent:carol:alice", orjson.dumps({"status": "accepted", "requestedAt": 1748736000000,
                                               "respondedAt": 1748822400000, "grandfathered": True}))
    p.set("consent:dan:alice", orjson.dumps({"status": "nope"}))
    p.sadd("consent:accepted:bob", "alice", "erin")  # B accepted alice → bob, and the reverse below
    p.sadd("consent:accepted:alice", "bob")
    p.sadd("consent:blocked:carol", "mallory", "no way")
    p.sadd("friends:alice", "bob")  # another entity: never touched by consent's cleanup
    p.execute()


def test_consent_end_to_end_backfill_verify_clean_and_cleanup(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    _seed(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, load_batch=2)
    commands.setup(config)
    result = commands.backfill(config, entities=["consent"])
    tally = result.tallies["consent"]
    assert (tally.scanned, tally.migrated, tally.rejected, tally.item_rejects) == (6, 5, 1, 1)
    assert tally.stats["merged_keys"] == 1
    assert pg.execute("SELECT id, status, created_at, updated_at, details FROM user_connections ORDER BY id").fetchall() == [
        ("alice:bob", "accepted", T0, T0, {"sources": {"consent:accepted:bob": "accepted", "consent:alice:bob": "pending"}}),
        ("bob:alice", "accepted", None, None, {}),
        ("carol:alice", "accepted", T0, datetime(2025, 6, 2, tzinfo=timezone.utc), {"grandfathered": True}),
        ("erin:bob", "accepted", None, None, {}),
        ("mallory:carol", "blocked", None, None, {})]
    rejects = pg.execute("SELECT key, field, reason_code FROM kvmigrate.rejects ORDER BY key, field").fetchall()
    assert rejects == [("consent:alice:bob", "", "merged"), ("consent:blocked:carol", "#[no way]", "invalid_handle"),
                       ("consent:dan:alice", "", "bad_status")]
    placeholders = pg.execute("SELECT handle FROM users WHERE settings->>'placeholder' = 'true' ORDER BY handle").fetchall()
    assert placeholders == [(h,) for h in ("alice", "bob", "carol", "erin", "mallory")]
    assert commands.backfill(config, entities=["consent"]).tallies["consent"].rows_written == 0
    check = commands.verify(config, entities=["consent"], recheck_delay=0)
    assert check.clean, check
    pg.execute("UPDATE user_connections SET status = 'pending' WHERE id = 'erin:bob'")
    pg.commit()
    lost = commands.verify(config, entities=["consent"], recheck_delay=0).entities["consent"]  # a lost write
    assert [(d.table, d.pk, d.key, d.fields) for d in lost.different] == [
        ("user_connections", "erin:bob", "consent:accepted:bob", {"status": ["accepted", "pending"]})]
    commands.verify(config, entities=["consent"], repair=True, recheck_delay=0)
    assert commands.verify(config, entities=["consent"], recheck_delay=0).clean
    done = cleanup_entity(config, "consent", tmp_path / "archive")
    assert (done.deletable, done.deleted) == (5, 5), done
    assert sorted(k.decode() for k in kv.keys("*")) == ["consent:dan:alice", "friends:alice", "kvmigrate:flags"]
    assert pg.execute("SELECT count(*) FROM user_connections").fetchone() == (5,)
