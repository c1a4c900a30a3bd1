"""Restore against real servers: every Redis type and TTL comes back, changed keys are refused
unless forced, a damaged archive is refused, reruns into one folder keep earlier lines, and the
whole round trip works without scripting too."""

from __future__ import annotations

import gzip
import hashlib
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.files.archive import MANIFEST, ArchiveCorrupt, ArchiveWriter, read_manifest
from kvmigrate.adapters.kv.client import WRITE_COMMANDS
from kvmigrate.adapters.kv.scanner import BatchReader
from kvmigrate.engine import phases
from kvmigrate.engine.batch import value_digest
from kvmigrate.entities.streaks import STREAKS
from kvmigrate.model.budget import FREE_COMMANDS, RequestBudget
from kvmigrate.model.config import Config, build_config
from kvmigrate.model.errors import ArchiveBusy, GateRefused
from kvmigrate.phases.cleanup import run_cleanup
from kvmigrate.phases.restore import run_restore
from tests.fixtures.faults import launcher
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
    p.set("streak:binary", b"\x00\xff\xfe binary")
    p.hset("streak:binhash", mapping={b"\xff": b"\x00", "text": "v"})
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


def test_restore_brings_back_every_type(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
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


def test_round_trip_keeps_a_key_changed_since_verify(pg_url: str, kv_url: str, kv: redis.Redis,
                                                     tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    kv.hset("streak:carol", "current", "9")
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert result.entities["streaks"].deleted == 7
    assert result.entities["streaks"].kept["differs_from_postgres"].examples == ["streak:carol"]
    assert "EVAL" not in result.budget.by_command and result.budget.by_command["WATCH"] >= 1
    restored = run_restore(config, tmp_path, yes=True)
    assert restored.entities["streaks"].restored == 7
    kv.hset("streak:carol", "current", "1")
    same_keyspace(before, keyspace(kv))
    with gzip.open(tmp_path / "streaks.jsonl.gz") as fh:
        assert len(fh.read().splitlines()) == 7
    assert (tmp_path / MANIFEST).exists()
    assert phases.CLEANED.writes == "postgres"


# --------------------------------------------------------------------------- one run per folder, nothing missed


def two_runs(config: Config, kv: redis.Redis, folder: Path) -> dict[str, Any]:
    """Two cleanups into one folder (the second deletes streak:dave); returns the manifest as it
    stood after the first, which is what a lost manifest race leaves behind."""
    run_cleanup(config, entities=["streaks"], archive_dir=folder, yes=True)
    first = orjson.loads((folder / MANIFEST).read_bytes())
    kv.hset("streak:dave", mapping={"current": "7", "longest": "7"})
    repair_after_cleanup(config)
    assert run_cleanup(config, entities=["streaks"], archive_dir=folder, yes=True).entities["streaks"].deleted == 1
    return dict(first)


def test_restore_exits_nonzero_naming_deleted_keys_its_archive_does_not_cover(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed(kv)
    config = prepare(pg_url, kv_url)
    first = two_runs(config, kv, tmp_path)
    (tmp_path / MANIFEST).write_bytes(orjson.dumps(first))  # the first run's manifest won the race
    run = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path), "--yes")
    assert run.exit_code == 1, run.output
    body = orjson.loads(run.stdout)["result"]
    assert body["entities"]["streaks"]["restored"] == 3  # what the archive covers is put back
    assert (body["missing"], body["missing_examples"], body["unlisted_files"]) == (
        1, ["streak:dave"], ["streaks.part2.jsonl.gz"])
    assert not body["clean"] and not kv.exists("streak:dave")
    human = cli("--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path), "--yes")
    assert human.exit_code == 1 and "streak:dave" in human.output and "streaks.part2.jsonl.gz" in human.output


def test_restore_refuses_a_manifest_with_an_entry_removed_or_a_byte_count_shortened(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed(kv, extra_streaks=30)
    config = prepare(pg_url, kv_url, scan_count=10)
    two_runs(config, kv, tmp_path)
    good = orjson.loads((tmp_path / MANIFEST).read_bytes())
    before = keyspace(kv, skip=())
    removed = {**good, "files": good["files"][:1]}
    data = (tmp_path / "streaks.jsonl.gz").read_bytes()
    first_member = _member(data)
    short = {**good["files"][0], "bytes": first_member, "sha256": hashlib.sha256(data[:first_member]).hexdigest()}
    shortened = {**good, "files": [short, *good["files"][1:]]}
    for manifest, says in ((removed, "a file entry was removed"), (shortened, "lines where the manifest lists")):
        (tmp_path / MANIFEST).write_bytes(orjson.dumps(manifest))
        with pytest.raises(ArchiveCorrupt) as refused:
            run_restore(build_config(kv_url=kv_url, env={}), tmp_path, yes=True)  # no ledger needed to see it
        assert says in refused.value.message
        same_keyspace(before, keyspace(kv, skip=()))
    # every total edited to agree: only the ledger still knows what was deleted
    lines = len(gzip.decompress(data[:first_member]).splitlines())
    agreed = {**shortened, "files": [{**short, "lines": lines, "deleted": lines}, *good["files"][1:]],
              "counts": {"streaks": {"archived": lines + 1, "deleted": lines + 1, "files": 2}},
              "runs": [{**good["runs"][0], "counts": {"streaks": {"archived": lines, "deleted": lines}}},
                       *good["runs"][1:]]}
    (tmp_path / MANIFEST).write_bytes(orjson.dumps(agreed))
    result = run_restore(config, tmp_path, yes=True)
    assert not result.clean and result.missing == 34 - lines - 1 > 0, (result.missing, lines)


def _member(data: bytes) -> int:
    """The length of the first gzip member (one cleanup batch) of an archive file."""
    d = zlib.decompressobj(wbits=31)
    d.decompress(data)
    return len(data) - len(d.unused_data)


def test_a_second_run_into_a_locked_archive_folder_is_refused(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    folder = tmp_path / "archive"
    run_cleanup(config, entities=["streaks"], archive_dir=folder, yes=True)
    with launcher({"HOME": str(tmp_path)}) as runner:
        child = runner.cli("--pg-url", pg_url, "--kv-url", kv_url, "cleanup", "--entity", "streaks",
                           "--archive-dir", str(folder), "--yes", "--settle", "6")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not conn.execute(
                    "SELECT count(*) FROM kvmigrate.runs WHERE command = 'cleanup' AND status = 'running'"
            ).fetchone()[0]:  # type: ignore[index]
                time.sleep(0.02)
        time.sleep(0.3)  # the run opens the archive right after its run row
        assert child.running()
        with pytest.raises(ArchiveBusy) as busy:
            run_restore(config, folder, yes=True)
        assert "another kvmigrate cleanup or restore is using the archive folder" in busy.value.message
        with pytest.raises(ArchiveBusy):  # a cleanup from another database, into the same folder
            ArchiveWriter(folder, run_id=999, kv_url=config.masked_kv_url)
        cli_run = cli("--pg-url", pg_url, "--kv-url", kv_url, "restore", str(folder), "--yes")
        assert cli_run.exit_code == 1 and "error: another kvmigrate" in cli_run.output, cli_run.output
        done = child.finish()
        assert done.code == 0, done.output
    assert run_restore(config, folder, yes=True).entities["streaks"].restored == 8


# --------------------------------------------------------------------------- forecast, confirmation, dry run


def test_restore_forecasts_its_cost_and_writes_only_with_yes(pg_url: str, kv_url: str, kv: redis.Redis,
                                                              tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    after = keyspace(kv, skip=())
    refused = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path))
    assert refused.exit_code == 2, refused.output
    error = orjson.loads(refused.stdout)["error"]
    forecast = commands.restore_forecast(config, tmp_path)
    assert f"about {forecast.commands} billed KV commands" in error["message"] and "--yes" in error["hint"]
    same_keyspace(after, keyspace(kv, skip=()))
    done = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path), "--yes")
    assert done.exit_code == 0, done.output
    body = orjson.loads(done.stdout)["result"]
    assert body["forecast"]["commands"] == body["kv_requests"] == forecast.commands
    assert body["forecast"]["keys"] == 8 and body["ledger_checked"] and body["missing"] == 0


def test_restore_dry_run_reads_only_and_says_what_it_would_restore_and_cost(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    kv.set("streak:alice", "written since")
    kv.rpush("streak:listy", "b", "a", "b", b"\xff\x00")  # already back, equal
    after = keyspace(kv, skip=())
    kv.config_resetstat()
    dry = run_restore(config, tmp_path, dry_run=True)
    calls = server_calls(kv)
    assert not set(calls) & {c for c in WRITE_COMMANDS}, calls
    same_keyspace(after, keyspace(kv, skip=()))
    c = dry.entities["streaks"]
    assert (c.restored, c.equal, c.refused, dry.refused) == (6, 1, 1, ["streak:alice"])
    assert dry.forecast is not None
    real = run_restore(config, tmp_path, yes=True)
    assert real.forecast is not None
    assert (real.entities["streaks"].restored, real.entities["streaks"].equal) == (6, 1)
    assert dry.forecast.commands == real.kv_requests, (dry.forecast.by_command, real.budget.by_command)
    kv.delete("streak:alice")
    assert run_restore(config, tmp_path, yes=True).clean
    persist = {k: v for k, v in before.items() if k != "streak:listy"}
    same_keyspace(persist, {k: v for k, v in keyspace(kv).items() if k != "streak:listy"})


def test_restore_max_requests_is_a_hard_bound_and_the_rerun_finishes(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    forecast = commands.restore_forecast(config, tmp_path)
    cap = forecast.commands - 3
    kv.config_resetstat()
    stopped = cli("--pg-url", pg_url, "--kv-url", kv_url, "restore", str(tmp_path), "--yes",
                  "--max-requests", str(cap))
    calls = server_calls(kv)
    assert stopped.exit_code == 4, stopped.output
    assert sum(n for k, n in calls.items() if k not in ("CONFIG|RESETSTAT",)) <= cap
    assert not kv.keys("kvmigrate:restore:*")
    assert run_restore(config, tmp_path, yes=True).clean
    same_keyspace(before, keyspace(kv))


def server_calls(kv: redis.Redis) -> dict[str, int]:
    """The billed commands the server ran, by name (free ones, this call's INFO among them, left out)."""
    return {name.removeprefix("cmdstat_").upper(): int(s["calls"]) for name, s in kv.info("commandstats").items()
            if name.removeprefix("cmdstat_").split("|")[0].upper() not in FREE_COMMANDS}
