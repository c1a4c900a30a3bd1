"""What a schema file would create that already exists: another app's `users` table, an index
or type of the same name. Setup refuses before applying anything when there is any, and
`doctor` and `setup --dry-run` name them with what to do. Read-only; no KV command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from kvmigrate.model.errors import SchemaConflict

_COMMENT = re.compile(r"--[^\n]*")
_CREATE = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|TYPE|SEQUENCE|VIEW|MATERIALIZED\s+VIEW)\s+(IF\s+NOT\s+EXISTS\s+)?"
    r"(?:CONCURRENTLY\s+)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)", re.IGNORECASE)
_RELKIND = {"r": "table", "p": "table", "i": "index", "I": "index", "S": "sequence", "v": "view",
            "m": "materialized view", "c": "type", "f": "foreign table"}
_TYPTYPE = {"e": "enum type", "d": "domain", "c": "composite type", "r": "range type", "b": "type", "m": "type"}


@dataclass(frozen=True)
class Planned:
    """One object a schema file creates: its kind, schema (None: the app schema) and name."""

    kind: str
    schema: str | None
    name: str


@dataclass(frozen=True)
class Conflict:
    """An object in the way: what the file would create, and what exists there now."""

    file: str
    planned: Planned
    schema: str
    existing: str

    def describe(self) -> str:
        return f"{self.schema}.{self.planned.name} ({self.existing}; {self.file} creates a {self.planned.kind.lower()})"


def planned_objects(text: str) -> list[Planned]:
    """The tables, indexes, types, sequences and views a file creates (not IF NOT EXISTS). Pure."""
    out = []
    for kind, if_not_exists, name in _CREATE.findall(_COMMENT.sub("", text)):
        if if_not_exists:
            continue
        schema, _, bare = name.rpartition(".")
        out.append(Planned(" ".join(kind.upper().split()), schema.lower() or None, bare.lower()))
    return out


def target_schema(conn: psycopg.Connection, app_schema: str | None) -> str | None:
    """The schema unqualified names land in: `app_schema`, else the connection's current_schema()."""
    if app_schema:
        return app_schema
    row = conn.execute("SELECT current_schema()").fetchone()
    return str(row[0]) if row and row[0] else None


def existing(conn: psycopg.Connection, schema: str, name: str, kind: str) -> str | None:
    """What holds `schema.name` now (a relation, or for a table or type also a type), or None."""
    row = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    if row:
        return f"a {_RELKIND.get(str(row[0]), 'relation')} already there"
    if kind in ("TABLE", "TYPE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE"):
        row = conn.execute("SELECT t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
                           " WHERE n.nspname = %s AND t.typname = %s", (schema, name)).fetchone()
        if row:
            return f"a {_TYPTYPE.get(str(row[0]), 'type')} already there"
    return None


def find_conflicts(conn: psycopg.Connection, files: Sequence[tuple[str, str]], app_schema: str | None) -> list[Conflict]:
    """Objects the pending files (filename, sql) would create that exist already. Read-only;
    runs inside the caller's transaction."""
    target = target_schema(conn, app_schema)
    out = []
    for filename, text in files:
        for obj in planned_objects(text):
            schema = obj.schema or target
            if schema is None:
                out.append(Conflict(filename, obj, "?", "no schema selected: the search_path names no existing schema"))
                continue
            found = existing(conn, schema, obj.name, obj.kind)
            if found:
                out.append(Conflict(filename, obj, schema, found))
    return out


ADVICE = ("install the app's tables in their own schema with --schema NAME (or KVMIGRATE_PG_SCHEMA=NAME), for "
          "example --schema vibe, and give every command the same option; or point --pg-url at another database. "
          "kvmigrate never alters or drops a table it did not create")


def conflict_error(conflicts: Sequence[Conflict]) -> SchemaConflict:
    """The refusal setup raises (exit 2), naming every object in the way."""
    names = "; ".join(c.describe() for c in conflicts)
    return SchemaConflict(f"the schema conflicts with {len(conflicts)} existing object(s) in this database: {names}",
                          hint=ADVICE)


def recorded_schema(conn: psycopg.Connection) -> str | None:
    """The schema setup installed the app's tables in (kvmigrate.app_schema), or None before
    setup recorded one. Read-only."""
    found = conn.execute("SELECT to_regclass('kvmigrate.app_schema') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return None
    row = conn.execute("SELECT name FROM kvmigrate.app_schema").fetchone()
    return str(row[0]) if row else None


def schema_mismatch(recorded: str | None, target: str | None) -> SchemaConflict | None:
    """The refusal for a connection whose app schema is not the one setup installed. Pure."""
    if recorded is None or recorded == target:
        return None
    option = "leave --schema out (and KVMIGRATE_PG_SCHEMA unset)" if recorded == "public" else f"pass --schema {recorded}"
    return SchemaConflict(
        f"the app's tables were set up in schema {recorded}, but this run uses schema {target or '(none)'}",
        hint=f"{option} (or set KVMIGRATE_PG_SCHEMA={recorded}) on every command; one database holds one migration")
