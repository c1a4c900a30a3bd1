"""The diff engine behind `kvmigrate verify`: expected rows in temp tables, Postgres compares.

Expected rows (the KV side, through the same transformers and batch rules as backfill) are
COPYed into temporary tables typed like the real ones, so Postgres does the canonical
comparison: timestamps as instants, JSONB normalised, arrays in the app's order, NULL as NULL.
Everything is set-based: memory stays bounded by a page of records, whatever the keyspace
size (merged `fill` rows are staged as read and merged a chunk at a time, see expected_merge).
A difference is re-checked by re-reading every source of its row (and, for a row with no KV
source, the keys that would hold it) and comparing again the same way.
Every record read is also staged with the digest of its value, so that once the differences
are known, the keys whose rows all agree are recorded as verified (`ledger.verified_hash`):
cleanup deletes a key only while its value still has that digest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from kvmigrate.adapters.files.memories import iter_memory_records
from kvmigrate.adapters.kv.source import KvSource
from kvmigrate.adapters.pg.flags import postgres_written
from kvmigrate.adapters.pg.ledger import verified_hash
from kvmigrate.adapters.pg.loader import TableLoader, dedupe
from kvmigrate.adapters.pg.sources import forget_sources, recorded_sources
from kvmigrate.adapters.pg.stats import STATE_TABLES, analyze, stale
from kvmigrate.adapters.pg.verify_sql import owned_rows, skip_unread_owners, unexpected_rows
from kvmigrate.engine.batch import Batch, table_specs
from kvmigrate.engine.expected_merge import merge_sources_staged, merge_staged, stage_sources
from kvmigrate.engine.expected_merge import prepare as prepare_expected
from kvmigrate.engine.repair_guard import LossGuard, load_lossless
from kvmigrate.engine.writer import BatchWriter
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.entities.base import TableSpec
from kvmigrate.entities.memories import MEMORIES
from kvmigrate.model.differences import Difference, EntityCheck
from kvmigrate.model.records import RawRecord

FILE_PREFIX = "file:"
_GLOB = re.compile(r"[*?\[]")
_SEEN = """
CREATE TEMP TABLE IF NOT EXISTS kvm_verify_seen (
    key TEXT, field TEXT, entity TEXT, family TEXT, redis_type TEXT, digest TEXT, status TEXT, rows INT);
CREATE TEMP TABLE IF NOT EXISTS kvm_verify_diff (tbl TEXT, pk TEXT);
CREATE TEMP TABLE IF NOT EXISTS kvm_verify_bad (key TEXT, field TEXT);
TRUNCATE kvm_verify_seen, kvm_verify_diff, kvm_verify_bad;
"""
#: Each key read with its entity, indexed: every table's count joins it (made once per compare;
#: distinct keys of the seen records taken again for each table cost 0.1-0.2 s a table at 200k keys)
_KEYS = """
DROP TABLE IF EXISTS kvm_verify_keys;
CREATE TEMP TABLE kvm_verify_keys AS SELECT DISTINCT key, entity FROM kvm_verify_seen;
CREATE INDEX ON kvm_verify_keys (key);
"""


class Differ:
    """Stages expected rows and asks Postgres for the differences.

    `memories` is the folder memory records (`file:` keys) are re-read from; `sampled` means
    only some records were staged, so a row whose Postgres owner is a higher-ranked source
    that was not read is left out of the comparison (and not counted)."""

    def __init__(self, conn: psycopg.Connection, chosen: Sequence[Entity], source: KvSource,
                 checks: dict[str, EntityCheck], mode: str, *, memories: Path | None = None,
                 sampled: bool = False) -> None:
        self.conn = conn
        self.chosen = chosen
        self.source = source
        self.checks = checks
        self.mode = "rows" if sampled else mode
        self.memories = memories
        self.sampled = sampled
        self.specs = table_specs(chosen)
        self.loaders = {n: TableLoader(conn, s, stage_prefix="kvm_expect_") for n, s in self.specs.items()}
        self.fresh = {n: TableLoader(conn, s, stage_prefix="kvm_recheck_") for n, s in self.specs.items()}
        for loader in self.loaders.values():
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(loader.stage)))
        # Merged tables, staged as read and merged once the scan is done (see expected_merge):
        # a derivable table's rows through a second stage, any other's sources with their meta.
        self.sourced = {n for n, s in self.specs.items() if s.merge == "fill" and not s.derivable}
        self.merged = {n: TableLoader(conn, s, stage_prefix="kvm_merged_")
                       for n, s in self.specs.items() if s.merge == "fill" and s.derivable}
        self.diffs: list[Difference] = []
        self.healed: list[Difference] = []
        self.superseded: list[Difference] = []
        self.forgotten = 0  # recorded sources repair found gone from KV
        self.required = {n: loader.missing_required for n, loader in self.loaders.items()}
        self.postgres_writes = postgres_written(conn)  # entities whose source of truth is Postgres now
        conn.execute(_SEEN)
        prepare_expected(conn)
        conn.commit()  # the temp tables must outlive any rollback of a later read

    def stage(self, records: Sequence[tuple[RawRecord, Entity]]) -> None:
        """Transform records exactly as backfill does (same batch rules) and COPY their rows
        into the expect tables; every record read is staged with its value digest."""
        batch = self._batch(records)
        for table, table_rows in batch.rows.items():
            if table in self.sourced:
                stage_sources(self.conn, self.specs[table], table_rows)
            else:
                self.loaders[table].stage_rows(table_rows, truncate=False)
        with self.conn.cursor().copy("COPY kvm_verify_seen FROM STDIN") as cp:
            for e in batch.ledger:
                cp.write_row((e.key, e.field, e.entity, e.family, e.redis_type, e.value_hash, e.status, e.rows))

    def _batch(self, records: Iterable[tuple[RawRecord, Entity]]) -> Batch:
        batch = Batch()
        for record, entity in records:
            batch.add_outcome(entity, record, entity.transform(record), self.required)
        for table in [t for t in batch.rows if t not in self.specs]:
            del batch.rows[table]
        return batch

    def compare(self, *, extras: bool) -> None:
        """Find missing, different and (with `extras`) extra rows of every table."""
        for table in self.sourced:
            merge_sources_staged(self.conn, self.loaders[table])
        for table, merged in self.merged.items():
            merge_staged(self.conn, self.loaders[table], merged)
        # The entity of each key read, once for every table's count (see `_count_checked`)
        self.conn.execute(_KEYS)
        # Temp tables are never auto-analyzed, and the app's tables and the ledger may carry
        # figures sampled half-way through a backfill (those analyzed since are left alone).
        analyze(self.conn, ["kvm_verify_seen", "kvm_verify_keys", *(loader.stage for loader in self.loaders.values()),
                            *stale(self.conn, [*STATE_TABLES, *self.specs])])
        self.conn.commit()  # ANALYZE's lock on the app's tables is not held through the comparison
        for spec in self.specs.values():
            expected = self._expected(spec)
            self._count_checked(self._expected(spec, narrow=True))
            buckets = self._differing_buckets(spec, expected) if self.mode == "buckets" else None
            if buckets == []:
                continue
            self._missing(spec, expected, buckets)
            self._different(spec, expected, buckets)
            if extras:
                self._extra(spec, buckets)
        self.conn.commit()

    def _expected(self, spec: TableSpec, *, narrow: bool = False) -> sql.Composable:
        """The expected rows: one per primary key, the highest-ranked source's (merged already
        for fill). In a sample, rows Postgres owns through a higher source left unread are skipped.
        `narrow`: only the primary key and the source of each (what counting them needs)."""
        query = expected_sql(spec, self.loaders[spec.name].stage, narrow=narrow)
        if not self.sampled:
            return query
        return skip_unread_owners(query, spec)

    def _bucket_filter(self, spec: TableSpec, alias: str, buckets: list[int] | None) -> sql.Composable:
        pk = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(spec.pk))
        return sql.SQL("TRUE") if buckets is None else sql.SQL("{} = ANY({})").format(self._bucket(pk), buckets)

    def _bucket(self, pk: sql.Composable) -> sql.Composable:
        return sql.SQL("mod(abs(hashtext({}::text)::bigint), {})").format(pk, sql.Literal(self._nbuckets))

    def _differing_buckets(self, spec: TableSpec, expected: sql.Composable) -> list[int]:
        """Per bucket of the primary key, an md5 over both sides' rows; only differing buckets
        are compared row by row."""
        stage = self.loaders[spec.name].stage
        n = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(stage))).fetchone()
        self._nbuckets = max(16, math.ceil((n[0] if n else 0) / 1000))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in spec.columns)
        pk = sql.Identifier(spec.pk)
        agg = sql.SQL("SELECT {b} AS b, md5(string_agg(md5(ROW({cols})::text), '' ORDER BY {pk}::text)) AS h"
                      " FROM {src} GROUP BY 1")
        query = sql.SQL("WITH e AS ({e}), a AS ({a}) SELECT coalesce(e.b, a.b) FROM e FULL JOIN a ON e.b = a.b"
                        " WHERE e.h IS DISTINCT FROM a.h").format(
            e=agg.format(b=self._bucket(pk), cols=cols, pk=pk, src=sql.SQL("({}) x").format(expected)),
            a=agg.format(b=self._bucket(pk), cols=cols, pk=pk, src=sql.SQL("({}) y").format(owned_rows(spec))))
        return [int(r[0]) for r in self.conn.execute(query).fetchall()]

    def _count_checked(self, expected: sql.Composable) -> None:
        """Expected rows per entity (of their source key), counted in Postgres."""
        rows = self.conn.execute(sql.SQL(
            "SELECT s.entity, count(*) FROM ({e}) e JOIN kvm_verify_keys s ON s.key = e._src GROUP BY 1").format(
                e=expected)).fetchall()
        for entity, n in rows:
            if entity in self.checks:
                self.checks[entity].checked += int(n)

    def _check_for(self, source_key: str | None, spec: TableSpec) -> EntityCheck:
        name = self.entity_of(source_key) if source_key else None
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
        fields = sql.SQL(" || ").join(
            sql.SQL("CASE WHEN e.{c} IS DISTINCT FROM t.{c} THEN jsonb_build_object({name}, jsonb_build_array("
                    "to_jsonb(e.{c}), to_jsonb(t.{c}))) ELSE '{{}}'::jsonb END").format(
                name=sql.Literal(c), c=sql.Identifier(c)) for c in cols)
        query = sql.SQL("SELECT e.{pk}::text, e._src, e._fld, {fields} FROM ({e}) e JOIN {t} t ON t.{pk} = e.{pk}"
                        " WHERE {bf} AND ({er}) IS DISTINCT FROM ({tr})").format(
            pk=sql.Identifier(spec.pk), fields=fields, e=expected, t=sql.Identifier(spec.name),
            bf=self._bucket_filter(spec, "e", buckets), er=_row("e", cols), tr=_row("t", cols))
        for pk, src, fld, diff in self.conn.execute(query).fetchall():
            self._add(Difference("different", spec.name, pk, src, fld, diff), spec)

    def _extra(self, spec: TableSpec, buckets: list[int] | None) -> None:
        """Rows with no expected row. A row whose source belongs to an entity not verified now is
        not ours to judge; a row whose source key cleanup archived and deleted is not extra; a row
        with no recorded source (written by the app) is reported when every entity writing its
        table is verified and still writes to KV. Placeholder users are never extra."""
        rows = unexpected_rows(self.conn, spec, self.loaders[spec.name].stage,
                               self._bucket_filter(spec, "t", buckets))
        wanted = {e.name for e in self.chosen}
        writers = {e.name for e in ENTITIES if spec in e.tables}
        # a row with no KV source is the app's own once its entity writes to Postgres only
        owns_sourceless = writers <= wanted and not writers & self.postgres_writes
        for pk, src, fld in rows:
            if (self.entity_of(src) in wanted) if src else owns_sourceless:
                self._add(Difference("extra", spec.name, pk, src or "", fld or ""), spec)

    def _add(self, diff: Difference, spec: TableSpec) -> None:
        self.diffs.append(diff)
        getattr(self._check_for(diff.key, spec), diff.kind).append(diff)

    def recheck(self) -> None:
        """Re-read every source of each difference's row once and drop (count as healed) the
        differences that now agree: writes that were in flight. In chunks of a scan page."""
        self.healed = [d for chunk in _chunks(self.diffs, self.source.count) for d in self._agreeing(chunk)]
        self.resolve(self.healed, "healed")
        self.conn.commit()

    def repair(self, run_id: int, *, allow_lossy: bool = False) -> None:
        """Re-copy every source of the missing/different rows through the normal loader path
        (all sources of a merged row in one batch), then compare them again; only rows that
        now agree count as repaired. For entities that write to Postgres only, Postgres is the
        source of truth: only a missing row whose key never verified (a write Postgres never got)
        is re-copied; their other differences stay reported. Unless `allow_lossy`, a row the
        load would replace with less than it holds is left as it was (see `load_lossless`)."""
        writer = BatchWriter(self.conn, run_id)
        guard = LossGuard(self.conn, self.specs, {n: f.types[list(f.spec.columns).index(f.spec.pk)]
                                                  for n, f in self.fresh.items()})
        repaired: list[Difference] = []
        todo = [d for d in self.diffs if d.kind != "extra" and self._repairable(d)]
        for chunk in _chunks(todo, self.source.count):
            stored = {table: recorded_sources(self.conn, self.specs[table], pks) for table, pks in _pks_by_table(chunk).items()}
            records = self._reread(chunk, also={key for rows in stored.values() for _, key, _ in rows})
            records = load_lossless(self, writer, guard, chunk, stored, records, allow_lossy=allow_lossy)
            repaired.extend(self._agreeing(chunk, records))
        self.resolve(repaired, "repaired")
        self.conn.commit()

    def _repairable(self, d: Difference) -> bool:
        if self.entity_of(d.key) not in self.postgres_writes:
            return True
        if d.kind != "missing":
            return False
        return verified_hash(self.conn, d.key, d.source_field) is None

    def _agreeing(self, diffs: Sequence[Difference],
                  records: list[tuple[RawRecord, Entity]] | None = None) -> list[Difference]:
        """The differences whose row now agrees with its sources read now (`records`, else
        re-read): compared in Postgres exactly like the first time."""
        batch = self._batch(self._reread(diffs) if records is None else records)
        agree: set[tuple[str, str]] = set()
        for table, pks in _pks_by_table(diffs).items():
            spec, fresh = self.specs[table], self.fresh[table]
            fresh.stage_rows(dedupe(spec, batch.rows.get(table, [])))
            cols = list(spec.columns)
            pk_type = sql.SQL(fresh.types[cols.index(spec.pk)])
            query = sql.SQL("SELECT d.pk FROM unnest({pks}::text[]) d(pk)"
                            " LEFT JOIN {f} e ON e.{pk} = d.pk::{pt} LEFT JOIN {t} t ON t.{pk} = d.pk::{pt}"
                            " WHERE ({er}) IS NOT DISTINCT FROM ({tr})").format(
                pks=sql.Literal(sorted(pks)), f=sql.Identifier(fresh.stage), pk=sql.Identifier(spec.pk),
                pt=pk_type, t=sql.Identifier(table), er=_row("e", cols), tr=_row("t", cols))
            agree.update((table, pk) for (pk,) in self.conn.execute(query).fetchall())
        return [d for d in diffs if (d.table, d.pk) in agree]

    def _forget_gone_sources(self, stored: dict[str, list[tuple[str, str, str]]],
                             records: list[tuple[RawRecord, Entity]]) -> int:
        """Forget the recorded sources (`stored`, per table) that no longer give their row a
        row: a key deleted from KV since it was copied (the app's weekly `msg:*` clean-up) or
        changed to hold another row. Until cleanup KV is the source of truth, and reads from
        Postgres must show what reads from KV show now; so the sources that remain decide the
        row, and the reload that follows can re-derive it. Memory files count as gone only when read.
        Returns how many were forgotten."""
        batch, forgotten = self._batch(records), 0
        for table, rows in stored.items():
            spec = self.specs[table]
            now = {(str(r.values[spec.pk]), r.source_key, r.source_field) for r in batch.rows.get(table, [])}
            gone = [(pk, key, field) for pk, key, field in rows if (pk, key, field) not in now
                    and (self.memories is not None or not key.startswith(FILE_PREFIX))]
            if gone:
                forget_sources(self.conn, spec, gone)
                forgotten += len(gone)
        return forgotten

    def _reread(self, diffs: Sequence[Difference], *, also: Iterable[str] = ()) -> list[tuple[RawRecord, Entity]]:
        """Read now every source of the differing rows and the keys in `also`, plus, for extra
        rows, the keys that would hold them (a key the app wrote after the scan passed)."""
        keys = {d.key for d in diffs if d.key} | {k for k in also if k}
        for table, pks in _pks_by_table(diffs).items():
            keys.update(self._sources(self.specs[table], pks))
        for d in diffs:
            if d.kind == "extra":
                keys.update(self._candidates(self.specs[d.table], d.pk))
        files = {k for k in keys if k.startswith(FILE_PREFIX)}
        out = self.source.read_keys(sorted(keys - files))
        if files and self.memories is not None:
            out.extend((r, MEMORIES) for r in iter_memory_records(self.memories) if r.key in files)
        return out

    def _sources(self, spec: TableSpec, pks: set[str]) -> set[str]:
        """Every source key staged for these rows."""
        if spec.name in self.sourced or spec.name in self.merged:
            return {src for (src,) in self.conn.execute("SELECT DISTINCT src FROM kvm_expect_keys WHERE tbl = %s"
                                                        " AND pk = ANY(%s)", (spec.name, sorted(pks))).fetchall()}
        query = sql.SQL("SELECT DISTINCT _src FROM {s} WHERE {pk}::text = ANY({pks})").format(
            s=sql.Identifier(self.loaders[spec.name].stage), pk=sql.Identifier(spec.pk), pks=sql.Literal(sorted(pks)))
        return {src for (src,) in self.conn.execute(query).fetchall()}

    def _candidates(self, spec: TableSpec, pk: str) -> set[str]:
        """Keys that could hold the row `pk` of `spec`: every exact key its entities read (a
        registry hash, an archive), and `prefix + pk` for each `prefix*` family."""
        out: set[str] = set()
        for entity in self.chosen:
            for fam in entity.families if spec in entity.tables else ():
                if fam.index:
                    continue
                if not _GLOB.search(fam.pattern):
                    out.add(fam.pattern)
                elif fam.pattern.endswith("*") and not _GLOB.search(fam.pattern[:-1]):
                    out.add(fam.pattern[:-1] + pk)
        return out

    def resolve(self, done: Sequence[Difference], how: str | None) -> None:
        """Drop `done` from the reported differences, counting each under `how`."""
        gone = {id(d) for d in done}
        self.diffs = [d for d in self.diffs if id(d) not in gone]
        for check in self.checks.values():
            for kind in ("missing", "extra", "different"):
                setattr(check, kind, [d for d in getattr(check, kind) if id(d) not in gone])
        for d in done:
            check = self._check_for(d.key, self.specs[d.table])
            if how is not None:
                setattr(check, how, getattr(check, how) + 1)


def expected_sql(spec: TableSpec, stage: str, *, narrow: bool = False) -> sql.Composable:
    """The expected row per primary key: the highest-ranked source's (merged already for fill).
    `narrow`: its primary key and source only, which Postgres sorts in a fraction of the memory
    whole rows take (whole rows of 200k keys' messages spill the sort to disk)."""
    cols = sql.SQL("{pk}, _rank, _src, _fld" if narrow else "*").format(pk=sql.Identifier(spec.pk))
    return sql.SQL("SELECT DISTINCT ON ({pk}) {cols} FROM {s} ORDER BY {pk}, _rank DESC, _src DESC, _fld DESC").format(
        pk=sql.Identifier(spec.pk), cols=cols, s=sql.Identifier(stage))


def _row(alias: str, cols: Sequence[str]) -> sql.Composable:
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in cols))


def _chunks(diffs: Sequence[Difference], size: int) -> list[list[Difference]]:
    return [list(diffs[i:i + size]) for i in range(0, len(diffs), size)]


def _pks_by_table(diffs: Iterable[Difference]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in diffs:
        out.setdefault(d.table, set()).add(d.pk)
    return out
