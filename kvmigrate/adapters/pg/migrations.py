"""Apply the versioned SQL files in `schema/` in order, each exactly once.

The pending files run in one transaction together with their rows in
`kvmigrate.schema_migrations` (version, name, sha256), so a failure leaves none applied. A
transaction-scoped advisory lock serialises concurrent runs, so it works through a
transaction-mode pooler too. An applied file whose checksum changed is refused, and so is a
file whose tables, indexes or types already exist (kvmigrate.pg.conflicts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from kvmigrate.adapters.pg.conflicts import (
    ADVICE,
    conflict_error,
    find_conflicts,
    recorded_schema,
    schema_mismatch,
    target_schema,
)
from kvmigrate.model.errors import ConfigError, KvmigrateError, SchemaConflict
from kvmigrate.model.serial import to_dict

if TYPE_CHECKING:
    from importlib.abc import Traversable

_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
LOCK_KEY = 0x6B766D69  # "kvmi": the advisory lock every schema change takes

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS kvmigrate;
CREATE TABLE IF NOT EXISTS kvmigrate.schema_migrations (
    version     INT PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"


@dataclass(frozen=True)
class SetupResult:
    """What setup did (or, with dry_run, would do)."""

    applied: tuple[Migration, ...]
    already: tuple[Migration, ...]
    dry_run: bool
    app_schema: str | None = None  # --schema: where the app's tables go (None: the search_path's)


def schema_dir() -> Traversable:
    """The schema files, shipped inside the package (`kvmigrate/schema/NNN_name.sql`), found
    through importlib.resources so a wheel works under any interpreter."""
    folder = resources.files("kvmigrate").joinpath("schema")
    if not folder.is_dir():
        raise ConfigError("cannot find the schema files inside the kvmigrate package", hint="reinstall kvmigrate")
    return folder


def load_migrations(directory: Path | Traversable | None = None) -> list[Migration]:
    """Read `NNN_name.sql` files in version order; refuse duplicates and stray names."""
    folder = directory or schema_dir()
    found: dict[int, Migration] = {}
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        m = _FILE_RE.match(path.name)
        if not m:
            raise ConfigError(f"schema file {path.name} is not named NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise ConfigError(f"two schema files share version {version:03d}")
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def applied_checksums(conn: psycopg.Connection) -> dict[int, str]:
    """Versions already applied with their checksums; empty when setup never ran. Read-only."""
    exists = conn.execute("SELECT to_regclass('kvmigrate.schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, checksum FROM kvmigrate.schema_migrations").fetchall()
    return {int(v): str(c) for v, c in rows}


def check_unchanged(migrations: list[Migration], applied: dict[int, str]) -> None:
    """Refuse when an applied file's content changed since it ran."""
    for mig in migrations:
        if mig.version in applied and applied[mig.version] != mig.checksum:
            raise KvmigrateError(
                f"schema file {mig.filename} was changed after it was applied "
                f"(checksum {applied[mig.version][:12]} in the database, {mig.checksum[:12]} on disk)",
                hint="never edit an applied schema file: restore it and add a new NNN_name.sql",
            )


def apply_migrations(
    conn: psycopg.Connection, *, dry_run: bool = False, directory: Path | None = None,
    app_schema: str | None = None,
) -> SetupResult:
    """Apply pending schema files, all in one transaction under the advisory lock: every file
    or none. The app's tables go to `app_schema` (created if missing; the connection's
    search_path must name it, see Config.require_pg), else to the connection's current schema.
    Refuses (SchemaConflict, exit 2) before applying anything when an object a pending file
    creates exists already, or the app's tables were set up in another schema. Writes unless
    dry_run (which checks the same and changes nothing)."""
    migrations = load_migrations(directory)
    if dry_run:
        applied = applied_checksums(conn)
        check_unchanged(migrations, applied)
        pending = tuple(m for m in migrations if m.version not in applied)
        _refuse_conflicts(conn, pending, app_schema)
        conn.rollback()
        return SetupResult(pending, tuple(m for m in migrations if m.version in applied), True, app_schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(_BOOTSTRAP)
        applied = applied_checksums(conn)
        check_unchanged(migrations, applied)
        pending = tuple(m for m in migrations if m.version not in applied)
        target = _refuse_conflicts(conn, pending, app_schema)
        if app_schema and pending:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(app_schema)))
        for mig in pending:
            try:
                conn.execute(sql.SQL(mig.sql))  # trusted file from schema/
            except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject) as exc:  # created meanwhile
                raise SchemaConflict(f"{mig.filename}: {exc.diag.message_primary or exc}; nothing was applied",
                                     hint=ADVICE) from None
            conn.execute(
                "INSERT INTO kvmigrate.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (mig.version, mig.name, mig.checksum),
            )
        has_record = conn.execute("SELECT to_regclass('kvmigrate.app_schema') IS NOT NULL").fetchone()
        if pending and target and has_record and has_record[0]:
            conn.execute("INSERT INTO kvmigrate.app_schema (name) VALUES (%s) ON CONFLICT DO NOTHING", (target,))
    already = tuple(m for m in migrations if m not in pending)
    return SetupResult(pending, already, False, app_schema)


def _refuse_conflicts(conn: psycopg.Connection, pending: Sequence[Migration], app_schema: str | None) -> str | None:
    """Raise SchemaConflict for objects in the way or a schema other than the recorded one;
    return the app schema the files go to. Read-only."""
    target = target_schema(conn, app_schema)
    mismatch = schema_mismatch(recorded_schema(conn), target)
    if mismatch is not None:
        raise mismatch
    conflicts = find_conflicts(conn, [(m.filename, m.sql) for m in pending], app_schema)
    if conflicts:
        raise conflict_error(conflicts)
    return target


def schema_status(conn: psycopg.Connection, directory: Path | None = None) -> tuple[int, int]:
    """(applied, known) counts of schema files; raises KvmigrateError when an applied file
    changed since it ran (setup would refuse it). Read-only."""
    migrations = load_migrations(directory)
    applied = applied_checksums(conn)
    check_unchanged(migrations, applied)
    return sum(1 for m in migrations if m.version in applied), len(migrations)


def pending_files(conn: psycopg.Connection, directory: Path | None = None) -> list[Migration]:
    """The schema files not applied yet. Read-only."""
    applied = applied_checksums(conn)
    return [m for m in load_migrations(directory) if m.version not in applied]


@to_dict.register
def _(result: SetupResult) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "applied": [m.filename for m in result.applied],
        "already_applied": [m.filename for m in result.already],
        "app_schema": result.app_schema,
    }
