"""Verify's expected rows of merged (`fill`) tables, merged in bounded memory.

A derivable table (messages): every source's row is staged in Postgres as it is read (typed,
like any expected row); once the scan is done, the rows of primary keys staged more than once
are read back in primary-key order, a group at a time, merged exactly as backfill merges them,
and put back as one row each. A key with one source is already its expected row.

Any other merged table (users, streaks, connections, friendships): its combine may read a
source's meta (a user's freshness), which has no column, so every source is staged as backfill
records it in `kvmigrate.fill_sources` (columns and meta in one JSONB value, `copy_sources`),
in `kvm_expect_sources`; once the scan is done, every primary key's sources are read back in
primary-key order, a group at a time, and merged into the expected rows.

Every staged (pk, source) is kept in `kvm_expect_keys`, so a difference still names, and
taints, every source of its row. Memory holds a chunk of rows, whatever the store's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads

from kvmigrate.adapters.pg.loader import TableLoader, merge_sources
from kvmigrate.adapters.pg.sources import copy_sources, json_loads, source_row
from kvmigrate.entities.base import TableSpec
from kvmigrate.model.records import SourcedRow

KEYS_TABLE = "CREATE TEMP TABLE IF NOT EXISTS kvm_expect_keys (tbl TEXT, pk TEXT, src TEXT, fld TEXT)"
#: Sources of the merged tables that are not derivable, shaped like kvmigrate.fill_sources.
SOURCES_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS kvm_expect_sources"
                 " (tbl TEXT, pk TEXT, source_key TEXT, source_field TEXT, rank INT, vals JSONB)")
CHUNK = 2000


def prepare(conn: psycopg.Connection) -> None:
    """Create (empty) this session's tables of staged sources and their keys."""
    conn.execute(KEYS_TABLE)
    conn.execute(SOURCES_TABLE)
    conn.execute("TRUNCATE kvm_expect_keys, kvm_expect_sources")


def merge_staged(conn: psycopg.Connection, stage: TableLoader, merged: TableLoader) -> None:
    """Record every staged source of `stage`'s table, then replace each primary key's several
    staged rows by their merge (through `merged`, an empty stage of the same table). Postgres
    only, in one transaction (a savepoint in the caller's)."""
    with conn.transaction():
        _merge_staged(conn, stage, merged)


def _merge_staged(conn: psycopg.Connection, stage: TableLoader, merged: TableLoader) -> None:
    spec, ident = stage.spec, sql.Identifier
    table, pk = ident(stage.stage), ident(spec.pk)
    conn.execute(sql.SQL("INSERT INTO kvm_expect_keys SELECT {tn}, {pk}::text, _src, _fld FROM {s}").format(
        tn=sql.Literal(spec.name), pk=pk, s=table))
    cols = sql.SQL(", ").join(ident(c) for c in (*spec.columns, "_rank", "_src", "_fld"))
    query = sql.SQL("SELECT {cols} FROM (SELECT *, count(*) OVER (PARTITION BY {pk}) AS _n FROM {s}) x"
                    " WHERE _n > 1 ORDER BY {pk}").format(cols=cols, pk=pk, s=table)
    conn.execute(sql.SQL("TRUNCATE {}").format(ident(merged.stage)))
    width = len(spec.columns)
    with conn.cursor(name="kvm_merge_expected") as cur:
        set_json_loads(json_loads, cur)  # JSONB numbers with their exact digits, as read from KV
        cur.itersize = CHUNK
        cur.execute(query)
        _stage_merges(merged, (SourcedRow(dict(zip(spec.columns, row[:width], strict=True)), row[width],
                                          row[width + 1], row[width + 2]) for row in cur))
    conn.execute(sql.SQL("DELETE FROM {s} USING (SELECT DISTINCT {pk} FROM {m}) m WHERE {s}.{pk} = m.{pk}").format(
        s=table, pk=pk, m=ident(merged.stage)))
    conn.execute(sql.SQL("INSERT INTO {s} SELECT * FROM {m}").format(s=table, m=ident(merged.stage)))
    conn.execute(sql.SQL("TRUNCATE {}").format(ident(merged.stage)))


def stage_sources(conn: psycopg.Connection, spec: TableSpec, sources: Sequence[SourcedRow]) -> None:
    """Stage sources of a merged table that is not derivable, for `merge_sources_staged`."""
    if sources:
        copy_sources(conn, "kvm_expect_sources", spec, sources)


def merge_sources_staged(conn: psycopg.Connection, stage: TableLoader) -> None:
    """Record every source `stage_sources` staged for `stage`'s table and stage each primary
    key's merge of them as its expected row. In one transaction (a savepoint in the caller's)."""
    spec = stage.spec
    with conn.transaction():
        conn.execute("INSERT INTO kvm_expect_keys SELECT tbl, pk, source_key, source_field FROM kvm_expect_sources"
                     " WHERE tbl = %s", (spec.name,))
        with conn.cursor(name="kvm_merge_sources") as cur:
            set_json_loads(json_loads, cur)  # numbers with their exact digits, as backfill reads them back
            cur.itersize = CHUNK
            # a key SCAN returned twice counts once, its last reading (as backfill keeps it)
            cur.execute('SELECT DISTINCT ON (pk COLLATE "C", source_key, source_field)'
                        ' source_key, source_field, rank, vals FROM kvm_expect_sources WHERE tbl = %s'
                        ' ORDER BY pk COLLATE "C", source_key, source_field, ctid DESC', (spec.name,))
            _stage_merges(stage, (source_row(spec, stage.types, *row) for row in cur))


def _stage_merges(into: TableLoader, sources: Iterable[SourcedRow]) -> None:
    """Stage in `into` the merge of each run of `sources` (in primary-key order) that shares a
    primary key, a chunk of merged rows at a time."""
    spec = into.spec
    group: list[SourcedRow] = []
    done: list[SourcedRow] = []
    for source in sources:
        if group and group[0].values[spec.pk] != source.values[spec.pk]:
            done.append(merge_sources(spec, group))
            group = []
            if len(done) >= CHUNK:
                into.stage_rows(done, truncate=False)
                done = []
        group.append(source)
    if group:
        done.append(merge_sources(spec, group))
    into.stage_rows(done, truncate=False)
