"""Load rows into the app's tables: COPY into a temporary stage, then set-based SQL.

Per table and batch, inside the caller's transaction:
1. rows are deduplicated by primary key in Python (highest source rank wins, or fills gaps);
2. `COPY` into a temp stage table (same columns plus the source's rank and key);
3. a placeholder user row is created for every referenced handle with no user (README rule);
4. `INSERT … ON CONFLICT DO NOTHING` for new keys, then one `UPDATE … FROM stage` for rows
   whose values differ (`IS DISTINCT FROM`), only where the source outranks the row's owner;
5. `kvmigrate.row_origin` records which source owns each row (and `kvmigrate.fill_sources` every
   source of a row merged from several, see adapters.pg.sources).
So an unchanged rerun writes 0 rows, and a crash never half-applies a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_dumps

from kvmigrate.adapters.pg.arrays import text_array
from kvmigrate.adapters.pg.references import lock_referenced, referenced
from kvmigrate.adapters.pg.sources import (
    any_owner,
    any_recorded,
    load_sources,
    prepare_stage,
    sources_to_store,
    store_sources,
)
from kvmigrate.entities.base import TableSpec
from kvmigrate.entities.common import json_bytes
from kvmigrate.model.errors import KvmigrateError
from kvmigrate.model.records import Merged, SourcedRow
from kvmigrate.model.seen import SeenKeys

PLACEHOLDER_SETTINGS = {"placeholder": True, "created_by": "kvmigrate"}
#: A recorded owner gives way only to a higher-ranked source (rank, then key and field).
_OUTRANKS = sql.SQL(" ON CONFLICT (tbl, pk) DO UPDATE SET rank = EXCLUDED.rank, source_key = EXCLUDED.source_key,"
                    " source_field = EXCLUDED.source_field WHERE (EXCLUDED.rank, EXCLUDED.source_key,"
                    " EXCLUDED.source_field) > (row_origin.rank, row_origin.source_key, row_origin.source_field)")
_META = ("_rank", "_src", "_fld")


@dataclass
class LoadStats:
    inserted: int = 0
    updated: int = 0
    placeholders: int = 0
    #: Rows of several sources that this load merged (each with the sources merged away).
    merges: list[Merged] = field(default_factory=list)
    #: Source keys that own the row they are named after and got no row_origin row for it:
    #: their ledger rows must say `owns_row` (see adapters.pg.owners), in the same transaction.
    key_owned: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.inserted + self.updated


def json_dumps(value: Any) -> bytes:
    """JSON for a JSONB column, every number with the digits it was read with (orjson, several
    times faster than `json`; `Decimal` and integers beyond 64 bits written as their text)."""
    return json_bytes(value)


def fill_merge(high: Mapping[str, Any], low: Mapping[str, Any], json_columns: Sequence[str]) -> dict[str, Any]:
    """The `fill` rule: the higher-ranked row wins column by column, the lower fills NULLs;
    JSONB objects merge key by key with the higher rank winning."""
    out = dict(low)
    for col, value in high.items():
        if col in json_columns and isinstance(value, dict) and isinstance(low.get(col), dict):
            out[col] = {**low[col], **value}
        elif value is not None:
            out[col] = value
        else:
            out.setdefault(col, None)
    return out


def dedupe(spec: TableSpec, rows: Sequence[SourcedRow]) -> list[SourcedRow]:
    """One row per primary key: highest (rank, source) wins; `fill` tables merge instead, folding
    the sources from the lowest to the highest, so the result does not depend on their order."""
    if spec.merge == "fill":
        groups: dict[Any, list[SourcedRow]] = {}
        for row in rows:
            groups.setdefault(row.values[spec.pk], []).append(row)
        return [merge_sources(spec, group) for group in groups.values()]
    best: dict[Any, SourcedRow] = {}
    for row in rows:
        pk = row.values[spec.pk]
        cur = best.get(pk)
        if cur is None or row.order > cur.order:
            best[pk] = row
    return list(best.values())


def merge_sources(spec: TableSpec, sources: Sequence[SourcedRow]) -> SourcedRow:
    """The `fill` merge of every source of one row (the spec's own `combine` when it has one,
    else credited to the highest-ranked source)."""
    return merge_group(spec, sources).row


def merge_group(spec: TableSpec, sources: Sequence[SourcedRow]) -> Merged:
    """Every source of one row combined, with the sources merged away (see TableSpec)."""
    if spec.combine is not None:
        return spec.combine(sources)
    ordered = sorted(sources, key=lambda r: r.order)
    merged: dict[str, Any] = dict(ordered[0].values)
    for row in ordered[1:]:
        merged = fill_merge(row.values, merged, spec.json_columns)
    top = ordered[-1]
    return Merged(SourcedRow(merged, top.rank, top.source_key, top.source_field, top.meta))


def required_columns(conn: psycopg.Connection, specs: Sequence[TableSpec]) -> list[str]:
    """`table.column` of every NOT NULL column the loaders of `specs` fill, sorted (a row
    leaving one empty is rejected before loading). Read-only."""
    rows = conn.execute(
        "SELECT attrelid::regclass::text, attname FROM pg_attribute WHERE attrelid = ANY(%s::regclass[])"
        " AND attnum > 0 AND NOT attisdropped AND attnotnull", ([s.name for s in specs],)).fetchall()
    filled = {(s.name, c) for s in specs for c in s.columns}
    return sorted(f"{t}.{c}" for t, c in rows if (t, c) in filled)


class TableLoader:
    """Stages and upserts rows of one table. Construct once per connection."""

    def __init__(self, conn: psycopg.Connection, spec: TableSpec, *, stage_prefix: str = "kvm_stage_",
                 per_transaction: bool = False, sole_writer: bool = False, lock_refs: bool = False) -> None:
        """`per_transaction`: the stage is emptied at every commit (ON COMMIT DELETE ROWS), for
        a caller that stages and loads within one transaction; emptying it then costs nothing,
        where a TRUNCATE per page and table costs a new file and catalog updates.

        `sole_writer`: no other loader records sources of this table while this one lives (the
        batch writer, under the writer lock). When none were recorded at its start, a merged
        table's load then looks up the recorded sources only of rows this loader may have
        loaded before (a Bloom filter of their keys): on a first load, almost none.

        `lock_refs`: the caller's transaction skips Postgres's per-row foreign-key checks (see
        adapters.pg.references): each load ends by locking every user its rows refer to."""
        self.conn = conn
        self.spec = spec
        self.stage = f"{stage_prefix}{spec.name}"
        self.per_transaction = per_transaction
        self.lock_refs = lock_refs
        self.types, self.not_null = self._describe()
        self._required = [c for c in spec.columns if c in self.not_null]
        ident = sql.Identifier
        cols = [ident(c) for c in spec.columns]
        conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {stage} {on_commit} AS SELECT {cols}, 0::int AS _rank,"
                    " ''::text AS _src, ''::text AS _fld FROM {table} WITH NO DATA").format(
                stage=ident(self.stage), cols=sql.SQL(", ").join(cols), table=ident(spec.name),
                on_commit=sql.SQL("ON COMMIT DELETE ROWS" if per_transaction else ""))
        )
        if spec.merge == "fill":
            prepare_stage(conn)  # the stage of its recorded sources
        # With `sole_writer`, the keys this loader loaded (see `_maybe_loaded`), when only they
        # can have recorded sources, or an owner in row_origin (placeholders aside, which any
        # loader makes: not for users)
        self._sources_fresh = sole_writer and spec.merge == "fill" and not any_recorded(conn, spec)
        self._origin_fresh = sole_writer and spec.name != "users" and not any_owner(conn, spec)
        self._seen = SeenKeys() if self._sources_fresh or self._origin_fresh else None
        self._loaded_before: list[str] | None = None  # of this load's keys, those maybe loaded before
        # binary: half the Python time of text for a page of messages (10,000 rows, 21 -> 10 ms)
        self._copy = sql.SQL("COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)").format(
            stage=ident(self.stage), cols=sql.SQL(", ").join([*cols, *(ident(m) for m in _META)]))

    def _describe(self) -> tuple[list[str], set[str]]:
        rows = self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (self.spec.name,),
        ).fetchall()
        info = {name: (typ, notnull) for name, typ, notnull in rows}
        return [info[c][0] for c in self.spec.columns], {n for n, (_, nn) in info.items() if nn}

    def missing_required(self, values: Mapping[str, Any]) -> str | None:
        """Name of a NOT NULL column the row leaves empty, if any (checked before loading)."""
        for col in self._required:
            if values.get(col) is None:
                return col
        return None

    def load(self, rows: Sequence[SourcedRow], *, users: TableLoader | None = None,
             stage_empty: bool = False) -> LoadStats:
        """Stage and upsert `rows` (every source's row: they are deduplicated here) in the
        caller's transaction. A `fill` table's row is recomputed from all its sources ever seen
        (recorded as adapters.pg.sources says), not just this batch's. `stage_empty`: the
        caller knows this loader has not staged in its transaction (a `per_transaction` stage
        is then empty: no statement empties it)."""
        stats = LoadStats()
        if not rows:
            return stats
        first = stage_empty and self.per_transaction  # this transaction's first load: its stages are empty
        if self.spec.merge == "fill":
            rows, stats.merges = self._merged_with_stored(rows, first=first)
        else:
            rows = dedupe(self.spec, rows)
            self._loaded_before = self._maybe_loaded([str(r.values[self.spec.pk]) for r in rows])
        self.stage_rows(rows, truncate=not first)
        if self.spec.user_refs:
            stats.placeholders = self._make_referenced()
        if self.spec.name == "users":
            # Users reference users (invited_by), checked at once: an update naming a user this
            # page brings must run after that user's insert.
            stats.inserted = self._insert_new()
            stats.updated = self._update_changed()
        elif self.spec.merge == "fill":  # one merged row per key, which wins: one upsert
            stats.inserted = self._upsert_merged()
        else:
            # Update first: it then only compares rows that existed before this page, not the
            # rows this page is about to insert (same result, half the comparisons on a fresh load).
            stats.updated = self._update_changed()
            stats.inserted = self._insert_new()
        stats.key_owned = self._record_origin(rows)
        if self.lock_refs and self.spec.name == "users" and self.spec.user_refs:
            self._lock_referenced()  # users refer to users of the same page: locked once written
        return stats

    def _make_referenced(self) -> int:
        """A placeholder user for each handle the staged rows refer to that has none; with
        `lock_refs`, the users that exist are locked first (most pages then need no more).
        Returns the placeholders made."""
        if not self.lock_refs or self.spec.name == "users":
            return self._placeholders()
        if not lock_referenced(self.conn, self.spec, self.stage):
            return 0  # every user exists, and stays until the page commits
        made = self._placeholders()
        self._lock_referenced()
        return made

    def _lock_referenced(self) -> None:
        """Lock the users the staged rows refer to; a user deleted since this load made its
        placeholders is made again (the rows are written: the page then commits whole)."""
        missing = lock_referenced(self.conn, self.spec, self.stage)
        if missing:
            self._placeholders()
            missing = lock_referenced(self.conn, self.spec, self.stage)
        if missing:
            raise KvmigrateError(f"{self.spec.name}: users {', '.join(missing[:5])} were deleted while this page was"
                                 " written, and again once made anew", hint="run the same command again")

    def _merged_with_stored(self, rows: Sequence[SourcedRow], *, first: bool) -> tuple[list[SourcedRow], list[Merged]]:
        """Merge this batch's sources with every recorded source of the rows they touch, and
        record the sources the rows now need (see adapters.pg.sources; `first`: the first this
        transaction records). Two statements. Returns one row per primary key, and the merges
        of the rows of several sources."""
        spec = self.spec
        pks = [str(row.values[spec.pk]) for row in rows]
        unique = len(set(pks)) == len(pks)  # no row of two sources in this batch (most pages)
        self._loaded_before = self._maybe_loaded(pks if unique else sorted(set(pks)))
        # with no source recorded before this loader, only rows it may have loaded have any
        fresh = self._loaded_before if self._sources_fresh else None
        plain: list[SourcedRow] = []
        pairs = list(zip(pks, rows, strict=True))
        if unique and fresh is not None and spec.derivable:
            # Only a row this loader may have loaded can have a recorded source: the others are
            # each their one source, and a derivable row of one source stores none (what the
            # merge below finds for them, without building their groups).
            before = set(fresh)
            plain = [row for pk, row in pairs if pk not in before]
            if len(plain) == len(rows):
                return plain, []
            pairs = [(pk, row) for pk, row in pairs if pk in before]
        groups: dict[str, dict[tuple[str, str], SourcedRow]] = {}
        for pk, row in pairs:  # a source read twice in the batch: its last reading
            groups.setdefault(pk, {})[(row.source_key, row.source_field)] = row
        keys = sorted(groups)
        maybe = keys if fresh is None else fresh
        recorded, stored = load_sources(self.conn, spec, self.types, maybe)
        from_store: set[tuple[str, str, str]] = set()  # (pk, key, field) of recorded sources this batch did not read
        for key, sources in recorded.items():
            group = groups[key]
            for s in sources:  # this batch's reading of a source replaces the recorded one
                if group.setdefault((s.source_key, s.source_field), s) is s:
                    from_store.add((key, s.source_key, s.source_field))
        store_sources(self.conn, spec, sources_to_store(spec, groups, stored, from_store), first=first)
        out: list[SourcedRow] = plain
        merges: list[Merged] = []
        for group in groups.values():
            if len(group) == 1:  # a row of one source is that source
                out.extend(group.values())
            else:
                merged = merge_group(spec, list(group.values()))
                merges.append(merged)
                out.append(merged.row)
        return out, merges

    def _maybe_loaded(self, keys: Sequence[str]) -> list[str] | None:
        """Of these keys, those this loader may have loaded before (None: it cannot tell), noting
        them all as loaded. A page that rolls back leaves its keys noted, which only costs the
        lookups a key loaded before takes."""
        if self._seen is None:
            return None
        return self._seen.seen_before(keys)

    def stage_rows(self, rows: Sequence[SourcedRow], *, truncate: bool = True) -> None:
        """COPY rows (with their source) into this loader's temp stage table."""
        if truncate:  # a per-transaction stage is empty unless staged again in the same transaction
            empty = "DELETE FROM {}" if self.per_transaction else "TRUNCATE {}"
            self.conn.execute(sql.SQL(empty).format(sql.Identifier(self.stage)))
        if not rows:
            return
        cur = self.conn.cursor()
        set_json_dumps(json_dumps, cur)  # JSONB columns take the values as they are, dumped by orjson
        cols = self.spec.columns
        with cur.copy(self._copy) as cp:
            cp.set_types([*self.types, "integer", "text", "text"])
            for row in rows:
                cp.write_row((*map(row.values.get, cols), row.rank, row.source_key, row.source_field))

    def _placeholders(self) -> int:
        cur = self.conn.execute(
            sql.SQL(
                "WITH refs(h) AS ({refs}), made AS ("
                " INSERT INTO users (handle, created_at, settings) SELECT h, NULL, %s FROM refs WHERE h IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM users u WHERE u.handle = h) {own}"
                " ON CONFLICT (handle) DO NOTHING RETURNING handle)"
                " INSERT INTO kvmigrate.row_origin (tbl, pk, rank, source_key, source_field)"
                " SELECT 'users', handle, -1, '', '' FROM made ON CONFLICT DO NOTHING"
            ).format(refs=referenced(self.spec, self.stage), own=sql.SQL(
                "AND h NOT IN (SELECT handle FROM {})").format(sql.Identifier(self.stage))
                if self.spec.name == "users" else sql.SQL("")),
            (Jsonb(PLACEHOLDER_SETTINGS),),
        )
        return cur.rowcount

    def _insert_new(self) -> int:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.spec.columns)
        cur = self.conn.execute(
            sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({pk}) DO NOTHING").format(
                t=sql.Identifier(self.spec.name), cols=cols, s=sql.Identifier(self.stage),
                pk=sql.Identifier(self.spec.pk))
        )
        return cur.rowcount

    def _upsert_merged(self) -> int:
        """Insert each staged (merged) row, or update the row it replaces where they differ:
        one statement. Returns the rows written."""
        spec, ident = self.spec, sql.Identifier
        rest = [c for c in spec.columns if c != spec.pk]
        query = sql.SQL(
            "INSERT INTO {t} AS t ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({pk}) DO UPDATE SET {assign}"
            " WHERE ({old}) IS DISTINCT FROM ({new})").format(
            t=ident(spec.name), cols=sql.SQL(", ").join(ident(c) for c in spec.columns), s=ident(self.stage),
            pk=ident(spec.pk), assign=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c))
                                                         for c in rest),
            old=sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in rest),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in rest))
        return self.conn.execute(query).rowcount

    def _update_changed(self) -> int:
        spec, ident = self.spec, sql.Identifier
        outranks = sql.SQL("(o.pk IS NULL OR o.rank < 0 OR (s._rank, s._src, s._fld) >= (o.rank, o.source_key, o.source_field))")
        cols = [c for c in spec.columns if c != spec.pk]
        if spec.merge == "fill":  # the staged row is already merged from every source: it wins
            new = [sql.SQL("s.{}").format(ident(c)) for c in cols]
            where = sql.SQL("TRUE")
        else:
            new = [sql.SQL("s.{}").format(ident(c)) for c in cols]
            where = outranks
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(ident(c), e) for c, e in zip(cols, new, strict=True))
        current = sql.SQL(", ").join(sql.SQL("t.{}").format(ident(c)) for c in cols)
        query = sql.SQL(
            "UPDATE {t} AS t SET {assign} FROM {s} AS s"
            # LATERAL … LIMIT 1: one primary-key probe per staged row. A plain join lets the
            # planner hash the table's whole origin list on every page (quadratic at scale).
            " LEFT JOIN LATERAL (SELECT rank, source_key, source_field, pk FROM kvmigrate.row_origin"
            " WHERE tbl = {tname} AND pk = s.{pk}::text LIMIT 1) o ON TRUE"
            " WHERE t.{pk} = s.{pk} AND {where} AND ({current}) IS DISTINCT FROM ({new})"
        ).format(t=ident(spec.name), assign=assignments, s=ident(self.stage), tname=sql.Literal(spec.name),
                 pk=ident(spec.pk), where=where, current=current, new=sql.SQL(", ").join(new))
        return self.conn.execute(query).rowcount

    def _record_origin(self, rows: Sequence[SourcedRow]) -> list[str]:
        """Record the owners of the staged rows `rows`: a plain insert for the rows no owner can
        have been recorded for (see `_maybe_loaded`), an upsert where the higher-ranked source
        wins for the others. One statement, or two when a page holds both. Of the first, a row
        owned by the record named after it (TableSpec.key_owner) gets no row_origin row: its
        ledger row will say so; returns the keys of those records."""
        before = self._loaded_before if self._origin_fresh else None
        if before is None:  # any row may have an owner recorded
            self._insert_origin(sql.SQL(""), _OUTRANKS, None)
            return []
        keys = text_array(before)
        pk_text = sql.SQL("{}::text").format(sql.Identifier(self.spec.pk))
        where = sql.SQL(" WHERE NOT ({pk} = ANY(%(keys)s::text[]))").format(pk=pk_text)
        owned: list[str] = []
        if self.spec.key_owner is not None:
            prefix, rank = self.spec.key_owner
            seen, pk = set(before), self.spec.pk
            owned = [row.source_key for row in rows if row.rank == rank and not row.source_field
                     and row.source_key == prefix + str(row.values[pk]) and str(row.values[pk]) not in seen]
            where += sql.SQL(" AND NOT (_rank = {rank} AND _fld = '' AND _src = {prefix} || {pk})").format(
                rank=sql.Literal(rank), prefix=sql.Literal(prefix), pk=pk_text)
        self._insert_origin(where, sql.SQL(""), keys)
        if before:
            self._insert_origin(sql.SQL(" WHERE {pk} = ANY(%(keys)s::text[])").format(pk=pk_text), _OUTRANKS, keys)
        return owned

    def _insert_origin(self, where: sql.Composable, conflict: sql.SQL, keys: str | None) -> None:
        """Insert the owners of the staged rows `where` (a WHERE clause on the stage, given
        `keys`) selects, `conflict` saying what a row_origin row already there does."""
        ident, spec = sql.Identifier, self.spec
        query = sql.SQL("INSERT INTO kvmigrate.row_origin (tbl, pk, rank, source_key, source_field)"
                        " SELECT {tname}, {pk}::text, _rank, _src, _fld FROM {s}{where}{conflict}").format(
            tname=sql.Literal(spec.name), pk=ident(spec.pk), s=ident(self.stage), where=where,
            conflict=conflict)
        self.conn.execute(query, None if keys is None else {"keys": keys})
