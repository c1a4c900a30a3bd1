"""Commands that prepare and inspect: setup, doctor, inventory, plan, rejects, status, prisma, shadow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kvmigrate import api
from kvmigrate.cli.base import (
    EntityOpt,
    MaxRequestsOpt,
    app,
    config_from,
    global_options,
    run,
)


@app.command()
def setup(
    ctx: typer.Context,
    *,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the SQL that would run; change nothing.")] = False,
) -> None:
    """Apply the schema (phase 1): kvmigrate's state tables and the app's tables, each file once."""
    config = config_from(ctx)
    run(ctx, lambda: api.setup(config, dry_run=dry_run))


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check both connections (version, round trip, TLS, pooler), schema and privileges."""
    config = config_from(ctx)
    run(ctx, lambda: api.doctor(config), exit_code_of=lambda r: 0 if r.ok else (3 if r.unreachable else 1))


SizesOpt = Annotated[bool, typer.Option("--sizes", help="Also measure each key's size and TTL: 2 billed KV "
                                       "commands per key (without it, SCAN passes only).")]


@app.command()
def inventory(ctx: typer.Context, *, max_requests: MaxRequestsOpt = None, sizes: SizesOpt = False) -> None:
    """Census of the keyspace from SCAN pages alone: keys per entity and pattern, types, unknown
    patterns, and the billed KV commands a backfill would cost. Read-only."""
    config = config_from(ctx, max_requests=max_requests)
    run(ctx, lambda: api.inventory(config, sizes=sizes))


@app.command()
def plan(ctx: typer.Context, *, max_requests: MaxRequestsOpt = None, sizes: SizesOpt = False) -> None:
    """Predict the billed KV commands each phase of the migration will cost on this store, beside
    the floor, a naive per-key migration and the daily quota. Read-only (one inventory)."""
    config = config_from(ctx, max_requests=max_requests)
    run(ctx, lambda: api.plan(config, sizes=sizes))


@app.command()
def rejects(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write every reject to this JSONL file (mode 0600).")] = None,
) -> None:
    """List rejected records with their reason and original value. Read-only."""
    config = config_from(ctx)
    run(ctx, lambda: api.rejects(config, entities=entity or (), export=export))


@app.command()
def status(ctx: typer.Context) -> None:
    """Phase of each entity, ledger buckets, last backfill and verify, KV requests today. Read-only."""
    config = config_from(ctx)
    run(ctx, lambda: api.status(config))


@app.command()
def prisma(
    ctx: typer.Context,
    *,
    out: Annotated[Path | None, typer.Option("--out", help="Write schema.prisma and migrations/0_init/ here "
                                             "(usually prisma). Without it, schema.prisma goes to stdout.")] = None,
    schema: Annotated[str | None, typer.Option("--schema", help="Postgres schema holding the app tables. "
                                               "Default: the connection's current schema (public).")] = None,
) -> None:
    """Hand the migrated tables to Prisma: schema.prisma and a baseline migration, read from the
    database's catalog. Read-only on Postgres; no KV request."""
    config = config_from(ctx)
    if out is None and not global_options(ctx).json:
        Console(stderr=True).print("schema.prisma follows on stdout; --out prisma also writes the baseline "
                                   "migration 0_init", markup=False, highlight=False, soft_wrap=True)
    run(ctx, lambda: api.prisma(config, out=out, schema=schema))


@app.command()
def shadow(
    ctx: typer.Context,
    *,
    users: Annotated[int, typer.Option("--users", min=1, help="How many users to sample (the same ones for the "
                                       "same store).")] = 20,
    handle: Annotated[list[str] | None, typer.Option("--handle", help="Compare these users instead (repeat).")] = None,
    views: Annotated[str, typer.Option("--views", help="Comma-separated views: inbox,thread,unread,board,"
                                       "leaderboard,invites,profile,games. Default: all.")] = "",
    max_requests: MaxRequestsOpt = None,
    recheck_delay: Annotated[float, typer.Option("--recheck-delay", min=0, help="Seconds before views that differ "
                                                 "are looked at again (writes in flight heal); 0: no second look.")] = 3.0,
) -> None:
    """Compute the app's read views from KV and from Postgres and compare them field by field;
    exit 1 when any differs. KV read-only; each key read once; the cost is forecast first."""
    config = config_from(ctx, max_requests=max_requests)
    chosen = [v.strip() for v in views.split(",") if v.strip()]

    def forecast(exact: int, at_most: int) -> None:
        typer.echo(f"shadow: forecast at most {at_most} billed KV commands ({exact} known exactly)", err=True)

    run(ctx, lambda: api.shadow(config, users=users, handles=handle or (), views=chosen, on_forecast=forecast,
                                recheck_delay=recheck_delay),
        exit_code_of=lambda r: 0 if r.clean else 1)
