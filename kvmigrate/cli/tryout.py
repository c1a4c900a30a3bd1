"""Commands to try and rehearse kvmigrate: seed, demo, rehearse."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kvmigrate import api
from kvmigrate.cli.base import (
    MemoriesDirOpt,
    app,
    batch_options,
    config_from,
    global_options,
    run,
)
from kvmigrate.cli.progress import progress_bar
from kvmigrate.model.errors import ConfigError
from kvmigrate.tryout.seed.run import run_seed


@app.command()
def seed(
    ctx: typer.Context,
    *,
    users: Annotated[int, typer.Option("--users", min=8, help="Number of handles (the real store has about 46).")] = 46,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed writes the same keyspace.")] = 7,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Multiply messages, board posts and games.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Seed even if the KV db is not empty.")] = False,
    memories_dir: Annotated[Path | None, typer.Option("--memories-dir", help="Also write thread memory files here.")]
    = None,
) -> None:
    """Write a realistic /vibe keyspace (every key shape, bad records included) into an empty KV db."""
    config = config_from(ctx)
    run(ctx, lambda: run_seed(config, users=users, seed=seed, scale=scale, force=force,
                             memories_dir=memories_dir))


@app.command()
def demo(
    ctx: typer.Context,
    *,
    users: Annotated[int, typer.Option("--users", min=8, help="Number of handles to seed.")] = 46,
    seed: Annotated[int, typer.Option("--seed", help="Random seed for the data and the simulated app.")] = 7,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the embedded servers running and print their URLs.")]
    = False,
) -> None:
    """The whole migration on embedded Postgres + Valkey, with a simulated app writing throughout;
    exit 0 only if every write the app made is in Postgres exactly once. With --pg-url and --kv-url
    (on the command line, never from the environment) it runs there instead; the KV db must be empty."""
    from kvmigrate.tryout.demo import run_demo

    g = global_options(ctx)
    # Only URLs given on the command line: the environment (DATABASE_URL, KV_URL) usually names
    # production, and the demo deletes keys.
    config = config_from(ctx).model_copy(update={"pg_url": g.pg_url, "kv_url": g.kv_url})
    console = Console(stderr=True, highlight=False)
    say = None if g.json else (lambda m: console.print(m, markup=False))
    run(ctx, lambda: run_demo(config, users=users, seed=seed, keep=keep, say=say),
        exit_code_of=lambda r: 0 if r.ok else 1)


@app.command()
def rehearse(
    ctx: typer.Context,
    *,
    pg_url: Annotated[str | None, typer.Option("--pg-url", help="The branch or scratch database to rehearse into "
                                               "(here or as the global option; never taken from the environment, "
                                               "where DATABASE_URL is usually production).")] = None,
    kv_url: Annotated[str | None, typer.Option("--kv-url", help="The KV store to read (default: the global "
                                               "option, then the environment). Only ever read.")] = None,
    report_path: Annotated[Path | None, typer.Option("--report", help="Write the JSON report (the --json "
                                                     "envelope) to this file, mode 0600.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary to this file "
                                                  "(for $GITHUB_STEP_SUMMARY or a PR comment). Default with "
                                                  "--report: beside it, as .md.")] = None,
    max_rejects: Annotated[int | None, typer.Option("--max-rejects", min=0, help="Exit 5 when more records than "
                                                    "this are rejected. Default: no limit.")] = None,
    max_requests: Annotated[int | None, typer.Option("--max-requests", min=1, help="Exit 4 when the forecast KV "
                                                     "cost of the real run exceeds this. Default: no limit.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=10, help="Keys per SCAN page and per "
                                                    "Postgres transaction. Default: pages of 1,000 keys, loaded "
                                                    "10,000 records a transaction.")] = None,
    memories_dir: MemoriesDirOpt = None,
    no_repair: Annotated[bool, typer.Option("--no-repair", help="Count rows the live app changed during the "
                                            "rehearse as differences instead of re-copying them.")] = False,
) -> None:
    """CI dry run: setup + backfill + verify into a branch database, reading KV strictly read-only, with a
    JSON and Markdown report. Exit 1 on differences, 5 on rejects over --max-rejects, 4 when the real run's
    forecast KV cost exceeds --max-requests."""
    g = global_options(ctx)
    g.pg_url, g.kv_url = pg_url or g.pg_url, kv_url or g.kv_url  # so their secrets are masked too
    config = config_from(ctx, **batch_options(batch_size))

    def call() -> Any:
        if not g.pg_url:
            raise ConfigError("rehearse writes into the database at --pg-url, so it needs the URL given explicitly",
                              hint="pass the branch database: kvmigrate rehearse --pg-url URL")
        return api.rehearse(config, report=report_path, markdown=markdown, max_rejects=max_rejects,
                                 max_requests_real=max_requests, memories_dir=memories_dir, repair=not no_repair,
                                 progress=bars.page)

    with progress_bar(ctx) as bars:
        run(ctx, call, exit_code_of=lambda r: r.exit_code)


