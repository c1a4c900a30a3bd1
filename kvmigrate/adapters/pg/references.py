"""Foreign keys to `users` checked once per page and table, instead of once per row.

Every foreign key of the app's tables points at `users(handle)`, and the loader already makes
sure that each handle a page refers to exists (a placeholder user where none does, see
TableLoader). Postgres still checks every row again with a trigger, which costs about as much
as inserting the row. When this session may set `session_replication_role` (a superuser, or a
role granted SET on it), no loaded table has a trigger of its own, and every foreign key of the
loaded tables is one the loader covers, a page instead:

1. runs with `SET LOCAL session_replication_role = replica`, which skips the per-row triggers
   for its own transaction only (the app's sessions keep every check);
2. after each table's rows are written, locks every user they refer to (`FOR KEY SHARE`, the
   lock each row's trigger would take, so no user they refer to can be deleted before the page
   commits) in one statement, and makes sure all of them exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from kvmigrate.entities.base import TableSpec


def per_page_refusal(conn: psycopg.Connection, specs: Sequence[TableSpec]) -> str | None:
    """None when pages may check their references themselves (see the module); else why they
    may not. Read-only; in a transaction of its own, which it leaves closed."""
    names = [s.name for s in specs]
    try:  # rolled back whatever happens: the setting must not outlive the probe
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return "this role may not set session_replication_role"
    with conn.transaction():
        trigger = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE NOT t.tgisinternal AND t.tgrelid = ANY(%s::regclass[]) ORDER BY 1, 2 LIMIT 1",
            (names,)).fetchone()
        if trigger:
            return f"table {trigger[0]} has trigger {trigger[1]}, which every row must fire"
        keys = conn.execute(
            "SELECT c.relname, a.attname, k.confrelid = 'users'::regclass AND fa.attname = 'handle'"
            " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
            " CROSS JOIN LATERAL unnest(k.conkey, k.confkey) AS col(own, other)"
            " JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = col.own"
            " JOIN pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = col.other"
            " WHERE k.contype = 'f' AND k.conrelid = ANY(%s::regclass[]) ORDER BY 1, 2", (names,)).fetchall()
    covered = {(s.name, col) for s in specs for col in s.user_refs}
    for table, column, to_users in keys:
        if not to_users or (table, column) not in covered:
            return f"the foreign key on {table}.{column} is not one the loader checks"
    return None


def skip_row_checks(conn: psycopg.Connection) -> None:
    """Skip the per-row foreign-key triggers until the caller's transaction ends."""
    conn.execute("SET LOCAL session_replication_role = replica")


def referenced(spec: TableSpec, stage: str) -> sql.Composed:
    """A query of the handles the rows staged in `stage` refer to (`spec.user_refs`), each once."""
    return sql.SQL(" UNION ").join(
        sql.SQL("SELECT {c} FROM {s}").format(c=sql.Identifier(c), s=sql.Identifier(stage)) for c in spec.user_refs)


def lock_referenced(conn: psycopg.Connection, spec: TableSpec, stage: str) -> list[str]:
    """Lock `FOR KEY SHARE` every user the rows staged in `stage` refer to (`spec.user_refs`);
    returns the handles with no user. One statement, one probe per distinct handle."""
    rows = conn.execute(sql.SQL(
        "SELECT r.h FROM ({refs}) AS r(h) LEFT JOIN LATERAL"
        " (SELECT u.handle FROM users u WHERE u.handle = r.h FOR KEY SHARE) u ON TRUE"
        " WHERE r.h IS NOT NULL AND u.handle IS NULL ORDER BY 1").format(refs=referenced(spec, stage))).fetchall()
    return [h for (h,) in rows]
