"""The Typer app, its global options, and the one `run` every command goes through.

Each command parses its options, builds a Config, calls one library function and renders the
result: the report (tables, SQL) on stdout, or with `--json` one JSON envelope there instead;
progress, warnings and errors on stderr. Errors print one `error:` line and a `hint:` line,
and exit with the documented code (README, "Exit codes").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from kvmigrate import __version__, report
from kvmigrate.api import connection_errors
from kvmigrate.model.config import KV_URL_VARS, PG_URL_VARS, Config, build_config
from kvmigrate.model.errors import EXIT_CODES, KvmigrateError, StorageError
from kvmigrate.model.masking import mask_text
from kvmigrate.model.printable import printable

#: Global options a user may also write after the command (`kvmigrate status --json`).
GLOBAL_FLAGS = frozenset({"--json", "--traceback", "-v", "-vv", "--verbose"})
GLOBAL_VALUED = frozenset({"--kv-url", "--pg-url", "--schema"})


def hoist_global_options(args: list[str], own: frozenset[str] = frozenset()) -> list[str]:
    """Move global options written after the command name to before it, where the parser wants
    them. Options the command defines itself (`own`) stay, and nothing after `--` moves.
    ValueError when a valued option ends the line without its value."""
    at = command_index(args)
    if at >= len(args):
        return args
    end = args.index("--", at) if "--" in args[at:] else len(args)
    moved: list[str] = []
    kept: list[str] = []
    i = at + 1
    while i < end:
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in own:
            kept.append(arg)
        elif arg in GLOBAL_FLAGS:
            moved.append(arg)
        elif arg in GLOBAL_VALUED:
            if i + 1 >= end:
                raise ValueError(f"Option '{arg}' requires an argument.")
            moved += args[i:i + 2]
            i += 1
        elif name in GLOBAL_VALUED:
            moved.append(arg)
        else:
            kept.append(arg)
        i += 1
    return args[:at] + moved + [args[at]] + kept + args[end:]


def command_index(args: list[str]) -> int:
    """Where the command name is in `args` (len(args) when there is none)."""
    at = 0
    while at < len(args) and args[at].startswith("-") and args[at] != "--":
        at += 2 if args[at] in GLOBAL_VALUED else 1
    return at


#: click's UsageError, wherever this typer takes click from (its own copy or the click package)
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _Group(TyperGroup):
    """The command group; accepts the global options after the command too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: click's Context
        at = command_index(args)
        command = self.commands.get(args[at]) if at < len(args) else None
        own = frozenset(o for p in (command.params if command else []) for o in getattr(p, "opts", []))
        try:
            hoisted = hoist_global_options(list(args), own)
        except ValueError as exc:
            ctx.fail(str(exc))  # a usage error, exit 2
        return super().parse_args(ctx, hoisted)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,  # type: ignore[override]
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's main, with a usage error under --json also answered by a JSON envelope on
        stdout (exit 2), so a script reading stdout always gets one."""
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except _UsageError as exc:
            if "--json" in argv[:argv.index("--") if "--" in argv else len(argv)]:
                at = command_index(argv)
                command = argv[at] if at < len(argv) else "kvmigrate"
                message = mask_text(exc.format_message())  # type: ignore[attr-defined]
                env = report.envelope(command, started=dt.datetime.now(dt.timezone.utc), exit_code=2,
                                      error=message, hint="see --help for the usage")
                typer.echo(report.dumps(env))
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="kvmigrate",
    help="Move an app's data from a Redis-compatible KV store (Vercel KV / Upstash) to Postgres "
    "in four phases: setup, dual-write + verify, cutover, cleanup.\n\n"
    "Exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + ".",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


@dataclass
class Globals:
    kv_url: str | None = None
    pg_url: str | None = None
    json: bool = False
    pg_schema: str | None = None
    verbose: int = 0
    traceback: bool = False


def global_options(ctx: typer.Context) -> Globals:
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
    pg_schema: Annotated[
        str | None,
        typer.Option("--schema", help="Postgres schema for the app's tables (setup creates it; every command "
                     "uses it through search_path). Default: $KVMIGRATE_PG_SCHEMA, else the server's search_path "
                     "(public). kvmigrate's own state stays in schema kvmigrate."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable result on stdout.")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="-v: each page and its timing; -vv: "
                                         "each KV round trip too (commands, never values). On stderr.")] = 0,
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full trace of an error.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=lambda v: _print_version(v))] = False,
) -> None:
    """Global options apply to every command: kvmigrate --json status (they may also follow the
    command: kvmigrate status --json)."""
    ctx.obj = Globals(kv_url, pg_url, json_out, pg_schema, verbose, traceback)
    # -v: pages and timings; -vv: every KV round trip too (command names and counts, never values)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("kvmigrate").setLevel(logging.WARNING - 10 * min(verbose, 2))


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"kvmigrate {__version__}")
        raise typer.Exit(0)


def config_from(ctx: typer.Context, **options: Any) -> Config:
    """The command's Config; a bad setting exits 2 with the usual error and hint lines."""
    g = global_options(ctx)
    try:
        return build_config(kv_url=g.kv_url, pg_url=g.pg_url, **({"pg_schema": g.pg_schema} | options))
    except KvmigrateError as exc:
        started = dt.datetime.now(dt.timezone.utc)
        command = ctx.command_path.split(" ", 1)[-1]
        _fail(Console(stderr=True, highlight=False), g, command, started, exc.exit_code, exc.message, exc.hint, ())


def run(ctx: typer.Context, fn: Callable[[], Any], *, exit_code_of: Callable[[Any], int] | None = None) -> None:
    """Call one library function, render its result, map errors to exit codes. Never returns."""
    g = global_options(ctx)
    console = Console(stderr=True, highlight=False)
    command = ctx.command_path.split(" ", 1)[-1]
    started = dt.datetime.now(dt.timezone.utc)
    secrets = config_from(ctx).secrets
    with collected_warnings() as warned:
        try:
            with connection_errors():
                result = fn()
        except KvmigrateError as exc:
            _fail(console, g, command, started, exc.exit_code, exc.message, exc.hint, secrets, warned)
        except OSError as exc:
            if exc.errno not in _FILE_ERRNOS or exc.filename is None or g.traceback:
                raise_or_fail(exc, g, console, command, started, secrets, warned)
            _fail(console, g, command, started, StorageError.exit_code,
                  f"cannot write {exc.filename}: {exc.strerror}",
                  "free space on that disk, or choose a writable place for it, then run the same command again",
                  secrets, warned)
        except KeyboardInterrupt:
            _fail(console, g, command, started, 130, "interrupted", "run the same command again to resume", secrets,
                  warned)
        except Exception as exc:  # a bug: say so plainly, keep secrets out, offer the trace
            raise_or_fail(exc, g, console, command, started, secrets, warned)
    code = exit_code_of(result) if exit_code_of else 0
    if g.json:
        typer.echo(report.dumps(report.envelope(command, started=started, exit_code=code, result=result,
                                                warnings=warned), secrets))
    else:  # the report is the command's data: stdout (`setup --dry-run > schema.sql`)
        out = Console(highlight=False)
        text = printable(mask_text(_capture(result, output_width(out)), secrets))
        out.print(text, highlight=False, markup=False, end="", soft_wrap=True)
    raise typer.Exit(code)


def output_width(console: Console) -> int:
    """Columns tables are laid out in: the terminal's (or $COLUMNS); 160 into a file or pipe."""
    return console.width if console.is_terminal or os.environ.get("COLUMNS", "").isdigit() else 160


def raise_or_fail(exc: Exception, g: Globals, console: Console, command: str, started: dt.datetime,
                  secrets: tuple[str, ...], warned: list[str]) -> NoReturn:
    """An error kvmigrate did not expect (a bug): the trace with --traceback, else one line."""
    if g.traceback:
        raise exc
    _fail(console, g, command, started, 1, f"unexpected {type(exc).__name__}: {exc}",
          "rerun with --traceback and report it", secrets, warned)


#: OS errors about a file kvmigrate writes that the user can fix: disk full, read-only, no permission.
_FILE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})


def _capture(result: Any, width: int) -> str:
    buf = Console(record=True, width=width, file=io.StringIO(), highlight=False, soft_wrap=True)
    report.render(result, buf)
    return buf.export_text()


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect what kvmigrate logs at WARNING or above while the block runs (retries, a pooled
    URL, scripting refused), once each, for the JSON envelope's `warnings`. The messages still
    go to stderr as usual."""
    warned: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message not in warned:
                warned.append(message)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("kvmigrate")
    logger.addHandler(handler)
    try:
        yield warned
    finally:
        logger.removeHandler(handler)


def _fail(console: Console, g: Globals, command: str, started: dt.datetime, code: int,
          message: str, hint: str | None, secrets: tuple[str, ...], warned: list[str] | None = None) -> NoReturn:
    if g.json:
        env = report.envelope(command, started=started, exit_code=code, error=message, hint=hint, warnings=warned)
        typer.echo(report.dumps(env, secrets))
    console.print("error: " + printable(mask_text(message, secrets)), markup=False, highlight=False, soft_wrap=True)
    if hint:
        console.print("hint: " + printable(mask_text(hint, secrets)), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def batch_options(batch_size: int | None) -> dict[str, int]:
    """`--batch-size N`: N keys per SCAN page, per load batch and per Postgres transaction;
    without it, the Config defaults."""
    return {} if batch_size is None else {"batch_size": batch_size, "scan_count": batch_size, "load_batch": batch_size}


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
SettleOpt = Annotated[
    float,
    typer.Option("--settle", min=0, help="Seconds to wait after changing flags, so every app instance sees them "
                 "(at least the app's flag cache time)."),
]


def main() -> None:
    """Console-script entry point."""
    app()
