"""The check behind `verify --repair`'s per-row refusal: the rows a repair is about to replace
are copied aside first, and after the load (inside the same transaction) each is compared with
what replaced it; a row that lost something (kvmigrate.engine.loss) rolls the load back, and it
is done again without the records that produce that row (`load_lossless`, used by the Differ).
Placeholder users (rank -1) are meant to be replaced and are not copied aside. Postgres only;
no KV request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from kvmigrate.adapters.pg.verify_sql import copy_aside
from kvmigrate.engine.loss import row_losses
from kvmigrate.entities.base import Entity, TableSpec
from kvmigrate.model.differences import Difference, RefusedRepair
from kvmigrate.model.records import RawRecord, SourcedRow

if TYPE_CHECKING:
    from kvmigrate.engine.diff import Differ
    from kvmigrate.engine.writer import BatchWriter

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
            copy_aside(self.conn, table, self.specs[table].pk, self.pk_types[table], keys)

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


def load_lossless(differ: Differ, writer: BatchWriter, guard: LossGuard, chunk: Sequence[Difference],
                  stored: dict[str, list[tuple[str, str, str]]], records: list[tuple[RawRecord, Entity]],
                  *, allow_lossy: bool) -> list[tuple[RawRecord, Entity]]:
    """Forget the gone sources and load `records` in one transaction. When a row would lose
    something, roll back, record the refusal, and load again without every record that
    produces a refused row (their other rows stay as they are too). Returns the records loaded."""
    refused: Losses = {}
    while True:
        differ.conn.commit()
        rows = differ._batch(records).rows
        touched = pks_by_table(chunk)
        for table, table_rows in rows.items():
            pk = differ.specs[table].pk
            touched.setdefault(table, set()).update(str(r.values[pk]) for r in table_rows)
        with differ.conn.transaction() as tx:
            guard.snapshot(touched)
            keep = {t: [s for s in srcs if (t, s[0]) not in refused] for t, srcs in stored.items()}
            forgotten = differ._forget_gone_sources(keep, records)
            writer.load_records(records)
            lost = {} if allow_lossy else guard.losses()
            if lost:
                raise psycopg.Rollback(tx)
        if not lost:
            differ.forgotten += forgotten
            return records
        refused.update(lost)
        _refuse(differ, lost, chunk, rows)
        producing = {(r.source_key, r.source_field) for table, table_rows in rows.items() for r in table_rows
                     if (table, str(r.values[differ.specs[table].pk])) in lost}
        records = [(r, e) for r, e in records if (r.key, r.field) not in producing]


def _refuse(differ: Differ, lost: Losses, chunk: Sequence[Difference], rows: dict[str, list[SourcedRow]]) -> None:
    """Count each refused row under its entity, named by its differing key (else a source)."""
    keys = {(d.table, d.pk): d.key for d in chunk}
    for (table, pk), what in sorted(lost.items()):
        spec = differ.specs[table]
        key = keys.get((table, pk)) or next(
            (r.source_key for r in rows.get(table, []) if str(r.values[spec.pk]) == pk), "")
        differ._check_for(key, spec).refused.append(RefusedRepair(table, pk, key, tuple(what)))


def pks_by_table(diffs: Sequence[Difference]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in diffs:
        out.setdefault(d.table, set()).add(d.pk)
    return out
