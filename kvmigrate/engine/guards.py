"""What keeps runs from hurting each other or a store that changed under them.

* One writer at a time per database: backfill, `verify --repair` and cleanup take the same
  session advisory lock, so a backfill can never copy KV's older values over rows the app
  writes to Postgres once cleanup moved writes there. The lock lives in a heartbeating session
  of its own (kvmigrate.adapters.pg.session_lock), so the server ends it soon after its run
  vanished, and a rerun waits that out. A refusal names the holder (its backend pid, what it
  runs, since when), so a dead session holding the lock can be told from a live one.
* A store that lost most of its keys since the last run (a KV wiped or restarted without
  persistence) is refused: backfill, verify and repair would otherwise report Postgres rows as
  `extra` and a repair would replace rows with less than they hold.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import NoReturn

import psycopg

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.pg import ledger, results
from kvmigrate.adapters.pg.deadline import DeadlineConnection
from kvmigrate.adapters.pg.session_lock import Holder, LockSession, holder_of, lock_session
from kvmigrate.model.errors import GateRefused, StoreChanged

LOCK_WRITERS = 0x6B766D77  # "kvmw": backfill, verify --repair and cleanup exclude each other
#: A store holding fewer than this share of the keys the ledger saw is refused...
SHRUNK_SHARE = 0.5
#: ... once the ledger has seen at least this many keys (a tiny store changes by a few keys).
SHRUNK_MIN_KEYS = 50


def take_writer_lock(conn: psycopg.Connection, command: str, *, wait: float = 3.0) -> None:
    """Take the one-writer lock for the run, waiting up to `wait` seconds (a run that just
    ended may still be releasing it), or, while the holder is a run that vanished (its heartbeat
    silent, see kvmigrate.adapters.pg.session_lock), until the server has ended its session;
    refuse, naming the holder, when another run holds it. The lock lives in a session of its own,
    closed with `conn`."""
    if not isinstance(conn, DeadlineConnection) or conn.url is None:
        return _take_on(conn, command, wait=wait)  # a bare connection: the lock lives in it
    lock = lock_session(conn, connect_pg(conn.url, retries=2, autocommit=True), LOCK_WRITERS)
    deadline = time.monotonic() + wait
    while not lock.try_lock():
        holder = holder_of(lock.conn, LOCK_WRITERS)
        if holder is not None and holder.stale(lock.timeout):
            deadline = max(deadline, time.monotonic() + lock.timeout - holder.idle_for + 2)
        if time.monotonic() >= deadline:
            lock.close()
            conn.companions.remove(lock)
            _refuse(conn, holder, lock.timeout)
        time.sleep(0.1)


def _take_on(conn: psycopg.Connection, command: str, *, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_WRITERS,)).fetchone()
        if not conn.autocommit:
            conn.commit()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            _refuse(conn, holder_of(conn, LOCK_WRITERS), None)
        time.sleep(0.1)


def _refuse(conn: psycopg.Connection, holder: Holder | None, timeout: float | None) -> NoReturn:
    run = results.newest_running_writer(conn)
    if not conn.autocommit:
        conn.commit()
    what = "kvmigrate run" if run is None else ("verify --repair" if run == "verify" else run)
    backend = "" if holder is None else f" ({holder.describe()})"
    if holder is not None and timeout is not None and holder.stale(timeout):
        raise GateRefused(
            f"the writer lock is held by a {what} that vanished{backend}: its heartbeat stopped and the server "
            "did not end its session", hint=f"end it with SELECT pg_terminate_backend({holder.pid}), then run this "
            "again (a server older than PostgreSQL 14 keeps such a session until its TCP connection dies)")
    raise GateRefused(
        f"another {what} is running against this database{backend}",
        hint=f"backfill, verify --repair and cleanup run one at a time: wait for the {what} to finish "
        "(see `kvmigrate status`); a holder idle for long is a dead session: end it with "
        "SELECT pg_terminate_backend(<pid>), then run this again")


@contextlib.contextmanager
def writer_lock(conn: psycopg.Connection, command: str, *, wait: float = 3.0) -> Iterator[None]:
    """Hold the one-writer lock (see take_writer_lock) for the block, and release it after."""
    take_writer_lock(conn, command, wait=wait)
    try:
        yield
    finally:
        release_writer_lock(conn)


def release_writer_lock(conn: psycopg.Connection) -> None:
    """Release the lock now rather than when the run's connection closes."""
    for lock in list(getattr(conn, "companions", ())):
        if isinstance(lock, LockSession) and lock.key == LOCK_WRITERS:
            lock.close()
            conn.companions.remove(lock)  # type: ignore[attr-defined]
            return
    try:
        if not conn.autocommit:
            conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_WRITERS,))
        if not conn.autocommit:
            conn.commit()
    except psycopg.Error:
        pass  # the connection is gone, and the server releases the lock with it


def refuse_a_shrunk_store(conn: psycopg.Connection, dbsize: int, *, allow: bool = False) -> None:
    """Refuse (StoreChanged, exit 1) when KV holds fewer keys in all than half the entity keys
    the ledger saw and did not see deleted (by cleanup). `allow` lets it through (the user says the keys went on
    purpose). Reads Postgres only; the caller paid for the DBSIZE."""
    seen = ledger.live_entity_keys(conn)
    if not conn.autocommit:
        conn.commit()
    if allow or seen < SHRUNK_MIN_KEYS or dbsize >= SHRUNK_SHARE * seen:
        return
    raise StoreChanged(
        f"KV holds {dbsize} of the {seen} keys seen before: the store was wiped, restarted without its data, "
        "or this is another store",
        hint="is this the right store and database? If the store lost its data, Postgres may hold the only copy: "
        "do not repair from KV; restore the store (or `kvmigrate restore` an archive) first. If the keys were "
        "deleted on purpose, run again with --allow-shrunk-store")


def refuse_a_store_that_shrank_during(kv: KvClient, before: int, *, deleted: int = 0, command: str,
                                      allow: bool = False, warnings: list[str] | None = None) -> None:
    """After a run's pass, 1 DBSIZE: refuse (StoreChanged, exit 1) when KV holds fewer than half
    the keys it should after a run that deleted `deleted` of the `before` keys it started with:
    the store was wiped while the run went on. A FLUSHDB keeps the server's run id, so only the
    count tells. Keys expiring or written by the app meanwhile move the count a little, not by
    half. When the request budget is spent, the count is not taken (`--max-requests` is a hard
    bound) and a warning says so."""
    if allow:
        return
    if kv.budget.remaining == 0:
        if warnings is not None:
            warnings.append(f"the store's size after the {command} was not checked (the request budget is spent): "
                            "`kvmigrate inventory` shows what it holds")
        return
    now = int(kv.call("DBSIZE"))
    expected = before - deleted
    if expected < SHRUNK_MIN_KEYS or now >= SHRUNK_SHARE * expected:
        return
    raise StoreChanged(
        f"KV holds {now} keys after {command}, not about {expected} ({before} when it started"
        + (f", {deleted} deleted by this run" if deleted else "")
        + f"): the store lost keys while {command} ran (wiped, or restarted without its data)",
        hint="the keys this run deleted are in its archive; keys the store lost otherwise were never archived, and "
        "Postgres may hold their only copy: do not repair from KV; check the store (`kvmigrate inventory`), "
        "restore its data, then run again (--allow-shrunk-store if the keys went on purpose)")
