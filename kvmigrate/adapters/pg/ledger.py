"""What the ledger and the row sources say, as phases ask it: `kvmigrate.ledger` (one row per
source key and field), `row_origin` (the source that owns each row) and `fill_sources` (every
source merged into a row). The ledger's writes are in kvmigrate.adapters.pg.state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg

from kvmigrate.adapters.pg.owners import forget_key_owner
from kvmigrate.entities.base import TableSpec


def keys_per_entity(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, int]:
    """Keys the ledger holds per entity (any status). Read-only; one query."""
    rows = conn.execute("SELECT entity, count(*) FROM kvmigrate.ledger WHERE entity = ANY(%s) GROUP BY entity",
                        (list(names),)).fetchall()
    return {str(e): int(n) for e, n in rows}


def buckets(conn: psycopg.Connection) -> dict[str, Counter[str]]:
    """Ledger rows per entity and status. Read-only."""
    return counts(conn)[0]


def counts(conn: psycopg.Connection) -> tuple[dict[str, Counter[str]], dict[str, tuple[int, int]]]:
    """Ledger rows per entity and status, and per entity (rows verified, rows deleted by
    cleanup). Read-only; one pass over the ledger."""
    by_status: dict[str, Counter[str]] = {}
    marks: dict[str, tuple[int, int]] = {}
    for entity, status, n, verified, deleted in conn.execute(
            "SELECT entity, status, count(*), count(*) FILTER (WHERE verified_hash IS NOT NULL),"
            " count(*) FILTER (WHERE deleted_at IS NOT NULL) FROM kvmigrate.ledger GROUP BY 1, 2 ORDER BY 1, 2"):
        by_status.setdefault(entity, Counter())[status] = n
        v, d = marks.get(entity, (0, 0))
        marks[entity] = (v + int(verified), d + int(deleted))
    return by_status, marks


def live_entity_keys(conn: psycopg.Connection) -> int:
    """Entity keys the ledger saw and cleanup did not delete (kept keys expire on their own, so
    they are not counted). Read-only."""
    row = conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE field = '' AND deleted_at IS NULL"
                       " AND status IN ('migrated', 'rejected')").fetchone()
    return int(row[0]) if row else 0


def deletable_keys(conn: psycopg.Connection, file_prefix: str) -> int:
    """KV keys (not memory files) every ledger row of which is verified. Read-only."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT key FROM kvmigrate.ledger WHERE NOT starts_with(key, %s)"
        " GROUP BY key HAVING bool_and(verified_hash IS NOT NULL)) k", (file_prefix,)).fetchone()
    return int(row[0]) if row else 0


def migrated_keys(conn: psycopg.Connection, entity: str, *, sample: int | None = None, salt: str = "") -> list[str]:
    """The entity's migrated keys, sorted: all of them, or `sample` of those that produced rows,
    chosen by `salt` (the same salt picks the same keys). Read-only."""
    migrated = "SELECT key FROM kvmigrate.ledger WHERE entity = %s AND status = 'migrated'"
    if sample is None:
        rows = conn.execute(f"{migrated} GROUP BY key", (entity,)).fetchall()
    else:
        rows = conn.execute(f"{migrated} AND rows > 0 GROUP BY key ORDER BY md5(key || %s) LIMIT %s",
                            (entity, salt, sample)).fetchall()
    return sorted(k for (k,) in rows)


def merged_keys(conn: psycopg.Connection, entities: Sequence[str]) -> dict[str, int]:
    """Keys merged away into another key's row, per entity. Read-only."""
    return {str(e): int(n) for e, n in conn.execute(
        "SELECT entity, count(*) FROM kvmigrate.ledger WHERE reason = 'merged'"
        " AND entity = ANY(%s) GROUP BY 1", (list(entities),)).fetchall()}


def deleted_keys(conn: psycopg.Connection, entities: Sequence[str]) -> set[str] | None:
    """The keys of these entities cleanup deleted, or None when the database has no kvmigrate
    ledger. Read-only."""
    row = conn.execute("SELECT to_regclass('kvmigrate.ledger') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    return {k for (k,) in conn.execute(
        "SELECT DISTINCT key FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL AND entity = ANY(%s)",
        (list(entities),))}


def placeholder_users(conn: psycopg.Connection) -> int:
    """Minimal user rows created for handles referenced but never registered. Read-only."""
    row = conn.execute("SELECT count(*) FROM kvmigrate.row_origin WHERE tbl = 'users' AND rank < 0").fetchone()
    return int(row[0]) if row else 0


def forget_origin(conn: psycopg.Connection, spec: TableSpec, pk: str) -> None:
    """Forget the recorded owner of a row that was deleted (in the caller's transaction)."""
    conn.execute("DELETE FROM kvmigrate.row_origin WHERE tbl = %s AND pk = %s", (spec.name, pk))
    forget_key_owner(conn, spec, pk)


def shared_sources(conn: psycopg.Connection, source_keys: Sequence[str]) -> set[str]:
    """The source keys among these that share a merged row with another source. Read-only."""
    rows = conn.execute(
        "SELECT DISTINCT f.source_key FROM kvmigrate.fill_sources f WHERE f.source_key = ANY(%s) AND EXISTS"
        " (SELECT 1 FROM kvmigrate.fill_sources o WHERE o.tbl = f.tbl AND o.pk = f.pk"
        " AND (o.source_key, o.source_field) <> (f.source_key, f.source_field))", (list(source_keys),)).fetchall()
    return {str(k) for (k,) in rows}


def verified_hash(conn: psycopg.Connection, key: str, field: str) -> str | None:
    """The digest the key's field last verified with, or None (never verified, or not in the
    ledger). Read-only; one indexed lookup."""
    row = conn.execute("SELECT verified_hash FROM kvmigrate.ledger WHERE key = %s AND field = %s",
                       (key, field)).fetchone()
    return None if row is None or row[0] is None else str(row[0])
