"""What every phase that writes checks first: the schema is set up, in the schema the run targets."""

from __future__ import annotations

import psycopg

from kvmigrate.adapters.pg.conflicts import recorded_schema, schema_mismatch, target_schema
from kvmigrate.adapters.pg.migrations import applied_checksums, load_migrations
from kvmigrate.model.errors import ConfigError


def require_schema(conn: psycopg.Connection) -> None:
    """Refuse to run before `kvmigrate setup` has applied every schema file, or on a connection
    whose search_path resolves the app's tables in another schema than setup installed them
    in (a missing --schema would read another app's `public.users`). Read-only."""
    applied = applied_checksums(conn)
    if len(applied) < len(load_migrations()):
        conn.rollback()
        raise ConfigError("the schema is not set up in this database", hint="run `kvmigrate setup` first")
    mismatch = schema_mismatch(recorded_schema(conn), target_schema(conn, None))
    conn.rollback()
    if mismatch is not None:
        raise mismatch
