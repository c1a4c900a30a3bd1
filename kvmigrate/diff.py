"""The diff engine behind `kvmigrate verify`: expected rows in temp tables, Postgres compares.

Expected rows (the KV side, through the same transformers and batch rules as backfill) are
COPYed into temporary tables typed like the real ones, so Postgres does the canonical
comparison: timestamps as instants, JSONB normalised, arrays in the app's order, NULL as NULL.
Every record read is also staged with the digest of its value, so that once the differences
are known, the keys whose rows all agree are recorded as verified (`ledger.verified_hash`):
cleanup deletes a key only while its value still has that digest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kvmigrate.backfill import BatchWriter
from kvmigrate.batch import Batch, table_specs
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.entities.base import TableSpec
from kvmigrate.kv.source import KvSource
from kvmigrate.pg.loader import SourcedRow, TableLoader, dedupe
from kvmigrate.records import RawRecord


@dataclass(frozen=True)
class Difference:
    kind: str  # missing | extra | different
    table: str
    pk: str
    key: str
    source_field: str = ""
    fields: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class EntityCheck:
    checked: int = 0
    missing: list[Difference] = field(default_factory=list)
    extra: list[Difference] = field(default_factory=list)
    different: list[Difference] = field(default_factory=list)
    healed: int = 0
    repaired: int = 0
    verified_keys: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)


FILE_PREFIX = "file:"
_SEEN = """
CREATE TEMP TABLE IF NOT EXISTS kvm_verify_seen (
    key TEXT, field TEXT, entity TEXT, family TEXT, redis_type TEXT, digest TEXT, status TEXT, rows INT);
CREATE TEMP TABLE IF NOT EXISTS kvm_verify_diff (tbl TEXT, pk TEXT);
TRUNCATE kvm_verify_seen;
TRUNCATE kvm_verify_diff;
"""


class Differ:
    """Stages expected rows and asks Postgres for the differences."""

    def __init__(self, conn: psycopg.Connection, chosen: Sequence[Entity], source: KvSource,
                 checks: dict[str, EntityCheck], mode: str) -> None:
        self.conn = conn
        self.chosen = chosen
        self.source = source
        self.checks = checks
        self.mode = mode
        self.specs = table_specs(chosen)
        self.loaders = {n: TableLoader(conn, s, stage_prefix="kvm_expect_") for n, s in self.specs.items()}
        for loader in self.loaders.values():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(loader.stage)))
        self.fill_rows: dict[str, list[SourcedRow]] = {n: [] for n, s in self.specs.items() if s.merge == "fill"}
        self.diffs: list[Difference] = []
        self.required = {n: loader.missing_required for n, loader in self.loaders.items()}
        conn.execute(_SEEN)

    def stage(self, records: Sequence[tuple[RawRecord, Entity]]) -> None:
        """Transform records exactly as backfill does (same batch rules) and COPY their rows
        into the expect tables; every record read is staged with its value digest."""
        batch = Batch()
        for record, entity in records:
            batch.add_outcome(entity, record, entity.transform(record), self.required)
        for table, table_rows in batch.rows.items():
            if table not in self.specs:
                continue
            if table in self.fill_rows:
                self.fill_rows[table].extend(table_rows)
            else:
                self.loaders[table].stage_rows(table_rows, truncate=False)
        with self.conn.cursor().copy("COPY kvm_verify_seen FROM STDIN") as cp:
            for e in batch.ledger:
                cp.write_row((e.key, e.field, e.entity, e.family, e.redis_type, e.value_hash, e.status, e.rows))

    def compare(self, *, extras: bool) -> None:
        for table, pending in self.fill_rows.items():
            self.loaders[table].stage_rows(dedupe(self.specs[table], pending), truncate=False)
        for table, spec in self.specs.items():
            buckets = self._differing_buckets(spec) if self.mode == "buckets" else None
            expected = expected_sql(spec, self.loaders[table].stage)
            self._count_checked(spec, expected)
            if buckets == []:
                continue
            self._missing(spec, expected, buckets)
            self._different(spec, expected, buckets)
            if extras:
                self._extra(spec, expected, buckets)
        self.conn.commit()

    def _bucket_filter(self, spec: TableSpec, alias: str, buckets: list[int] | None) -> sql.Composable:
        if buckets is None:
            return sql.SQL("TRUE")
        return sql.SQL("mod(abs(hashtext({a}.{pk}::text)), {n}) = ANY({b})").format(
            a=sql.Identifier(alias), pk=sql.Identifier(spec.pk), n=sql.Literal(self._nbuckets),
            b=sql.Literal(buckets))

    def _differing_buckets(self, spec: TableSpec) -> list[int]:
        """Per bucket of the primary key, an md5 over both sides' rows; only differing buckets
        are compared row by row."""
        stage = self.loaders[spec.name].stage
        n = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(stage))).fetchone()
        self._nbuckets = max(16, math.ceil((n[0] if n else 0) / 1000))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in spec.columns)
        agg = sql.SQL(
            "SELECT mod(abs(hashtext({pk}::text)), {n}) AS b,"
            " md5(string_agg(md5(ROW({cols})::text), '' ORDER BY {pk}::text)) AS h FROM {src} GROUP BY 1")
        query = sql.SQL("WITH e AS ({e}), a AS ({a}) SELECT coalesce(e.b, a.b) FROM e FULL JOIN a ON e.b = a.b"
                        " WHERE e.h IS DISTINCT FROM a.h").format(
            e=agg.format(pk=sql.Identifier(spec.pk), n=sql.Literal(self._nbuckets), cols=cols,
                         src=sql.SQL("({}) x").format(expected_sql(spec, stage))),
            a=agg.format(pk=sql.Identifier(spec.pk), n=sql.Literal(self._nbuckets), cols=cols,
                         src=sql.SQL("({}) y").format(self._owned_rows(spec))))
        return [int(r[0]) for r in self.conn.execute(query).fetchall()]

    def _owned_rows(self, spec: TableSpec) -> sql.Composable:
        """The table's rows that verify answers for (not placeholder users)."""
        return sql.SQL("SELECT t.* FROM {t} t LEFT JOIN kvmigrate.row_origin o ON o.tbl = {tn} AND o.pk = t.{pk}::text"
                       " WHERE coalesce(o.rank, 0) >= 0").format(
            t=sql.Identifier(spec.name), tn=sql.Literal(spec.name), pk=sql.Identifier(spec.pk))

    def _count_checked(self, spec: TableSpec, expected: sql.Composable) -> None:
        rows = self.conn.execute(sql.SQL("SELECT _src FROM ({}) e").format(expected)).fetchall()
        for (src,) in rows:
            self._check_for(src, spec).checked += 1

    def _check_for(self, source_key: str | None, spec: TableSpec) -> EntityCheck:
        name = None
        if source_key:
            name = self.entity_of(source_key)
        if name not in self.checks:
            name = next((e.name for e in self.chosen if spec in e.tables), self.chosen[0].name)
        return self.checks[name]

    def entity_of(self, source_key: str) -> str | None:
        """The entity a source key belongs to (memory files are `file:` keys)."""
        if source_key.startswith(FILE_PREFIX):
            return "memories"
        c = self.source.classifier.classify(source_key)
        return c.entity.name if c.entity is not None else None

    def _missing(self, spec: TableSpec, expected: sql.Composable, buckets: list[int] | None) -> None:
        query = sql.SQL("SELECT e.{pk}::text, e._src, e._fld FROM ({e}) e WHERE {bf} AND NOT EXISTS"
                        " (SELECT 1 FROM {t} t WHERE t.{pk} = e.{pk})").format(
            pk=sql.Identifier(spec.pk), e=expected, t=sql.Identifier(spec.name),
            bf=self._bucket_filter(spec, "e", buckets))
        for pk, src, fld in self.conn.execute(query).fetchall():
            self._add(Difference("missing", spec.name, pk, src, fld), spec)

    def _different(self, spec: TableSpec, expected: sql.Composable, buckets: list[int] | None) -> None:
        cols = [c for c in spec.columns if c != spec.pk]
        fields = sql.SQL(", ").join(
            sql.SQL("{name}, CASE WHEN e.{c} IS DISTINCT FROM t.{c} THEN jsonb_build_array(to_jsonb(e.{c}),"
                    " to_jsonb(t.{c})) END").format(name=sql.Literal(c), c=sql.Identifier(c)) for c in cols)
        row = lambda a: sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(a), sql.Identifier(c)) for c in cols)  # noqa: E731
        query = sql.SQL("SELECT e.{pk}::text, e._src, e._fld, jsonb_strip_nulls(jsonb_build_object({fields}))"
                        " FROM ({e}) e JOIN {t} t ON t.{pk} = e.{pk} WHERE {bf} AND ({er}) IS DISTINCT FROM ({tr})").format(
            pk=sql.Identifier(spec.pk), fields=fields, e=expected, t=sql.Identifier(spec.name),
            bf=self._bucket_filter(spec, "e", buckets), er=row("e"), tr=row("t"))
        for pk, src, fld, diff in self.conn.execute(query).fetchall():
            self._add(Difference("different", spec.name, pk, src, fld, diff), spec)

    def _extra(self, spec: TableSpec, expected: sql.Composable, buckets: list[int] | None) -> None:
        query = sql.SQL("SELECT t.{pk}::text, o.source_key, o.source_field FROM {t} t"
                        " LEFT JOIN kvmigrate.row_origin o ON o.tbl = {tn} AND o.pk = t.{pk}::text"
                        " WHERE coalesce(o.rank, 0) >= 0 AND {bf} AND NOT EXISTS (SELECT 1 FROM ({e}) e WHERE e.{pk} = t.{pk})").format(
            pk=sql.Identifier(spec.pk), t=sql.Identifier(spec.name), tn=sql.Literal(spec.name), e=expected,
            bf=self._bucket_filter(spec, "t", buckets))
        wanted = {e.name for e in self.chosen}
        for pk, src, fld in self.conn.execute(query).fetchall():
            if src:
                if self.entity_of(src) not in wanted:
                    continue
            elif len(wanted) < len(ENTITIES):
                continue  # a row with no recorded source: only a verify of everything answers for it
            self._add(Difference("extra", spec.name, pk, src or "", fld or ""), spec)

    def _add(self, diff: Difference, spec: TableSpec) -> None:
        self.diffs.append(diff)
        getattr(self._check_for(diff.key, spec), diff.kind).append(diff)

    def recheck(self) -> None:
        """Re-read each difference's source and row once; drop (count as healed) what now agrees."""
        fresh = self._fresh()
        for diff in list(self.diffs):
            if diff.kind != "extra" or (diff.table, diff.pk) not in fresh:
                if self._agrees(self.specs[diff.table], fresh.get((diff.table, diff.pk)), diff.pk):
                    self._resolve(diff, "healed")
        self.conn.commit()

    def repair(self, run_id: int) -> None:
        """Re-copy the sources of missing/different rows through the normal loader path, then
        re-check them; only rows that now agree count as repaired."""
        todo = [d for d in self.diffs if d.kind != "extra"]
        keys = sorted({d.key for d in todo if d.key})
        BatchWriter(self.conn, run_id).load_records(self.source.read_keys(keys))
        fresh = self._fresh()
        for diff in todo:
            if self._agrees(self.specs[diff.table], fresh.get((diff.table, diff.pk)), diff.pk):
                self._resolve(diff, "repaired")
        self.conn.commit()

    def _fresh(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The expected rows for the current differences, re-read from KV now. Merged tables
        (users) re-read every source of the entity, since several records build one row."""
        keys = {d.key for d in self.diffs if d.key}
        fill_tables = {d.table for d in self.diffs if self.specs[d.table].merge == "fill"}
        for entity in self.chosen:
            if any(t.name in fill_tables for t in entity.tables):
                keys.update(k for (k,) in self.conn.execute(
                    "SELECT DISTINCT key FROM kvmigrate.ledger WHERE entity = %s AND status = 'migrated'",
                    (entity.name,)))
        rows: dict[str, list[SourcedRow]] = {}
        for record, entity in self.source.read_keys(sorted(keys)):
            outcome = entity.transform(record)
            for row in outcome.rows if outcome.reject is None else ():
                if row.table in self.specs:
                    rows.setdefault(row.table, []).append(SourcedRow(row.values, row.rank, record.key, record.field))
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        for table, table_rows in rows.items():
            spec = self.specs[table]
            for best in dedupe(spec, table_rows):
                fresh[(table, str(best.values[spec.pk]))] = dict(best.values)
        return fresh

    def _agrees(self, spec: TableSpec, expected: dict[str, Any] | None, pk: str) -> bool:
        actual = self.conn.execute(
            sql.SQL("SELECT {cols} FROM {t} WHERE {pk}::text = %s").format(
                cols=sql.SQL(", ").join(sql.Identifier(c) for c in spec.columns), t=sql.Identifier(spec.name),
                pk=sql.Identifier(spec.pk)), (pk,)).fetchone()
        if expected is None or actual is None:
            return expected is None and actual is None
        return all(_same(expected.get(c), v) for c, v in zip(spec.columns, actual, strict=True))

    def _resolve(self, diff: Difference, how: str) -> None:
        self.diffs.remove(diff)
        check = self._check_for(diff.key, self.specs[diff.table])
        getattr(check, diff.kind).remove(diff)
        setattr(check, how, getattr(check, how) + 1)

    def delete_extra(self) -> int:
        deleted = 0
        for diff in [d for d in self.diffs if d.kind == "extra"]:
            spec = self.specs[diff.table]
            with self.conn.transaction():
                cur = self.conn.execute(sql.SQL("DELETE FROM {t} WHERE {pk}::text = %s").format(
                    t=sql.Identifier(spec.name), pk=sql.Identifier(spec.pk)), (diff.pk,))
                self.conn.execute("DELETE FROM kvmigrate.row_origin WHERE tbl = %s AND pk = %s", (spec.name, diff.pk))
            deleted += cur.rowcount
            self.diffs.remove(diff)
            self._check_for(diff.key, spec).extra.remove(diff)
        return deleted

    def record_verified(self, run_id: int) -> None:
        """Record in the ledger which keys verified: read now, and every row they produce agrees
        with Postgres. Their digest becomes `verified_hash`; keys with a remaining difference or a
        reject lose theirs. A key first seen by verify (written by a dual-writing app) and found
        consistent enters the ledger as migrated."""
        with self.conn.cursor().copy("COPY kvm_verify_diff FROM STDIN") as cp:
            for d in self.diffs:
                cp.write_row((d.table, d.pk))
        bad = sql.SQL(" UNION ").join(
            sql.SQL("SELECT e._src, e._fld FROM {s} e JOIN kvm_verify_diff d ON d.tbl = {t} AND d.pk = e.{pk}::text").format(
                s=sql.Identifier(self.loaders[n].stage), t=sql.Literal(n), pk=sql.Identifier(s.pk))
            for n, s in self.specs.items())
        self.conn.execute(sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS kvm_verify_bad (key TEXT, field TEXT); TRUNCATE kvm_verify_bad;"
            " INSERT INTO kvm_verify_bad {bad}").format(bad=bad))
        # A merged (fill) row is built from several records: a difference taints every one of them.
        differing = {(d.table, d.pk) for d in self.diffs}
        with self.conn.cursor().copy("COPY kvm_verify_bad FROM STDIN") as cp:
            for table, rows in self.fill_rows.items():
                pk = self.specs[table].pk
                for row in rows:
                    if (table, str(row.values[pk])) in differing:
                        cp.write_row((row.source_key, row.source_field))
        self.conn.execute(
            "UPDATE kvmigrate.ledger l SET verified_hash = NULL, verified_at = NULL FROM kvm_verify_seen s"
            " WHERE l.key = s.key AND l.field = s.field AND (s.status <> 'migrated' OR EXISTS"
            " (SELECT 1 FROM kvm_verify_bad b WHERE b.key = s.key AND b.field = s.field))")
        cur = self.conn.execute(
            "INSERT INTO kvmigrate.ledger AS l (key, field, entity, family, redis_type, value_hash, status, rows,"
            " run_id, verified_hash, verified_at)"
            " SELECT DISTINCT ON (key, field) key, field, entity, family, redis_type, digest, 'migrated', rows, %s,"
            " digest, now() FROM kvm_verify_seen s WHERE s.status = 'migrated' AND NOT EXISTS"
            " (SELECT 1 FROM kvm_verify_bad b WHERE b.key = s.key AND b.field = s.field) ORDER BY key, field"
            " ON CONFLICT (key, field) DO UPDATE SET verified_hash = EXCLUDED.verified_hash,"
            " verified_at = EXCLUDED.verified_at WHERE l.status = 'migrated'"
            " RETURNING l.entity", (run_id,))
        for (entity,) in cur.fetchall():
            if entity in self.checks:
                self.checks[entity].verified_keys += 1
        self.conn.commit()


def expected_sql(spec: TableSpec, stage: str) -> sql.Composable:
    """The expected row per primary key: the highest-ranked source's (merged already for fill)."""
    return sql.SQL("SELECT DISTINCT ON ({pk}) * FROM {s} ORDER BY {pk}, _rank DESC, _src DESC, _fld DESC").format(
        pk=sql.Identifier(spec.pk), s=sql.Identifier(stage))


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return list(expected) == list(actual)
    return bool(expected == actual)
