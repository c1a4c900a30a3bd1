"""Guards against runs hurting each other or a store that changed under them (kvmigrate.guards).

* backfill, verify --repair and cleanup take one lock: none runs while another holds it, and the
  refusal names the holder's backend (so a dead session can be told from a live one);
* a store that lost most of its keys since the last run (wiped, restarted without its data) is
  refused by backfill, verify and repair, before anything is read into Postgres or repaired;
* a store wiped while cleanup waits out its settle is noticed before anything is deleted.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.engine import phases
from kvmigrate.engine.guards import LOCK_WRITERS
from kvmigrate.model.config import build_config
from kvmigrate.model.errors import StoreChanged
from kvmigrate.model.progress import Tick
from kvmigrate.tryout.seed import seed_keyspace
from tests.fixtures.data import dump_tables
from tests.fixtures.faults import Launcher
from tests.helpers import cli, cli_json
from tests.test_cleanup import move


def _migrated(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=12, seed=5)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config)


def test_backfill_verify_repair_and_cleanup_refuse_while_another_writer_holds_the_lock(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    _migrated(pg_url, kv_url, kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    move(config, phases.DUAL, phases.CUTOVER)
    with psycopg.connect(pg_url, autocommit=True, application_name="kvmigrate") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_WRITERS,))
        pid = holder.info.backend_pid
        with psycopg.connect(pg_url) as conn:
            before = dump_tables(conn)
        base = ("--json", "--pg-url", pg_url, "--kv-url", kv_url)
        for args in (("backfill",), ("verify", "--repair", "--recheck-delay", "0"),
                     ("cleanup", "--entity", "streaks", "--yes", "--settle", "0", "--archive-dir", str(tmp_path / "a"))):
            refused = cli(*base, *args)
            assert refused.exit_code == 1, refused.output
            assert f"backend pid {pid}, kvmigrate, idle" in refused.output, refused.output
            assert "pg_terminate_backend" in refused.output
        assert cli(*base, "verify", "--recheck-delay", "0").exit_code == 0  # a read-only verify needs no lock
        with psycopg.connect(pg_url) as conn:
            assert dump_tables(conn) == before
    assert kv.exists("streak:" + next(iter(_streak_handles(kv))))  # cleanup deleted nothing
    assert cli("--pg-url", pg_url, "--kv-url", kv_url, "backfill").exit_code == 0  # the lock went with its session


def _streak_handles(kv: redis.Redis) -> list[str]:
    return sorted(k.decode().split(":", 1)[1] for k in kv.scan_iter("streak:*"))


def test_a_store_that_lost_most_of_its_keys_is_refused_before_backfill_verify_or_repair_touch_postgres(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    _migrated(pg_url, kv_url, kv)
    with psycopg.connect(pg_url) as conn:
        before = dump_tables(conn)
        seen = conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE field = '' AND status IN"
                            " ('migrated', 'rejected')").fetchone()
    kv.flushdb()  # the store restarted without its data; the app writes on
    kv.set("streak:newcomer", b'{"current": 1, "longest": 1, "lastActive": "2025-06-01"}')
    base = ("--pg-url", pg_url, "--kv-url", kv_url)
    for args in (("backfill",), ("verify", "--recheck-delay", "0"), ("verify", "--repair", "--recheck-delay", "0")):
        refused = cli(*base, *args)
        assert refused.exit_code == 1, refused.output
        assert seen is not None and f"KV holds 1 of the {seen[0]} keys seen before" in refused.output
        assert "is this the right store and database?" in refused.output
    with psycopg.connect(pg_url) as conn:
        assert dump_tables(conn) == before  # repair replaced nothing with less
    allowed = cli(*base, "backfill", "--allow-shrunk-store")
    assert allowed.exit_code == 0, allowed.output


def test_a_store_wiped_while_cleanup_settles_is_noticed_before_anything_is_deleted(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher, tmp_path: Path) -> None:
    _migrated(pg_url, kv_url, kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    assert commands.verify(config, recheck_delay=0).clean
    move(config, phases.DUAL, phases.CUTOVER)
    child = runner.cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "cleanup", "--entity", "streaks", "--yes",
                       "--settle", "3", "--archive-dir", str(tmp_path / "a"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not conn.execute(
                "SELECT count(*) FROM kvmigrate.phases WHERE entity = 'streaks' AND writes = 'postgres'").fetchone()[0]:  # type: ignore[index]
            time.sleep(0.02)
    kv.flushdb()  # the KV server restarted empty while cleanup waited for the apps
    kv.set("presence:data:alice", b"{}")
    done = child.finish()
    assert done.code == 1, done.output
    # the wipe may land before or after cleanup publishes its flags hash (1 key more)
    assert re.search(r"KV holds [12] of the", done.output) and "do not repair from KV" in done.output, done.output
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL").fetchone() == (0,)
        assert conn.execute("SELECT status FROM kvmigrate.runs WHERE command = 'cleanup'").fetchone() == ("failed",)


def test_a_store_wiped_while_cleanup_scans_ends_the_run_failed_and_incomplete(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    """FLUSHDB keeps the server's run id, so only the count after the pass can tell."""
    _migrated(pg_url, kv_url, kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}).model_copy(update={"scan_count": 50})
    assert commands.verify(config, recheck_delay=0).clean
    move(config, phases.DUAL, phases.CUTOVER)
    wiped: list[str] = []

    def wipe_after_the_first_delete(tick: Tick) -> None:
        if tick.task == "cleanup" and tick.note[:1] not in ("", "0") and not wiped:
            wiped.append(tick.note)
            kv.flushdb()  # the server lost its data (as a restart without persistence would), same run id

    with pytest.raises(StoreChanged) as refused:
        commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path / "a", yes=True, settle=0,
                         report=wipe_after_the_first_delete)
    assert wiped, "cleanup deleted nothing before the wipe"
    assert "KV holds 0 keys after cleanup" in refused.value.message and "while cleanup ran" in refused.value.message
    assert "do not repair from KV" in (refused.value.hint or "")
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT status, result->>'complete' FROM kvmigrate.runs WHERE command = 'cleanup'").fetchone()
        assert row == ("failed", "false")
        deleted = conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL").fetchone()
    assert deleted is not None and deleted[0] > 0  # the first page's keys, deleted after they were archived
    shown = cli("--pg-url", pg_url, "status")  # status reads Postgres only: it says why its counts may be stale
    assert shown.exit_code == 0, shown.output
    assert "the last cleanup (run" in shown.output and "KV holds 0 keys after cleanup" in shown.output, shown.output
    failed = cli_json("--pg-url", pg_url, "status")["result"]["failed"]
    assert [(f["command"], "while cleanup ran" in f["error"]) for f in failed] == [("cleanup", True)]


def test_every_postgres_connection_has_keepalives_on_both_ends_and_the_urls_own_settings_win(pg_url: str) -> None:
    """A half-open connection then fails in about a minute instead of hanging cleanup for ever,
    and the server ends a dead kvmigrate session (and so its lock) as soon."""
    from kvmigrate.adapters.connections import connect_pg

    with connect_pg(pg_url) as conn:
        on_tcp = not conn.info.host.startswith("/")  # a Unix socket has no keepalives: the server shows 0
        assert conn.execute("SHOW tcp_keepalives_idle").fetchone() == ("30" if on_tcp else "0",)  # the server's end
        params = conn.info.get_parameters()
        assert (params["keepalives"], params["keepalives_idle"], params["tcp_user_timeout"]) == ("1", "30", "60000")
    sep = "&" if "?" in pg_url else "?"
    with connect_pg(pg_url + sep + "keepalives_idle=7&options=-c%20statement_timeout%3D5000") as conn:
        assert conn.info.get_parameters()["keepalives_idle"] == "7"
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)


def test_a_store_wiped_while_backfill_or_verify_reads_ends_the_run_failed_before_a_verdict(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    """The same for the phases that only read KV: a backfill does not end `ok` on a store that
    went away under it, and a verify records no verdict of "every row extra"."""
    seed_keyspace(kv, users=12, seed=5)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}).model_copy(update={"scan_count": 50})
    commands.setup(config)
    wiped: list[int] = []

    def wipe_once(done: int) -> None:
        if done and not wiped:
            wiped.append(done)
            kv.flushdb()  # the server lost its data, same run id

    with pytest.raises(StoreChanged) as refused:
        commands.backfill(config, progress=lambda done, total, tallies: wipe_once(done))
    assert wiped and "KV holds 0 keys after backfill, not about" in refused.value.message, refused.value.message
    seed_keyspace(kv, users=12, seed=5)  # the store is back (restored); a verify then loses it again
    assert commands.backfill(config).complete
    wiped.clear()
    with pytest.raises(StoreChanged) as refused:
        commands.verify(config, recheck_delay=0, report=lambda tick: wipe_once(tick.done))
    assert wiped and "KV holds 0 keys after verify" in refused.value.message, refused.value.message
    with psycopg.connect(pg_url) as conn:
        statuses = conn.execute("SELECT command, status FROM kvmigrate.runs ORDER BY id").fetchall()
        verdicts = conn.execute("SELECT count(*) FROM kvmigrate.verify_results").fetchone()
    assert statuses == [("backfill", "failed"), ("backfill", "ok"), ("verify", "failed")], statuses
    assert verdicts == (0,)  # no gate can pass (or fail) on a verify of a vanished store
