"""Verify's statements on kvmigrate.* tables: the comparison's joins on `row_origin` and the
ledger, and the ledger marks of what verified.

They read the temporary stages the differ fills in the same session (`kvm_verify_seen`,
`kvm_verify_bad`, `kvm_repair_before` and the `kvm_expect_*` tables; kvmigrate.engine.diff,
.verified and .repair_guard create them). None commits: transaction boundaries are the caller's.
Postgres only; no KV request.
"""

from __future__ import annotations

from collections.abc import Collection

import psycopg
from psycopg import sql

from kvmigrate.adapters.pg.owners import owner_of
from kvmigrate.entities.base import TableSpec


def skip_unread_owners(expected: sql.Composable, spec: TableSpec) -> sql.Composable:
    """`expected` (a query of staged rows with `_rank`, `_src`, `_fld`) without the rows whose
    Postgres owner (adapters.pg.owners) is a higher-ranked source (one a sample did not read)."""
    return sql.SQL("SELECT * FROM ({q}) x WHERE NOT EXISTS (SELECT 1 FROM ({owner}) o"
                   " WHERE (o.rank, o.source_key, o.source_field) > (x._rank, x._src, x._fld))").format(
        q=expected, owner=owner_of(spec, sql.SQL("x.{}::text").format(sql.Identifier(spec.pk))))


def owned_rows(spec: TableSpec) -> sql.Composable:
    """The table's rows that verify answers for (not placeholder users), as a query."""
    return sql.SQL("SELECT t.* FROM {t} t LEFT JOIN kvmigrate.row_origin o ON o.tbl = {tn} AND o.pk = t.{pk}::text"
                   " WHERE coalesce(o.rank, 0) >= 0").format(
        t=sql.Identifier(spec.name), tn=sql.Literal(spec.name), pk=sql.Identifier(spec.pk))


def unexpected_rows(conn: psycopg.Connection, spec: TableSpec, stage: str,
                    bucket_filter: sql.Composable) -> list[tuple[str, str | None, str | None]]:
    """(pk, source key, source field) of the table's rows (placeholder users aside) that have no
    row in the `stage` of expected rows and whose recorded source cleanup did not delete; the
    source is NULL for a row with no recorded owner (adapters.pg.owners). `bucket_filter` is a
    condition on `t`. Read-only."""
    query = sql.SQL("SELECT t.{pk}::text, o.source_key, o.source_field FROM {t} t"
                    " LEFT JOIN LATERAL ({owner}) o ON true"
                    " WHERE coalesce(o.rank, 0) >= 0 AND {bf}"
                    " AND NOT EXISTS (SELECT 1 FROM {s} s WHERE s.{pk} = t.{pk})"
                    " AND NOT EXISTS (SELECT 1 FROM kvmigrate.ledger l WHERE l.key = o.source_key"
                    " AND l.field = o.source_field AND l.deleted_at IS NOT NULL)").format(
        pk=sql.Identifier(spec.pk), t=sql.Identifier(spec.name), s=sql.Identifier(stage), bf=bucket_filter,
        owner=owner_of(spec, sql.SQL("t.{}::text").format(sql.Identifier(spec.pk))))
    return [(pk, src, fld) for pk, src, fld in conn.execute(query).fetchall()]


def unchanged_since_verified(conn: psycopg.Connection, keys: Collection[str]) -> set[tuple[str, str]]:
    """(key, field) among these keys staged in kvm_verify_seen whose digest read now is still
    their ledger `verified_hash`. Read-only."""
    rows = conn.execute(
        "SELECT s.key, s.field FROM kvm_verify_seen s JOIN kvmigrate.ledger l ON l.key = s.key AND l.field = s.field"
        " WHERE l.verified_hash = s.digest AND s.key = ANY(%s)", (sorted(keys),)).fetchall()
    return {(k, f) for k, f in rows}


def unverify_tainted(conn: psycopg.Connection, postgres_writes: Collection[str]) -> None:
    """Clear `verified_hash`/`verified_at` of the keys read now (kvm_verify_seen) that are not
    migrated or produce a differing row (kvm_verify_bad), except, for entities written to
    Postgres only (`postgres_writes`), keys whose value has not changed since they verified.
    In the caller's transaction."""
    conn.execute(
        "UPDATE kvmigrate.ledger l SET verified_hash = NULL, verified_at = NULL FROM kvm_verify_seen s"
        " WHERE l.key = s.key AND l.field = s.field AND l.verified_hash IS NOT NULL AND (s.status <> 'migrated'"
        " OR EXISTS (SELECT 1 FROM kvm_verify_bad b WHERE b.key = s.key AND b.field = s.field))"
        # Postgres is the source of truth for these entities: a key whose KV value has not changed
        # since it verified stays verified, whatever Postgres became since.
        " AND NOT (l.entity = ANY(%s) AND s.digest = l.verified_hash)", (sorted(postgres_writes),))


def vouch_verified(conn: psycopg.Connection, run_id: int) -> list[tuple[str, int]]:
    """Give the migrated keys read now (kvm_verify_seen) with no differing row (kvm_verify_bad)
    their digest as `verified_hash` (a key new to the ledger enters it as migrated by `run_id`).
    Returns (entity, keys newly vouched for), counted in SQL. In the caller's transaction."""
    cur = conn.execute(
        "WITH vouched AS (INSERT INTO kvmigrate.ledger AS l (key, field, entity, family, redis_type, value_hash,"
        " status, rows, run_id, verified_hash, verified_at)"
        " SELECT DISTINCT ON (key, field) key, field, entity, family, redis_type, digest, 'migrated', rows, %s,"
        " digest, now() FROM kvm_verify_seen s WHERE s.status = 'migrated' AND NOT EXISTS"
        " (SELECT 1 FROM kvm_verify_bad b WHERE b.key = s.key AND b.field = s.field) ORDER BY key, field"
        " ON CONFLICT (key, field) DO UPDATE SET verified_hash = EXCLUDED.verified_hash,"
        " verified_at = EXCLUDED.verified_at"
        " WHERE l.status = 'migrated' AND l.verified_hash IS DISTINCT FROM EXCLUDED.verified_hash"
        " RETURNING l.entity)"
        " SELECT entity, count(*) FROM vouched GROUP BY entity", (run_id,))  # counted in SQL: a million keys
    return [(str(entity), int(n)) for entity, n in cur.fetchall()]


def copy_aside(conn: psycopg.Connection, table: str, pk: str, pk_type: str, keys: set[str]) -> None:
    """Copy the rows of `table` with these primary keys (as text; `pk_type` is the column's
    type) into kvm_repair_before as JSONB, placeholder users (rank < 0 in row_origin) aside.
    In the caller's transaction."""
    conn.execute(sql.SQL(
        "INSERT INTO kvm_repair_before SELECT {tn}, t.{pk}::text, to_jsonb(t)"
        " FROM unnest(%s::text[]) d(pk) JOIN {t} t ON t.{pk} = d.pk::{pt}"
        " WHERE NOT EXISTS (SELECT 1 FROM kvmigrate.row_origin o WHERE o.tbl = {tn}"
        " AND o.pk = d.pk AND o.rank < 0)").format(
        tn=sql.Literal(table), pk=sql.Identifier(pk), t=sql.Identifier(table),
        pt=sql.SQL(pk_type)), (sorted(keys),))
