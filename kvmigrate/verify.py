"""`kvmigrate verify`: prove KV and Postgres agree, field by field.

The KV side goes through the same scanner and transformers as backfill, so values are compared
in exactly the form they were loaded. Expected rows are streamed (COPY) into temporary tables
typed like the real ones, so Postgres itself does the canonical comparison: timestamps as
instants, JSONB normalised, arrays in the app's order, NULLs as NULLs. Three kinds of result:
missing (expected, absent), extra (in Postgres, no KV source), different (with both values per
field). Differences are re-checked once after `recheck_delay` seconds, so writes in flight from
a dual-writing app are counted as healed, not reported. Read-only unless `repair`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kvmigrate import state
from kvmigrate.backfill import BatchWriter, require_schema
from kvmigrate.batch import table_specs
from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv, connect_pg
from kvmigrate.entities import ENTITIES, Entity, select_entities
from kvmigrate.entities.base import TableSpec
from kvmigrate.errors import ConfigError
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

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)


@dataclass
class VerifyResult:
    mode: str
    sampled: int | None
    budget: RequestBudget
    entities: dict[str, EntityCheck]
    run_id: int | None = None
    extra_deleted: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return all(e.clean for e in self.entities.values())

    def confidence(self) -> str | None:
        """For a sample with no difference: the rule of three (95% upper bound on the rate)."""
        if not self.sampled:
            return None
        checked = sum(e.checked for e in self.entities.values())
        if not self.clean or not checked:
            return None
        return (f"no difference in {checked} sampled rows: with 95% confidence fewer than "
                f"{300 / checked:.2g}% of rows differ; run a full verify before cutover")


def run_verify(
    config: Config,
    *,
    entities: Sequence[str] = (),
    mode: str = "rows",
    sample: int | None = None,
    recheck_delay: float = 3.0,
    repair: bool = False,
    repair_extra: bool = False,
    seed: int | None = None,
) -> VerifyResult:
    """Diff KV against Postgres for the chosen entities and record the result per entity.

    Costs the same KV commands as a backfill scan (about 2 per 1,000 string keys), or, with
    `sample`, one read per sampled batch; plus one read per difference re-checked. Writes only
    kvmigrate's records, unless `repair` (re-copies rows) or `repair_extra` (deletes rows).
    """
    if mode not in ("rows", "buckets"):
        raise ConfigError(f"unknown verify mode {mode!r}", hint="use --mode rows or --mode buckets")
    chosen = select_entities(entities)
    budget = RequestBudget(cap=config.max_requests, phase="verify")
    started = time.perf_counter()
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        require_schema(conn)
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
        source = KvSource(kv, chosen, count=config.scan_count, use_eval=config.use_eval)
        run_id = state.start_run(conn, "verify", dry_run=False, options={"mode": mode, "sample": sample})
        result = VerifyResult(mode, sample, budget, {e.name: EntityCheck() for e in chosen}, run_id)
        differ = _Differ(conn, chosen, source, result, mode)
        if sample:
            differ.stage(_sample_records(conn, source, chosen, sample, seed))
        else:
            for page in source.pages():
                differ.stage(page.records)
        differ.compare(extras=not sample)
        if differ.diffs and recheck_delay > 0:
            time.sleep(recheck_delay)
        if differ.diffs:
            differ.recheck()
        if repair and differ.diffs:
            differ.repair(run_id)
        if repair_extra:
            result.extra_deleted = differ.delete_extra()
        result.seconds = time.perf_counter() - started
        _record(conn, result, run_id)
        return result


class _Differ:
    """Stages expected rows and asks Postgres for the differences."""

    def __init__(self, conn: psycopg.Connection, chosen: Sequence[Entity], source: KvSource,
                 result: VerifyResult, mode: str) -> None:
        self.conn = conn
        self.chosen = chosen
        self.source = source
        self.result = result
        self.mode = mode
        self.specs = table_specs(chosen)
        self.loaders = {n: TableLoader(conn, s, stage_prefix="kvm_expect_") for n, s in self.specs.items()}
        for loader in self.loaders.values():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(loader.stage)))
        self.fill_rows: dict[str, list[SourcedRow]] = {n: [] for n, s in self.specs.items() if s.merge == "fill"}
        self.diffs: list[Difference] = []

    def stage(self, records: Sequence[tuple[RawRecord, Entity]]) -> None:
        """Transform records and COPY their rows into the expect tables (rejects are skipped)."""
        rows: dict[str, list[SourcedRow]] = {n: [] for n in self.specs}
        for record, entity in records:
            outcome = entity.transform(record)
            if outcome.reject is not None:
                continue
            for row in outcome.rows:
                if row.table in rows:
                    rows[row.table].append(SourcedRow(row.values, row.rank, record.key, record.field))
        for table, table_rows in rows.items():
            if table in self.fill_rows:
                self.fill_rows[table].extend(table_rows)
            else:
                self.loaders[table].stage_rows(table_rows, truncate=False)

    def compare(self, *, extras: bool) -> None:
        for table, pending in self.fill_rows.items():
            self.loaders[table].stage_rows(dedupe(self.specs[table], pending), truncate=False)
        for table, spec in self.specs.items():
            buckets = self._differing_buckets(spec) if self.mode == "buckets" else None
            expected = _expected_sql(spec, self.loaders[table].stage)
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
                         src=sql.SQL("({}) x").format(_expected_sql(spec, stage))),
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
            c = self.source.classifier.classify(source_key)
            name = c.entity.name if c.entity is not None else None
        if name not in self.result.entities:
            name = next((e.name for e in self.chosen if spec in e.tables), self.chosen[0].name)
        return self.result.entities[name]

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
                c = self.source.classifier.classify(src)
                if c.entity is None or c.entity.name not in wanted:
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


def _expected_sql(spec: TableSpec, stage: str) -> sql.Composable:
    """The expected row per primary key: the highest-ranked source's (merged already for fill)."""
    return sql.SQL("SELECT DISTINCT ON ({pk}) * FROM {s} ORDER BY {pk}, _rank DESC, _src DESC, _fld DESC").format(
        pk=sql.Identifier(spec.pk), s=sql.Identifier(stage))


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return list(expected) == list(actual)
    return bool(expected == actual)


def _sample_records(conn: psycopg.Connection, source: KvSource, chosen: Sequence[Entity], n: int,
                    seed: int | None) -> list[tuple[RawRecord, Entity]]:
    """N random migrated records per entity, from the ledger; read from KV in one batch each."""
    rng = random.Random(seed)
    out: list[tuple[RawRecord, Entity]] = []
    for entity in chosen:
        keys = [k for (k,) in conn.execute(
            "SELECT DISTINCT key FROM kvmigrate.ledger WHERE entity = %s AND status = 'migrated'", (entity.name,))]
        conn.rollback()
        picked = rng.sample(keys, min(n, len(keys)))
        out.extend((r, e) for r, e in source.read_keys(picked) if e.name == entity.name)
    return out


def _record(conn: psycopg.Connection, result: VerifyResult, run_id: int) -> None:
    from kvmigrate.report import to_dict

    conn.rollback()
    with conn.transaction():
        for name, check in result.entities.items():
            conn.execute(
                "INSERT INTO kvmigrate.verify_results (run_id, entity, mode, sampled, checked, missing, extra,"
                " different, healed, clean) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, name, result.mode, bool(result.sampled), check.checked, len(check.missing),
                 len(check.extra), len(check.different), check.healed, check.clean))
    state.finish_run(conn, run_id, status="ok", budget=result.budget, result=to_dict(result))
