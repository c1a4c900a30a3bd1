"""`kvmigrate setup` (phase 1): the versioned schema files, applied once each."""

from __future__ import annotations

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.pg.migrations import SetupResult, apply_migrations
from kvmigrate.model.config import Config


def setup(config: Config, *, dry_run: bool = False) -> SetupResult:
    """Apply pending schema files (phase 1). Writes to Postgres unless dry_run; no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        return apply_migrations(conn, dry_run=dry_run, app_schema=config.pg_schema)
