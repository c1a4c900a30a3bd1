"""Backfill: stream every KV record through its entity's transformer into Postgres.

One pass of `SCAN` over the whole keyspace; each page is classified by key name (kept and
unknown keys are never read, nor are derived indexes), read in one batch (MGETs for strings, one
pipelined read per other key), transformed,
and loaded in ONE transaction together with its ledger rows, rejects and the scan checkpoint
(a registry hash of more fields than a page of keys, or a value of more rows, such as
`vibe:games`: in parts before it, see `_pass`).
Killed at any moment, the next run resumes from the last committed page; an unchanged rerun
writes 0 rows. The KV connection is read-only: backfill never writes to KV.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.files.memories import iter_memory_records, memories_folder
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.source import KvSource, Page
from kvmigrate.adapters.pg import ledger, state
from kvmigrate.adapters.pg.flags import postgres_written
from kvmigrate.adapters.pg.loader import LoadStats
from kvmigrate.adapters.pg.stats import STATE_TABLES, analyze, flush_counts
from kvmigrate.engine.batch import Batch, RequiredCheck, Tally, outcome_parts, table_specs
from kvmigrate.engine.guards import (
    refuse_a_shrunk_store,
    refuse_a_store_that_shrank_during,
    writer_lock,
)
from kvmigrate.engine.run import require_schema
from kvmigrate.engine.scan import KeyspaceScan, ScanPass, fewer_collections, resume_point
from kvmigrate.engine.unchanged import UnchangedRecords
from kvmigrate.engine.writer import BatchWriter, rules_fingerprint
from kvmigrate.engine.wrong_store import check_matched, ledger_keys, unmatched
from kvmigrate.entities import ENTITIES, Entity, select_entities
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import (
    BudgetExhausted,
    BudgetTooSmall,
    ConnectError,
    GateRefused,
    RejectsPresent,
)
from kvmigrate.model.progress import left_to_do
from kvmigrate.model.serial import to_dict
from kvmigrate.phases.backfill_result import BackfillResult, Progress

log = logging.getLogger("kvmigrate")
MAX_PASSES = 3  # scans started over after KV restarts before giving up

@dataclass
class _Run:
    """The moving parts of one backfill run."""

    config: Config
    conn: psycopg.Connection
    kv: KvClient
    entities: tuple[Entity, ...]
    result: BackfillResult
    writer: BatchWriter | None = None
    unchanged: UnchangedRecords | None = None  # a rerun's records to count, not transform
    refs: set[str] = field(default_factory=set)
    seen_messages: set[str] = field(default_factory=set)
    pages_committed: int = 0  # by this run, with their checkpoint


def run_backfill(
    config: Config,
    *,
    entities: Sequence[str] = (),
    dry_run: bool = False,
    restart: bool = False,
    memories_dir: Path | None = None,
    progress: Progress | None = None,
    explicit: bool | None = None,
) -> BackfillResult:
    """Copy KV history into Postgres. Writes Postgres (not with dry_run); never writes KV.

    Costs 2 DBSIZE (before the pass, and after it unless a dry run: a store wiped meanwhile fails
    the run), 1 SCAN per `scan_count` keys, 1 MGET per batch of string keys, 1 read per
    other key it needs (derived indexes are not read), and 1 HSCAN per 1,000 fields of a registry
    hash. Under dual writes a page is not read twice: verify's re-check catches a write the app
    made while the page was in flight.

    Refuses (WrongStore, exit 1) once the scan is complete when no key matched any chosen KV
    entity, or one named in `entities` (`explicit`, by default whether any was named); other
    unmatched entities, and everything in a dry run, are warnings (see kvmigrate.wrong_store).
    """
    chosen = select_entities(entities)
    budget = RequestBudget(cap=config.max_requests, phase="backfill")
    started = time.perf_counter()
    conn = connect_pg(config.require_pg(), retries=config.connect_retries)
    with contextlib.closing(conn), contextlib.ExitStack() as held:
        require_schema(conn)
        chosen, skipped = _not_frozen(conn, chosen, explicit=bool(entities))
        held.enter_context(writer_lock(conn, "backfill"))
        held.enter_context(fewer_collections())
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
        rules = rules_fingerprint(conn)
        conn.rollback()
        run_id = None if dry_run else state.start_run(
            conn, "backfill", dry_run=False,
            options={"entities": [e.name for e in chosen], "restart": restart, "rules": rules})
        run = _Run(config, conn, kv, chosen, BackfillResult(run_id, dry_run, budget, {e.name: Tally() for e in chosen}))
        # --restart re-applies every row; otherwise records unchanged since a run with the same
        # rules are neither transformed nor staged again (see engine.unchanged and BatchWriter).
        run.result.skipped = skipped
        run.writer = None if run_id is None else BatchWriter(conn, run_id, rules=rules, skip_unchanged=not restart)
        try:
            if run.writer is not None and run.writer.rules is not None:  # on a connection of its own
                lookup = held.enter_context(contextlib.closing(
                    connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True)))
                run.unchanged = UnchangedRecords(lookup, run.writer.rules_runs, chosen)
            if any(e.families for e in chosen):  # memories alone read files, not KV
                _scan(run, restart=restart, progress=progress)
                _check_matched(run, explicit=bool(entities) if explicit is None else explicit)
            _memories(run, memories_dir, explicit="memories" in entities)
            _finish(run)
        except BudgetExhausted as exc:
            _close(run, "stopped")
            if run_id is not None and run.pages_committed == 0:
                raise _too_small(budget, exc) from None
            raise
        except BaseException as exc:
            _close(run, "failed", exc)
            raise
        run.result.seconds = time.perf_counter() - started
        _close(run, "ok")
        return run.result


def _too_small(budget: RequestBudget, exc: BudgetExhausted) -> BudgetTooSmall:
    """The cap let this run commit no page: the same cap would stop at the same place again."""
    return BudgetTooSmall(
        f"--max-requests {budget.cap} is too small to make progress: this run committed no page "
        f"({exc.message}; spent {_spent(budget)})",
        hint="raise --max-requests: connecting costs about 4 commands, and a page about 2 (SCAN and one batch "
        "read) plus 1 HSCAN per 1,000 fields of each registry hash it holds; rerunning with the same cap "
        "would stop at the same place")


def _spent(budget: RequestBudget) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(budget.by_command.items()))


def _not_frozen(conn: psycopg.Connection, chosen: tuple[Entity, ...], *,
                explicit: bool) -> tuple[tuple[Entity, ...], list[str]]:
    """Leave out entities that write to Postgres only (after cleanup): Postgres is their source
    of truth, and copying KV's older values over it would undo the app's writes. Asked for by
    name, such an entity is refused instead."""
    written = postgres_written(conn)
    conn.rollback()
    frozen = sorted(written & {e.name for e in chosen})
    if frozen and explicit:
        raise GateRefused(
            f"{', '.join(frozen)} write to Postgres only (cleanup ran): a backfill from KV would copy older "
            "values over the app's newer rows",
            hint="Postgres is the source of truth now; `kvmigrate verify` still compares what is left in KV")
    return tuple(e for e in chosen if e.name not in frozen), frozen


def _check_matched(run: _Run, *, explicit: bool) -> None:
    """After a complete scan: refuse (or warn) when no key matched an entity. Keys of a resumed
    run's earlier pages are in the ledger; no KV command."""
    matched = {name: t.scanned for name, t in run.result.tallies.items()}
    if run.result.resumed_from:
        for name, n in ledger_keys(run.conn, [e.name for e in unmatched(matched, run.entities)]).items():
            matched[name] = matched.get(name, 0) + n
    run.result.warnings += check_matched(matched, run.entities, explicit=explicit, what="backfill",
                                         dry_run=run.result.dry_run)


def _checkpoint_name(run: _Run) -> str:
    names = sorted(e.name for e in run.entities)
    return "backfill:" + ("all" if len(names) == len(ENTITIES) else ",".join(names))


def _scan(run: _Run, *, restart: bool, progress: Progress | None) -> None:
    """One full SCAN pass (resumed from the checkpoint); again from the start if the KV server
    restarted meanwhile, since a cursor is only valid on the process that returned it. Costs 2
    INFO commands beyond the pass itself."""
    name = _checkpoint_name(run)
    cursor, server = resume_point(run.kv, run.conn, name, fresh=restart or run.result.dry_run)
    run.conn.rollback()
    run.result.resumed_from = cursor or None
    source = KvSource(run.kv, run.entities, count=run.config.scan_count, parts=run.config.scan_count)
    total = int(run.kv.call("DBSIZE"))  # 1 command, for the progress bar and the check below
    refuse_a_shrunk_store(run.conn, total, allow=run.config.allow_shrunk_store)
    scan: KeyspaceScan[Page] = KeyspaceScan(
        run.kv, source.pages, cursor=cursor, server=server, rescans=MAX_PASSES - 1,
        restarted=ConnectError("the KV server kept restarting during the backfill",
                               hint="run the same command again once the KV store is stable"))
    try:
        for scan_pass in scan.passes():  # a pass after a restart rereads, and writes only what changed
            if scan_pass.cursor != state.SCAN_DONE:
                _pass(run, scan_pass, name, progress, total)
    finally:
        run.result.server_restarts = scan.restarts
    if not run.result.dry_run:  # 1 DBSIZE: a store wiped while the pass ran leaves the run failed
        refuse_a_store_that_shrank_during(run.kv, total, command="backfill", allow=run.config.allow_shrunk_store,
                                          warnings=run.result.warnings)
    run.result.complete = True
    if not run.result.dry_run:
        with run.conn.transaction():
            state.clear_checkpoint(run.conn, name)


def _pass(run: _Run, scan_pass: ScanPass[Page], name: str, progress: Progress | None, total: int) -> None:
    """Read, transform and load every page from `cursor`. Consecutive pages are loaded in one
    transaction until they hold `load_batch` records; the group commits with the last page's cursor. A
    page holding a registry hash comes in parts of `scan_count` records (see Page): each part ends
    its group, which commits without a checkpoint when no whole page is in it (a run resumed
    there reads that page again: its loads are upserts), so a hash with a field per user is never
    loaded whole. So are the rows of a record that holds more than `scan_count` (see
    `outcome_parts`), ahead of the part that carries its ledger row and rejects. A run stopped
    by the request budget first commits the pages it has read whole, and the parts read so far."""
    writes = _Overlap(run, progress, total, scan_pass.server)
    group, keys, size, last = Batch(), 0, 0, None
    limit, parts = run.config.load_batch, run.config.scan_count
    many_rows = {(e.name, f.name) for e in run.entities for f in e.families if f.many_rows}

    def flush() -> None:
        nonlocal group, keys, size, last
        if last is None and not size and not group.rows:
            return
        batch, checkpoint, n = group, last, keys
        group, keys, size, last = Batch(), 0, 0, None  # taken: a stop while writing does not resend it
        _fold(run, batch)
        writes.submit(batch, None if checkpoint is None else (name, checkpoint), n)

    try:
        try:
            for page in scan_pass.pages:
                for key, status, pattern in page.policy:
                    group.note_policy(key, status, pattern)
                for key, entity, family in page.indexes:
                    group.note_index(key, entity.name, family)
                required = _required(run)
                unchanged, digests = run.unchanged.find(page.records) if run.unchanged else ({}, {})
                for record, entity in page.records:
                    if (entity.name, record.family) not in many_rows:
                        found = unchanged.get((record.key, record.field))
                        if found is not None:
                            group.note_unchanged(entity.name, found)
                        else:
                            group.add_outcome(entity, record, entity.transform(record), required,
                                              digests=digests.get((record.key, record.field)))
                        continue
                    for part in outcome_parts(entity, record, parts, required):
                        group.add_part(entity, record, part, required)
                        if not part.last:  # rows of a record too big for a page: loaded apart
                            flush()
                size += len(page.records) + len(page.policy) + len(page.indexes)
                if not page.whole:  # a part of a registry hash: loaded apart, without the checkpoint
                    flush()
                    continue
                keys, last = keys + page.keys, page.cursor or state.SCAN_DONE
                if size >= limit:
                    flush()
        except BudgetExhausted as exc:
            flush()  # what was read whole is not read (and paid for) again
            writes.wait()
            raise BudgetExhausted(exc.message + "; " + left_to_do(writes.keys_seen, total, run.result.budget.spent),
                                  hint=exc.hint) from None
        flush()
        writes.wait()
    finally:
        writes.close()


class _Overlap:
    """Writes page N on a writer thread while the caller reads and transforms page N+1.

    At most one page is in flight and pages commit in scan order, each in its own transaction
    with its checkpoint, so a crash still resumes after the last committed page. Postgres
    round trips release the GIL, so reading and transforming overlap the database's work.
    """

    def __init__(self, run: _Run, progress: Progress | None, total: int, server: str | None) -> None:
        self.run = run
        self.progress = progress
        self.total = total
        self.server = server
        self.keys_seen = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvmigrate-writer")
        self.pending: tuple[Future[dict[str, LoadStats]], int, bool] | None = None
        if progress:
            progress(0, total, run.result.tallies)  # the task starts: its rate counts from here

    def submit(self, batch: Batch, checkpoint: tuple[str, int] | None, keys: int) -> None:
        """Wait for the page in flight, then start writing this one (dry run: count it only).
        Without a checkpoint (parts of a page only), the scan's checkpoint does not move."""
        self.wait()
        if self.run.writer is None:
            self._done(keys)
            return
        self.pending = (self.pool.submit(self.run.writer.write, batch, checkpoint=checkpoint, server=self.server),
                        keys, checkpoint is not None)

    def wait(self) -> None:
        """Block until the page in flight is committed; re-raise its error, if any."""
        if self.pending is None:
            return
        future, keys, checkpointed = self.pending
        self.pending = None
        for table, stats in future.result().items():
            _credit(self.run, table, stats.written)
        if checkpointed:  # parts alone move no checkpoint: a rerun would read them again
            self.run.pages_committed += 1
        self._done(keys)

    def _done(self, keys: int) -> None:
        self.keys_seen += keys
        log.info("backfill: committed %d keys, %d of %d scanned, %d billed KV commands", keys, self.keys_seen,
                 self.total, self.run.result.budget.spent)
        if self.progress:
            self.progress(self.keys_seen, self.total, self.run.result.tallies)

    def close(self) -> None:
        """Let a write in flight finish (or fail) before anything else uses the connection."""
        if self.pending is not None and self.pending[0].exception() is None:
            self.wait()  # it committed: count it
        self.pending = None
        self.pool.shutdown(wait=True)


def _credit(run: _Run, table: str, written: int) -> None:
    if not written:
        return
    owner = next((e.name for e in ENTITIES if e.tables and e.tables[0].name == table), table)
    if owner not in run.result.tallies:  # e.g. game_results written by messages alone
        owner = next((e.name for e in run.entities if any(t.name == table for t in e.tables)), owner)
    run.result.tallies.setdefault(owner, Tally()).rows_written += written


def _required(run: _Run) -> dict[str, RequiredCheck]:
    return {} if run.writer is None else run.writer.required()


def _fold(run: _Run, batch: Batch) -> None:
    """Fold a batch's counts into the run's result (before it is written)."""
    result = run.result
    for name, tally in batch.tallies.items():
        result.tallies.setdefault(name, Tally()).add(tally)
    result.kept_patterns.update(batch.kept_patterns)
    for pattern, (count, example) in batch.unknown_patterns.items():
        slot = result.unknown_patterns.setdefault(pattern, [0, example])
        slot[0] = int(slot[0]) + int(count)  # type: ignore[call-overload]
    if run.writer is None:  # a dry run counts dangling references in memory; a real one in Postgres
        run.refs.update(batch.refs)
        run.seen_messages.update(str(r.values["id"]) for r in batch.rows.get("messages", ()))


def _commit(run: _Run, batch: Batch, *, checkpoint: tuple[str, int] | None) -> None:
    """Fold a batch into the result and, unless dry run, write it in one transaction."""
    _fold(run, batch)
    if run.writer is None:
        return
    for table, stats in run.writer.write(batch, checkpoint=checkpoint).items():
        _credit(run, table, stats.written)


def _memories(run: _Run, directory: Path | None, *, explicit: bool) -> None:
    entity = next((e for e in run.entities if e.name == "memories"), None)
    if entity is None:
        return
    folder = memories_folder(directory, explicit=explicit)
    if folder is None:
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
    result.dangling_refs = run.writer.dangling_refs() if run.writer is not None else 0
    result.placeholders = ledger.placeholder_users(run.conn)
    merged = ledger.merged_keys(run.conn, [e.name for e in run.entities])
    for entity, n in merged.items():  # keys merged away into another key's row (see the data rules)
        result.tallies.setdefault(entity, Tally()).stats["merged_keys"] = int(n)
    if any(t.rows_written for t in result.tallies.values()):  # fresh figures for verify and the app
        flush_counts(run.conn)  # what this run changed is counted before the ANALYZE, not after it
        analyze(run.conn, [*STATE_TABLES, *table_specs(run.entities)])
    run.conn.commit()


def _close(run: _Run, status: str, error: BaseException | None = None) -> None:
    """Close the run row (on a fresh connection when the run's own one failed), with the error."""
    if run.result.run_id is None:
        return
    state.close_run(run.conn, run.result.run_id, status=status, budget=run.result.budget,
                    result=to_dict(run.result), error=error, pg_url=run.config.pg_url)


def backfill(
    config: Config,
    *,
    entities: Sequence[str] = (),
    dry_run: bool = False,
    restart: bool = False,
    strict: bool = False,
    memories_dir: Path | None = None,
    progress: Progress | None = None,
) -> BackfillResult:
    """Copy KV history into Postgres (phase 2), resuming from the last checkpoint.

    Writes Postgres unless dry_run; never writes KV. With `strict`, rejects raise RejectsPresent
    (exit 5) after the run completed and was recorded.
    """
    result = run_backfill(config, entities=entities, dry_run=dry_run, restart=restart,
                          memories_dir=memories_dir, progress=progress)
    if strict and result.rejected:
        raise RejectsPresent(
            f"{result.rejected} records were rejected (run {result.run_id})",
            hint="inspect them with `kvmigrate rejects`; fix the data in KV and rerun backfill",
        )
    return result
