"""An advisory lock held by a session of its own that proves it is alive.

A lock held by the run's working session outlives a run that vanished behind a half-open
connection: the server still sees the session, idle, and keeps its lock for ever. So the lock
lives in a dedicated session with `idle_session_timeout`, and a thread keeps it busy with a
heartbeat (a `SELECT 1` every fifth of the timeout): while the run lives the server never
finds the session idle that long; once the run is gone, the server ends the session within
the timeout of its last heartbeat, and the lock with it. A holder whose last statement is the
heartbeat and that has been idle longer than two beats is such a vanished run (`Holder.stale`).

When the heartbeat fails (no reply within its deadline, the session ended), the run's working
connection is stopped: its next statement fails, so a run never goes on writing without its lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass

import psycopg

from kvmigrate.adapters.pg.deadline import DeadlineConnection

log = logging.getLogger("kvmigrate")

HEARTBEAT = "SELECT 1 /* kvmigrate writer lock heartbeat */"
#: seconds the server keeps a lock session that stopped heartbeating (KVMIGRATE_LOCK_TIMEOUT)
LOCK_TIMEOUT = 15.0


def lock_timeout() -> float:
    """The lock session's idle timeout in seconds: KVMIGRATE_LOCK_TIMEOUT, else 15 (at least 1)."""
    try:
        return max(1.0, float(os.environ.get("KVMIGRATE_LOCK_TIMEOUT") or LOCK_TIMEOUT))
    except ValueError:
        return LOCK_TIMEOUT


@dataclass(frozen=True)
class Holder:
    """The backend holding a lock, from pg_stat_activity."""

    pid: int
    application: str
    state: str
    idle_for: int  # seconds since its state last changed
    heartbeating: bool  # its last statement is a kvmigrate lock heartbeat

    def stale(self, timeout: float) -> bool:
        """A kvmigrate lock session whose run vanished: idle past two heartbeats."""
        return self.heartbeating and self.state == "idle" and self.idle_for > 2 * timeout / 5

    def describe(self) -> str:
        return f"backend pid {self.pid}, {self.application or 'no application name'}, {self.state} for {self.idle_for} s"


def holder_of(conn: psycopg.Connection, key: int) -> Holder | None:
    """The backend holding session advisory lock `key`, if any. Read-only."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.state, extract(epoch FROM now() - a.state_change)::int, a.query = %s"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1",
        (HEARTBEAT, key)).fetchone()
    if not conn.autocommit:
        conn.commit()
    return None if row is None else Holder(int(row[0]), row[1] or "", row[2] or "", int(row[3] or 0), bool(row[4]))


class LockSession:
    """A session of its own (on `owner`'s URL) that takes advisory lock `key` and heartbeats."""

    def __init__(self, owner: DeadlineConnection, session: DeadlineConnection, key: int, timeout: float) -> None:
        self.owner, self.conn, self.key, self.timeout = owner, session, key, timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_lock(self) -> bool:
        """Take the lock if free; then heartbeat until `close`. Costs one statement."""
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if not (row and row[0]):
            return False
        self._thread = threading.Thread(target=self._beat, name="kvmigrate-lock-heartbeat", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 5):
            try:
                self.conn.execute(HEARTBEAT)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    self.owner.stop(f"the session holding the writer lock failed ({reason}); stopped so that no "
                                    "write goes on without the lock")
                return

    def close(self) -> None:
        """Stop the heartbeat and end the session (the server releases the lock with it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 1)
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


def lock_session(owner: DeadlineConnection, session: psycopg.Connection, key: int) -> LockSession:
    """Make `session` (a new autocommit connection to `owner`'s database) the session of lock
    `key`: `idle_session_timeout` set (PostgreSQL ≥ 14), its statements bounded by the timeout,
    closed with `owner`."""
    assert isinstance(session, DeadlineConnection) and session.autocommit
    timeout = lock_timeout()
    session.deadline = timeout
    try:
        session.execute("SELECT set_config('idle_session_timeout', %s, false)", (str(int(timeout * 1000)),))
    except psycopg.Error as exc:  # an older server: a vanished run's lock stays until its TCP dies
        log.warning("the writer lock's session cannot set idle_session_timeout (%s)", str(exc).strip())
    lock = LockSession(owner, session, key, timeout)
    owner.companions.append(lock)
    return lock
