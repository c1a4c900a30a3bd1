"""What the runs recorded: `kvmigrate.runs`, `verify_results`, `shadow_results`, `rejects` and
`kv_requests`, as the gates, `status`, `rejects` and `rehearse` read them (the writes of a run's
own row and spend are in kvmigrate.adapters.pg.state)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_LATEST = " FROM kvmigrate.verify_results WHERE entity = %s ORDER BY verified_at DESC, id DESC LIMIT 1"


# --- verify results ----------------------------------------------------------------------

def record_verify_results(conn: psycopg.Connection, run_id: int, mode: str, sampled: bool,
                          checks: Iterable[tuple[str, int, int, int, int, int, bool]]) -> None:
    """One row per entity: (entity, checked, missing, extra, different, healed, clean). In the
    caller's transaction."""
    for name, checked, missing, extra, different, healed, clean in checks:
        conn.execute(
            "INSERT INTO kvmigrate.verify_results (run_id, entity, mode, sampled, checked, missing, extra,"
            " different, healed, clean) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (run_id, name, mode, sampled, checked, missing, extra, different, healed, clean))


def latest_verify_gate(conn: psycopg.Connection, entity: str) -> tuple[Any, ...] | None:
    """The entity's latest verify as the cutover gate reads it: clean, sampled, verified_at,
    differences, age, checked. Read-only."""
    row = conn.execute("SELECT clean, sampled, verified_at, missing + extra + different, now() - verified_at,"
                       " checked" + _LATEST, (entity,)).fetchone()
    return tuple(row) if row else None


def latest_verify_checked(conn: psycopg.Connection, entity: str) -> tuple[int, dt.datetime] | None:
    """(rows checked, when) of the entity's latest verify. Read-only."""
    row = conn.execute("SELECT checked, verified_at" + _LATEST, (entity,)).fetchone()
    return (row[0], row[1]) if row else None


def latest_verify(conn: psycopg.Connection, entity: str) -> dict[str, Any] | None:
    """The entity's latest verify for `status`: run_id, clean, sampled, checked, missing, extra,
    different, healed, verified_at. Read-only."""
    keys = ("run_id", "clean", "sampled", "checked", "missing", "extra", "different", "healed", "verified_at")
    row = conn.execute("SELECT run_id, clean, sampled, checked, missing, extra, different, healed, verified_at"
                       + _LATEST, (entity,)).fetchone()
    return None if row is None else dict(zip(keys, row, strict=True))


# --- shadow results ----------------------------------------------------------------------

def record_shadow_run(conn: psycopg.Connection, kv_requests: int, handles: Sequence[str],
                      views: Iterable[tuple[str, int, int, bool, object]]) -> int:
    """The shadow run's row (finished, ok) and one row per view: (view, checked, matched, clean,
    examples). In the caller's transaction; returns the run id."""
    row = conn.execute(
        "INSERT INTO kvmigrate.runs (command, status, finished_at, kv_requests, options)"
        " VALUES ('shadow', 'ok', now(), %s, %s) RETURNING id", (kv_requests, Jsonb({"handles": handles}))).fetchone()
    assert row is not None
    run_id = int(row[0])
    for view, checked, matched, clean, examples in views:
        conn.execute("INSERT INTO kvmigrate.shadow_results (run_id, view, checked, matched, clean, examples)"
                     " VALUES (%s, %s, %s, %s, %s, %s)", (run_id, view, checked, matched, clean, Jsonb(examples)))
    return run_id


def latest_shadow(conn: psycopg.Connection) -> tuple[Any, ...] | None:
    """The latest shadow run: run id, views, views not clean, comparisons, when. Read-only."""
    row = conn.execute(
        "SELECT r.run_id, count(*), count(*) FILTER (WHERE NOT r.clean), sum(r.checked), max(r.recorded_at)"
        " FROM kvmigrate.shadow_results r WHERE r.run_id = (SELECT max(run_id) FROM kvmigrate.shadow_results)"
        " GROUP BY r.run_id").fetchone()
    return tuple(row) if row else None


# --- runs --------------------------------------------------------------------------------

def newest_running_writer(conn: psycopg.Connection) -> str | None:
    """The command of the newest running backfill, verify or cleanup. Read-only."""
    row = conn.execute("SELECT command FROM kvmigrate.runs WHERE status = 'running' AND command IN"
                       " ('backfill', 'verify', 'cleanup') ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def running(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every run still marked running: id, command, started_at. Read-only."""
    return [{"id": r, "command": c, "started_at": s} for r, c, s in conn.execute(
        "SELECT id, command, started_at FROM kvmigrate.runs WHERE status = 'running' ORDER BY id").fetchall()]


def last_failures(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per command, its newest run when that run failed: id, command, finished_at and the error it
    stopped on (masked when it was recorded). Read-only."""
    return [{"id": r, "command": c, "finished_at": f, "error": e} for r, c, f, e in conn.execute(
        "SELECT id, command, finished_at, result->>'error' FROM (SELECT DISTINCT ON (command) id, command,"
        " finished_at, status, result FROM kvmigrate.runs WHERE NOT dry_run AND status <> 'running'"
        " ORDER BY command, id DESC) newest WHERE status = 'failed' ORDER BY id").fetchall()]


def last_backfill(conn: psycopg.Connection, entity: str) -> dict[str, Any] | None:
    """The newest backfill that counted the entity: run_id, status, finished_at, counts. Read-only."""
    row = conn.execute(
        "SELECT id, status, finished_at, result -> 'entities' -> %s FROM kvmigrate.runs"
        " WHERE command = 'backfill' AND result -> 'entities' ? %s ORDER BY id DESC LIMIT 1",
        (entity, entity)).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "status": row[1], "finished_at": row[2], "counts": row[3]}


def spend_today_by_phase(conn: psycopg.Connection) -> dict[str, int]:
    """Today's (UTC) billed KV commands per phase. Read-only."""
    return dict(conn.execute(
        "SELECT phase, sum(n)::bigint FROM kvmigrate.kv_requests WHERE day = (now() AT TIME ZONE 'UTC')::date"
        " GROUP BY phase ORDER BY phase").fetchall())


# --- rejects -----------------------------------------------------------------------------

def reject_rows(conn: psycopg.Connection, entities: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rejects (all, or of these entities): key, field, entity, reason_code, message, raw_value,
    raw_encoding, by entity and key. Read-only."""
    return [tuple(r) for r in conn.execute(
        "SELECT key, field, entity, reason_code, message, raw_value, raw_encoding FROM kvmigrate.rejects"
        " WHERE cardinality(%s::text[]) = 0 OR entity = ANY(%s::text[]) ORDER BY entity, key, field",
        (list(entities), list(entities)),
    ).fetchall()]


def reject_count(conn: psycopg.Connection, entity: str) -> int:
    """The entity's rejects. Read-only."""
    row = conn.execute("SELECT count(*) FROM kvmigrate.rejects WHERE entity = %s", (entity,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def reject_groups(conn: psycopg.Connection) -> list[tuple[str, str, int, str]]:
    """Rejects by entity and reason: entity, reason, count, first key. Read-only."""
    return [(e, r, int(n), k) for e, r, n, k in conn.execute(
        "SELECT entity, reason_code, count(*), min(key) FROM kvmigrate.rejects GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()]


def rejects_by_reason(conn: psycopg.Connection) -> dict[str, int]:
    """Rejects per reason, the most frequent first. Read-only."""
    return dict(conn.execute(
        "SELECT reason_code, count(*) FROM kvmigrate.rejects GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
