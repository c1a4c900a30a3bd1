"""Streaks: both shapes (codebase A's hash of strings, B's JSON string) to exact rows, the
total_days rule, achievements, every reject, and both shapes end to end on real servers."""

from __future__ import annotations

from datetime import date

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.entities.streaks import STREAKS
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, Row


def _streak(handle: str, value: bytes | dict[bytes, bytes]) -> Outcome:
    redis_type = "string" if isinstance(value, bytes) else "hash"
    return STREAKS.transform(RawRecord(f"streak:{handle}", redis_type, value, "", "streak"))


def _row(**values: object) -> Outcome:
    base = {"current_streak": 0, "longest_streak": 0, "total_days": 0, "last_active": None,
            "achievements": [], "details": {}}
    return Outcome(rows=(Row("streaks", {**base, **values}, 10),))


def test_codebase_a_hash_of_strings_becomes_one_exact_row() -> None:
    value = {b"current": b"3", b"longest": b"9", b"totalDays": b"41", b"lastActive": b"2025-06-01"}
    assert _streak("alice", value) == _row(handle="alice", current_streak=3, longest_streak=9, total_days=41,
                                           last_active=date(2025, 6, 1))


def test_a_hash_with_fields_missing_takes_the_column_defaults() -> None:
    assert _streak("bob", {b"current": b"2"}) == _row(handle="bob", current_streak=2)
    assert _streak("bob", {b"current": b"null", b"longest": b""}) == _row(handle="bob")


def test_codebase_b_json_string_counts_distinct_active_days_and_keeps_badges() -> None:
    value = orjson.dumps({"current": 2, "longest": 5, "lastActive": "2025-06-02",
                          "activeDays": ["2025-06-01", "2025-06-02", "2025-06-02", "2025-05-30T23:00:00Z"],
                          "badges": ["first_dm", "streak_3"], "theme": "dark"})
    assert _streak("Carol", value) == Outcome(rows=(Row("streaks", {
        "handle": "carol", "current_streak": 2, "longest_streak": 5, "total_days": 3,
        "last_active": date(2025, 6, 2), "achievements": ["first_dm", "streak_3"],
        "details": {"activeDays": ["2025-06-01", "2025-06-02", "2025-06-02", "2025-05-30T23:00:00Z"],
                    "theme": "dark"}}, 10),), stats={"handle_normalised": 1})


def test_total_days_prefers_total_days_over_active_days_and_epoch_dates_parse() -> None:
    value = orjson.dumps({"current": 1, "totalDays": 12, "activeDays": ["2025-06-01"], "lastActive": "1748736000"})
    outcome = _streak("dana", value)
    assert outcome.rows[0].values["total_days"] == 12
    assert outcome.rows[0].values["last_active"] == date(2025, 6, 1)  # epoch seconds, as a string


@pytest.mark.parametrize(("value", "code"), [
    ({b"current": b"three"}, "wrong_type"),
    ({b"current": b"2.5"}, "wrong_type"),
    ({b"current": b"99999999999"}, "out_of_range"),
    ({b"lastActive": b"2025-13-01"}, "bad_timestamp"),
    ({b"lastActive": b"1890-01-01"}, "bad_timestamp"),
    (b'{"activeDays": "2025-06-01"}', "wrong_type"),
    (b'{"badges": [1, 2]}', "wrong_type"),
    (b"[1, 2]", "wrong_json_type"),
    (b"{not json", "invalid_json"),
])
def test_bad_streaks_are_rejected_with_a_reason_naming_the_problem(value: bytes | dict[bytes, bytes],
                                                                   code: str) -> None:
    outcome = _streak("erin", value)
    assert outcome.rows == () and outcome.reject is not None
    assert outcome.reject.code == code, outcome.reject


def test_a_key_with_an_invalid_handle_is_rejected() -> None:
    outcome = _streak("no spaces allowed", {b"current": b"1"})
    assert outcome.reject is not None and outcome.reject.code == "invalid_handle"


def test_both_shapes_land_in_postgres_end_to_end(pg_url: str, kv_url: str, kv: redis.Redis,
                                                 pg: psycopg.Connection) -> None:
    kv.hset("streak:alice", mapping={"current": "3", "longest": "9", "totalDays": "41", "lastActive": "2025-06-01"})
    kv.set("streak:bob", orjson.dumps({"current": 1, "activeDays": ["2025-06-01", "2025-06-03"], "badges": ["b"]}))
    kv.rpush("streak:carol", "3")  # a list: not a shape either codebase wrote
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config)
    assert (result.tallies["streaks"].migrated, result.tallies["streaks"].rejected) == (2, 1)
    assert pg.execute("SELECT handle, current_streak, longest_streak, total_days, last_active, achievements"
                      " FROM streaks ORDER BY handle").fetchall() == [
        ("alice", 3, 9, 41, date(2025, 6, 1), []), ("bob", 1, 0, 2, None, ["b"])]
    assert pg.execute("SELECT reason_code FROM kvmigrate.rejects WHERE key = 'streak:carol'").fetchone() == (
        "wrong_redis_type",)
    assert commands.verify(config, recheck_delay=0).clean


def test_a_hash_field_holding_json_with_a_nul_escape_is_rejected_not_loaded() -> None:
    outcome = _streak("fay", {b"current": b"1", b"theme": b'"dark\\u0000"'})
    assert outcome.reject is not None and outcome.reject.code == "nul_byte"


def _merged(*sources: tuple[str, bytes | dict[bytes, bytes]]) -> dict[str, object]:
    from kvmigrate.entities.streaks import combine
    from kvmigrate.model.records import SourcedRow

    rows = []
    for key, value in sources:
        out = _streak(key, value)
        assert out.reject is None, out.reject
        rows.append(SourcedRow(out.rows[0].values, 10, f"streak:{key}", "", out.rows[0].meta))
    merged = combine(rows)
    assert combine(list(reversed(rows))) == merged  # never depends on scan order
    return {"row": dict(merged.row.values), "owner": merged.row.source_key,
            "away": sorted(s.source_key for s in merged.merged_away)}


def test_keys_collapsing_into_one_handle_merge_by_the_most_recent_last_active() -> None:
    merged = _merged(
        ("Fred", {b"current": b"7", b"longest": b"9", b"totalDays": b"20", b"lastActive": b"2025-06-01"}),
        ("fred", orjson.dumps({"current": 2, "longest": 4, "lastActive": "2025-06-03",
                               "activeDays": ["2025-06-02", "2025-06-03"], "badges": ["b1"]})),
        ("@fred", orjson.dumps({"current": 1, "lastActive": "2025-05-01", "activeDays": ["2025-05-01"],
                                "badges": ["b0", "b1"]})))
    assert merged == {"owner": "streak:fred", "away": ["streak:@fred", "streak:Fred"], "row": {
        "handle": "fred", "current_streak": 2, "longest_streak": 4, "total_days": 3,
        "last_active": date(2025, 6, 3), "achievements": ["b1", "b0"],
        "details": {"activeDays": ["2025-06-02", "2025-06-03", "2025-05-01"]}}}


def test_colliding_streak_keys_are_one_row_recorded_as_merged_and_verify_stays_clean(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.hset("streak:Bob", mapping={"current": "5", "longest": "8", "totalDays": "30", "lastActive": "2025-06-04"})
    kv.set("streak:@bob", orjson.dumps({"current": 1, "lastActive": "2025-06-01", "activeDays": ["2025-06-01"],
                                        "badges": ["first_dm"]}))
    kv.set("streak:bob", orjson.dumps({"current": 2, "longest": 2, "lastActive": "2025-06-02",
                                       "activeDays": ["2025-06-01", "2025-06-02"], "badges": ["streak_2"]}))
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, load_batch=1)
    commands.setup(config)
    result = commands.backfill(config)
    assert result.tallies["streaks"].stats["merged_keys"] == 2
    assert pg.execute("SELECT handle, current_streak, longest_streak, total_days, last_active, achievements"
                      " FROM streaks").fetchall() == [
        ("bob", 5, 8, 30, date(2025, 6, 4), ["streak_2", "first_dm"])]
    merged = pg.execute("SELECT key, reason_code, message, raw_value, raw_encoding FROM kvmigrate.rejects"
                        " ORDER BY key").fetchall()
    assert [(k, code, enc) for k, code, _, _, enc in merged] == [
        ("streak:@bob", "merged", "utf8"), ("streak:bob", "merged", "utf8")]
    assert orjson.loads(merged[0][3])["badges"] == ["first_dm"] and "streak:Bob" in merged[0][2]
    assert pg.execute("SELECT key, reason FROM kvmigrate.ledger ORDER BY key").fetchall() == [
        ("streak:@bob", "merged"), ("streak:Bob", None), ("streak:bob", "merged")]
    check = commands.verify(config, recheck_delay=0)
    assert check.clean, check
    # every key of the merged row is vouched for as part of it, so cleanup may delete them together
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger WHERE verified_hash IS NOT NULL").fetchone() == (3,)
    again = commands.backfill(config)
    assert again.tallies["streaks"].rows_written == 0 and again.tallies["streaks"].stats["merged_keys"] == 2
    # Bob's A-hash ages out; the B key with the newest lastActive now decides, and the marks move
    kv.set("streak:bob", orjson.dumps({"current": 3, "longest": 3, "lastActive": "2025-06-05",
                                       "activeDays": ["2025-06-05"], "badges": []}))
    commands.backfill(config)
    assert pg.execute("SELECT current_streak, last_active FROM streaks").fetchone() == (3, date(2025, 6, 5))
    assert pg.execute("SELECT key FROM kvmigrate.ledger WHERE reason = 'merged' ORDER BY key").fetchall() == [
        ("streak:@bob",), ("streak:Bob",)]
    assert pg.execute("SELECT key FROM kvmigrate.rejects ORDER BY key").fetchall() == [
        ("streak:@bob",), ("streak:Bob",)]
    assert commands.verify(config, recheck_delay=0).clean
