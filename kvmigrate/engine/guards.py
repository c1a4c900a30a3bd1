"""What keeps runs from hurting each other or a store that changed under them.

* One writer at a time per database: backfill, `verify --repair` and cleanup take the same
  session advisory lock, so a backfill can never copy KV's older values over rows the app
  writes to Postgres once cleanup moved writes there. A refusal names the holder (its backend
  pid, what it runs, since when), so a dead session holding the lock can be told from a live one.
* A store that lost most of its keys since the last run (a KV wiped or restarted without
  persistence) is refused: backfill, verify and repair would otherwise report Postgres rows as
  `extra` and a repair would replace rows with less than they hold.
"""

from __future__ import annotations

import time

import psycopg

from kvmigrate.model.errors import GateRefused, StoreChanged

LOCK_WRITERS = 0x6B766D77  # "kvmw": backfill, verify --repair and cleanup exclude each other
#: A store holding fewer than this share of the keys the ledger saw is refused...
SHRUNK_SHARE = 0.5
#: ... once the ledger has seen at least this many keys (a tiny store changes by a few keys).
SHRUNK_MIN_KEYS = 50


def take_writer_lock(conn: psycopg.Connection, command: str, *, wait: float = 3.0) -> None:
    """Take the one-writer lock for the session, waiting up to `wait` seconds (a run that just
    ended may still be releasing it); refuse, naming the holder, when another run holds it."""
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_WRITERS,)).fetchone()
        if not conn.autocommit:
            conn.commit()
        if (row and row[0]) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if row and row[0]:
        return
    holder, running = _holder(conn)
    what = running or "kvmigrate run"
    raise GateRefused(
        f"another {what} is running against this database" + (f" ({holder})" if holder else ""),
        hint=f"backfill, verify --repair and cleanup run one at a time: wait for the {what} to finish "
        "(see `kvmigrate status`); a holder idle for long is a dead session: end it with "
        "SELECT pg_terminate_backend(<pid>), then run this again")


def _holder(conn: psycopg.Connection) -> tuple[str, str]:
    """(the lock holder's backend as text, the command of the newest running kvmigrate run)."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.state, extract(epoch FROM now() - a.state_change)::int"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1",
        (LOCK_WRITERS,)).fetchone()
    run = conn.execute("SELECT command FROM kvmigrate.runs WHERE status = 'running' AND command IN"
                       " ('backfill', 'verify', 'cleanup') ORDER BY id DESC LIMIT 1").fetchone()
    if not conn.autocommit:
        conn.commit()
    backend = "" if row is None else f"backend pid {row[0]}, {row[1] or 'no application name'}, {row[2]} for {row[3]} s"
    command = "" if run is None else ("verify --repair" if run[0] == "verify" else str(run[0]))
    return backend, command


def release_writer_lock(conn: psycopg.Connection) -> None:
    """Release the lock now rather than when the server notices the session ended."""
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
    row = conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE field = '' AND deleted_at IS NULL"
                       " AND status IN ('migrated', 'rejected')").fetchone()  # kept keys expire on their own
    if not conn.autocommit:
        conn.commit()
    seen = int(row[0]) if row else 0
    if allow or seen < SHRUNK_MIN_KEYS or dbsize >= SHRUNK_SHARE * seen:
        return
    raise StoreChanged(
        f"KV holds {dbsize} of the {seen} keys seen before: the store was wiped, restarted without its data, "
        "or this is another store",
        hint="is this the right store and database? If the store lost its data, Postgres may hold the only copy: "
        "do not repair from KV; restore the store (or `kvmigrate restore` an archive) first. If the keys were "
        "deleted on purpose, run again with --allow-shrunk-store")
