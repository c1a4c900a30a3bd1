"""Backfill: stream every KV record through its entity's transformer into Postgres.

One pass of `SCAN` over the whole keyspace; each page is classified by key name (kept and
unknown keys are never read), read in one batch (one EVAL, or MGET + pipelines), transformed,
and loaded in ONE transaction together with its ledger rows, rejects and the scan checkpoint.
Killed at any moment, the next run resumes from the last committed page; an unchanged rerun
writes 0 rows. The KV connection is read-only: backfill never writes to KV.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from kvmigrate import state
from kvmigrate.batch import Batch, Tally, table_specs
from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv, connect_pg
from kvmigrate.entities import ENTITIES, Entity, select_entities
from kvmigrate.errors import BudgetExhausted, ConfigError, GateRefused
from kvmigrate.kv.classify import Classifier
from kvmigrate.kv.client import KvClient
from kvmigrate.kv.scanner import BatchReader, KeyValue, hscan_records, scan_pages
from kvmigrate.pg.loader import LoadStats, TableLoader, dedupe
from kvmigrate.pg.migrations import applied_checksums, load_migrations
from kvmigrate.records import RawRecord

LOCK_BACKFILL = 0x6B766D62  # "kvmb": one backfill at a time per database

#: Called after each committed page with (keys scanned so far, keys in the store, tallies).
Progress = Callable[[int, int, dict[str, Tally]], None]


@dataclass
class BackfillResult:
    run_id: int | None
    dry_run: bool
    budget: RequestBudget
    tallies: dict[str, Tally] = field(default_factory=dict)
    kept_patterns: Counter[str] = field(default_factory=Counter)
    unknown_patterns: dict[str, list[object]] = field(default_factory=dict)
    placeholders: int = 0
    dangling_refs: int = 0
    resumed_from: int | None = None
    complete: bool = False
    fallback_reason: str | None = None
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(t.rejected + t.item_rejects for t in self.tallies.values())


@dataclass
class _Run:
    """The moving parts of one backfill run."""

    config: Config
    conn: psycopg.Connection
    kv: KvClient
    entities: tuple[Entity, ...]
    result: BackfillResult
    loaders: dict[str, TableLoader] = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    seen_messages: set[str] = field(default_factory=set)


def require_schema(conn: psycopg.Connection) -> None:
    """Refuse to run before `kvmigrate setup` has applied every schema file."""
    applied = applied_checksums(conn)
    conn.rollback()
    if len(applied) < len(load_migrations()):
        raise ConfigError("the schema is not set up in this database", hint="run `kvmigrate setup` first")


def run_backfill(
    config: Config,
    *,
    entities: Sequence[str] = (),
    dry_run: bool = False,
    restart: bool = False,
    memories_dir: Path | None = None,
    progress: Progress | None = None,
) -> BackfillResult:
    """Copy KV history into Postgres. Writes Postgres (not with dry_run); never writes KV.

    Costs about 1 SCAN per `scan_count` keys plus 1 EVAL per page (or MGET + 1 per non-string
    key without scripting) plus 1 HSCAN per 1,000 fields of a registry hash.
    """
    chosen = select_entities(entities)
    budget = RequestBudget(cap=config.max_requests, phase="backfill")
    started = time.perf_counter()
    conn = connect_pg(config.require_pg(), retries=config.connect_retries)
    try:
        require_schema(conn)
        _lock(conn)
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
        run_id = None if dry_run else state.start_run(
            conn, "backfill", dry_run=False, options={"entities": [e.name for e in chosen], "restart": restart})
        run = _Run(config, conn, kv, chosen, BackfillResult(run_id, dry_run, budget))
        try:
            _scan(run, restart=restart, progress=progress)
            _memories(run, memories_dir, explicit="memories" in entities)
            _finish(run)
        except BudgetExhausted:
            _close(run, "stopped")
            raise
        except BaseException:
            _close(run, "failed")
            raise
        run.result.seconds = time.perf_counter() - started
        _close(run, "ok")
        return run.result
    finally:
        conn.close()


def _lock(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_BACKFILL,)).fetchone()
    conn.commit()
    if not row or not row[0]:
        raise GateRefused(
            "another backfill is running against this database",
            hint="wait for it to finish (see `kvmigrate status`), then run this again",
        )


def _checkpoint_name(run: _Run) -> str:
    names = sorted(e.name for e in run.entities)
    return "backfill:" + ("all" if len(names) == len(ENTITIES) else ",".join(names))


def _scan(run: _Run, *, restart: bool, progress: Progress | None) -> None:
    name = _checkpoint_name(run)
    cursor = 0 if restart or run.result.dry_run else (state.get_checkpoint(run.conn, name) or 0)
    run.conn.rollback()
    run.result.resumed_from = cursor or None
    classifier = Classifier(ENTITIES)
    reader = BatchReader(run.kv, use_eval=run.config.use_eval)
    wanted = {e.name for e in run.entities}
    keys_seen = 0
    total = int(run.kv.call("DBSIZE"))  # 1 command, for the progress bar
    for next_cursor, keys in scan_pages(run.kv, cursor=cursor, count=run.config.scan_count):
        batch = Batch()
        to_read: list[tuple[str, Entity, object]] = []
        for key in keys:
            c = classifier.classify(key)
            if c.status != "entity":
                batch.note_policy(key, c.status, c.pattern)
            elif c.entity is not None and c.entity.name in wanted:
                to_read.append((key, c.entity, c.family))
        for record, entity in _read(run, reader, to_read):
            batch.add_outcome(entity, record, entity.transform(record), _required(run))
        _commit(run, batch, checkpoint=(name, next_cursor))
        keys_seen += len(keys)
        if progress:
            progress(keys_seen, total, run.result.tallies)
    run.result.complete = True
    run.result.fallback_reason = reader.fallback_reason
    if not run.result.dry_run:
        with run.conn.transaction():
            state.clear_checkpoint(run.conn, name)


def _read(run: _Run, reader: BatchReader, items: list[tuple[str, Entity, object]]) -> Iterator[tuple[RawRecord, Entity]]:
    """Read a page's entity keys: split registry hashes by HSCAN, the rest in one batch."""
    plain = [(k, e, f) for k, e, f in items if not getattr(f, "split_fields", False)]
    for key, entity, family in items:
        if getattr(family, "split_fields", False):
            seen: set[str] = set()
            for record in hscan_records(run.kv, key, family, count=run.config.scan_count):  # type: ignore[arg-type]
                if record.field not in seen:
                    seen.add(record.field)
                    yield record, entity
    values = reader.read([k for k, _, _ in plain], [f for _, _, f in plain])  # type: ignore[misc]
    for kv_value, (_, entity, family) in zip(values, plain, strict=True):
        if kv_value.redis_type == "none":
            continue  # deleted since SCAN listed it: nothing to migrate, nothing to account
        yield _record(kv_value, family.name), entity  # type: ignore[attr-defined]


def _record(kv_value: KeyValue, family: str) -> RawRecord:
    return RawRecord(kv_value.key, kv_value.redis_type, kv_value.value, "", family)  # type: ignore[arg-type]


def _required(run: _Run) -> dict[str, Callable[..., str | None]]:
    if run.result.dry_run:
        return {}
    _ensure_loaders(run)
    return {name: loader.missing_required for name, loader in run.loaders.items()}


def _ensure_loaders(run: _Run) -> None:
    if run.loaders:
        return
    specs = table_specs(sorted(ENTITIES, key=lambda e: e.load_order))
    for name, spec in specs.items():
        run.loaders[name] = TableLoader(run.conn, spec)
    run.conn.commit()


def _commit(run: _Run, batch: Batch, *, checkpoint: tuple[str, int] | None) -> None:
    """Load one batch: rows (users first), ledger, rejects and checkpoint in one transaction."""
    result = run.result
    for name, tally in batch.tallies.items():
        result.tallies.setdefault(name, Tally()).add(tally)
    result.kept_patterns.update(batch.kept_patterns)
    for pattern, (count, example) in batch.unknown_patterns.items():
        slot = result.unknown_patterns.setdefault(pattern, [0, example])
        slot[0] = int(slot[0]) + int(count)  # type: ignore[call-overload]
    run.refs.update(batch.refs)
    if result.dry_run:
        run.seen_messages.update(str(r.values["id"]) for r in batch.rows.get("messages", ()))
        return
    _ensure_loaders(run)
    with run.conn.transaction():
        for table, loader in run.loaders.items():
            stats = loader.load(dedupe(loader.spec, batch.rows.get(table, [])))
            _count_written(result, batch, table, stats)
        state.write_ledger(run.conn, result.run_id or 0, batch.ledger)
        state.write_rejects(run.conn, result.run_id or 0, batch.records, batch.rejects)
        if checkpoint:
            state.set_checkpoint(run.conn, checkpoint[0], checkpoint[1], result.run_id or 0)


def _count_written(result: BackfillResult, batch: Batch, table: str, stats: LoadStats) -> None:
    """Rows written count for the entity that owns the table (lists it first)."""
    owner = next((e.name for e in ENTITIES if e.tables and e.tables[0].name == table), table)
    result.tallies.setdefault(owner, Tally()).rows_written += stats.written


def _memories(run: _Run, directory: Path | None, *, explicit: bool) -> None:
    entity = next((e for e in run.entities if e.name == "memories"), None)
    if entity is None:
        return
    from kvmigrate.entities.memories import iter_memory_records

    folder = (directory or Path("~/.vibe/memory")).expanduser()
    if not folder.is_dir():
        if explicit or directory is not None:
            raise ConfigError(f"memories folder {folder} does not exist", hint="pass --memories-dir DIR")
        run.result.tallies.setdefault("memories", Tally()).stats["no_memories_dir"] += 1
        return
    batch = Batch()
    for record in iter_memory_records(folder):
        batch.add_outcome(entity, record, entity.transform(record), _required(run))
        if len(batch.records) >= run.config.batch_size:
            _commit(run, batch, checkpoint=None)
            batch = Batch()
    _commit(run, batch, checkpoint=None)


def _finish(run: _Run) -> None:
    result = run.result
    if result.dry_run:
        result.dangling_refs = len(run.refs - run.seen_messages)
        return
    refs = sorted(run.refs)
    row = run.conn.execute(
        "SELECT count(*) FROM unnest(%s::text[]) AS r(id) WHERE NOT EXISTS"
        " (SELECT 1 FROM messages m WHERE m.id = r.id)", (refs,)).fetchone()
    result.dangling_refs = int(row[0]) if row else 0
    row = run.conn.execute(
        "SELECT count(*) FROM kvmigrate.row_origin WHERE tbl = 'users' AND rank < 0").fetchone()
    result.placeholders = int(row[0]) if row else 0
    run.conn.commit()


def _close(run: _Run, status: str) -> None:
    if run.result.run_id is None:
        return
    try:
        run.conn.rollback()
        from kvmigrate.report import to_dict

        state.finish_run(run.conn, run.result.run_id, status=status, budget=run.result.budget,
                         result=to_dict(run.result))
    except psycopg.Error:
        pass  # the connection itself failed: the run row stays "running" and says so
