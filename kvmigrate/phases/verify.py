"""`kvmigrate verify`: prove KV and Postgres agree, field by field.

The KV side goes through the same scanner and transformers as backfill, so values are compared
in exactly the form they were loaded. Expected rows are streamed (COPY) into temporary tables
typed like the real ones, so Postgres itself does the canonical comparison: timestamps as
instants (shown in UTC), JSONB normalised, arrays in the app's order, NULLs as NULLs. Three
kinds of result: missing (expected, absent), extra (in Postgres, no KV source), different (with
both values per field). Read-only unless `repair`.

Rules (README, "Data rules"):
* each difference is re-checked once after `recheck_delay` seconds by re-reading every source
  of its row (for an extra row, also the keys that would hold it), so writes in flight from a
  dual-writing app count as healed, not reported; a healed key is not marked verified;
* an extra row whose source belongs to an entity not being verified is not reported; a row with
  no recorded source (written by the app) is reported when every entity writing its table is
  verified; placeholder users are never extra;
* `sample` checks N random keys per entity among those that produced rows; an entity whose rows
  merge several sources (users) is read whole, and a sampled row that Postgres owns through a
  higher-ranked source left unread is skipped (not counted).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.files.memories import iter_memory_records, memories_folder
from kvmigrate.adapters.kv.source import KvSource, Page
from kvmigrate.adapters.pg import ledger, results, state
from kvmigrate.engine.diff import Differ
from kvmigrate.engine.guards import (
    refuse_a_shrunk_store,
    refuse_a_store_that_shrank_during,
    writer_lock,
)
from kvmigrate.engine.run import require_schema
from kvmigrate.engine.scan import KeyspaceScan, fewer_collections, server_id
from kvmigrate.engine.verified import record_verified, supersede
from kvmigrate.engine.wrong_store import verdict
from kvmigrate.entities import Entity, select_entities
from kvmigrate.entities.memories import MEMORIES
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.differences import Difference, EntityCheck, RefusedRepair
from kvmigrate.model.errors import BudgetExhausted, ConfigError, ConnectError
from kvmigrate.model.progress import Reporter, Tick, left_to_do, silent
from kvmigrate.model.records import RawRecord
from kvmigrate.model.serial import to_dict

log = logging.getLogger("kvmigrate")

__all__ = ["Difference", "EntityCheck", "VerifyResult", "run_verify"]


@dataclass
class VerifyResult:
    mode: str
    sampled: int | None
    budget: RequestBudget
    entities: dict[str, EntityCheck]
    run_id: int | None = None
    extra_deleted: int = 0
    sources_forgotten: int = 0  # recorded sources repair found gone from KV (see Differ.repair)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. an entity no key matched

    @property
    def clean(self) -> bool:
        return all(e.clean for e in self.entities.values())

    @property
    def refused(self) -> list[RefusedRepair]:
        """Rows repair left as they were because their replacement holds less."""
        return [r for e in self.entities.values() for r in e.refused]

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
    memories_dir: Path | None = None,
    explicit: bool | None = None,
    report: Reporter = silent,
) -> VerifyResult:
    """Diff KV against Postgres for the chosen entities and record the result per entity.

    Costs 2 DBSIZE (a store that lost most of its keys before or during the pass is refused, see
    kvmigrate.engine.guards; a sample takes only the first) and the
    same KV commands as a backfill's read pass, or, with `sample`, the reads of the sampled keys;
    plus one read per difference re-checked. Writes only
    kvmigrate's records, unless `repair` (re-copies rows) or `repair_extra` (deletes rows).
    Memories are compared against their files when a memories folder is found (not in samples).

    A full verify records its result, then refuses (WrongStore, exit 1) when no key matched any
    chosen KV entity still written to KV, or one named in `entities` (`explicit`); other
    unmatched entities are warnings in `result.warnings`.
    """
    if mode not in ("rows", "buckets"):
        raise ConfigError(f"unknown verify mode {mode!r}", hint="use --mode rows or --mode buckets")
    chosen = select_entities(entities)
    folder = None
    if any(e.name == "memories" for e in chosen):
        folder = None if sample else memories_folder(memories_dir, explicit="memories" in entities)
        if folder is None:
            chosen = tuple(e for e in chosen if e.name != "memories")
    if not chosen:
        raise ConfigError("nothing to verify", hint="memories are verified against --memories-dir DIR")
    budget = RequestBudget(cap=config.max_requests, phase="verify")
    started = time.perf_counter()
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn, contextlib.ExitStack() as held:
        require_schema(conn)
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()
        held.enter_context(fewer_collections())
        if repair or repair_extra:  # writes rows: one writer at a time (see kvmigrate.engine.guards)
            held.enter_context(writer_lock(conn, "verify --repair"))
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
        total = int(kv.call("DBSIZE"))  # for the check below and the progress's total
        refuse_a_shrunk_store(conn, total, allow=config.allow_shrunk_store)
        source = KvSource(kv, chosen, count=config.scan_count)
        run_id = state.start_run(conn, "verify", dry_run=False, options={"mode": mode, "sample": sample})
        result = VerifyResult(mode, sample, budget, {e.name: EntityCheck() for e in chosen}, run_id)
        try:
            differ = Differ(conn, chosen, source, result.entities, mode, memories=folder, sampled=bool(sample))
            if sample:
                for records in _sample_records(conn, source, chosen, sample, seed):
                    differ.stage(records)
            else:
                scan: KeyspaceScan[Page] = KeyspaceScan(
                    kv, source.pages, server=server_id(kv),
                    restarted=ConnectError("the KV server restarted during the verify, so its scan may have skipped "
                                           "keys; nothing was recorded", hint="run the same verify again"))
                scanned, started = 0, time.perf_counter()
                report(Tick("verify", 0, total))
                for scan_pass in scan.passes():
                    try:
                        for page in scan_pass.pages:
                            _count_keys(result, page.records, page.indexes)
                            differ.stage(page.records)
                            scanned += page.keys
                            report(Tick("verify", scanned, max(total, scanned),
                                        note=f"{budget.spent:,} billed KV commands"))
                            log.info("verify: page of %d keys (%d records), %d scanned, %d billed KV commands, "
                                     "%.1f s", page.keys, len(page.records), scanned, budget.spent,
                                     time.perf_counter() - started)
                    except BudgetExhausted as exc:
                        raise BudgetExhausted(exc.message + "; " + left_to_do(scanned, total, budget.spent)
                                              + " (a verify starts over)", hint=exc.hint) from None
                # 1 DBSIZE: a store wiped while the pass ran would show every row as extra
                refuse_a_store_that_shrank_during(kv, total, command="verify", allow=config.allow_shrunk_store,
                                                  warnings=result.warnings)
                if folder is not None:
                    _stage_memories(differ, folder, config.batch_size)
            differ.compare(extras=not sample)
            _second_look(differ, run_id, recheck_delay=recheck_delay, repair=repair,
                         allow_lossy=config.allow_lossy_repair)
            result.sources_forgotten = differ.forgotten
            if repair_extra:
                result.extra_deleted = _delete_extra(conn, differ)
            record_verified(differ, run_id)
        except BaseException as exc:
            stopped = isinstance(exc, BudgetExhausted)
            _abandon(conn, run_id, budget, "stopped" if stopped else "failed", None if stopped else exc,
                     config.pg_url)
            raise
        result.seconds = time.perf_counter() - started
        refusal = None
        if not sample:  # after cleanup, the keys of Postgres-written entities are gone on purpose
            kv_side = [e for e in chosen if e.name not in differ.postgres_writes]
            warned, refusal = verdict({n: c.keys for n, c in result.entities.items()}, kv_side,
                                      explicit=bool(entities) if explicit is None else explicit, what="verify")
            result.warnings += warned
        _record(conn, result, run_id)  # recorded even when refused: no gate passes on it
        if refusal is not None:
            raise refusal
        return result


def _count_keys(result: VerifyResult, records: Sequence[tuple[RawRecord, Entity]],
                indexes: Sequence[tuple[str, Entity, object]]) -> None:
    """Count the keys the scan matched per entity (read records and derived indexes)."""
    for _, entity in records:
        result.entities[entity.name].keys += 1
    for _, entity, _ in indexes:
        result.entities[entity.name].keys += 1


def _abandon(conn: psycopg.Connection, run_id: int, budget: RequestBudget, status: str,
             error: BaseException | None, pg_url: str | None) -> None:
    """Close a verify that did not finish, with its error: it records no verdict (a verify counts
    only whole), and the next one starts from the beginning."""
    state.close_run(conn, run_id, status=status, budget=budget, result={"kv_requests": budget.spent},
                    error=error, pg_url=pg_url)


def _second_look(differ: Differ, run_id: int, *, recheck_delay: float, repair: bool, allow_lossy: bool) -> None:
    """Re-check the differences once after the delay; then, with `repair`, re-copy the rest
    (a row that would be replaced with less is refused unless `allow_lossy`)."""
    if not differ.diffs:
        return
    if recheck_delay > 0:
        time.sleep(recheck_delay)
    differ.recheck()
    supersede(differ)  # before repair: never copy a stale KV value over Postgres's newer row
    if repair and differ.diffs:
        differ.repair(run_id, allow_lossy=allow_lossy)


def _delete_extra(conn: psycopg.Connection, differ: Differ) -> int:
    """Delete the extra rows, each in its own transaction; a row still referenced by another
    table is left in place and stays reported. Returns the rows deleted."""
    deleted: list[Difference] = []
    for diff in [d for d in differ.diffs if d.kind == "extra"]:
        spec = differ.specs[diff.table]
        try:
            with conn.transaction():
                cur = conn.execute(sql.SQL("DELETE FROM {t} WHERE {pk}::text = %s").format(
                    t=sql.Identifier(spec.name), pk=sql.Identifier(spec.pk)), (diff.pk,))
                ledger.forget_origin(conn, spec, diff.pk)
        except psycopg.errors.ForeignKeyViolation:
            continue
        if cur.rowcount:
            deleted.append(diff)
    differ.resolve(deleted, None)
    return len(deleted)


def _stage_memories(differ: Differ, folder: Path, batch_size: int) -> None:

    chunk: list[tuple[RawRecord, Entity]] = []
    for record in iter_memory_records(folder):
        chunk.append((record, MEMORIES))
        if len(chunk) >= batch_size:
            differ.stage(chunk)
            chunk = []
    differ.stage(chunk)


def _sample_records(conn: psycopg.Connection, source: KvSource, chosen: Sequence[Entity], n: int,
                    seed: int | None) -> Iterator[list[tuple[RawRecord, Entity]]]:
    """Per entity, N random migrated keys from the ledger, read in batches of a scan page. An
    entity whose rows merge several sources (users) is read whole: a merged row needs them all."""
    salt = str(random.Random(seed).random())
    for entity in chosen:
        whole = any(t.merge == "fill" and t.sample_whole for t in entity.tables)
        keys = ledger.migrated_keys(conn, entity.name, sample=None if whole else n, salt=salt)
        conn.commit()
        for i in range(0, len(keys), source.count):
            yield [(r, e) for r, e in source.read_keys(keys[i:i + source.count]) if e.name == entity.name]


def _record(conn: psycopg.Connection, result: VerifyResult, run_id: int) -> None:
    conn.rollback()
    with conn.transaction():
        results.record_verify_results(conn, run_id, result.mode, bool(result.sampled), [
            (name, check.checked, len(check.missing), len(check.extra), len(check.different), check.healed,
             check.clean) for name, check in result.entities.items()])
    state.finish_run(conn, run_id, status="ok", budget=result.budget, result=to_dict(result))


def vouch(conn: psycopg.Connection, chosen: Sequence[Entity], source: KvSource,
          records: Sequence[tuple[RawRecord, Entity]], run_id: int) -> set[str]:
    """Compare these records, as already read, with Postgres, and record in the ledger the
    keys whose rows all agree as verified (cleanup's one read pass). Returns those keys. No KV
    command; writes kvmigrate's ledger only."""
    checks = {e.name: EntityCheck() for e in chosen}
    differ = Differ(conn, chosen, source, checks, "rows", sampled=True)
    differ.stage(records)
    differ.compare(extras=False)
    supersede(differ)
    bad = {d.key for d in differ.diffs if d.key}
    tables = {d.table for d in differ.diffs if not d.key}
    record_verified(differ, run_id)
    return {r.key for r, e in records if r.key not in bad and not tables & {t.name for t in e.tables}}


def _diff(d: Difference) -> dict[str, Any]:
    out: dict[str, Any] = {"table": d.table, "pk": d.pk, "key": d.key}
    if d.source_field:
        out["field"] = d.source_field
    if d.kind == "different":
        out["fields"] = d.fields
    return out


@to_dict.register
def _(r: VerifyResult) -> dict[str, Any]:
    return {
        "clean": r.clean,
        "mode": r.mode,
        "sampled": r.sampled,
        "confidence": r.confidence(),
        "run_id": r.run_id,
        "kv_requests": r.budget.spent,
        "kv_requests_by_command": dict(sorted(r.budget.by_command.items())),
        "entities": {
            name: {"checked": c.checked, "keys": c.keys, "clean": c.clean, "missing": [_diff(d) for d in c.missing],
                   "extra": [_diff(d) for d in c.extra], "different": [_diff(d) for d in c.different],
                   "healed": c.healed, "repaired": c.repaired, "superseded": c.superseded,
                   "verified_keys": c.verified_keys,
                   "repair_refused": [{"table": x.table, "pk": x.pk, "key": x.key, "lost": list(x.lost)}
                                      for x in c.refused]}
            for name, c in r.entities.items()
        },
        "repair_refused": len(r.refused),
        "extra_deleted": r.extra_deleted,
        "sources_forgotten": r.sources_forgotten,
        "warnings": r.warnings,
        "seconds": round(r.seconds, 3),
    }


def verify(
    config: Config,
    *,
    entities: Sequence[str] = (),
    mode: str = "rows",
    sample: int | None = None,
    recheck_delay: float = 3.0,
    repair: bool = False,
    repair_extra: bool = False,
    yes: bool = False,
    memories_dir: Path | None = None,
    report: Reporter = silent,
) -> VerifyResult:
    """Diff KV against Postgres (phase 2) and record the result for the cutover gate.

    Reads KV (about 2 commands per 1,000 string keys; a sample costs far less); writes only
    kvmigrate's records unless `repair` (re-copies rows) or `repair_extra` + `yes` (deletes rows).
    """
    if repair_extra and not yes:
        raise ConfigError("--repair-extra deletes rows from Postgres", hint="add --yes to confirm")
    return run_verify(config, entities=entities, mode=mode, sample=sample, recheck_delay=recheck_delay,
                      repair=repair, repair_extra=repair_extra, memories_dir=memories_dir, report=report)
