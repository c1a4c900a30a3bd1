"""`kvmigrate status`: where each entity stands. Reads Postgres only; no KV request.

Per entity: phase and flags, ledger buckets (migrated / rejected / verified / deleted), the last
backfill and verify, rejects; the KV commands kvmigrate spent today against the daily quota; and
each command whose newest run failed, with the error it stopped on (the ledger's counts are what
kvmigrate saw: after a failure such as a wiped store they may no longer match KV).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_pg
from kvmigrate.adapters.pg import ledger, results
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
    failed: list[dict[str, Any]] = field(default_factory=list)  # per command, its newest run when it failed

    @property
    def quota_share(self) -> float:
        return self.kv_requests_today / self.daily_quota if self.daily_quota else 0.0


def status(config: Config) -> StatusResult:
    """Phase, flags, ledger buckets, last runs and today's KV spend per entity. Read-only; no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        require_schema(conn)
        flags = phases.all_phases(conn)
        buckets, marks = ledger.counts(conn)
        out = []
        for entity in ENTITIES:
            phase = flags.get(entity.name)
            st = EntityStatus(entity.name, phase.name if phase else "files", phase.writes if phase else "-",
                              phase.reads if phase else "-")
            st.buckets = dict(buckets.get(entity.name, Counter()))
            st.verified_keys, st.deleted_keys = marks.get(entity.name, (0, 0))
            st.rejects = results.reject_count(conn, entity.name)
            st.last_backfill = results.last_backfill(conn, entity.name)
            st.last_verify = _last_verify(conn, entity.name)
            out.append(st)
        policy = {k: sum(v.values()) for k, v in buckets.items() if k in ("kept", "unknown")}
        by_phase = results.spend_today_by_phase(conn)
        running = results.running(conn)
        return StatusResult(out, policy, sum(by_phase.values()), by_phase, config.daily_quota, running,
                            phases.history(conn, limit=10), results.last_failures(conn))


def _last_verify(conn: psycopg.Connection, entity: str) -> dict[str, Any] | None:
    out = results.latest_verify(conn, entity)
    if out is None:
        return None
    out["age_seconds"] = int((dt.datetime.now(dt.timezone.utc) - out["verified_at"]).total_seconds())
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
        "failed": to_dict(r.failed),
    }


def ledger_and_rejects(config: Config) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Ledger rows per entity and status, and rejects per reason (most frequent first): the
    closing figures of a demo. Read-only; no KV request."""
    with connect_pg(config.require_pg(), retries=config.connect_retries, autocommit=True) as conn:
        counts = {entity: dict(statuses) for entity, statuses in ledger.buckets(conn).items()}
        return counts, results.rejects_by_reason(conn)
