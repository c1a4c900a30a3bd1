"""Who owns a row of an app table: the source whose reading decides it.

The owner is the row's `kvmigrate.row_origin` row (tbl, pk → rank, source key and field). A table
whose rows are named after the records that make them (`TableSpec.key_owner`: `msg:{id}` makes
the `messages` row `id`) also has owners recorded more cheaply: a row its own key's record owns
when first loaded gets no row_origin row; that record's ledger row says `owns_row` instead (the
backfill writes the ledger row anyway). So the owner of such a row is its row_origin row when
there is one, else the record `{prefix}{pk}` (field '', the prefix's rank) when its ledger row
says `owns_row`, else none (a row the app wrote). Every statement that reads the owner of a row
goes through `owner_of` or `key_owned` (placeholder users, rank -1, are only ever in row_origin,
and the statements about them read it alone); `forget_key_owner` undoes an `owns_row`.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from kvmigrate.entities.base import TableSpec


def owner_of(spec: TableSpec, pk: sql.Composable) -> sql.Composable:
    """A query of at most one row (rank, source_key, source_field): the owner of `spec`'s row
    whose primary key, as text, is `pk` (an expression of the enclosing query). A primary-key
    probe of row_origin, and of the ledger for a table with a `key_owner`."""
    explicit = sql.SQL("SELECT {implied} rank, source_key, source_field FROM kvmigrate.row_origin"
                       " WHERE tbl = {tn} AND pk = {pk}")
    if spec.key_owner is None:
        return explicit.format(implied=sql.SQL(""), tn=sql.Literal(spec.name), pk=pk)
    prefix, rank = spec.key_owner
    return sql.SQL(
        "SELECT rank, source_key, source_field FROM ({explicit} UNION ALL"
        " SELECT 1, {rank}, l.key, l.field FROM kvmigrate.ledger l WHERE l.key = {prefix} || {pk}"
        " AND l.field = '' AND l.owns_row) owner ORDER BY implied LIMIT 1").format(
        explicit=explicit.format(implied=sql.SQL("0 AS implied,"), tn=sql.Literal(spec.name), pk=pk),
        rank=sql.Literal(rank), prefix=sql.Literal(prefix), pk=pk)


def key_owned(spec: TableSpec, pks: sql.Composable) -> sql.Composable | None:
    """A query of (pk, source_key, source_field, rank) for the rows among `pks` (a text[]
    expression) owned by their own key's record with no row_origin row (see the module), or None
    for a table without `key_owner`. A primary-key probe of the ledger and of row_origin per key."""
    if spec.key_owner is None:
        return None
    prefix, rank = spec.key_owner
    return sql.SQL(
        "SELECT p.pk, l.key, l.field, {rank} FROM unnest({pks}) p(pk)"
        " JOIN kvmigrate.ledger l ON l.key = {prefix} || p.pk AND l.field = '' AND l.owns_row"
        " WHERE NOT EXISTS (SELECT 1 FROM kvmigrate.row_origin o WHERE o.tbl = {tn} AND o.pk = p.pk)").format(
        rank=sql.Literal(rank), pks=pks, prefix=sql.Literal(prefix), tn=sql.Literal(spec.name))


def any_key_owned(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether any ledger row says it owns a row of `spec` (see the module). Read-only; stops at
    the first such row (a scan of the ledger when there is none)."""
    if spec.key_owner is None:
        return False
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM kvmigrate.ledger WHERE owns_row AND starts_with(key, %s))",
                       (spec.key_owner[0],)).fetchone()
    return bool(row and row[0])


def own_key(spec: TableSpec, pk: str) -> str | None:
    """The key of the record named after the row `pk` (see the module), or None for a table
    without `key_owner`."""
    return None if spec.key_owner is None else spec.key_owner[0] + pk


def forget_key_owner(conn: psycopg.Connection, spec: TableSpec, pk: str) -> None:
    """The record of `pk`'s own key no longer owns the row `pk`. In the caller's transaction."""
    own = own_key(spec, pk)
    if own is not None:
        conn.execute("UPDATE kvmigrate.ledger SET owns_row = false WHERE key = %s AND field = '' AND owns_row", (own,))
