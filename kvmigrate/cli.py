"""The command line: a thin Typer layer over `kvmigrate.commands`.

Each command parses its options, builds a Config, calls one library function and renders the
result: human text on stderr, `--json` on stdout. Errors print one `error:` line and a `hint:`
line, and exit with the documented code (README, "Exit codes").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from kvmigrate import __version__, commands, report
from kvmigrate.config import KV_URL_VARS, PG_URL_VARS, Config, build_config
from kvmigrate.connections import connection_errors
from kvmigrate.errors import EXIT_CODES, KvmigrateError
from kvmigrate.masking import mask_text
from kvmigrate.phases import DEFAULT_SETTLE

app = typer.Typer(
    name="kvmigrate",
    help="Move an app's data from a Redis-compatible KV store (Vercel KV / Upstash) to Postgres "
    "in four phases: setup, dual-write + verify, cutover, cleanup.\n\n"
    "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + ".",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


@dataclass
class Globals:
    kv_url: str | None = None
    pg_url: str | None = None
    json: bool = False
    verbose: int = 0
    traceback: bool = False


def _globals(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


@app.callback()
def _main(
    ctx: typer.Context,
    kv_url: Annotated[
        str | None,
        typer.Option("--kv-url", help=f"KV store URL (redis:// or rediss://). Default: ${', $'.join(KV_URL_VARS)}."),
    ] = None,
    pg_url: Annotated[
        str | None,
        typer.Option("--pg-url", help=f"Postgres URL. Default: ${', $'.join(PG_URL_VARS)}."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable result on stdout.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More log output (repeat).")] = 0,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full trace of an error.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Global options apply to every command and go before it: kvmigrate --json status."""
    if version:
        typer.echo(f"kvmigrate {__version__}")
        raise typer.Exit(0)
    ctx.obj = Globals(kv_url, pg_url, json_out, verbose, traceback)
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), stream=sys.stderr, format="%(message)s")


def config_from(ctx: typer.Context, **options: Any) -> Config:
    """The command's Config; a bad setting exits 2 with the usual error and hint lines."""
    g = _globals(ctx)
    try:
        return build_config(kv_url=g.kv_url, pg_url=g.pg_url, **options)
    except KvmigrateError as exc:
        started = dt.datetime.now(dt.timezone.utc)
        command = ctx.command_path.split(" ", 1)[-1]
        _fail(Console(stderr=True, highlight=False), g, command, started, exc.exit_code, exc.message, exc.hint, ())


def run(ctx: typer.Context, fn: Callable[[], Any], *, exit_code_of: Callable[[Any], int] | None = None) -> None:
    """Call one library function, render its result, map errors to exit codes. Never returns."""
    g = _globals(ctx)
    console = Console(stderr=True, highlight=False)
    command = ctx.command_path.split(" ", 1)[-1]
    started = dt.datetime.now(dt.timezone.utc)
    secrets = config_from(ctx).secrets
    try:
        with connection_errors():
            result = fn()
    except KvmigrateError as exc:
        _fail(console, g, command, started, exc.exit_code, exc.message, exc.hint, secrets)
    except KeyboardInterrupt:
        _fail(console, g, command, started, 130, "interrupted", "run the same command again to resume", secrets)
    except Exception as exc:  # a bug: say so plainly, keep secrets out, offer the trace
        if g.traceback:
            raise
        _fail(console, g, command, started, 1, f"unexpected {type(exc).__name__}: {exc}",
              "rerun with --traceback and report it", secrets)
    code = exit_code_of(result) if exit_code_of else 0
    if g.json:
        typer.echo(report.dumps(report.envelope(command, started=started, exit_code=code, result=result), secrets))
    else:
        console.print(mask_text(_capture(result), secrets), highlight=False, markup=False, end="", soft_wrap=True)
    raise typer.Exit(code)


def _capture(result: Any) -> str:
    buf = Console(record=True, width=160, file=io.StringIO(), highlight=False, soft_wrap=True)
    report.render(result, buf)
    return buf.export_text()


def _fail(console: Console, g: Globals, command: str, started: dt.datetime, code: int,
          message: str, hint: str | None, secrets: tuple[str, ...]) -> NoReturn:
    if g.json:
        env = report.envelope(command, started=started, exit_code=code, error=message, hint=hint)
        typer.echo(report.dumps(env, secrets))
    console.print("error: " + mask_text(message, secrets), markup=False, highlight=False)
    if hint:
        console.print("hint: " + mask_text(hint, secrets), markup=False, highlight=False)
    raise typer.Exit(code)


# --------------------------------------------------------------------------- phase 1


@app.command()
def setup(
    ctx: typer.Context,
    *,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the SQL that would run; change nothing.")] = False,
) -> None:
    """Apply the schema (phase 1): kvmigrate's state tables and the app's tables, each file once."""
    config = config_from(ctx)
    run(ctx, lambda: commands.setup(config, dry_run=dry_run))


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check both connections (version, round trip, TLS, pooler), schema and privileges."""
    config = config_from(ctx)
    run(ctx, lambda: commands.doctor(config), exit_code_of=lambda r: 0 if r.ok else (3 if r.unreachable else 1))


EntityOpt = Annotated[
    list[str] | None,
    typer.Option("--entity", "-e", help="Only this entity (repeat for several). Default: all, in load order."),
]
MaxRequestsOpt = Annotated[
    int | None,
    typer.Option("--max-requests", min=1, help="Stop cleanly (exit 4) before spending more KV commands than this."),
]
MemoriesDirOpt = Annotated[
    Path | None, typer.Option("--memories-dir", help="Folder of thread_*.jsonl memory files. Default: ~/.vibe/memory.")
]
NoEvalOpt = Annotated[
    bool, typer.Option("--no-eval", help="Read with pipelines instead of one server-side script per batch.")
]


@app.command()
def inventory(ctx: typer.Context, *, max_requests: MaxRequestsOpt = None, no_eval: NoEvalOpt = False) -> None:
    """Census of the keyspace: keys per entity and pattern, types, sizes, TTLs, unknown patterns,
    and the KV requests a backfill would cost. Read-only."""
    config = config_from(ctx, max_requests=max_requests, use_eval=not no_eval)
    run(ctx, lambda: commands.inventory(config))


@app.command()
def plan(ctx: typer.Context, *, max_requests: MaxRequestsOpt = None, no_eval: NoEvalOpt = False) -> None:
    """Predict the KV commands each phase of the migration will cost on this store, beside a
    naive per-key migration and the daily quota. Read-only (one inventory pass)."""
    config = config_from(ctx, max_requests=max_requests, use_eval=not no_eval)
    run(ctx, lambda: commands.plan(config))


@app.command()
def backfill(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and transform everything; write nothing.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=10, help="Keys per SCAN page and load batch.")] = 1000,
    max_requests: MaxRequestsOpt = None,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore the checkpoint; scan from the start.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 5 when any record was rejected.")] = False,
    memories_dir: MemoriesDirOpt = None,
    no_eval: NoEvalOpt = False,
) -> None:
    """Copy KV history into Postgres (phase 2): idempotent, resumable, never writes to KV."""
    config = config_from(ctx, max_requests=max_requests, batch_size=batch_size, scan_count=batch_size,
                         use_eval=not no_eval)
    with progress_bar(ctx, "backfill") as on_page:
        run(ctx, lambda: commands.backfill(config, entities=entity or (), dry_run=dry_run, restart=restart,
                                           strict=strict, memories_dir=memories_dir, progress=on_page))


@app.command()
def rejects(
    ctx: typer.Context,
    *,
    entity: EntityOpt = None,
    export: Annotated[Path | None, typer.Option("--export", help="Write every reject to this JSONL file (mode 0600).")] = None,
) -> None:
    """List rejected records with their reason and original value. Read-only."""
    config = config_from(ctx)
    run(ctx, lambda: commands.rejects(config, entities=entity or (), export=export))


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
    no_eval: NoEvalOpt = False,
) -> None:
    """Diff KV against Postgres field by field (phase 2); exit 1 when differences remain."""
    config = config_from(ctx, max_requests=max_requests, use_eval=not no_eval)
    run(ctx, lambda: commands.verify(config, entities=entity or (), mode=mode, sample=sample,
                                     recheck_delay=recheck_delay, repair=repair, repair_extra=repair_extra, yes=yes,
                                     memories_dir=memories_dir),
        exit_code_of=lambda r: 0 if r.clean else 1)


# --------------------------------------------------------------------------- phases 2-4

SettleOpt = Annotated[
    float,
    typer.Option("--settle", min=0, help="Seconds to wait after changing flags, so every app instance sees them "
                 "(at least the app's flag cache time)."),
]


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
    no_eval: NoEvalOpt = False,
) -> None:
    """Mark entities dual-written (phase 2), then backfill and verify them; exit 1 if verify differs."""
    config = config_from(ctx, max_requests=max_requests, use_eval=not no_eval)
    with progress_bar(ctx, "backfill") as on_page:
        run(ctx, lambda: commands.dual_write(config, entities=entity or (), settle=settle, rollback=rollback,
                                             recheck_delay=recheck_delay, progress=on_page),
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
) -> None:
    """Switch reads to Postgres (phase 3) once each entity's latest full verify is clean and recent."""
    config = config_from(ctx)
    age = dt.timedelta(minutes=max_verify_age)
    run(ctx, lambda: commands.cutover(config, entities=entity or (), force=force, rollback=rollback,
                                      max_verify_age=age))


@app.command()
def status(ctx: typer.Context) -> None:
    """Phase of each entity, ledger buckets, last backfill and verify, KV requests today. Read-only."""
    config = config_from(ctx)
    run(ctx, lambda: commands.status(config))


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
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the verify that runs once writes are on "
                                            "Postgres (keys changed since the last verify are then kept).")] = False,
    max_requests: MaxRequestsOpt = None,
    no_eval: NoEvalOpt = False,
) -> None:
    """Phase 4: move writes to Postgres, verify, archive the verified KV keys, then delete them.
    Never touches presence, sessions, rate limits or unknown keys."""
    config = config_from(ctx, max_requests=max_requests, use_eval=not no_eval)
    if not (yes or dry_run or _globals(ctx).json) and sys.stdin.isatty():
        yes = typer.confirm("cleanup archives and then DELETES the migrated KV keys; continue?", err=True)
    run(ctx, lambda: commands.cleanup(config, entities=entity or (), archive_dir=archive_dir, dry_run=dry_run,
                                      yes=yes, settle=settle, verify_first=not no_verify))


@app.command()
def restore(
    ctx: typer.Context,
    archive_dir: Annotated[Path, typer.Argument(help="The archive folder cleanup wrote (with manifest.json).")],
    *,
    entity: EntityOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite keys whose current value differs.")] = False,
    max_requests: MaxRequestsOpt = None,
) -> None:
    """Put archived keys back with their types and remaining TTLs (the undo of cleanup); flags unchanged."""
    config = config_from(ctx, max_requests=max_requests)
    run(ctx, lambda: commands.restore(config, archive_dir, entities=entity or (), force=force),
        exit_code_of=lambda r: 0 if r.clean else 1)


@contextlib.contextmanager
def progress_bar(ctx: typer.Context, label: str) -> Iterator[Callable[[int, int, Any], None]]:
    """A rich progress bar on stderr (keys/s, rejects so far); silent when stderr is no terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} keys/s"),
                   TextColumn("rejects {task.fields[rejects]}"), TimeElapsedColumn(), console=console,
                   transient=True, disable=not console.is_terminal)
    task = bar.add_task(label, total=None, rate="-", rejects=0)
    started = time.perf_counter()

    def on_page(done: int, total: int, tallies: Any) -> None:
        rate = done / max(time.perf_counter() - started, 1e-6)
        rejected = sum(t.rejected + t.item_rejects for t in tallies.values())
        bar.update(task, completed=done, total=max(total, done), rate=f"{rate:,.0f}", rejects=rejected)

    with bar:
        yield on_page


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
    run(ctx, lambda: commands.seed(config, users=users, seed=seed, scale=scale, force=force,
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
    exit 0 only if every write the app made is in Postgres exactly once."""
    from kvmigrate.demo import run_demo

    config = config_from(ctx)
    console = Console(stderr=True, highlight=False)
    say = None if _globals(ctx).json else (lambda m: console.print(m, markup=False))
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
                                                     "envelope) to this file.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary to this file "
                                                  "(for $GITHUB_STEP_SUMMARY or a PR comment).")] = None,
    max_rejects: Annotated[int | None, typer.Option("--max-rejects", min=0, help="Exit 5 when more records than "
                                                    "this are rejected. Default: no limit.")] = None,
    max_requests: Annotated[int | None, typer.Option("--max-requests", min=1, help="Exit 4 when the forecast KV "
                                                     "cost of the real run exceeds this. Default: no limit.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=10, help="Keys per SCAN page and load batch.")] = 1000,
    memories_dir: Annotated[
        Path | None, typer.Option("--memories-dir", help="Folder of thread_*.jsonl memory files. Default: ~/.vibe/memory.")
    ] = None,
    no_repair: Annotated[bool, typer.Option("--no-repair", help="Count rows the live app changed during the "
                                            "rehearse as differences instead of re-copying them.")] = False,
    no_eval: NoEvalOpt = False,
) -> None:
    """CI dry run: setup + backfill + verify into a branch database, reading KV strictly read-only, with a
    JSON and Markdown report. Exit 1 on differences, 5 on rejects over --max-rejects, 4 when the real run's
    forecast KV cost exceeds --max-requests."""
    from kvmigrate.errors import ConfigError

    g = _globals(ctx)
    g.pg_url, g.kv_url = pg_url or g.pg_url, kv_url or g.kv_url  # so their secrets are masked too
    config = config_from(ctx, batch_size=batch_size, scan_count=batch_size, use_eval=not no_eval)

    def call() -> Any:
        if not g.pg_url:
            raise ConfigError("rehearse writes into the database at --pg-url, so it needs the URL given explicitly",
                              hint="pass the branch database: kvmigrate rehearse --pg-url URL")
        return commands.rehearse(config, report=report_path, markdown=markdown, max_rejects=max_rejects,
                                 max_requests_real=max_requests, memories_dir=memories_dir, repair=not no_repair,
                                 progress=on_page)

    with progress_bar(ctx, "backfill") as on_page:
        run(ctx, call, exit_code_of=lambda r: r.exit_code)


def main() -> None:
    """Console-script entry point."""
    app()



