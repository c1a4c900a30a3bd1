"""The check behind `verify --repair`'s per-row refusal: the rows a repair is about to replace
are copied aside first, and after the load (inside the same transaction) each is compared with
what replaced it; a row that lost something (kvmigrate.engine.loss) makes the caller roll the
load back and retry without the records that produce it. Placeholder users (rank -1) are
meant to be replaced and are not copied aside. Postgres only; no KV request.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

from kvmigrate.engine.loss import row_losses
from kvmigrate.entities.base import TableSpec

_BEFORE = "CREATE TEMP TABLE IF NOT EXISTS kvm_repair_before (tbl TEXT, pk TEXT, old JSONB)"

#: (table, primary key as text) → what replacing the row would lose
Losses = dict[tuple[str, str], list[str]]


class LossGuard:
    """Copies rows aside before a repair's load and tells what the load took from them."""

    def __init__(self, conn: psycopg.Connection, specs: Mapping[str, TableSpec], pk_types: Mapping[str, str]) -> None:
        self.conn = conn
        self.specs = specs
        self.pk_types = pk_types
        conn.execute(_BEFORE)

    def snapshot(self, pks: Mapping[str, set[str]]) -> None:
        """Copy aside the current rows with these primary keys (per table), in the caller's
        transaction."""
        self.conn.execute("TRUNCATE kvm_repair_before")
        for table, keys in pks.items():
            if table not in self.specs or not keys:
                continue
            spec = self.specs[table]
            self.conn.execute(sql.SQL(
                "INSERT INTO kvm_repair_before SELECT {tn}, t.{pk}::text, to_jsonb(t)"
                " FROM unnest(%s::text[]) d(pk) JOIN {t} t ON t.{pk} = d.pk::{pt}"
                " WHERE NOT EXISTS (SELECT 1 FROM kvmigrate.row_origin o WHERE o.tbl = {tn}"
                " AND o.pk = d.pk AND o.rank < 0)").format(
                tn=sql.Literal(table), pk=sql.Identifier(spec.pk), t=sql.Identifier(table),
                pt=sql.SQL(self.pk_types[table])), (sorted(keys),))

    def losses(self) -> Losses:
        """The rows copied aside that their replacement holds less of. Read-only."""
        out: Losses = {}
        for table in self._tables():
            spec = self.specs[table]
            rows = self.conn.execute(sql.SQL(
                "SELECT b.pk, b.old, to_jsonb(t) FROM kvm_repair_before b JOIN {t} t ON t.{pk} = b.pk::{pt}"
                " WHERE b.tbl = {tn} AND b.old IS DISTINCT FROM to_jsonb(t)").format(
                t=sql.Identifier(table), pk=sql.Identifier(spec.pk), pt=sql.SQL(self.pk_types[table]),
                tn=sql.Literal(table))).fetchall()
            for pk, old, new in rows:
                lost = row_losses(old, new)
                if lost:
                    out[(table, pk)] = lost
        return out

    def _tables(self) -> list[str]:
        return [t for (t,) in self.conn.execute("SELECT DISTINCT tbl FROM kvm_repair_before").fetchall()]
