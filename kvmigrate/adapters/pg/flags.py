"""The phase flags' state in Postgres: `kvmigrate.phases` (one row per entity that ever moved)
and `kvmigrate.phase_history` (one row per change). The state machine that decides the moves
is kvmigrate.engine.phases; here are only its statements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg

LOCK_PHASES = 0x6B766D70  # "kvmp": phase changes are serialised per database


def phase_row(conn: psycopg.Connection, entity: str) -> tuple[str, str] | None:
    """(writes, reads) of the entity, or None when it never moved. Read-only."""
    row = conn.execute("SELECT writes, reads FROM kvmigrate.phases WHERE entity = %s", (entity,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def phase_rows(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """(writes, reads) of every entity that ever moved. Read-only."""
    return {e: (w, r) for e, w, r in conn.execute("SELECT entity, writes, reads FROM kvmigrate.phases")}


def lock_phases(conn: psycopg.Connection) -> None:
    """Serialise phase changes until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_PHASES,))


def write_phase(conn: psycopg.Connection, entity: str, before: tuple[str, str], to: tuple[str, str], *,
                user: str, host: str, reason: str) -> None:
    """Store the entity's new (writes, reads) and its history row (in the caller's transaction)."""
    conn.execute(
        "INSERT INTO kvmigrate.phases (entity, writes, reads) VALUES (%s, %s, %s)"
        " ON CONFLICT (entity) DO UPDATE SET writes = EXCLUDED.writes, reads = EXCLUDED.reads, updated_at = now()",
        (entity, *to))
    conn.execute(
        "INSERT INTO kvmigrate.phase_history (entity, from_writes, from_reads, to_writes, to_reads, os_user, host,"
        " reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (entity, *before, *to, user, host, reason))


def changes_made(conn: psycopg.Connection) -> int:
    """How many phase changes were ever made (the flags hash's `version`). Read-only."""
    row = conn.execute("SELECT count(*) FROM kvmigrate.phase_history").fetchone()
    return int(row[0]) if row else 0


def history_rows(conn: psycopg.Connection, entity: str | None, limit: int) -> list[tuple[Any, ...]]:
    """The latest changes, newest first: entity, from and to (writes, reads), when, user, host,
    why. Read-only."""
    return [tuple(r) for r in conn.execute(
        "SELECT entity, from_writes, from_reads, to_writes, to_reads, changed_at, os_user, host, reason"
        " FROM kvmigrate.phase_history WHERE %s::text IS NULL OR entity = %s ORDER BY id DESC LIMIT %s",
        (entity, entity, limit)).fetchall()]


def seconds_since_postgres_writes(conn: psycopg.Connection, entities: Sequence[str]) -> float | None:
    """Seconds since the newest move of these entities' writes to Postgres, or None. Read-only."""
    row = conn.execute(
        "SELECT extract(epoch FROM now() - max(changed_at)) FROM kvmigrate.phase_history"
        " WHERE entity = ANY(%s) AND to_writes = 'postgres'", (list(entities),)).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def dual_writes_since(conn: psycopg.Connection, entity: str) -> dt.datetime | None:
    """When the entity last started dual writes, or None. Read-only."""
    row = conn.execute(
        "SELECT max(changed_at) FROM kvmigrate.phase_history WHERE entity = %s AND to_writes = 'dual'"
        " AND from_writes IS DISTINCT FROM 'dual'", (entity,)).fetchone()
    return row[0] if row and row[0] else None


def postgres_written(conn: psycopg.Connection) -> set[str]:
    """The entities that write to Postgres only (after cleanup). Read-only."""
    return {str(r[0]) for r in conn.execute("SELECT entity FROM kvmigrate.phases WHERE writes = 'postgres'")}
