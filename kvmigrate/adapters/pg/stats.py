"""Planner statistics for tables kvmigrate has just filled.

Autovacuum analyzes a table some time after it changes, and may have sampled it half-way
through a backfill. A plan built on such figures can be quadratic: with `verified_hash` still
recorded as all NULL, for instance, the ledger looks empty and gets joined by nested loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

#: kvmigrate's own tables that every backfill and verify joins on.
STATE_TABLES = ("kvmigrate.ledger", "kvmigrate.row_origin")


def analyze(conn: psycopg.Connection, tables: Iterable[str]) -> None:
    """ANALYZE the given tables (`schema.table` or a bare name on the search path) in one
    statement, inside the caller's transaction. Reads a sample of each table (about 30,000
    rows however big it is); writes only planner statistics."""
    names = sorted(set(tables))
    if names:
        conn.execute(sql.SQL("ANALYZE {}").format(
            sql.SQL(", ").join(sql.Identifier(*name.split(".", 1)) for name in names)))


def stale(conn: psycopg.Connection, tables: Iterable[str]) -> list[str]:
    """Of these tables, those whose planner statistics may no longer describe them: never
    analyzed, or with more rows changed since their last ANALYZE than autovacuum's own default
    threshold (50 rows + 10%). A temporary table is never analyzed by autovacuum: always stale.
    Read-only; one statement. Postgres counts a session's changes up to a second after it makes
    them (see `flush_counts`): another session's latest changes may not be counted yet."""
    names = sorted(set(tables))
    if not names:
        return []
    rows = conn.execute(
        "SELECT t.name FROM unnest(%s::text[]) AS t(name) JOIN pg_class c ON c.oid = to_regclass(t.name)"
        " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.relpersistence = 't' OR s.relid IS NULL"
        " OR coalesce(s.last_analyze, s.last_autoanalyze) IS NULL"
        " OR s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)", (names,)).fetchall()
    return [name for (name,) in rows]


def flush_counts(conn: psycopg.Connection) -> None:
    """Hand Postgres this session's pending counts of changed rows now (PostgreSQL 15 and
    later; they are otherwise sent at most once a second, or when the session ends), so an
    ANALYZE right after is not followed by changes it already saw. Ends the caller's
    transaction with a commit."""
    if conn.info.server_version >= 150000:
        conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()  # the counts go at the end of a transaction
