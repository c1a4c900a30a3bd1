"""Cleanup against real servers: what it deletes, what it never touches, the gate, the archive
files, dry runs, a budget stop and rerun; plus the pure deletion rule for registry hashes."""

from __future__ import annotations

import gzip
import hashlib
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.files.archive import (
    MANIFEST,
    decode_line,
    encode_line,
    latest_lines,
    read_manifest,
    verified_blobs,
)
from kvmigrate.adapters.kv.snapshot import Snapshot, SnapshotReader
from kvmigrate.adapters.pg.state import LedgerState
from kvmigrate.engine import phases
from kvmigrate.engine.batch import value_digest
from kvmigrate.entities.base import Family
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config, build_config
from kvmigrate.model.errors import BudgetExhausted, ConfigError, GateRefused
from kvmigrate.phases.cleanup import run_cleanup
from kvmigrate.phases.cleanup_rules import verdict

STREAK_HASH = {"current": "3", "longest": "5", "totalDays": "12", "lastActive": "2025-06-01"}
STREAK_JSON = orjson.dumps({"current": 2, "longest": 4, "lastActive": "2025-06-02",
                            "activeDays": ["2025-06-01", "2025-06-02"], "badges": ["first_dm"]})
GOOD_STREAKS = ("streak:alice", "streak:bob", "streak:carol")
POLICY_KEYS = ("presence:data:alice", "presence:index", "session:s1", "ratelimit:dm:alice",
               "invite:f00d", "waitlist", "kvmigrate:notes")


def seed(kv: redis.Redis, *, extra_streaks: int = 0) -> None:
    """Good streaks (both shapes), one rejected streak, and keys that cleanup
    must never touch: presence, sessions, rate limits, unknown families, kvmigrate's own."""
    p = kv.pipeline(transaction=False)
    p.hset("streak:alice", mapping=STREAK_HASH)
    p.set("streak:bob", STREAK_JSON)
    p.hset("streak:carol", mapping={**STREAK_HASH, "current": "1"})
    for i in range(extra_streaks):
        p.set(f"streak:user{i:03d}", orjson.dumps({"current": i, "longest": i, "lastActive": "2025-06-03"}))
    p.set("streak:bad", orjson.dumps({"current": "x"}))
    p.set("presence:data:alice", orjson.dumps({"handle": "alice", "status": "online"}), ex=300)
    p.zadd("presence:index", {"alice": 1_748_736_000_000})
    p.set("session:s1", "token-abc", ex=3600)
    p.set("ratelimit:dm:alice", 4, ex=60)
    p.set("invite:f00d", orjson.dumps({"code": "f00d", "from": "alice"}), ex=7 * 86400)
    p.rpush("waitlist", orjson.dumps({"email": "person@example.com"}))
    p.hset("kvmigrate:notes", mapping={"by": "ops"})
    p.execute()


def backfill_and_verify(config: Config) -> None:
    commands.backfill(config, entities=["streaks"])
    verified = commands.verify(config, entities=["streaks"], recheck_delay=0)
    assert verified.clean, verified.entities


def move(config: Config, *to: phases.Phase) -> None:
    with psycopg.connect(config.require_pg()) as conn:
        kv = connect_kv(config.require_kv(), RequestBudget())
        for phase in to:
            phases.set_phase(conn, kv, "streaks", phase, reason="test")


def prepare(pg_url: str, kv_url: str, **options: Any) -> Config:
    """setup → backfill → verify → dual-write → cutover, for the streaks entity."""
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, **options)
    commands.setup(config)
    backfill_and_verify(config)
    move(config, phases.DUAL, phases.CUTOVER)
    return config


def keyspace(kv: redis.Redis, *, skip: tuple[str, ...] = ("kvmigrate:flags",)) -> dict[str, tuple[Any, ...]]:
    """Every key's (type, value, absolute expiry in ms or None), compared with `same_keyspace`."""
    out: dict[str, tuple[Any, ...]] = {}
    now = time.time() * 1000
    for raw in kv.keys("*"):
        key = raw.decode("utf-8", "surrogateescape")
        if key in skip:
            continue
        t = kv.type(raw).decode()
        value = (kv.get(raw) if t == "string" else kv.hgetall(raw) if t == "hash"
                 else kv.lrange(raw, 0, -1) if t == "list" else sorted(kv.smembers(raw)) if t == "set"
                 else kv.zrange(raw, 0, -1, withscores=True))
        pttl = kv.pttl(raw)
        out[key] = (t, value, None if pttl < 0 else now + pttl)
    return out


def same_keyspace(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> None:
    assert sorted(after) == sorted(before)
    for key, (t, value, expiry) in before.items():
        assert after[key][:2] == (t, value), key
        if expiry is None:
            assert after[key][2] is None, key
        else:
            assert abs(after[key][2] - expiry) < 1000, key


def archived_keys(folder: Path) -> set[str]:
    blobs = verified_blobs(folder, read_manifest(folder))
    return {item.key for item in latest_lines(blobs, ())}


def test_cleanup_deletes_exactly_the_verified_keys_and_nothing_else(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    before = keyspace(kv)
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "archive", yes=True)
    after = keyspace(kv)
    assert set(before) - set(after) == set(GOOD_STREAKS)
    same_keyspace({k: v for k, v in before.items() if k not in GOOD_STREAKS}, after)
    streaks = result.entities["streaks"]
    assert (streaks.candidates, streaks.deletable, streaks.archived, streaks.deleted) == (4, 3, 3, 3)
    assert streaks.kept["rejected"].examples == ["streak:bad"]
    assert "kvmigrate rejects --entity streaks" in streaks.kept["rejected"].hint
    assert result.complete and not result.dry_run and result.flags_changed == ["streaks"]
    assert kv.hget("kvmigrate:flags", "streaks.writes") == b"postgres"
    assert phases.current(pg, "streaks") == phases.CLEANED
    marks: dict[str, bool] = dict(pg.execute("SELECT key, deleted_at IS NOT NULL AND archived_at IS NOT NULL FROM kvmigrate.ledger"
                            " WHERE entity = 'streaks'").fetchall())
    assert marks == {**dict.fromkeys(GOOD_STREAKS, True), "streak:bad": False}
    run = pg.execute("SELECT status, kv_requests, result->'entities'->'streaks'->>'deleted' FROM kvmigrate.runs"
                     " WHERE id = %s", (result.run_id,)).fetchone()
    assert run == ("ok", result.kv_requests, "3")


def test_key_changed_after_verify_to_a_value_postgres_lacks_is_kept_with_the_command_to_run(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    kv.hset("streak:carol", "current", "2")
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    kept = result.entities["streaks"].kept["differs_from_postgres"]
    assert (kept.count, kept.examples) == (1, ["streak:carol"])
    assert "kvmigrate verify --entity streaks" in kept.hint and "--repair" in kept.hint
    assert kv.hget("streak:carol", "current") == b"2"
    assert "streak:carol" not in archived_keys(tmp_path)
    assert not kv.exists("streak:alice", "streak:bob")


def test_key_changed_after_verify_that_postgres_also_holds_is_verified_by_the_cleanup_pass_and_deleted(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    """The app dual-wrote a change after the last verify: cleanup's one read pass verifies the
    key from the value it read (no second read, no full verify) and deletes it."""
    seed(kv)
    config = prepare(pg_url, kv_url)
    kv.hset("streak:carol", "current", "2")
    pg.execute("UPDATE streaks SET current_streak = 2 WHERE handle = 'carol'")
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert result.verified_now == 1 and "differs_from_postgres" not in result.entities["streaks"].kept
    assert not kv.exists("streak:carol") and "streak:carol" in archived_keys(tmp_path)
    reads = sum(n for c, n in result.budget.by_command.items() if c in ("HGETALL", "MGET"))
    assert reads == result.budget.by_command["HGETALL"] + result.budget.by_command["MGET"]
    assert result.budget.by_command["HGETALL"] == 2  # alice and carol, each read once


def test_value_changed_between_read_and_delete_is_not_deleted(kv_url: str, kv: redis.Redis) -> None:
    """The delete runs in MULTI/EXEC after a WATCH taken before the read: a key the app writes in
    between makes the server run nothing."""
    kv.set("streak:a", "1")
    kv.rpush("streak:b", "x", "y")
    budget = RequestBudget()
    client = connect_kv(kv_url, budget)
    reader = SnapshotReader(client)
    streaks = Family("streak", "streak:*", frozenset({"string", "hash"}))
    with client.session() as session:
        session.pipeline([("WATCH", "streak:a", "streak:b")])
        snaps = reader.read(["streak:a", "streak:b"], [streaks, streaks], send=session.pipeline)
        assert [s.rtype for s in snaps] == ["string", "list"]
        kv.rpush("streak:b", "z")
        assert session.transaction([("DEL", "streak:a", "streak:b")]) is None
    assert kv.get("streak:a") == b"1" and kv.lrange("streak:b", 0, -1) == [b"x", b"y", b"z"]
    with client.session() as session:
        session.pipeline([("WATCH", "streak:a", "streak:b")])
        assert session.transaction([("DEL", "streak:a", "streak:b")]) == [2]
    assert kv.dbsize() == 0
    assert budget.by_command["WATCH"] == 2 and budget.by_command["MULTI"] == budget.by_command["EXEC"] == 2


def test_cleanup_before_cutover_is_refused_and_touches_nothing(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    seed(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    backfill_and_verify(config)
    move(config, phases.DUAL)
    before = keyspace(kv, skip=())
    with pytest.raises(GateRefused) as refused:
        run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "a", yes=True)
    assert refused.value.exit_code == 1
    assert "`kvmigrate cutover --entity streaks`" in (refused.value.hint or "")
    same_keyspace(before, keyspace(kv, skip=()))
    assert not (tmp_path / "a").exists()
    assert phases.current(pg, "streaks") == phases.DUAL


def test_cleanup_without_yes_is_refused(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    with pytest.raises(ConfigError) as refused:
        run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "a")
    assert refused.value.exit_code == 2 and "--yes" in (refused.value.hint or "")
    assert kv.exists(*GOOD_STREAKS) == 3 and not (tmp_path / "a").exists()


def test_archive_files_are_private_and_match_the_manifest(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    folder = tmp_path / "archive"
    result = run_cleanup(config, entities=["streaks"], archive_dir=folder, yes=True)
    assert result.manifest == str(folder / MANIFEST)
    manifest = orjson.loads((folder / MANIFEST).read_bytes())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "streaks.jsonl.gz"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    [entry] = manifest["files"]
    data = (folder / "streaks.jsonl.gz").read_bytes()
    assert (entry["sha256"], entry["bytes"], entry["lines"]) == (hashlib.sha256(data).hexdigest(), len(data), 3)
    assert manifest["counts"] == {"streaks": {"archived": 3, "deleted": 3, "files": 1}}
    assert manifest["kv_url"] == config.masked_kv_url and manifest["run_id"] == result.run_id
    assert manifest["runs"][0]["complete"] is True
    lines = [orjson.loads(line) for line in gzip.decompress(data).splitlines()]
    alice = next(line for line in lines if line["key"] == "streak:alice")
    assert alice["type"] == "hash" and dict(alice["value"]) == STREAK_HASH
    assert alice["ttl_ms"] is None  # streaks cannot expire (Family.may_expire): no PTTL is read


def test_dry_run_writes_nothing_anywhere(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    before = keyspace(kv, skip=())
    state_sql = ("SELECT (SELECT json_agg(l ORDER BY key, field) FROM kvmigrate.ledger l),"
                 " (SELECT json_agg(p) FROM kvmigrate.phases p), (SELECT count(*) FROM kvmigrate.runs),"
                 " (SELECT count(*) FROM kvmigrate.checkpoints), (SELECT count(*) FROM kvmigrate.phase_history)")
    pg_before = pg.execute(state_sql).fetchone()
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "a", dry_run=True)
    assert result.dry_run and result.run_id is None and result.manifest is None
    streaks = result.entities["streaks"]
    assert (streaks.deletable, streaks.archived, streaks.deleted) == (3, 0, 0)
    same_keyspace(before, keyspace(kv, skip=()))
    assert pg.execute(state_sql).fetchone() == pg_before
    assert not (tmp_path / "a").exists()


def test_budget_stops_and_reruns_never_delete_an_unarchived_key(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    seed(kv, extra_streaks=60)
    prepare(pg_url, kv_url, scan_count=10)
    before = keyspace(kv)
    verified = {k for (k,) in pg.execute("SELECT key FROM kvmigrate.ledger WHERE verified_hash IS NOT NULL")}
    assert len(verified) == 63
    folder, stops, caps, pending = tmp_path / "archive", 0, (10, 12, 14, 16), 0  # a page costs about 8
    for attempt in range(100):
        # Until a stop has fallen between a page's archive and its delete, raise the cap one request
        # at a time: a run that stops before archiving changes nothing, so some cap stops exactly
        # there, whatever order SCAN returns the keys in. Then cycle caps of about two pages.
        cap = attempt + 1 if not pending else caps[attempt % 4]
        capped = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10, max_requests=cap)
        try:
            result = run_cleanup(capped, entities=["streaks"], archive_dir=folder, yes=True)
            break
        except BudgetExhausted as exc:
            assert exc.exit_code == 4
            stops += 1
        present = set(keyspace(kv))
        assert set(before) - present <= archived_keys(folder)
        pending += bool(archived_keys(folder) & present)  # stopped between archive and delete
    assert stops >= 3 and pending and result.complete and result.resumed_from
    after = keyspace(kv)
    assert set(before) - set(after) == verified
    same_keyspace({k: v for k, v in before.items() if k not in verified}, after)
    runs = pg.execute("SELECT status, count(*) FROM kvmigrate.runs WHERE command = 'cleanup' GROUP BY 1").fetchall()
    assert dict(runs) == {"stopped": stops, "ok": 1}
    assert archived_keys(folder) == verified


def test_registry_hash_with_an_unverified_field_is_kept() -> None:
    family = Family("handles", "vibe:handles", frozenset({"hash"}), split_fields=True)
    snap = Snapshot("vibe:handles", "hash", (b"alice", b"{}", b"bob", b"[]"), None, "d")
    good = {"alice": LedgerState("migrated", value_digest("hash", b"{}")),
            "bob": LedgerState("migrated", value_digest("hash", b"[]"))}
    assert verdict(snap, family, good) is None
    assert verdict(snap, family, {"alice": good["alice"]}) == ("not_migrated", "vibe:handles field 'bob'")
    stale = {**good, "bob": LedgerState("migrated", value_digest("hash", b"[1]"))}
    assert verdict(snap, family, stale) == ("changed_since_verify", "vibe:handles field 'bob'")
    assert verdict(snap, family, {**good, "bob": LedgerState("migrated", None)}) == (
        "not_verified", "vibe:handles field 'bob'")


def test_archive_line_round_trips_binary_values_and_scores() -> None:
    snap = Snapshot("streak:\udcff", "zset", (b"caf\xe9", b"1.5", b"ok", b"inf"), 1200, "d")
    line = encode_line(snap, "streaks", run_id=1, now_ms=1_000)
    data = orjson.loads(line)
    assert data["value"] == [[{"encoding": "base64", "data": "Y2Fm6Q=="}, "1.5"], ["ok", "inf"]]
    assert (data["ttl_ms"], data["expires_at_ms"]) == (1200, 2200)
    item = decode_line(line)
    assert (item.key, item.rtype, item.parts, item.expires_at_ms) == (snap.key, "zset", snap.parts, 2200)


def test_a_key_the_app_wrote_after_backfill_and_dual_wrote_to_postgres_is_verified_and_deleted_by_the_one_pass(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    """Never backfilled, so not in the ledger: cleanup's read verifies it against Postgres and takes it."""
    seed(kv)
    config = prepare(pg_url, kv_url)
    kv.set("streak:dana", orjson.dumps({"current": 1, "longest": 1, "lastActive": "2025-06-04"}))
    pg.execute("INSERT INTO users (handle) VALUES ('dana') ON CONFLICT DO NOTHING")
    pg.execute("INSERT INTO streaks (handle, current_streak, longest_streak, total_days, last_active)"
               " VALUES ('dana', 1, 1, 0, '2025-06-04')")
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger WHERE key = 'streak:dana'").fetchone() == (0,)
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert result.verified_now >= 1 and not kv.exists("streak:dana"), result.entities["streaks"].kept
    assert "streak:dana" in archived_keys(tmp_path)
