"""F11: a Postgres connection that goes half-open mid-cleanup neither hangs the run nor blocks
the rerun.

A proxy that goes silent (keeps both sockets open, relays nothing, its kernel acknowledging
data and keepalives) stands in for a peer that vanished: keepalives alone never end that wait.
The run must end within a bound with a clear error (the client-side deadline of every wait:
statement_timeout + grace), and the rerun must get the writer lock within a bound (the lock's
session stops heartbeating, and the server ends it after `idle_session_timeout`).
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.pg.session_lock import HEARTBEAT
from kvmigrate.engine import phases
from kvmigrate.engine.guards import LOCK_WRITERS, take_writer_lock
from kvmigrate.model.config import build_config
from kvmigrate.model.errors import GateRefused
from kvmigrate.tryout.seed import seed_keyspace
from tests.fixtures.faults import FaultyProxy, Launcher
from tests.test_cleanup import move

SHORT = "-c statement_timeout=1000 -c idle_in_transaction_session_timeout=2000"
LOCK = {"KVMIGRATE_LOCK_TIMEOUT": "3"}


def proxy_for(pg_url: str) -> tuple[FaultyProxy, str]:
    """A FaultyProxy in front of the test's Postgres (TCP or Unix socket), and the URL through
    it with short server timeouts."""
    parts = urlsplit(pg_url)
    host = dict(parse_qsl(parts.query)).get("host", "")
    if host.startswith("/"):
        proxy = FaultyProxy(0, upstream_unix=sorted(glob.glob(f"{host}/.s.PGSQL.*[0-9]"))[0])
    else:
        proxy = FaultyProxy(parts.port or 5432)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return proxy, f"postgresql://{user}127.0.0.1:{proxy.port}{parts.path}?options={quote(SHORT)}"


def _lock_held(pg_url: str) -> bool:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                           " AND objid = %s", (LOCK_WRITERS,)).fetchone()
    return bool(row and row[0])


def test_a_silent_postgres_path_ends_cleanup_with_a_clear_error_and_the_rerun_gets_the_lock(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher, tmp_path: Path) -> None:
    seed_keyspace(kv, users=12, seed=5)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config)
    assert commands.verify(config, recheck_delay=0).clean
    move(config, phases.DUAL, phases.CUTOVER)
    streaks = {k for k in kv.scan_iter("streak:*")}
    proxy, silent_url = proxy_for(pg_url)
    archive = str(tmp_path / "a")
    args = ("--kv-url", kv_url, "cleanup", "--entity", "streaks", "--yes", "--settle", "1", "--archive-dir", archive)
    try:
        child = runner.cli("--pg-url", silent_url, *args, env=LOCK)
        deadline = time.monotonic() + 20
        while not _lock_held(pg_url) and time.monotonic() < deadline and child.running():
            time.sleep(0.02)
        proxy.silence()  # during the settle: every later wait on Postgres gets no reply
        silenced = time.monotonic()
        done = child.finish(timeout=60)
        ended = time.monotonic() - silenced
        assert done.code == 3, done.output
        assert "no reply from Postgres within" in done.output and "half-open" in done.output, done.output
        assert ended < 20, ended

        started = time.monotonic()
        rerun = runner.run("--pg-url", pg_url, *args, env=LOCK, timeout=60)
        assert rerun.code == 0, rerun.output
        assert time.monotonic() - started < 15
    finally:
        proxy.close()
    with psycopg.connect(pg_url) as conn:
        deleted = {k.encode() for (k,) in conn.execute(
            "SELECT key FROM kvmigrate.ledger WHERE key LIKE 'streak:%%' AND deleted_at IS NOT NULL").fetchall()}
    assert deleted and not any(kv.exists(k) for k in deleted)  # the rerun finished the work
    assert {k for k in streaks if kv.exists(k)} == streaks - deleted  # the rest kept on purpose (rejects)
    assert b'"deleted"' in rerun.stdout.encode() or "deleted" in rerun.output


def test_a_rerun_waits_out_a_vanished_lock_holder_and_names_one_the_server_keeps(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder whose last statement is the lock heartbeat and that has been idle past two beats
    is a run that vanished: the rerun waits until the server ends it (idle_session_timeout)
    instead of refusing at once; if the server keeps it, the refusal says so and how to end it."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    monkeypatch.setenv("KVMIGRATE_LOCK_TIMEOUT", "2")
    with psycopg.connect(pg_url, autocommit=True, application_name="kvmigrate") as dead:
        dead.execute("SET idle_session_timeout = '2s'")
        dead.execute("SELECT pg_advisory_lock(%s)", (LOCK_WRITERS,))
        dead.execute(HEARTBEAT)
        time.sleep(1)  # silent past two beats
        with connect_pg(pg_url) as conn:
            started = time.monotonic()
            take_writer_lock(conn, "backfill", wait=0.3)  # would refuse after 0.3 s: the holder looks live
            assert time.monotonic() - started < 4
            assert _lock_held(pg_url)
    monkeypatch.setenv("KVMIGRATE_LOCK_TIMEOUT", "1")
    with psycopg.connect(pg_url, autocommit=True, application_name="kvmigrate") as kept:
        kept.execute("SELECT pg_advisory_lock(%s)", (LOCK_WRITERS,))
        kept.execute(HEARTBEAT)  # no idle_session_timeout: the server keeps this one
        time.sleep(0.5)
        with connect_pg(pg_url) as conn, pytest.raises(GateRefused) as refused:
            take_writer_lock(conn, "backfill", wait=0.2)
        pid = kept.info.backend_pid
    assert "that vanished" in refused.value.message and f"backend pid {pid}" in refused.value.message
    assert f"pg_terminate_backend({pid})" in refused.value.hint
