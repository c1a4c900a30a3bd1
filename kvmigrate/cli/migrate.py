"""The migration's own commands, phase by phase: backfill, verify, dual-write, cutover, cleanup, restore."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Annotated

import typer

from kvmigrate import api
from kvmigrate.api import DEFAULT_SETTLE
from kvmigrate.cli.base import (
    EntityOpt,
    MaxRequestsOpt,
    MemoriesDirOpt,
    SettleOpt,
    app,
    batch_options,
    config_from,
    global_options,
    run,
)
from kvmigrate.cli.progress import progress_bar
from kvmigrate.model.errors import KvmigrateError

ShrunkOpt = Annotated[bool, typer.Option("--allow-shrunk-store", help="Run even though KV holds fewer than half "
                                         "the keys earlier runs saw (only when they were deleted on purpose).")]


@app.command()
def backfill(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and transform everything; write nothing.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=10, help="Keys per SCAN page and per "
                                                    "Postgres transaction. Default: pages of 1,000 keys, loaded "
                                                    "10,000 records a transaction.")] = None,
    max_requests: MaxRequestsOpt = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Ignore the checkpoint; scan from the start and write every record again, unchanged or not.",
    )] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 5 when any record was rejected.")] = False,
    memories_dir: MemoriesDirOpt = None,
    allow_shrunk_store: ShrunkOpt = False,
) -> None:
    """Copy KV history into Postgres (phase 2): idempotent, resumable, never writes to KV."""
    config = config_from(ctx, max_requests=max_requests, allow_shrunk_store=allow_shrunk_store,
                         **batch_options(batch_size))
    with progress_bar(ctx) as bars:
        run(ctx, lambda: api.backfill(config, entities=entity or (), dry_run=dry_run, restart=restart,
                                           strict=strict, memories_dir=memories_dir, progress=bars.page))


@app.command()
def verify(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    mode: Annotated[str, typer.Option("--mode", help="rows: compare every row; buckets: hash buckets first, "
                                      "rows only where a bucket differs.")] = "rows",
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Check N random migrated keys per entity "
                                               "(cheap; not enough for the cutover gate).")] = None,
    recheck_delay: Annotated[float, typer.Option("--recheck-delay", min=0, help="Seconds to wait before re-checking "
                                                 "differences (writes in flight heal).")] = 3.0,
    repair: Annotated[bool, typer.Option("--repair", help="Re-copy missing and differing rows from KV.")] = False,
    repair_extra: Annotated[bool, typer.Option("--repair-extra", help="Delete rows that have no KV source "
                                               "(needs --yes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm --repair-extra.")] = False,
    memories_dir: MemoriesDirOpt = None,
    max_requests: MaxRequestsOpt = None,
    allow_shrunk_store: ShrunkOpt = False,
    allow_lossy_repair: Annotated[bool, typer.Option("--allow-lossy-repair", help="Let --repair replace a row even "
                                                     "when the new one holds less (a value emptied, list members "
                                                     "or JSON keys gone).")] = False,
) -> None:
    """Diff KV against Postgres field by field (phase 2); exit 1 when differences remain."""
    config = config_from(ctx, max_requests=max_requests, allow_shrunk_store=allow_shrunk_store,
                         allow_lossy_repair=allow_lossy_repair)
    with progress_bar(ctx) as bars:
        run(ctx, lambda: api.verify(config, entities=entity or (), mode=mode, sample=sample,
                                         recheck_delay=recheck_delay, repair=repair, repair_extra=repair_extra,
                                         yes=yes, memories_dir=memories_dir, report=bars.tick),
            exit_code_of=lambda r: 0 if r.clean else 1)


@app.command("dual-write")
def dual_write(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    settle: SettleOpt = DEFAULT_SETTLE,
    rollback: Annotated[bool, typer.Option("--rollback", help="Stop dual writes (only while reads are on KV).")] = False,
    recheck_delay: Annotated[float, typer.Option("--recheck-delay", min=0, help="Seconds before re-checking "
                                                 "differences.")] = 3.0,
    max_requests: MaxRequestsOpt = None,
    allow_shrunk_store: ShrunkOpt = False,
) -> None:
    """Mark entities dual-written (phase 2), then backfill and verify them; exit 1 if verify differs."""
    config = config_from(ctx, max_requests=max_requests, allow_shrunk_store=allow_shrunk_store)
    with progress_bar(ctx) as bars:
        run(ctx, lambda: api.dual_write(config, entities=entity or (), settle=settle, rollback=rollback,
                                             recheck_delay=recheck_delay, progress=bars.page, report=bars.tick),
            exit_code_of=lambda r: 0 if r.clean else 1)


@app.command()
def cutover(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Switch even if the verify gate refuses (recorded).")] = False,
    rollback: Annotated[bool, typer.Option("--rollback", help="Switch reads back to KV.")] = False,
    max_verify_age: Annotated[int, typer.Option("--max-verify-age", min=1, help="Minutes a clean verify stays "
                                                "valid for the gate.")] = 60,
    require_shadow: Annotated[bool, typer.Option("--require-shadow", help="Also require the latest `kvmigrate "
                                                 "shadow` run to be clean (every view compared, all matching).")]
    = False,
) -> None:
    """Switch reads to Postgres (phase 3) once each entity's latest full verify is clean and recent."""
    config = config_from(ctx)
    age = dt.timedelta(minutes=max_verify_age)
    run(ctx, lambda: api.cutover(config, entities=entity or (), force=force, rollback=rollback,
                                      max_verify_age=age, require_shadow=require_shadow))


@app.command()
def cleanup(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    archive_dir: Annotated[Path, typer.Option("--archive-dir", help="Where the archive (JSONL.gz + manifest.json) "
                                              "goes.")] = Path("kvmigrate-archive"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be archived and deleted; change "
                                          "nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: delete the archived, verified KV keys.")] = False,
    settle: SettleOpt = DEFAULT_SETTLE,
    verify_first: Annotated[bool, typer.Option("--verify-first", help="Run a full verify once writes are on Postgres, "
                            "before the cleanup pass (one more billed read of every key). Without it, keys changed "
                            "since the last verify are verified as cleanup reads them.")] = False,
    max_requests: MaxRequestsOpt = None,
    allow_shrunk_store: ShrunkOpt = False,
) -> None:
    """Phase 4: move writes to Postgres, then in one read pass archive the verified KV keys and delete them.
    Never touches presence, sessions, rate limits or unknown keys."""
    config = config_from(ctx, max_requests=max_requests, allow_shrunk_store=allow_shrunk_store)
    if not (yes or dry_run or global_options(ctx).json) and sys.stdin.isatty():
        yes = typer.confirm("cleanup archives and then DELETES the migrated KV keys; continue?", err=True)
    with progress_bar(ctx) as bars:
        run(ctx, lambda: api.cleanup(config, entities=entity or (), archive_dir=archive_dir, dry_run=dry_run,
                                          yes=yes, settle=settle, verify_first=verify_first, report=bars.tick))


@app.command()
def restore(
    ctx: typer.Context,
    archive_dir: Annotated[Path, typer.Argument(help="The archive folder cleanup wrote (with manifest.json).")],
    *,
    entity: EntityOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite keys whose current value differs.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read only: say what would be restored, refused or "
                                          "skipped, and the KV commands a real run would cost.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: write the archived keys back into KV.")] = False,
    max_requests: MaxRequestsOpt = None,
) -> None:
    """Put archived keys back with their types and TTLs (the undo of cleanup); flags unchanged.
    Forecasts its KV commands first; writes only with --yes (or a confirmation)."""
    config = config_from(ctx, max_requests=max_requests)
    if not (yes or dry_run or global_options(ctx).json) and sys.stdin.isatty():
        try:
            cost = api.restore_forecast(config, archive_dir, entities=entity or ())
        except KvmigrateError:
            cost = None  # the run below reports the same error
        if cost is not None:
            typer.echo(f"restore writes {cost.keys} archived keys back into KV: about {cost.commands} billed KV "
                       "commands", err=True)
            yes = typer.confirm("continue?", err=True)
    with progress_bar(ctx) as bars:
        run(ctx, lambda: api.restore(config, archive_dir, entities=entity or (), force=force, yes=yes,
                                          dry_run=dry_run, report=bars.tick),
            exit_code_of=lambda r: 0 if r.clean else 1)
