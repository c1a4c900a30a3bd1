"""The library API: one function per command. Each returns a result object and prints nothing.

    from kvmigrate import commands
    from kvmigrate.config import build_config
    result = commands.setup(build_config(pg_url="postgresql://..."), dry_run=True)
"""

from __future__ import annotations

from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_pg
from kvmigrate.doctor import DoctorResult, run_doctor
from kvmigrate.pg.migrations import SetupResult, apply_migrations


def setup(config: Config, *, dry_run: bool = False) -> SetupResult:
    """Apply pending schema files (phase 1). Writes to Postgres unless dry_run; no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        return apply_migrations(conn, dry_run=dry_run)


def doctor(config: Config) -> DoctorResult:
    """Check both connections, versions, schema and privileges. Read-only; ~3 KV requests."""
    return run_doctor(config, RequestBudget(cap=config.max_requests, phase="doctor"))
