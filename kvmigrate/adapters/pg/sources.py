"""The recorded sources of merged (`fill`) rows, so a row is recomputed from every source ever
seen for it, whichever page brought which.

Sources are kept in `kvmigrate.fill_sources`, except for a table whose spec is `derivable`: there
a row with exactly one source stores nothing more, since that source's values are the row itself
and its key is the row's owner in `kvmigrate.row_origin`. When a second source of such a row
arrives, both are stored. So a derivable row has `fill_sources` rows exactly when it has (or had)
several sources, and every source of a merged row is found there (verify and cleanup rely on it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps, set_json_loads

from kvmigrate.adapters.pg.arrays import text_array
from kvmigrate.adapters.pg.owners import any_key_owned, forget_key_owner, key_owned, own_key
from kvmigrate.entities.base import TableSpec
from kvmigrate.entities.common import has_float, json_bytes
from kvmigrate.model.records import SourcedRow

_SOURCE_META = "_meta"  # a stored source's meta (raw value, freshness), beside its columns
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS kvm_stage_fill_sources (LIKE kvmigrate.fill_sources)"
          " ON COMMIT DELETE ROWS")


def json_loads(data: bytes | str) -> Any:
    """JSONB read back from Postgres with exact numbers (psycopg's default reads floats): orjson
    first, which reads integers up to 64 bits exactly (2.5x faster than `json` with a hook per
    number), `json` with exact numbers again when orjson read any number as a float."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # a number beyond what a double holds: read exactly below
    else:
        if not has_float(value):
            return value
    return json.loads(data, parse_float=Decimal, parse_int=_exact_int)


def _exact_int(digits: str) -> int | Decimal:
    return int(digits) if len(digits) < 4000 else Decimal(digits)


def load_sources(conn: psycopg.Connection, spec: TableSpec, types: Sequence[str],
                 pks: Sequence[str]) -> tuple[dict[str, list[SourcedRow]], set[str]]:
    """Every recorded source of the rows `pks`, by primary key, and the keys whose sources are
    stored in fill_sources (for the others, the one source is derived from the row and its
    owner). One statement, one primary-key probe per key and table; read-only."""
    if not pks:
        return {}, set()
    text = ("SELECT pk, source_key, source_field, rank, vals, true FROM kvmigrate.fill_sources"
            " WHERE tbl = {tn} AND pk = ANY({pks}::text[])")
    if spec.derivable:  # the owner of each row, its values derived from the row itself
        # LATERAL … LIMIT 1: one primary-key probe per row; a join lets the planner read the
        # whole table on every page (quadratic in the store's size)
        text += (" UNION ALL SELECT o.pk, o.source_key, o.source_field, o.rank, to_jsonb(t), false"
                 " FROM kvmigrate.row_origin o CROSS JOIN LATERAL (SELECT * FROM {t} t WHERE t.{pk}::text = o.pk"
                 " LIMIT 1) t WHERE o.tbl = {tn} AND o.pk = ANY({pks}::text[]) AND o.rank >= 0")
    owned = key_owned(spec, sql.SQL("{}::text[]").format(sql.Placeholder("pks")))
    if spec.derivable and owned is not None:  # and the rows their own key's record owns
        text += (" UNION ALL SELECT k.pk, k.key, k.field, k.rank, to_jsonb(t), false FROM ({owned}) k(pk, key, field, rank)"
                 " CROSS JOIN LATERAL (SELECT * FROM {t} t WHERE t.{pk}::text = k.pk LIMIT 1) t")
    query = sql.SQL(text).format(tn=sql.Literal(spec.name), pks=sql.Placeholder("pks"), t=sql.Identifier(spec.name),
                                 pk=sql.Identifier(spec.pk), owned=owned or sql.SQL(""))
    with conn.cursor() as cur:
        set_json_loads(json_loads, cur)  # numbers back with their exact digits
        rows = cur.execute(query, {"pks": text_array(pks)}).fetchall()
    out: dict[str, list[SourcedRow]] = {}
    stored = {key for key, *_, in_store in rows if in_store}
    for key, src, fld, rank, vals, in_store in rows:
        if not in_store and key in stored:
            continue  # a row with stored sources has its owner among them
        out.setdefault(key, []).append(source_row(spec, types, src, fld, rank, vals))
    return out, stored


def source_row(spec: TableSpec, types: Sequence[str], key: str, field: str, rank: int,
               vals: dict[str, Any]) -> SourcedRow:
    """A source as it was before `copy_sources` stored it: its columns typed again, its meta."""
    meta = vals.pop(_SOURCE_META, None) or {}
    values = _typed(spec, types, {c: vals[c] for c in spec.columns if c in vals})
    return SourcedRow(values, rank, key, field, meta)


def any_recorded(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether `load_sources` could find any source of `spec`'s rows: a row of fill_sources,
    or, for a derivable table, an owner in row_origin. Read-only; two index probes at most."""
    query = "SELECT EXISTS (SELECT 1 FROM kvmigrate.fill_sources WHERE tbl = %(t)s)"
    if spec.derivable:
        query += " OR EXISTS (SELECT 1 FROM kvmigrate.row_origin WHERE tbl = %(t)s AND rank >= 0)"
    row = conn.execute(query, {"t": spec.name}).fetchone()
    return bool(row and row[0]) or (spec.derivable and any_key_owned(conn, spec))


def any_owner(conn: psycopg.Connection, spec: TableSpec) -> bool:
    """Whether an owner of any of `spec`'s rows is recorded (adapters.pg.owners). Read-only."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM kvmigrate.row_origin WHERE tbl = %s)", (spec.name,)).fetchone()
    return bool(row and row[0]) or any_key_owned(conn, spec)


def sources_to_store(spec: TableSpec, groups: Mapping[str, Mapping[tuple[str, str], SourcedRow]],
                     stored: set[str], from_store: set[tuple[str, str, str]]) -> list[SourcedRow]:
    """The sources a load must (re)write: per row, this batch's (all but `from_store`: pk, key,
    field of the sources read back from the record), and, when a derivable row gets its second
    source, the one it had. A derivable row with one source needs none."""
    out: list[SourcedRow] = []
    for pk, group in groups.items():
        if pk not in stored:
            if not spec.derivable or len(group) > 1:
                out += group.values()
            continue
        out += [s for (src, fld), s in group.items() if (pk, src, fld) not in from_store]
    return out


def prepare_stage(conn: psycopg.Connection) -> None:
    """Create this session's stage for `store_sources` (temporary, emptied at every commit)."""
    conn.execute(_STAGE)


def store_sources(conn: psycopg.Connection, spec: TableSpec, sources: Sequence[SourcedRow], *,
                  first: bool = False) -> None:
    """Upsert sources into kvmigrate.fill_sources (a row whose values did not change is not
    rewritten): one COPY and one statement, in the caller's transaction, on a session whose
    stage `prepare_stage` made (TableLoader does, for a merged table). `first`: the caller's
    transaction has not stored sources of this table yet; the stage (emptied at every commit)
    then holds only other tables' sources, which the statement leaves alone, so no statement
    empties it."""
    if not sources:
        return
    if not first:
        conn.execute("DELETE FROM kvm_stage_fill_sources")  # what was staged earlier in this transaction
    copy_sources(conn, "kvm_stage_fill_sources", spec, sources)
    conn.execute(
        "INSERT INTO kvmigrate.fill_sources (tbl, pk, source_key, source_field, rank, vals)"
        " SELECT DISTINCT ON (tbl, pk, source_key, source_field) tbl, pk, source_key, source_field, rank, vals"
        " FROM kvm_stage_fill_sources WHERE tbl = %s ORDER BY tbl, pk, source_key, source_field"
        " ON CONFLICT (tbl, pk, source_key, source_field) DO UPDATE SET rank = EXCLUDED.rank, vals = EXCLUDED.vals"
        " WHERE (fill_sources.rank, fill_sources.vals) IS DISTINCT FROM (EXCLUDED.rank, EXCLUDED.vals)",
        (spec.name,))


def copy_sources(conn: psycopg.Connection, into: str, spec: TableSpec, sources: Iterable[SourcedRow]) -> None:
    """COPY sources of `spec`'s rows into `into`, a table with the columns of
    kvmigrate.fill_sources; `source_row` turns one back into the SourcedRow it was."""
    cur = conn.cursor()
    set_json_dumps(json_bytes, cur)  # times and dates as `isoformat` writes them, read back by `_typed`
    with cur.copy(sql.SQL("COPY {} (tbl, pk, source_key, source_field, rank, vals) FROM STDIN").format(
            sql.Identifier(into))) as cp:
        cp.set_types(["text", "text", "text", "text", "integer", "jsonb"])
        for s in sources:
            cp.write_row((spec.name, str(s.values[spec.pk]), s.source_key, s.source_field, s.rank, _stored(s)))


def recorded_sources(conn: psycopg.Connection, spec: TableSpec, pks: set[str]) -> list[tuple[str, str, str]]:
    """(pk, source key, source field) recorded for these rows: the owner of each (row_origin),
    and for a merged table every source ever merged into it (fill_sources; the owner alone for a
    derivable row of one source). Placeholder users (rank -1) have none. Read-only."""
    query = sql.SQL("SELECT pk, source_key, source_field FROM kvmigrate.{} WHERE tbl = %(t)s AND pk = ANY(%(pks)s)"
                    " AND rank >= 0").format(sql.Identifier(_store(spec)))
    if spec.derivable:
        query += sql.SQL(" UNION ALL SELECT pk, source_key, source_field FROM kvmigrate.row_origin o"
                         " WHERE tbl = %(t)s AND pk = ANY(%(pks)s) AND rank >= 0 AND NOT EXISTS"
                         " (SELECT 1 FROM kvmigrate.fill_sources f WHERE f.tbl = o.tbl AND f.pk = o.pk)")
        owned = key_owned(spec, sql.SQL("%(pks)s::text[]"))
        if owned is not None:  # the rows their own key's record owns (see adapters.pg.owners)
            query += sql.SQL(" UNION ALL SELECT pk, key, field FROM ({}) k(pk, key, field, rank) WHERE NOT EXISTS"
                             " (SELECT 1 FROM kvmigrate.fill_sources f WHERE f.tbl = %(t)s AND f.pk = k.pk)").format(owned)
    return [(pk, key, field) for pk, key, field in conn.execute(
        query, {"t": spec.name, "pks": sorted(pks)}).fetchall()]


def forget_sources(conn: psycopg.Connection, spec: TableSpec, gone: Sequence[tuple[str, str, str]]) -> None:
    """Forget these recorded sources (pk, key, field) of `spec`'s rows. A derivable row's one
    source is its owner in row_origin: forgotten there, so no later load derives it again."""
    params = [(spec.name, *g) for g in gone]
    if spec.derivable:
        conn.cursor().executemany(
            "DELETE FROM kvmigrate.row_origin o WHERE tbl = %s AND pk = %s AND source_key = %s AND source_field = %s"
            " AND NOT EXISTS (SELECT 1 FROM kvmigrate.fill_sources f WHERE f.tbl = o.tbl AND f.pk = o.pk)", params)
        for pk, key, field in gone:  # an owner recorded in its ledger row (see adapters.pg.owners)
            if key == own_key(spec, pk) and not field and not has_sources(conn, spec, pk):
                forget_key_owner(conn, spec, pk)
    conn.cursor().executemany(sql.SQL(
        "DELETE FROM kvmigrate.{} WHERE tbl = %s AND pk = %s AND source_key = %s AND source_field = %s"
    ).format(sql.Identifier(_store(spec))), params)


def has_sources(conn: psycopg.Connection, spec: TableSpec, pk: str) -> bool:
    """Whether kvmigrate.fill_sources holds sources of this row. Read-only."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM kvmigrate.fill_sources WHERE tbl = %s AND pk = %s)",
                       (spec.name, pk)).fetchone()
    return bool(row and row[0])


def _store(spec: TableSpec) -> str:
    """The kvmigrate table recording a table's sources: every source of a merged (fill) row,
    else each row's owner."""
    return "fill_sources" if spec.merge == "fill" else "row_origin"


def _typed(spec: TableSpec, types: Sequence[str], vals: Mapping[str, Any]) -> dict[str, Any]:
    """Values read back from JSONB, with times and dates as Python objects again."""
    out = dict(vals)
    for col, typ in zip(spec.columns, types, strict=True):
        value = out.get(col)
        if isinstance(value, str) and typ.startswith("timestamp"):
            out[col] = datetime.fromisoformat(value)
        elif isinstance(value, str) and typ == "date":
            out[col] = date.fromisoformat(value)
    return out


def _stored(row: SourcedRow) -> dict[str, Any]:
    """A source as kept in kvmigrate.fill_sources: its columns, and its meta when it has one."""
    return {**row.values, _SOURCE_META: dict(row.meta)} if row.meta else dict(row.values)

