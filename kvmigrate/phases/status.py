"""`kvmigrate status`: where each entity stands. Reads Postgres only; no KV request.

Per entity: phase and flags, ledger buckets (migrated / rejected / verified / deleted), the last
backfill and verify, rejects; and the KV commands kvmigrate spent today against the daily quota.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.engine import phases
from kvmigrate.engine.run import require_schema
from kvmigrate.entities import ENTITIES
from kvmigrate.model.config import Config
from kvmigrate.model.serial import to_dict


@dataclass
class EntityStatus:
    name: str
    phase: str
    writes: str
    reads: str
    buckets: dict[str, int] = field(default_factory=dict)
    verified_keys: int = 0
    deleted_keys: int = 0
    rejects: int = 0
    last_backfill: dict[str, Any] | None = None
    last_verify: dict[str, Any] | None = None


@dataclass
class StatusResult:
    entities: list[EntityStatus]
    policy: dict[str, int]
    kv_requests_today: int
    kv_requests_today_by_phase: dict[str, int]
    daily_quota: int
    running: list[dict[str, Any]]
    history: list[phases.HistoryRow]

    @property
    def quota_share(self) -> float:
        return self.kv_requests_today / self.daily_quota if self.daily_quota else 0.0


def run_status(config: Config) -> StatusResult:
    """Summarise the migration's state. Read-only; costs no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        require_schema(conn)
        flags = phases.all_phases(conn)
        buckets = _buckets(conn)
        out = []
        for entity in ENTITIES:
            phase = flags.get(entity.name)
            st = EntityStatus(entity.name, phase.name if phase else "files", phase.writes if phase else "-",
                              phase.reads if phase else "-")
            st.buckets = dict(buckets.get(entity.name, Counter()))
            st.verified_keys, st.deleted_keys = _verified_deleted(conn, entity.name)
            st.rejects = _one(conn, "SELECT count(*) FROM kvmigrate.rejects WHERE entity = %s", entity.name)
            st.last_backfill = _last_backfill(conn, entity.name)
            st.last_verify = _last_verify(conn, entity.name)
            out.append(st)
        policy = {k: sum(v.values()) for k, v in buckets.items() if k in ("kept", "unknown")}
        by_phase: dict[str, int] = dict(conn.execute(
            "SELECT phase, sum(n)::bigint FROM kvmigrate.kv_requests WHERE day = (now() AT TIME ZONE 'UTC')::date"
            " GROUP BY phase ORDER BY phase").fetchall())
        running = [{"id": r, "command": c, "started_at": s} for r, c, s in conn.execute(
            "SELECT id, command, started_at FROM kvmigrate.runs WHERE status = 'running' ORDER BY id").fetchall()]
        return StatusResult(out, policy, sum(by_phase.values()), by_phase, config.daily_quota, running,
                            phases.history(conn, limit=10))


def _one(conn: psycopg.Connection, query: str, *args: Any) -> int:
    row = conn.execute(query, args).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _buckets(conn: psycopg.Connection) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for entity, status, n in conn.execute("SELECT entity, status, count(*) FROM kvmigrate.ledger GROUP BY 1, 2"):
        out.setdefault(entity, Counter())[status] = n
    return out


def _verified_deleted(conn: psycopg.Connection, entity: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE verified_hash IS NOT NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL)"
        " FROM kvmigrate.ledger WHERE entity = %s", (entity,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _last_backfill(conn: psycopg.Connection, entity: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, status, finished_at, result -> 'entities' -> %s FROM kvmigrate.runs"
        " WHERE command = 'backfill' AND result -> 'entities' ? %s ORDER BY id DESC LIMIT 1",
        (entity, entity)).fetchone()
    if row is None:
        return None
    return {"run_id": row[0], "status": row[1], "finished_at": row[2], "counts": row[3]}


def _last_verify(conn: psycopg.Connection, entity: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT run_id, clean, sampled, checked, missing, extra, different, healed, verified_at"
        " FROM kvmigrate.verify_results WHERE entity = %s ORDER BY verified_at DESC, id DESC LIMIT 1",
        (entity,)).fetchone()
    if row is None:
        return None
    keys = ("run_id", "clean", "sampled", "checked", "missing", "extra", "different", "healed", "verified_at")
    out = dict(zip(keys, row, strict=True))
    out["age_seconds"] = int((dt.datetime.now(dt.timezone.utc) - row[-1]).total_seconds())
    return out


@to_dict.register
def _(r: StatusResult) -> dict[str, Any]:
    return {
        "entities": {e.name: {k: to_dict(v) for k, v in vars(e).items() if k != "name"} for e in r.entities},
        "policy": r.policy,
        "kv_requests_today": r.kv_requests_today,
        "kv_requests_today_by_phase": r.kv_requests_today_by_phase,
        "daily_quota": r.daily_quota,
        "running": to_dict(r.running),
        "history": to_dict(r.history),
    }


def status(config: Config) -> StatusResult:
    """Phase, flags, ledger buckets, last runs and today's KV spend per entity. Read-only; no KV request."""
    return run_status(config)
