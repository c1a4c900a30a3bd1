"""The library API: one function per command. Each returns a result object and prints nothing.

    from kvmigrate import api
    from kvmigrate.model.config import build_config
    result = api.setup(build_config(pg_url="postgresql://..."), dry_run=True)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.connections import connection_errors as connection_errors  # for the CLI
from kvmigrate.adapters.pg import state
from kvmigrate.adapters.pg.migrations import SetupResult, apply_migrations
from kvmigrate.engine.phases import DEFAULT_SETTLE as DEFAULT_SETTLE  # for the CLI's defaults
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError, RejectsPresent
from kvmigrate.model.progress import Reporter, silent
from kvmigrate.phases.backfill import run_backfill
from kvmigrate.phases.backfill_result import BackfillResult, Progress
from kvmigrate.phases.cutover import (
    CleanupPhaseResult,
    CutoverResult,
    DualWriteResult,
    run_cleanup_phase,
    run_cutover,
    run_dual_write,
)
from kvmigrate.phases.doctor import DoctorResult, run_doctor
from kvmigrate.phases.inventory import InventoryResult, run_inventory
from kvmigrate.phases.plan import PlanResult, run_plan
from kvmigrate.phases.prisma import PrismaHandoff, generate
from kvmigrate.phases.rehearse import RehearseResult, run_rehearse
from kvmigrate.phases.rejects import RejectsResult, list_rejects
from kvmigrate.phases.restore import archive_restore_cost, run_restore
from kvmigrate.phases.restore_cost import RestoreCost, RestoreResult
from kvmigrate.phases.shadow import ShadowResult, run_shadow
from kvmigrate.phases.status import StatusResult, run_status
from kvmigrate.phases.verify import VerifyResult, run_verify


def setup(config: Config, *, dry_run: bool = False) -> SetupResult:
    """Apply pending schema files (phase 1). Writes to Postgres unless dry_run; no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        return apply_migrations(conn, dry_run=dry_run, app_schema=config.pg_schema)


def prisma(config: Config, *, out: Path | None = None, schema: str | None = None) -> PrismaHandoff:
    """Hand the app tables to Prisma: schema.prisma and the baseline migration 0_init, read from
    the database's catalog (schema `schema`, default the current one). Reads Postgres only, no KV
    request; writes files only under `out` (without it, nothing is written)."""
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        return generate(conn, schema=schema, out=out)


def doctor(config: Config) -> DoctorResult:
    """Check both connections, versions, schema and privileges. Read-only; ~3 KV requests."""
    result = run_doctor(config, budget := RequestBudget(cap=config.max_requests, phase="doctor"))
    state.log_spend(config, "doctor", budget)
    return result


def inventory(config: Config, *, sizes: bool = False) -> InventoryResult:
    """Census of the keyspace and the predicted cost of each pass. Read-only; 6 billed KV
    commands per 1,000 keys (SCAN and SCAN … TYPE passes), 2 more per key with `sizes`."""
    result = run_inventory(config, sizes=sizes)
    state.log_spend(config, "inventory", result.budget)
    return result


def plan(config: Config, *, sizes: bool = False) -> PlanResult:
    """Predict the billed KV commands of every phase of the migration on this store, beside the
    floor. Read-only; costs one inventory."""
    result = run_plan(config, sizes=sizes)
    state.log_spend(config, "plan", result.inventory.budget)
    return result


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


def rejects(config: Config, *, entities: Sequence[str] = (), export: Path | None = None) -> RejectsResult:
    """List rejected records with reasons and original values; optionally export JSONL. Read-only."""
    return list_rejects(config, entities=tuple(entities), export=export)


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


def dual_write(
    config: Config,
    *,
    entities: Sequence[str] = (),
    settle: float = DEFAULT_SETTLE,
    rollback: bool = False,
    recheck_delay: float = 3.0,
    progress: Progress | None = None,
    report: Reporter = silent,
) -> DualWriteResult:
    """Mark entities dual-written (phase 2), wait for apps to see the flag, backfill and verify.

    Writes Postgres (state, rows) and the KV flags hash (1 HSET per change); then the KV cost of a
    backfill plus a verify. With `rollback`, writes return to KV only (only while reads are on KV).
    """
    return run_dual_write(config, entities=entities, settle=settle, rollback=rollback,
                          recheck_delay=recheck_delay, progress=progress, report=report)


def cutover(
    config: Config,
    *,
    entities: Sequence[str] = (),
    force: bool = False,
    rollback: bool = False,
    max_verify_age: dt.timedelta = dt.timedelta(hours=1),
    require_shadow: bool = False,
) -> CutoverResult:
    """Switch reads to Postgres (phase 3) if each entity's latest verify is clean, full and recent.

    With `require_shadow`, the latest shadow run must be clean too (every view compared, all
    matching). Refuses (GateRefused, exit 1) otherwise, unless `force`. `rollback` switches reads back to KV.
    Writes Postgres state and the KV flags hash (1 HSET per change).
    """
    return run_cutover(config, entities=entities, force=force, rollback=rollback, max_verify_age=max_verify_age,
                       require_shadow=require_shadow)


def status(config: Config) -> StatusResult:
    """Phase, flags, ledger buckets, last runs and today's KV spend per entity. Read-only; no KV request."""
    return run_status(config)


def rehearse(
    config: Config,
    *,
    report: Path | None = None,
    markdown: Path | None = None,
    max_rejects: int | None = None,
    max_requests_real: int | None = None,
    memories_dir: Path | None = None,
    repair: bool = True,
    progress: Progress | None = None,
) -> RehearseResult:
    """Rehearse the migration into a branch or scratch database (CI): setup, inventory, backfill,
    verify, and a report (JSON and Markdown) with the real run's forecast KV cost.

    Reads KV strictly read-only (about 6 commands per 1,000 keys); writes only the database at
    `config.pg_url`. The result's `exit_code` is 1 on differences, 5 on more rejects than
    `max_rejects`, 4 when the forecast exceeds `max_requests_real`.
    """
    return run_rehearse(config, report=report, markdown=markdown, max_rejects=max_rejects,
                        max_requests_real=max_requests_real, memories_dir=memories_dir, repair=repair,
                        progress=progress)


DEFAULT_ARCHIVE_DIR = Path("kvmigrate-archive")


def cleanup(
    config: Config,
    *,
    entities: Sequence[str] = (),
    archive_dir: Path = DEFAULT_ARCHIVE_DIR,
    dry_run: bool = False,
    yes: bool = False,
    settle: float = DEFAULT_SETTLE,
    verify_first: bool = False,
    recheck_delay: float = 3.0,
    report: Reporter = silent,
) -> CleanupPhaseResult:
    """Phase 4: writes to Postgres only, then archive and delete the verified KV keys (one read pass).

    Refuses before cutover (GateRefused, exit 1) and without `yes` (unless `dry_run`). Writes the
    flags, the archive folder (files 0600, manifest last), the ledger; deletes only keys whose
    value still has its verified digest. Never touches presence, sessions, rate limits, unknown
    or `kvmigrate:*` keys. KV cost: one read of every candidate key (MGET for strings, one read per
    other key), a SCAN per page, and WATCH, MULTI, DEL, EXEC per page with keys to delete.
    """
    return run_cleanup_phase(config, entities=entities, archive_dir=archive_dir, dry_run=dry_run, yes=yes,
                             settle=settle, verify_first=verify_first, recheck_delay=recheck_delay, report=report)


def restore(config: Config, archive_dir: Path, *, entities: Sequence[str] = (), force: bool = False,
            yes: bool = False, dry_run: bool = False, report: Reporter = silent) -> RestoreResult:
    """Put archived keys back (the undo of cleanup) with their types and archived expiry.

    Locks the archive folder and checks every file and total against the manifest first (exit 1
    on a mismatch, or when another run holds the folder). Writes KV only; phase flags are
    unchanged. Needs `yes` unless `dry_run` (which reads only and forecasts the cost). A key that
    exists with another value is refused unless `force`. Exits 1 when anything the ledger marks
    deleted is not in the archive. KV cost: `kvmigrate.phases.restore.restore_cost`.
    """
    return run_restore(config, archive_dir, entities=entities, force=force, yes=yes, dry_run=dry_run, report=report)


def restore_forecast(config: Config, archive_dir: Path, *, entities: Sequence[str] = ()) -> RestoreCost:
    """The billed KV commands a restore of this archive would send into a store where none of
    its keys exist. Reads the archive only (no KV, no Postgres)."""
    return archive_restore_cost(config, archive_dir, entities=entities)


def shadow(config: Config, *, users: int = 20, handles: Sequence[str] = (), views: Sequence[str] = (),
           on_forecast: Callable[[int, int], None] | None = None, recheck_delay: float = 3.0) -> ShadowResult:
    """Compute the app's read views from KV and from Postgres for a sample of users (or the named
    ones) and compare them field by field; record the result for `cutover --require-shadow`.

    KV strictly read-only: one SCAN pass, then each key the views need read once (MGET for
    strings, one pipelined typed read per other key); the cost is forecast before reading
    (`on_forecast(exact, at_most)`) and capped by `config.max_requests`. Writes only
    kvmigrate's records in Postgres.
    """
    return run_shadow(config, users=users, handles=handles, views=views, on_forecast=on_forecast,
                      recheck_delay=recheck_delay)
