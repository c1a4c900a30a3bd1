"""`kvmigrate cleanup` (phase 4): archive, then delete, the KV keys Postgres now owns.

Rules (README, "Data rules"):
* Only keys of the chosen entities' families are candidates, derived indexes (`inbox:*`,
  `board:entries`, …) included; kept and unknown keys are never read, archived or deleted.
* One read pass: each page's candidates are WATCHed, then read (MGET for strings, one read per
  other key, PTTL only where the family can expire) on the same connection.
* A key is deletable only when each of its ledger rows is `migrated` with a verified digest and
  the value read now has that digest; for a registry hash (`vibe:handles`) every current field
  needs its own verified row. A key whose value changed since the last verify (or that never
  verified) is verified right there against Postgres from the value just read, unless its rows
  merge several sources (users: run `verify`). A derived index (`inbox:*`, `board:entries`, …)
  holds nothing of its own and is deletable once it is in the ledger. Anything else stays in
  KV and is reported with a reason and the command to run next.
* Only deletable keys are archived, so the archive is exactly what cleanup may delete and
  `restore` is its undo. A batch's lines are fsynced (and the manifest updated) before its delete.
* The delete is one multi-key DEL in MULTI/EXEC on the WATCHing connection: if the app changed
  any of the page's keys after the read, the server runs nothing, and the page is read again.
* Flags move first (writes=postgres) and cleanup waits `settle` seconds after the change, so
  apps that cache their flags stop writing KV before anything is deleted.
* A run stopped by the request budget (or killed) resumes at its last finished page
  (checkpoint `cleanup:<entities>`); the pass after a completed one starts from the beginning.
* The ledger records `archived_at` before the delete and `deleted_at` after it; the next run
  records the deletion of archived keys that are gone but not recorded (a run killed between).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.files.archive import ArchiveWriter, encode_line
from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.adapters.kv.client import KvClient, KvSession
from kvmigrate.adapters.kv.scanner import decode_key, encode_key, scan_pages, storable_name
from kvmigrate.adapters.kv.snapshot import Snapshot, SnapshotReader
from kvmigrate.adapters.kv.source import KvSource, storable
from kvmigrate.adapters.pg import flags as pg_flags
from kvmigrate.adapters.pg import ledger as pg_ledger
from kvmigrate.adapters.pg import state
from kvmigrate.engine import deleter, phases
from kvmigrate.engine.deleter import delete_watched
from kvmigrate.engine.guards import (
    refuse_a_shrunk_store,
    refuse_a_store_that_shrank_during,
    writer_lock,
)
from kvmigrate.engine.run import require_schema
from kvmigrate.engine.scan import KeyspaceScan, resume_point
from kvmigrate.engine.wrong_store import before_cleanup
from kvmigrate.entities import ENTITIES, Entity, select_entities
from kvmigrate.entities.base import Family
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import BudgetExhausted, ConfigError, StorageError, StoreChanged
from kvmigrate.model.progress import Reporter, Tick, countdown, left_to_do, silent
from kvmigrate.model.records import RawRecord
from kvmigrate.model.serial import to_dict
from kvmigrate.phases.cleanup_rules import CleanupResult, EntityCleanup, verdict
from kvmigrate.phases.verify import vouch

log = logging.getLogger("kvmigrate")
@dataclass
class _Run:
    config: Config
    conn: psycopg.Connection
    chosen: tuple[Entity, ...]
    result: CleanupResult
    reader: SnapshotReader
    writer: KvClient | None = None
    archive: ArchiveWriter | None = None
    classifier: Classifier = field(default_factory=lambda: Classifier(ENTITIES))
    report: Reporter = silent
    total: int | None = None  # keys in the store when the pass started (DBSIZE), for progress


def run_cleanup(config: Config, *, entities: Sequence[str] = (), archive_dir: Path, dry_run: bool = False,
                yes: bool = False, settle: float = 0.0, report: Reporter = silent) -> CleanupResult:
    """Archive and delete the verified KV keys of the chosen entities (default: every KV entity).

    Refuses (GateRefused, exit 1) unless every chosen entity has cut over; needs `yes` unless
    `dry_run`. Writes the flags (Postgres + 1 HSET), the archive folder, the ledger, and deletes
    KV keys; `dry_run` reads only. KV cost: 1 DBSIZE before the pass and 1 after (a run that
    does not settle), 1 SCAN per `scan_count` keys; per page with
    candidates 1 WATCH, 1 MGET per batch of strings, 1 read per other key (1 PTTL more where the
    family can expire), then MULTI, DEL, EXEC (or 1 UNWATCH when nothing is deletable).
    """
    chosen = phases.kv_entities(select_entities(entities))
    if not chosen:
        raise ConfigError("none of the chosen entities lives in KV", hint="memories have no KV keys to clean up")
    budget = RequestBudget(cap=config.max_requests, phase="archive")
    started = time.perf_counter()
    url = config.require_kv()
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        require_schema(conn)
        moving = [e.name for e in chosen if phases.check_step(conn, e.name, "cleanup") != phases.CLEANED]
        warnings = before_cleanup(conn, moving, dry_run=dry_run)
        if not (yes or dry_run):
            raise ConfigError("cleanup deletes KV keys (after archiving them)",
                              hint="confirm with --yes, or see what it would delete with --dry-run")
        result = CleanupResult(None, dry_run, str(archive_dir), budget, {e.name: EntityCleanup() for e in chosen})
        result.warnings = warnings
        reader = SnapshotReader(connect_kv(url, budget, retries=config.connect_retries, read_only=True))
        run = _Run(config, conn, chosen, result, reader, report=report)
        if dry_run:
            _scan(run)
        else:
            with writer_lock(conn, "cleanup"):
                _run_for_real(run, connect_kv(url, budget, retries=config.connect_retries), settle)
        result.seconds = time.perf_counter() - started
        result.kv_requests = budget.spent
        return result


def _run_for_real(run: _Run, writer: KvClient, settle: float) -> None:
    result = run.result
    result.run_id = state.start_run(run.conn, "cleanup", dry_run=False, options={
        "entities": [e.name for e in run.chosen], "archive_dir": result.archive_dir, "settle": settle})
    status, error = "failed", None
    try:
        run.archive = ArchiveWriter(Path(result.archive_dir), run_id=result.run_id, kv_url=run.config.masked_kv_url)
        result.manifest = str(run.archive.manifest_path)
        run.writer = writer
        _flags(run, writer, settle)
        # after the settle: a store wiped (or restarted empty) meanwhile is not cleaned up
        run.total = int(writer.call("DBSIZE"))
        refuse_a_shrunk_store(run.conn, run.total, allow=run.config.allow_shrunk_store)
        _reconcile(run)
        _scan(run)
        _refuse_a_store_that_shrank(run, writer)
        status = "ok"
    except BudgetExhausted:
        status = "stopped"
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        _close(run, status, error)


def _refuse_a_store_that_shrank(run: _Run, writer: KvClient) -> None:
    """After the pass, 1 DBSIZE: a store wiped while the pass ran (FLUSHDB keeps the server's
    run id, so the per-page check cannot see it) leaves the run incomplete and failed."""
    try:
        refuse_a_store_that_shrank_during(writer, run.total or 0, deleted=run.result.deleted, command="cleanup",
                                          allow=run.config.allow_shrunk_store, warnings=run.result.warnings)
    except StoreChanged:
        run.result.complete = False
        raise


def _flags(run: _Run, writer: KvClient, settle: float) -> None:
    """Move writes to Postgres and publish the flags (1 HSET), then wait until `settle` seconds
    have passed since the newest change."""
    changes = phases.move_flags(run.conn, writer, [e.name for e in run.chosen], phases.CLEANED, reason="cleanup")
    run.result.flags_changed += [c.entity for c in changes if c.changed]
    since = pg_flags.seconds_since_postgres_writes(run.conn, [e.name for e in run.chosen])
    wait = settle - since if since is not None else 0.0
    if wait > 0:
        countdown(wait, run.report, note="until every app instance sees writes=postgres")
        run.result.settled_seconds = wait


def _scan(run: _Run) -> None:
    """One SCAN pass from the checkpoint. The KV server's run id (INFO, free) is checked after
    every page: a server that restarted may have come back without the keys it had, and keys it
    lost were never archived, so the run stops (StoreChanged) instead of going on."""
    dry = run.result.dry_run
    name = "cleanup:" + ",".join(sorted(e.name for e in run.chosen))
    cursor, server = resume_point(run.reader.kv, run.conn, name, fresh=dry)
    run.result.resumed_from = cursor or None
    scanned = 0

    def checkpoint(page: tuple[int, list[str]]) -> None:
        if not dry:
            with run.conn.transaction():
                state.set_checkpoint(run.conn, name, page[0] or state.SCAN_DONE, run.result.run_id or 0,
                                     server=server)

    scan: KeyspaceScan[tuple[int, list[str]]] = KeyspaceScan(
        run.reader.kv, lambda c: scan_pages(run.reader.kv, cursor=c, count=run.config.scan_count),
        cursor=cursor, server=server, each_page=True, after_page=checkpoint, restarted=StoreChanged(
            "the KV server restarted during cleanup (its run id changed): it may have come back without keys "
            "that were never archived, so cleanup stopped; nothing more was deleted",
            hint="check the store (`kvmigrate inventory`; `kvmigrate status` counts what was deleted and "
            "archived), then run cleanup again; keys already deleted are in the archive"))
    run.report(Tick("cleanup", 0, run.total))
    for scan_pass in scan.passes():
        for _, keys in scan_pass.pages:
            items = _candidates(run, keys)
            try:
                if items:
                    _page(run, items)
            except BudgetExhausted as exc:
                raise BudgetExhausted(exc.message + "; " + left_to_do(scanned, run.total, run.result.budget.spent)
                                      + " (cleanup resumes at its last page)", hint=exc.hint) from None
            scanned += len(keys)
            deleted = run.result.deleted
            run.report(Tick("cleanup", scanned, max(run.total or 0, scanned) or None, note=f"{deleted:,} deleted"))
            log.info("cleanup: page of %d keys, %d candidates, %d deleted so far, %d billed KV commands",
                     len(keys), len(items), deleted, run.result.budget.spent)
    run.result.complete = True
    if not dry:
        state.clear_checkpoint(run.conn, name)


def _candidates(run: _Run, keys: Sequence[str]) -> list[tuple[str, Entity, Family]]:
    """Keys of the chosen entities' families (classified by name; nothing else is read)."""
    wanted = {e.name for e in run.chosen}
    out = []
    for key in keys:
        c = run.classifier.classify(key)
        if c.status == "entity" and c.entity is not None and c.family is not None and c.entity.name in wanted:
            out.append((key, c.entity, c.family))
    return out


@dataclass
class _Verdicts:
    """What one read of a page decided: deletable snapshots, kept keys with reasons, keys gone."""

    deletable: list[tuple[Snapshot, str]] = field(default_factory=list)
    kept: list[tuple[str, tuple[str, str]]] = field(default_factory=list)
    candidates: list[tuple[str, bool]] = field(default_factory=list)  # (entity, vanished)
    verified_now: int = 0


def _page(run: _Run, items: Sequence[tuple[str, Entity, Family]], *, attempts: int = 3) -> None:
    """WATCH one page's candidates, read them, decide, verify the changed ones, archive the
    deletable ones, and delete them in MULTI/EXEC; when the app changed one of them meanwhile
    the server deletes nothing, and the page is read again (up to `attempts` times)."""
    keys, fams = [k for k, _, _ in items], [f for _, _, f in items]
    if run.writer is None:  # dry run: read and decide only
        _count(run, _decide(run, items, run.reader.read(keys, fams), dry=True))
        return
    for attempt in range(attempts):
        with run.writer.session() as session:
            session.pipeline([("WATCH", *[encode_key(k) for k in keys])])
            decided = _decide(run, items, run.reader.read(keys, fams, send=session.pipeline), dry=False)
            if not decided.deletable:
                session.unwatch()
                _count(run, decided)
                return
            if _archive_and_delete(run, session, decided, last=attempt == attempts - 1):
                return


def _count(run: _Run, decided: _Verdicts) -> None:
    """Add one page's final verdicts to the result."""
    run.result.verified_now += decided.verified_now
    for name, vanished in decided.candidates:
        tally = run.result.entities[name]
        tally.candidates += 1
        tally.vanished += vanished
    for name, why in decided.kept:
        run.result.entities[name].keep(name, *why)
    for _, name in decided.deletable:
        run.result.entities[name].deletable += 1


def _decide(run: _Run, items: Sequence[tuple[str, Entity, Family]], snaps: Sequence[Snapshot], *,
            dry: bool) -> _Verdicts:
    """Decide each snapshot. Keys changed since the last verify are verified against Postgres
    here, from the value just read (not in a dry run)."""
    ledger = state.ledger_states(run.conn, [k for k, _, _ in items])
    out = _Verdicts()
    recheck: list[tuple[Snapshot, Entity, Family]] = []
    for snap, (_, entity, family) in zip(snaps, items, strict=True):
        out.candidates.append((entity.name, snap.rtype == "none"))
        if snap.rtype == "none":
            continue
        why = verdict(snap, family, ledger.get(snap.key, {}))
        if why is None:
            out.deletable.append((snap, entity.name))
        elif why[0] in ("changed_since_verify", "not_verified", "not_migrated") and not dry:
            recheck.append((snap, entity, family))
        else:
            out.kept.append((entity.name, why))
    if recheck:
        alone = _verifiable(run, recheck)
        out.kept += [(e.name, verdict(s, f, ledger.get(s.key, {})) or ("not_verified", s.key))
                     for s, e, f in recheck if s.key not in alone]
        recheck = [(s, e, f) for s, e, f in recheck if s.key in alone]
    if recheck:
        vouched = _verify_now(run, recheck)
        ledger = state.ledger_states(run.conn, [s.key for s, _, _ in recheck])
        for snap, entity, family in recheck:
            why = verdict(snap, family, ledger.get(snap.key, {}))
            if why is None:
                out.deletable.append((snap, entity.name))
            else:
                out.kept.append((entity.name, ("differs_from_postgres", why[1]) if snap.key not in vouched else why))
        out.verified_now = len(vouched)
    return out


def _verifiable(run: _Run, items: Sequence[tuple[Snapshot, Entity, Family]]) -> set[str]:
    """The keys that can be verified from their own value: those whose rows have no other
    source and whose family reads no companion key. A row merged from several keys (a user's
    registry field, legacy hash and agent record; colliding streak keys; a message's copies)
    needs every source read together: a full verify."""
    merged = [s.key for s, e, _ in items if any(t.merge == "fill" for t in e.tables)]
    shared: set[str] = set()
    if merged:
        found = pg_ledger.shared_sources(run.conn, [storable_name(k)[0] for k in merged])
        shared = {k for k in merged if storable_name(k)[0] in found}
    return {s.key for s, _, f in items if s.key not in shared and not f.companion}  # a companion is not in the snapshot


def _verify_now(run: _Run, items: Sequence[tuple[Snapshot, Entity, Family]]) -> set[str]:
    """Compare these keys' values, as just read, with Postgres and record the ones that agree as
    verified (ledger). Returns the keys vouched for. Postgres only: no KV command."""
    records: list[tuple[RawRecord, Entity]] = []
    for snap, entity, family in items:
        value = snap.raw_value()
        if family.split_fields and isinstance(value, dict):
            records += [(storable(RawRecord(snap.key, "hash", v, decode_key(f), family.name)), entity)
                        for f, v in value.items()]
        else:
            records.append((storable(RawRecord(snap.key, snap.rtype, value, "", family.name)), entity))
    source = KvSource(run.reader.kv, run.chosen, count=run.config.scan_count)
    return vouch(run.conn, run.chosen, source, records, run.result.run_id or 0)


def _archive_and_delete(run: _Run, session: KvSession, decided: _Verdicts, *, last: bool) -> bool:
    """Archive (fsynced) and delete the page's deletable keys in MULTI/EXEC, then count the page.
    False when a WATCHed key changed, so nothing was deleted (the caller reads the page again);
    on the `last` try those keys are kept and reported instead."""
    assert run.archive is not None
    deletable = decided.deletable
    now_ms = int(time.time() * 1000)
    lines: dict[str, list[bytes]] = {}
    for snap, entity in deletable:
        lines.setdefault(entity, []).append(encode_line(snap, entity, run_id=run.result.run_id or 0, now_ms=now_ms))
    run.archive.write_batch(lines)
    keys = [s.key for s, _ in deletable]
    state.mark_cleaned(run.conn, keys, set())  # before the delete: a crash after it is recoverable
    gone = delete_watched(session, run.reader.kv, keys)
    if gone is None and not last:
        return False
    deleted = gone or set()
    state.mark_cleaned(run.conn, keys, deleted)
    _count(run, decided)
    for snap, entity in deletable:
        tally = run.result.entities[entity]
        tally.archived += 1
        if snap.key in deleted:
            tally.deleted += 1
            run.archive.count_deleted(entity, 1)
        else:
            tally.keep(entity, "changed_during_cleanup", storable_name(snap.key)[0])
    return True


def _reconcile(run: _Run) -> None:
    """Record the deletion of keys an earlier run archived and deleted but was killed before it
    recorded the delete (archived_at set, deleted_at not, key gone). Costs 1 multi-key EXISTS
    per `scan_count` such keys (usually none), and 1 EXISTS per key only where some are gone and
    some are not."""
    keys = state.archived_not_deleted(run.conn, [e.name for e in run.chosen])
    for gone in deleter.vanished(run.reader.kv, keys, count=run.config.scan_count):
        state.mark_cleaned(run.conn, [], set(gone))


def _close(run: _Run, status: str, error: BaseException | None) -> None:
    """Write the final manifest and close the run row, with its error (on a fresh connection
    when the run's own one failed). A manifest that cannot be written fails the run."""
    result = run.result
    unwritten: StorageError | None = None
    if run.archive is not None:
        try:
            result.manifest = str(run.archive.close(complete=status == "ok"))
        except StorageError as exc:
            unwritten, status, error = exc, "failed", error or exc
    result.kv_requests = result.budget.spent
    if result.run_id is not None:
        state.close_run(run.conn, result.run_id, status=status, budget=result.budget, result=to_dict(result),
                        error=error, pg_url=run.config.pg_url)
    if unwritten is not None and error is unwritten:
        raise unwritten
