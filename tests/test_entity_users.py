"""The users entity: every source shape to exact rows, the merge of four sources, rejects, and
one end-to-end backfill against real servers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.pg.loader import SourcedRow, dedupe
from kvmigrate.entities import ENTITIES
from kvmigrate.entities.users import USERS
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord

T_MS = 1717236000000  # 2024-06-01T10:00:00Z
T0 = datetime(2024, 6, 1, 10, 0, tzinfo=timezone.utc)
T_LEGACY = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)


def registry(key: str, field: str, obj: Any, family: str) -> RawRecord:
    value = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return RawRecord(key, "hash", value, field, family)


def handles(field: str, obj: Any) -> RawRecord:
    return registry("vibe:handles", field, obj, "handles")


def legacy(handle: str, fields: dict[str, str]) -> RawRecord:
    value = {k.encode(): v.encode() for k, v in fields.items()}
    return RawRecord(f"user:{handle}", "hash", value, "", "legacy")


def row_of(outcome: Outcome) -> dict[str, Any]:
    assert outcome.reject is None, outcome.reject
    assert len(outcome.rows) == 1
    assert outcome.rows[0].table == "users"
    return dict(outcome.rows[0].values)


def code_of(outcome: Outcome) -> str:
    assert outcome.reject is not None and not outcome.rows
    return outcome.reject.code


def test_users_is_registered_first_with_its_families() -> None:
    assert ENTITIES[0] is USERS
    assert [(f.name, f.pattern, f.rank, f.split_fields) for f in USERS.families] == [
        ("handles", "vibe:handles", 40, True), ("agents", "vibe:agents", 30, True),
        ("registry_users", "vibe:users", 20, True), ("legacy", "user:*", 10, False)]


def test_handles_record_maps_columns_and_keeps_every_other_field_in_settings() -> None:
    record = handles("alice", {
        "handle": "alice", "registeredAt": "2024-06-01T10:00:00.000Z", "registeredAtTs": T_MS,
        "first_active_at": "2024-06-02T08:00:00Z", "last_active_at": None, "messages_sent": 12,
        "genesis": True, "verified": "github", "github_handle": "alice-gh", "isAgent": False,
        "capabilities": ["chat"], "one_liner": "building a synth", "invited_by": "bob",
        "invite_code": "VIBE-AB12-BOB"})
    outcome = USERS.transform(record)
    assert outcome.stats == {}
    assert outcome.rows[0].rank == 40
    assert row_of(outcome) == {
        "handle": "alice", "display_name": None, "one_liner": "building a synth", "created_at": T0,
        "invited_by": "bob",
        "settings": {"first_active_at": "2024-06-02T08:00:00Z", "last_active_at": None,
                     "messages_sent": 12, "genesis": True, "verified": "github",
                     "github_handle": "alice-gh", "isAgent": False, "capabilities": ["chat"],
                     "invite_code": "VIBE-AB12-BOB"}}


def test_timestamp_alias_that_names_another_instant_is_kept_in_settings() -> None:
    row = row_of(USERS.transform(handles("alice", {
        "registeredAtTs": T_MS, "registeredAt": "2024-06-01T10:00:00Z", "createdAt": "2023-01-01",
        "displayName": "Al", "display_name": "Alice"})))
    assert row["created_at"] == T0
    assert row["display_name"] == "Alice"
    assert row["settings"] == {"createdAt": "2023-01-01", "displayName": "Al"}


def test_legacy_hash_of_strings_is_unstringified_and_recovery_key_redacted() -> None:
    record = legacy("carol", {
        "username": "carol", "building": "a tiny compiler", "createdAt": "2024-05-01T09:30:00Z",
        "updatedAt": "2024-05-02T00:00:00Z", "invitedBy": "null", "inviteCode": "VIBE-0001-ROOT",
        "publicKey": "ed25519:AAAA", "recoveryKey": "super-secret", "registry": "true",
        "keyRotatedAt": "null", "status": "active", "messages": "7", "score": "1.5"})
    outcome = USERS.transform(record)
    assert outcome.rows[0].rank == 10
    assert row_of(outcome) == {
        "handle": "carol", "display_name": None, "one_liner": "a tiny compiler",
        "created_at": T_LEGACY, "invited_by": None,
        "settings": {"updatedAt": "2024-05-02T00:00:00Z", "inviteCode": "VIBE-0001-ROOT",
                     "publicKey": "ed25519:AAAA", "registry": True, "keyRotatedAt": None,
                     "status": "active", "messages": 7, "score": "1.5",  # as the app's HGETALL reads it
                     "recoveryKey": "[redacted]"}}
    assert "super-secret" not in repr(outcome)


def test_legacy_text_columns_keep_numeric_looking_text_as_text() -> None:
    row = row_of(USERS.transform(legacy("dave", {"building": "42", "display_name": "007",
                                                "createdAt": str(T_MS)})))
    assert (row["display_name"], row["one_liner"], row["created_at"]) == ("007", "42", T0)


def test_agents_record_redacts_the_api_key_hash() -> None:
    record = registry("vibe:agents", "ops_agent", {
        "handle": "ops_agent", "display_name": "Ops", "one_liner": "I watch deploys", "is_agent": True,
        "operator": "alice", "model": "some-model", "api_key_hash": "sha256:abcdef",
        "registered_at": "2024-06-01T10:00:00Z", "status": "active"}, "agents")
    outcome = USERS.transform(record)
    assert outcome.rows[0].rank == 30
    assert row_of(outcome) == {
        "handle": "ops_agent", "display_name": "Ops", "one_liner": "I watch deploys", "created_at": T0,
        "invited_by": None,
        "settings": {"is_agent": True, "operator": "alice", "model": "some-model", "status": "active",
                     "api_key_hash": "[redacted]"}}
    assert "abcdef" not in repr(outcome)


def test_registry_users_record_maps_created_at() -> None:
    record = registry("vibe:users", "erin", {"handle": "erin", "display_name": "Erin", "one_liner": None,
                                             "is_agent": False, "operator": None,
                                             "created_at": T_MS}, "registry_users")
    outcome = USERS.transform(record)
    assert outcome.rows[0].rank == 20
    assert row_of(outcome) == {"handle": "erin", "display_name": "Erin", "one_liner": None,
                               "created_at": T0, "invited_by": None,
                               "settings": {"is_agent": False, "operator": None}}


def test_four_sources_of_one_handle_merge_with_the_registry_winning() -> None:
    records = [
        legacy("frank", {"username": "frank", "building": "old one-liner",
                         "createdAt": "2024-05-01T09:30:00Z",
                         "invitedBy": "carol", "status": "legacy", "inviteCode": "VIBE-1"}),
        registry("vibe:users", "frank", {"display_name": "Frank U", "created_at": "2023-01-01T00:00:00Z",
                                         "is_agent": False}, "registry_users"),
        registry("vibe:agents", "frank", {"display_name": "Frank A", "one_liner": "agent line",
                                          "status": "agent", "api_key_hash": "x"}, "agents"),
        handles("frank", {"registeredAtTs": T_MS, "status": "active", "verified": "x"}),
    ]
    rows = []
    for rec in records:
        outcome = USERS.transform(rec)
        rows.append(SourcedRow(outcome.rows[0].values, outcome.rows[0].rank, rec.key, rec.field))
    [merged] = dedupe(USERS.tables[0], rows)
    assert dict(merged.values) == {
        "handle": "frank", "display_name": "Frank A", "one_liner": "agent line", "created_at": T0,
        "invited_by": "carol",
        "settings": {"status": "active", "verified": "x", "is_agent": False, "inviteCode": "VIBE-1",
                     "api_key_hash": "[redacted]"}}


def test_handle_in_field_and_invited_by_are_normalised_and_counted() -> None:
    outcome = USERS.transform(handles("@Alice", {"handle": "@Alice", "invited_by": "ops-agent"}))
    assert outcome.stats == {"handle_normalised": 2}
    row = row_of(outcome)
    assert (row["handle"], row["invited_by"], row["settings"]) == ("alice", "ops_agent", {})


def test_legacy_key_suffix_is_normalised() -> None:
    outcome = USERS.transform(legacy("Ops-Agent", {"username": "ops-agent"}))
    assert outcome.stats == {"handle_normalised": 1}
    assert row_of(outcome)["handle"] == "ops_agent"


def test_record_naming_another_handle_keeps_it_in_settings() -> None:
    outcome = USERS.transform(handles("alice", {"handle": "mallory", "username": "Alice"}))
    assert outcome.stats == {"handle_mismatch": 1}
    row = row_of(outcome)
    assert (row["handle"], row["settings"]) == ("alice", {"handle": "mallory"})


def test_invalid_invited_by_migrates_the_user_and_keeps_the_raw_value() -> None:
    outcome = USERS.transform(legacy("gina", {"invitedBy": "not a handle!"}))
    assert outcome.stats == {"invalid_invited_by": 1}
    assert row_of(outcome) == {"handle": "gina", "display_name": None, "one_liner": None,
                               "created_at": None, "invited_by": None,
                               "settings": {"invited_by_raw": "not a handle!"}}


def test_self_invitation_is_kept() -> None:
    assert row_of(USERS.transform(handles("hank", {"invited_by": "hank"})))["invited_by"] == "hank"


def test_disagreeing_invited_by_alias_is_kept_in_settings() -> None:
    row = row_of(USERS.transform(handles("ivy", {"invited_by": "@Bob", "invitedBy": "carol"})))
    assert (row["invited_by"], row["settings"]) == ("bob", {"invitedBy": "carol"})


@pytest.mark.parametrize(("record", "code"), [
    (handles("alice", b"[1, 2]"), "wrong_json_type"),
    (handles("alice", b'"just text"'), "wrong_json_type"),
    (handles("alice", b"{not json"), "invalid_json"),
    (handles("alice", b'{"one_liner": "\\u0000"}'), "nul_byte"),
    (handles("alice", b"\xff\xfe"), "invalid_utf8"),
    (handles("not a handle", {"display_name": "x"}), "invalid_handle"),
    (handles("alice", {"display_name": 5}), "wrong_type"),
    (handles("alice", {"registeredAtTs": "soon"}), "bad_timestamp"),
    (handles("alice", {"registeredAtTs": 1}), "bad_timestamp"),
    (legacy("jack", {"createdAt": "yesterday"}), "bad_timestamp"),
    (legacy("bad:key", {"username": "x"}), "invalid_handle"),
    (RawRecord("user:kim", "string", b"{}", "", "legacy"), "wrong_redis_type"),
    (RawRecord("vibe:handles", "hash", b"{}", "alice", "nope"), "unknown_family"),
])
def test_reject_codes(record: RawRecord, code: str) -> None:
    assert code_of(USERS.transform(record)) == code


def test_bad_value_reject_names_the_key_field_and_alias() -> None:
    outcome = USERS.transform(handles("alice", {"registeredAtTs": "soon"}))
    assert outcome.reject is not None
    assert outcome.reject.message.startswith("vibe:handles field 'alice': registeredAtTs: ")


# --- end to end ---------------------------------------------------------------------------

def test_backfill_merges_three_sources_into_one_user_row_and_rerun_writes_nothing(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    kv.hset("vibe:handles", "lena", orjson.dumps({
        "handle": "lena", "registeredAt": "2024-06-01T10:00:00Z", "registeredAtTs": T_MS,
        "verified": "github", "one_liner": "making music", "invited_by": "@Mo", "messages_sent": 3}))
    kv.hset("user:lena", mapping={
        "username": "lena", "building": "legacy line", "createdAt": "2024-05-01T09:30:00Z",
        "recoveryKey": "secret-words", "status": "active", "inviteCode": "VIBE-9"})
    kv.hset("vibe:agents", "lena", orjson.dumps({
        "handle": "lena", "display_name": "Lena", "one_liner": "agent line", "is_agent": False,
        "api_key_hash": "sha256:feed", "registered_at": "2024-01-01T00:00:00Z", "status": "online"}))
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config)
    assert result.tallies["users"].migrated == 3
    assert result.tallies["users"].stats["handle_normalised"] == 1
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT handle, display_name, one_liner, invited_by, settings"
                            " FROM users ORDER BY handle").fetchall()
        created = conn.execute("SELECT created_at FROM users WHERE handle = 'lena'").fetchone()
    assert rows == [
        ("lena", "Lena", "making music", "mo",
         {"verified": "github", "messages_sent": 3, "is_agent": False, "status": "active",  # user:lena is fresher
          "inviteCode": "VIBE-9", "api_key_hash": "[redacted]", "recoveryKey": "[redacted]"}),
        ("mo", None, None, None, {"placeholder": True, "created_by": "kvmigrate"}),
    ]
    assert created == (T0,)
    again = commands.backfill(config)
    assert again.tallies["users"].rows_written == 0


def test_a_user_updated_to_name_an_inviter_new_in_the_same_page_loads(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.hset("user:amy", mapping={"username": "amy", "building": "a kiln"})
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config)
    # amy now names an inviter whose own record arrives in the same page: the update must not
    # run before the inviter's row exists (the foreign key is checked at once)
    kv.hset("vibe:handles", mapping={"amy": orjson.dumps({"handle": "amy", "invited_by": "zed"}),
                                     "zed": orjson.dumps({"handle": "zed", "one_liner": "invites"})})
    result = commands.backfill(config)
    assert result.complete and result.placeholders == 0
    assert pg.execute("SELECT handle, invited_by FROM users ORDER BY handle").fetchall() == [
        ("amy", "zed"), ("zed", None)]


def _combined(records: list[RawRecord]) -> Any:
    from kvmigrate.entities.users import combine

    rows = []
    for rec in records:
        row = USERS.transform(rec).rows[0]
        rows.append(SourcedRow(row.values, row.rank, rec.key, rec.field, row.meta))
    merged = combine(rows)
    assert combine(list(reversed(rows))) == merged  # never depends on scan order
    return merged


def test_the_most_recently_updated_source_wins_each_field() -> None:
    claim = handles("ivy", {"registeredAt": "2024-06-01T10:00:00Z", "one_liner": "claim-time line",
                            "status": "active", "invited_by": "mo"})
    edited = legacy("ivy", {"building": "what I build now", "updatedAt": "2024-07-01T00:00:00Z",
                            "createdAt": "2024-05-01T00:00:00Z", "status": "away", "invitedBy": "zoe"})
    merged = _combined([claim, edited])
    assert (merged.row.values["one_liner"], merged.row.values["settings"]["status"]) == ("what I build now", "away")
    assert merged.row.values["invited_by"] == "mo" and merged.row.values["created_at"] == T0  # signup facts: registry
    assert merged.merged_away == ()
    stale = legacy("ivy", {"building": "old line", "updatedAt": "2024-01-01T00:00:00Z"})
    assert _combined([claim, stale]).row.values["one_liner"] == "claim-time line"


def test_user_keys_collapsing_into_one_handle_are_merged_and_reported() -> None:
    merged = _combined([legacy("Zed", {"building": "upper", "updatedAt": "2024-07-01T00:00:00Z"}),
                        legacy("zed", {"building": "lower", "updatedAt": "2024-06-01T00:00:00Z",
                                       "recoveryKey": "never-shown"}),
                        handles("zed", {"registeredAt": "2024-06-01T10:00:00Z"})])
    assert merged.row.values["one_liner"] == "upper"  # the freshest, whichever key held it
    assert [s.source_key for s in merged.merged_away] == ["user:Zed"]
    assert "never-shown" not in repr([s.meta for s in (merged.row, *merged.kept)])


def test_a_profile_updated_after_the_claim_wins_end_to_end_and_verify_stays_clean(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    kv.hset("vibe:handles", "nia", orjson.dumps({"handle": "nia", "registeredAt": "2024-06-01T10:00:00Z",
                                                 "one_liner": "claim-time line"}))
    kv.hset("vibe:handles", "@Nia", orjson.dumps({"handle": "Nia", "registeredAt": "2024-05-01T10:00:00Z",
                                                  "display_name": "Nia B"}))
    kv.hset("user:nia", mapping={"username": "nia", "building": "edited later", "updatedAt": "2024-08-01T00:00:00Z"})
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config)
    assert result.tallies["users"].stats["merged_keys"] == 1
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT display_name, one_liner FROM users").fetchall() == [("Nia B", "edited later")]
        assert conn.execute("SELECT key, field, reason_code, raw_value FROM kvmigrate.rejects").fetchall() == [
            ("vibe:handles", "@Nia", "merged",
             '{"handle":"Nia","registeredAt":"2024-05-01T10:00:00Z","display_name":"Nia B"}')]
    checked = commands.verify(config, recheck_delay=0)
    # Agreeing at once, not healed by the re-read: verify's expected row weighs each source's
    # freshness as backfill did, so all three keys verify (cleanup may delete them).
    assert checked.clean and checked.entities["users"].healed == 0
    assert checked.entities["users"].verified_keys == 3
    assert commands.backfill(config).tallies["users"].rows_written == 0
