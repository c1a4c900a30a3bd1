"""Moderation reports: A's `vibe:reports` hash and B's `report:{id}` keys to exact `reports`
rows, the counters and pending list as derived indexes that are never read, every reject, and
the whole path on real servers (backfill, verify clean, cleanup)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.entities.reports import REPORTS
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord
from tests.helpers import cleanup_entity

T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)
A_REPORT = {"id": "RPT-1748736000000-AB12", "reporter": "alice", "reported": "Bob", "reason": "spam",
            "message_id": "msg_1", "details": "keeps sending links", "created_at": "2025-06-01T00:00:00.000Z",
            "created_at_ts": 1748736000000, "status": "reviewed", "reviewed_at": "2025-06-02T00:00:00.000Z",
            "reviewed_by": "team", "action_taken": "warned", "notes": None}


def _a(field: str, value: dict[str, Any] | bytes) -> Outcome:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return REPORTS.transform(RawRecord("vibe:reports", "hash", raw, field, "reports"))


def _b(rid: str, value: dict[str, Any] | bytes) -> Outcome:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return REPORTS.transform(RawRecord(f"report:{rid}", "string", raw, "", "report"))


def test_codebase_a_report_maps_every_column_and_keeps_the_rest_in_details() -> None:
    out = _a("RPT-1748736000000-AB12", A_REPORT)
    assert out.reject is None and [(r.table, r.rank) for r in out.rows] == [("reports", 20)]
    assert out.rows[0].values == {
        "id": "RPT-1748736000000-AB12", "reporter": "alice", "reported": "bob", "reason": "spam",
        "status": "reviewed", "message_id": "msg_1", "created_at": T0,
        "reviewed_at": datetime(2025, 6, 2, tzinfo=timezone.utc),
        "details": {"details": "keeps sending links", "reviewed_by": "team", "action_taken": "warned", "notes": None}}
    assert out.stats == {"handle_normalised": 1}


def test_codebase_b_report_takes_target_and_timestamp_and_the_key_is_the_id() -> None:
    out = _b("rep_1", {"id": "rep_other", "reporter": "@Carol", "target": "dan", "reason": "harassment",
                       "details": "rude", "timestamp": 1748736000000, "status": "pending", "messageId": "m2"})
    assert [(r.rank, r.values) for r in out.rows] == [(10, {
        "id": "rep_1", "reporter": "carol", "reported": "dan", "reason": "harassment", "status": "pending",
        "message_id": "m2", "created_at": T0, "reviewed_at": None, "details": {"details": "rude", "id": "rep_other"}})]


def test_an_anonymous_report_has_no_reporter() -> None:
    out = _b("rep_2", {"reported": "dan", "timestamp": 1748736000000})
    assert out.rows[0].values["reporter"] is None and out.rows[0].values["reason"] is None


@pytest.mark.parametrize(("value", "code"), [
    ({"reporter": "alice", "reason": "spam"}, "missing_field"),
    ({"reported": "no way"}, "invalid_handle"),
    ({"reported": "bob", "reporter": 7}, "invalid_handle"),
    ({"reported": "bob", "created_at": "last week"}, "bad_timestamp"),
    ({"reported": "bob", "reason": ["spam"]}, "wrong_type"),
    ({"reported": "bob", "messageId": 12}, "wrong_type"),
    (b'"spam"', "wrong_json_type"),
    (b"{", "invalid_json"),
])
def test_bad_reports_are_rejected_with_a_reason(value: dict[str, Any] | bytes, code: str) -> None:
    for out in (_a("RPT-x", value), _b("rep_x", value)):
        assert out.reject is not None and out.reject.code == code and not out.rows, out


def test_counters_and_the_pending_list_are_derived_indexes_never_read() -> None:
    families = {f.pattern: f for f in REPORTS.families}
    for pattern in ("vibe:report_counts", "reports:count:*", "reports:pending"):
        assert families[pattern].index and not families[pattern].read_by_backfill, pattern
    assert families["vibe:reports"].read_by_backfill and families["report:*"].read_by_backfill


def test_reports_end_to_end_backfill_verify_clean_and_cleanup(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    p = kv.pipeline(transaction=False)
    p.hset("vibe:reports", mapping={"RPT-1": orjson.dumps(A_REPORT),
                                    "RPT-2": orjson.dumps({**A_REPORT, "reported": "carol", "reporter": "ghost"}),
                                    "RPT-bad": orjson.dumps({"reporter": "alice"})})
    p.hset("vibe:report_counts", mapping={"bob": 1, "carol": 1})
    p.set("report:rep_1", orjson.dumps({"reporter": "dan", "target": "bob", "reason": "spam", "timestamp": 1748736000000,
                                        "status": "pending"}))
    p.set("reports:count:bob", 1)
    p.rpush("reports:pending", "rep_1")
    p.execute()
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config, entities=["reports"])
    tally = result.tallies["reports"]
    assert (tally.scanned, tally.migrated, tally.rejected) == (7, 6, 1)
    assert tally.stats["index_not_read"] == 3
    assert pg.execute("SELECT id, reporter, reported, status FROM reports ORDER BY id").fetchall() == [
        ("RPT-1", "alice", "bob", "reviewed"), ("RPT-2", "ghost", "carol", "reviewed"), ("rep_1", "dan", "bob", "pending")]
    assert pg.execute("SELECT key, field, reason_code FROM kvmigrate.rejects").fetchall() == [
        ("vibe:reports", "RPT-bad", "missing_field")]
    assert pg.execute("SELECT handle FROM users ORDER BY handle").fetchall() == [
        ("alice",), ("bob",), ("carol",), ("dan",), ("ghost",)]  # placeholders for every referenced handle
    check = commands.verify(config, entities=["reports"], recheck_delay=0)
    assert check.clean, check
    pg.execute("UPDATE reports SET status = 'dismissed' WHERE id = 'rep_1'")
    pg.commit()
    lost = commands.verify(config, entities=["reports"], recheck_delay=0).entities["reports"]
    assert [(d.pk, d.key, d.fields) for d in lost.different] == [("rep_1", "report:rep_1", {"status": ["pending", "dismissed"]})]
    commands.verify(config, entities=["reports"], repair=True, recheck_delay=0)
    done = cleanup_entity(config, "reports", tmp_path / "archive")
    # vibe:reports keeps a rejected field, so the hash stays whole; the rest is archived and deleted
    assert (done.deletable, done.deleted) == (4, 4), done
    assert sorted(k.decode() for k in kv.keys("*")) == ["kvmigrate:flags", "vibe:reports"]
