"""Verify's expected rows of merged tables, staged in Postgres and merged a chunk at a time
(kvmigrate.engine.expected_merge), on a real Postgres."""

from __future__ import annotations

import orjson
import psycopg
from psycopg import sql

from kvmigrate.adapters.pg.loader import SourcedRow, TableLoader, merge_sources
from kvmigrate.engine.expected_merge import merge_sources_staged, prepare, stage_sources
from kvmigrate.entities.streaks import STREAKS, TABLE
from kvmigrate.model.records import RawRecord


def _source(handle: str, value: dict[str, object]) -> SourcedRow:
    key = f"streak:{handle}"
    (row,) = STREAKS.transform(RawRecord(key, "string", orjson.dumps(value), "", "streak")).rows
    return SourcedRow(row.values, row.rank, key, "", row.meta)


def _staged(conn: psycopg.Connection, loader: TableLoader) -> list[tuple[object, ...]]:
    query = sql.SQL("SELECT handle, total_days, details, _src FROM {} ORDER BY 1").format(sql.Identifier(loader.stage))
    return conn.execute(query).fetchall()


def test_a_key_read_twice_counts_once_and_sources_of_one_row_merge(conn: psycopg.Connection) -> None:
    """SCAN may return a key twice: its two readings must give the one-source row, not a merge
    of two copies (which would count the distinct activeDays, 3, over the stored total, 1)."""
    loader = TableLoader(conn, TABLE, stage_prefix="kvm_expect_")
    prepare(conn)
    once = _source("ann", {"current": 1, "totalDays": 1, "lastActive": "2025-06-04",
                           "activeDays": ["2025-06-01", "2025-06-02", "2025-06-04"]})
    upper = _source("Bob", {"current": 2, "totalDays": 2, "lastActive": "2025-06-05", "activeDays": ["2025-06-05"]})
    lower = _source("bob", {"current": 1, "totalDays": 1, "lastActive": "2025-06-01", "activeDays": ["2025-06-01"]})
    stage_sources(conn, TABLE, [once, upper])
    stage_sources(conn, TABLE, [lower, once])
    merge_sources_staged(conn, loader)
    bob = merge_sources(TABLE, [upper, lower])
    assert bob.values["total_days"] == 2 and bob.values["details"]["activeDays"] == ["2025-06-05", "2025-06-01"]
    assert _staged(conn, loader) == [
        ("ann", 1, once.values["details"], "streak:ann"),
        ("bob", 2, bob.values["details"], bob.source_key)]
    keys = conn.execute("SELECT pk, src FROM kvm_expect_keys ORDER BY 1, 2").fetchall()
    assert sorted(set(keys)) == [("ann", "streak:ann"), ("bob", "streak:Bob"), ("bob", "streak:bob")]
