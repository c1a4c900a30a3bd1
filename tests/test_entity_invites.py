"""The invites entity: invite records to exact rows, the by-handle index, rejects, and one
end-to-end backfill against real servers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.entities.invites import INVITES
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord

T_MS = 1717236000000  # 2024-06-01T10:00:00Z
T0 = datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc)
T_USED = datetime(2024, 6, 3, 12, 0, tzinfo=timezone.utc)
T_EXPIRES = datetime(2024, 6, 8, 10, 0, tzinfo=timezone.utc)


def invite(code: str, obj: Any) -> RawRecord:
    value = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawRecord("vibe:invites", "hash", value, code, "invites")


def full(**changes: Any) -> dict[str, Any]:
    record = {"code": "VIBE-AB12-ALIC", "created_by": "alice", "created_at": "2024-06-01T10:00:00.000Z",
              "created_at_ts": T_MS, "expires_at": "2024-06-08T10:00:00.000Z",
              "expires_at_ts": T_MS + 7 * 86_400_000, "used_by": "bob", "used_at": "2024-06-03T12:00:00Z",
              "status": "used", "bonus_for_inviting": 5}
    record.update(changes)
    return record


def row_of(outcome: Outcome) -> dict[str, Any]:
    assert outcome.reject is None, outcome.reject
    assert len(outcome.rows) == 1 and outcome.rows[0].table == "invites"
    assert outcome.rows[0].rank == 10
    return dict(outcome.rows[0].values)


def test_used_invite_maps_every_column_and_keeps_the_bonus_in_details() -> None:
    outcome = INVITES.transform(invite("VIBE-AB12-ALIC", full()))
    assert outcome.stats == {}
    assert row_of(outcome) == {
        "code": "VIBE-AB12-ALIC", "created_by": "alice", "used_by": "bob", "created_at": T0,
        "used_at": T_USED, "expires_at": T_EXPIRES, "status": "used",
        "details": {"bonus_for_inviting": 5}}


def test_available_invite_has_no_user_and_no_use_time() -> None:
    record = {"code": "VIBE-0000-BOB", "created_by": "bob", "created_at_ts": T_MS, "used_by": None,
              "used_at": None, "status": "available"}
    assert row_of(INVITES.transform(invite("VIBE-0000-BOB", record))) == {
        "code": "VIBE-0000-BOB", "created_by": "bob", "used_by": None, "created_at": T0,
        "used_at": None, "expires_at": None, "status": "available", "details": {}}


def test_iso_time_is_used_without_the_ms_twin_and_a_disagreeing_iso_twin_is_kept() -> None:
    row = row_of(INVITES.transform(invite("C1", {
        "created_by": "alice", "created_at": "2024-06-01T10:00:00Z", "expires_at_ts": T_MS,
        "expires_at": "2030-01-01T00:00:00Z"})))
    assert (row["created_at"], row["expires_at"]) == (T0, T0)
    assert row["details"] == {"expires_at": "2030-01-01T00:00:00Z"}


def test_field_is_the_code_and_a_differing_stored_code_is_kept() -> None:
    row = row_of(INVITES.transform(invite("VIBE-REAL", full(code="VIBE-TYPO"))))
    assert row["code"] == "VIBE-REAL"
    assert row["details"] == {"bonus_for_inviting": 5, "code": "VIBE-TYPO"}


def test_handles_are_normalised_and_counted() -> None:
    outcome = INVITES.transform(invite("C2", full(created_by="@Alice", used_by="ops-agent")))
    assert outcome.stats == {"handle_normalised": 2}
    row = row_of(outcome)
    assert (row["created_by"], row["used_by"]) == ("alice", "ops_agent")


def test_unknown_fields_go_to_details() -> None:
    row = row_of(INVITES.transform(invite("C3", {"created_by": "alice", "note": "for the meetup",
                                                 "uses": [1, 2]})))
    assert row["details"] == {"note": "for the meetup", "uses": [1, 2]}


@pytest.mark.parametrize(("record", "code"), [
    (invite("C", {"code": "C", "status": "available"}), "missing_field"),
    (invite("C", {"created_by": None}), "missing_field"),
    (invite("C", {"created_by": ""}), "missing_field"),
    (invite("", full()), "missing_field"),
    (invite("C", full(created_by="no spaces allowed")), "invalid_handle"),
    (invite("C", full(used_by=42)), "invalid_handle"),
    (invite("C", full(created_at_ts="tomorrow")), "bad_timestamp"),
    (invite("C", full(expires_at_ts=None, expires_at="not a date")), "bad_timestamp"),
    (invite("C", full(status=1)), "wrong_type"),
    (invite("C", b"[]"), "wrong_json_type"),
    (invite("C", b"{"), "invalid_json"),
    (invite("C", b"\xc3"), "invalid_utf8"),
    (invite("C\udcff", full()), "invalid_utf8"),
    (invite("C\x00", full()), "nul_byte"),
    (invite("C", b'{"created_by": "alice", "note": "a\\u0000b"}'), "nul_byte"),
    (RawRecord("vibe:invites", "string", b"{}", "", "invites"), "wrong_redis_type"),
])
def test_reject_codes(record: RawRecord, code: str) -> None:
    outcome = INVITES.transform(record)
    assert outcome.reject is not None and not outcome.rows
    assert outcome.reject.code == code


def test_by_handle_index_migrates_with_zero_rows() -> None:
    record = RawRecord("vibe:invites:by:alice", "set", [b"VIBE-1", b"VIBE-2"], "", "by_handle")
    assert INVITES.transform(record) == Outcome()


def test_by_handle_index_with_a_non_text_member_is_rejected() -> None:
    record = RawRecord("vibe:invites:by:alice", "set", [b"VIBE-1", b"\xff"], "", "by_handle")
    outcome = INVITES.transform(record)
    assert outcome.reject is not None and outcome.reject.code == "invalid_utf8"
    wrong_type = RawRecord("vibe:invites:by:a", "list", [], "", "by_handle")
    assert INVITES.transform(wrong_type).reject is not None


def test_friend_invite_keys_are_not_invites_and_stay_in_kv() -> None:
    classifier = Classifier((INVITES,))
    assert classifier.classify("invite:ABC123").status == "kept"
    assert classifier.classify("vibe:invites").family == INVITES.family("invites")
    assert classifier.classify("vibe:invites:by:alice").family == INVITES.family("by_handle")


# --- end to end ---------------------------------------------------------------------------

def test_backfill_keeps_expiry_and_makes_a_placeholder_for_an_unknown_used_by(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    kv.hset("vibe:handles", "alice", orjson.dumps({"handle": "alice", "registeredAtTs": T_MS}))
    kv.hset("vibe:invites", "VIBE-AB12-ALIC", orjson.dumps(full(used_by="newbie")))
    kv.hset("vibe:invites", "VIBE-CD34-ALIC", orjson.dumps(
        {"code": "VIBE-CD34-ALIC", "created_by": "alice", "created_at_ts": T_MS, "status": "available",
         "expires_at_ts": T_MS + 7 * 86_400_000, "used_by": None, "used_at": None}))
    kv.sadd("vibe:invites:by:alice", "VIBE-AB12-ALIC", "VIBE-CD34-ALIC")
    kv.set("invite:FRIEND1", "alice")
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config)
    assert (result.tallies["invites"].migrated, result.tallies["invites"].rejected) == (3, 0)
    assert result.kept_patterns["invite:*"] == 1 and "invite:*" not in result.unknown_patterns
    with psycopg.connect(pg_url) as conn:
        invites = conn.execute("SELECT code, created_by, used_by, created_at, used_at, expires_at, status,"
                               " details FROM invites ORDER BY code").fetchall()
        users = conn.execute("SELECT handle, settings FROM users ORDER BY handle").fetchall()
    assert invites == [
        ("VIBE-AB12-ALIC", "alice", "newbie", T0, T_USED, T_EXPIRES, "used", {"bonus_for_inviting": 5}),
        ("VIBE-CD34-ALIC", "alice", None, T0, None, T_EXPIRES, "available", {}),
    ]
    assert users == [("alice", {}), ("newbie", {"placeholder": True, "created_by": "kvmigrate"})]
    again = commands.backfill(config)
    assert again.tallies["users"].rows_written == 0
    assert again.tallies["invites"].rows_written == 0


def test_invite_codes_are_never_normalised_so_no_two_codes_collapse_into_one_row() -> None:
    from kvmigrate.entities.invites import INVITES
    from kvmigrate.model.records import RawRecord

    rows = [INVITES.transform(RawRecord("vibe:invites", "hash", b'{"created_by": "ann"}', code, "invites")).rows[0]
            for code in ("VIBE-ABCD-ANN", "vibe-abcd-ann", " VIBE-ABCD-ANN")]
    assert [r.values["code"] for r in rows] == ["VIBE-ABCD-ANN", "vibe-abcd-ann", " VIBE-ABCD-ANN"]
