"""Small helpers shared by tests: run the CLI in-process, with secrets-aware assertions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from typer.testing import CliRunner, Result

from kvmigrate.cli import app

T = TypeVar("T")


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run `kvmigrate ARGS` in-process; stdout and stderr are both captured."""
    runner = CliRunner()
    base = {
        "KVMIGRATE_KV_URL": "", "KV_URL": "", "KVMIGRATE_PG_URL": "", "DATABASE_URL_UNPOOLED": "",
        "POSTGRES_URL_NON_POOLING": "", "DATABASE_URL": "", "POSTGRES_URL": "", "REDIS_URL": "",
        "KV_REST_API_URL": "", "UPSTASH_REDIS_REST_URL": "", "KVMIGRATE_PG_SCHEMA": "",
    }
    return runner.invoke(app, list(args), env={**base, **(env or {})}, catch_exceptions=False)


def cli_json(*args: str, env: dict[str, str] | None = None, expect: int = 0) -> dict:
    """Run with --json and return the parsed envelope, asserting the exit code."""
    result = cli("--json", *args, env=env)
    assert result.exit_code == expect, result.output
    return orjson.loads(result.stdout)


def all_output(results: Sequence[Result]) -> str:
    return "\n".join(r.output for r in results)


def cleanup_entity(config: Any, entity: str, archive_dir: Path) -> Any:
    """Move one entity through dual-write and cutover, then clean it up; its EntityCleanup."""
    import psycopg

    from kvmigrate.adapters.connections import connect_kv
    from kvmigrate.engine import phases
    from kvmigrate.model.budget import RequestBudget
    from kvmigrate.phases.cleanup import run_cleanup

    with psycopg.connect(config.require_pg()) as conn:
        kv = connect_kv(config.require_kv(), RequestBudget())
        for phase in (phases.DUAL, phases.CUTOVER):
            phases.set_phase(conn, kv, entity, phase, reason="test")
    return run_cleanup(config, entities=[entity], archive_dir=archive_dir, yes=True).entities[entity]


def traced_peak(work: Callable[[], T]) -> tuple[T, int]:
    """`work()`'s result, and the peak of the memory Python allocated while it ran, in bytes."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = work()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
