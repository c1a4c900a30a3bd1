"""Restore against real servers: every Redis type and TTL comes back, changed keys are refused
unless forced, a damaged archive is refused, reruns into one folder keep earlier lines, and the
whole round trip works without scripting too."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from kvmigrate import commands, phases
from kvmigrate.archive import MANIFEST, ArchiveCorrupt, read_manifest
from kvmigrate.batch import value_digest
from kvmigrate.budget import RequestBudget
from kvmigrate.cleanup import run_cleanup
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv
from kvmigrate.entities.streaks import STREAKS
from kvmigrate.errors import GateRefused
from kvmigrate.kv.scanner import BatchReader
from kvmigrate.restore import run_restore
from tests.helpers import cli
from tests.test_cleanup import keyspace, prepare, same_keyspace, seed

#: Streak-family keys the entity rejects (types it does not read, bytes that are not JSON);
#: the tests mark them migrated and verified in the ledger so cleanup archives and deletes them.
SYNTHETIC = ("streak:listy", "streak:setty", "streak:zsetty", "streak:binary", "streak:binhash")


def seed_every_type(kv: redis.Redis) -> None:
    seed(kv)
    p = kv.pipeline(transaction=False)
    p.rpush("streak:listy", "b", "a", "b", b"\xff\x00")
    p.sadd("streak:setty", "x", "y", b"\xfe")
    p.zadd("streak:zsetty", {b"m1": 1.5, b"m2": 100, b"m3": float("inf"), b"m4": -0.1, b"\xc3": 1e20})
    p.set("streak:binary", b"\x00\xff\xfe binary", px=200_000)
    p.hset("streak:binhash", mapping={b"\xff": b"\x00", "text": "v"})
    p.pexpire("streak:listy", 300_000)
    p.execute()


def mark_verified(config: Config, keys: tuple[str, ...]) -> None:
    """Record the synthetic keys as migrated and verified, with the digest the scanner computes."""
    kv = connect_kv(config.require_kv(), RequestBudget(), read_only=True)
    family = STREAKS.families[0]
    with psycopg.connect(config.require_pg()) as conn:
        for kvv in BatchReader(kv).read(keys, [family] * len(keys)):
            conn.execute(
                "UPDATE kvmigrate.ledger SET status = 'migrated', reason = NULL, verified_hash = %s,"
                " verified_at = now() WHERE key = %s", (value_digest(kvv.redis_type, kvv.value), kvv.key))


def prepared(pg_url: str, kv_url: str, kv: redis.Redis, **options: object) -> Config:
    seed_every_type(kv)
    config = prepare(pg_url, kv_url, **options)
    mark_verified(config, SYNTHETIC)
    return config


def test_restore_brings_back_every_type_and_ttl(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert result.entities["streaks"].deleted == 8
    assert not kv.exists(*SYNTHETIC)
    restored = run_restore(config, tmp_path, yes=True)
    assert restored.entities["streaks"].restored == 8 and restored.clean
    assert restored.files_verified == ["streaks.jsonl.gz"]
    assert restored.flags.startswith("phase flags are unchanged")
    assert kv.hget("kvmigrate:flags", "streaks.writes") == b"postgres"
    same_keyspace(before, keyspace(kv))
    assert kv.lrange("streak:listy", 0, -1) == [b"b", b"a", b"b", b"\xff\x00"]


def test_restore_refuses_a_changed_key_unless_forced(pg_url: str, kv_url: str, kv: redis.Redis,
                                                      tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    kv.set("streak:alice", "written since")
    first = run_restore(config, tmp_path, yes=True)
    assert first.refused == ["streak:alice"] and not first.clean
    assert first.entities["streaks"].restored == 7
    assert kv.get("streak:alice") == b"written since"
    again = run_restore(config, tmp_path, yes=True)
    assert (again.entities["streaks"].equal, again.refused) == (7, ["streak:alice"])
    forced = run_restore(config, tmp_path, force=True, yes=True)
    assert (forced.entities["streaks"].overwritten, forced.refused) == (1, [])
    same_keyspace(before, keyspace(kv))


def test_restore_refuses_a_damaged_archive_and_writes_nothing(pg_url: str, kv_url: str, kv: redis.Redis,
                                                               tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    path = tmp_path / "streaks.jsonl.gz"
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))
    before = keyspace(kv, skip=())
    with pytest.raises(ArchiveCorrupt) as refused:
        run_restore(config, tmp_path, yes=True)
    assert refused.value.exit_code == 1 and "streaks.jsonl.gz" in refused.value.message
    same_keyspace(before, keyspace(kv, skip=()))


def test_restore_refuses_a_hand_edited_manifest_with_a_clear_error(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                   tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    good = orjson.loads((tmp_path / MANIFEST).read_bytes())
    broken = [{**good, "files": "streaks.jsonl.gz"}, {**good, "files": [None]},
              {**good, "files": [{**good["files"][0], "sha256": None}]},
              {**good, "files": [{k: v for k, v in good["files"][0].items() if k != "part"}]}]
    for manifest in broken:
        (tmp_path / MANIFEST).write_bytes(orjson.dumps(manifest))
        run = cli("--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path))
        assert run.exit_code == 1, run.output
        assert "error: " in run.output and "report it" not in run.output  # not the hint for a bug


def test_rerun_into_the_same_folder_keeps_earlier_lines(pg_url: str, kv_url: str, kv: redis.Redis,
                                                         pg: psycopg.Connection, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    first_run = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    first = (tmp_path / "streaks.jsonl.gz").read_bytes()
    kv.hset("streak:dave", mapping={"current": "7", "longest": "7"})
    repair_after_cleanup(config)
    second = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert second.entities["streaks"].deleted == 1 and not kv.exists("streak:dave")
    assert (tmp_path / "streaks.jsonl.gz").read_bytes() == first
    manifest = read_manifest(tmp_path)
    assert [f["name"] for f in manifest["files"]] == ["streaks.jsonl.gz", "streaks.part2.jsonl.gz"]
    assert [r["run_id"] for r in manifest["runs"]] == [first_run.run_id, second.run_id]
    assert manifest["counts"]["streaks"] == {"archived": 4, "deleted": 4, "files": 2}
    restored = run_restore(config, tmp_path, yes=True)
    assert restored.entities["streaks"].restored == 4
    assert kv.exists("streak:alice", "streak:bob", "streak:carol", "streak:dave") == 4


def repair_after_cleanup(config: Config) -> None:
    """Copy a key written after cleanup the only way left once an entity writes to Postgres only
    (backfill refuses it): `verify --repair` copies a missing row whose key never verified and
    records the key as verified (it reports the deleted keys' rows as extra)."""
    with pytest.raises(GateRefused):
        commands.backfill(config, entities=["streaks"])
    commands.verify(config, entities=["streaks"], recheck_delay=0, repair=True)


def test_round_trip_without_scripting(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv, use_eval=False)
    before = keyspace(kv)
    kv.hset("streak:carol", "current", "9")
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert result.entities["streaks"].deleted == 7
    assert result.entities["streaks"].kept["changed_since_verify"].examples == ["streak:carol"]
    assert "EVAL" not in result.budget.by_command and result.budget.by_command["WATCH"] >= 1
    restored = run_restore(config, tmp_path, yes=True)
    assert restored.entities["streaks"].restored == 7
    kv.hset("streak:carol", "current", "1")
    same_keyspace(before, keyspace(kv))
    with gzip.open(tmp_path / "streaks.jsonl.gz") as fh:
        assert len(fh.read().splitlines()) == 7
    assert (tmp_path / MANIFEST).exists()
    assert phases.CLEANED.writes == "postgres"
