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
