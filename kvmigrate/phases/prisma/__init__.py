"""Hand the migrated schema to Prisma: `schema.prisma` and a baseline migration, from the catalog.

    from kvmigrate.phases.prisma import generate
    handoff = generate(conn, schema=None, out=Path("prisma"))

The app then marks the baseline applied (`npx prisma migrate resolve --applied 0_init`) and
keeps its schema under Prisma Migrate from there on. See `catalog` (what is read), `schema`
(the models) and `baseline` (the SQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.serial import to_dict
from kvmigrate.phases.prisma.baseline import LOCK_TOML, MIGRATION_NAME, render_baseline
from kvmigrate.phases.prisma.catalog import current_schema, read_catalog
from kvmigrate.phases.prisma.schema import render_schema

STATE_SCHEMA = "kvmigrate"


@dataclass(frozen=True)
class PrismaHandoff:
    """What `kvmigrate prisma` produced (and, with `out`, wrote)."""

    schema: str  # the Postgres schema the app tables are in
    models: dict[str, str]  # table -> Prisma model
    schema_prisma: str
    migration_sql: str
    notes: tuple[str, ...]  # what Prisma cannot express, kept by the baseline
    out: str | None
    written: tuple[str, ...]

    @property
    def next_steps(self) -> tuple[str, ...]:
        return (
            "npm install --save-dev prisma && npm install @prisma/client",
            "add prisma.config.ts with datasource.url = env(\"DATABASE_URL_UNPOOLED\") (README, \"Prisma\")",
            f"npx prisma migrate resolve --applied {MIGRATION_NAME}   # marks the baseline applied; runs no SQL",
            "npx prisma migrate status   # expect: Database schema is up to date",
            "later schema changes: edit schema.prisma, then npx prisma migrate dev --name <change>",
        )


def generate(conn: psycopg.Connection, *, schema: str | None = None, out: Path | None = None) -> PrismaHandoff:
    """Read the app tables of `schema` (default: the connection's current schema) and render
    schema.prisma and the baseline migration; with `out`, write them there. Reads Postgres only
    (no KV request); writes files only under `out`."""
    name = schema or current_schema(conn)
    if name == STATE_SCHEMA:
        raise ConfigError("schema kvmigrate holds kvmigrate's own state, not the app's tables",
                          hint="leave --schema out (the app tables are in the current schema, usually public)")
    catalog = read_catalog(conn, name)
    if not catalog.tables:
        raise ConfigError(f'Postgres schema "{name}" has no tables to hand to Prisma',
                          hint="run `kvmigrate setup` first, or pass --schema NAME where the app tables are")
    rendered = render_schema(catalog)
    migration = render_baseline(conn, catalog)
    conn.rollback()
    written = _write(out, rendered.text, migration) if out is not None else ()
    return PrismaHandoff(name, rendered.models, rendered.text, migration, rendered.notes,
                         str(out) if out is not None else None, written)


def _write(out: Path, schema_text: str, migration: str) -> tuple[str, ...]:
    """Write the three files; refuse a migrations folder that already has other migrations
    (the app is under Prisma Migrate already, and a baseline would rewrite its history)."""
    migrations = out / "migrations"
    others = sorted(p.name for p in migrations.iterdir() if p.is_dir() and p.name != MIGRATION_NAME) \
        if migrations.is_dir() else []
    if others:
        raise ConfigError(f"{migrations} already holds migrations ({', '.join(others[:3])})",
                          hint="the app is under Prisma Migrate already: change the schema with "
                               "`prisma migrate dev`, or pass --out to an empty folder")
    files = {
        out / "schema.prisma": schema_text,
        migrations / MIGRATION_NAME / "migration.sql": migration,
        migrations / "migration_lock.toml": LOCK_TOML,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tuple(str(p) for p in files)


@to_dict.register
def _(result: PrismaHandoff) -> dict[str, Any]:
    return {
        "schema": result.schema,
        "models": result.models,
        "out": result.out,
        "written": list(result.written),
        "notes": list(result.notes),
        "next_steps": list(result.next_steps),
        "schema_prisma": result.schema_prisma,
        "migration_sql": result.migration_sql,
    }


def prisma(config: Config, *, out: Path | None = None, schema: str | None = None) -> PrismaHandoff:
    """Hand the app tables to Prisma: schema.prisma and the baseline migration 0_init, read from
    the database's catalog (schema `schema`, default the current one). Reads Postgres only, no KV
    request; writes files only under `out` (without it, nothing is written)."""
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        return generate(conn, schema=schema, out=out)
