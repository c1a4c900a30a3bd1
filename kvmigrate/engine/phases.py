"""The phase flags each entity's app code obeys, and the state machine that moves them.

Per entity: `writes ∈ {kv, dual, postgres}` and `reads ∈ {kv, postgres}`. The legal path is

    kv/kv ──dual-write──▶ dual/kv ──cutover──▶ dual/postgres ──cleanup──▶ postgres/postgres

and back where it is safe: `cutover --rollback` returns reads to KV, `dual-write --rollback`
stops dual writes while reads are still on KV. Cleanup is not undone by a flag: KV stops
receiving writes, so going back needs `restore` and a decision (see docs/runbook.md).

The state lives in Postgres (`kvmigrate.phases`, with a `phase_history` row for every change:
from, to, when, OS user and host, why) and is published to the KV hash `kvmigrate:flags`
(fields `<entity>.writes`, `<entity>.reads`, plus `version` and `updated_at`) for apps that read
their flags from KV: one HSET per change.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.pg import flags
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.model.errors import GateRefused

FLAGS_KEY = "kvmigrate:flags"
#: Apps cache the flags for at most APP_FLAG_CACHE seconds (README, "For the app"); every flag
#: change then waits DEFAULT_SETTLE seconds before relying on it.
APP_FLAG_CACHE = 30.0
DEFAULT_SETTLE = 45.0


@dataclass(frozen=True)
class Phase:
    writes: str
    reads: str

    @property
    def name(self) -> str:
        return PHASE_NAMES.get((self.writes, self.reads), f"{self.writes}/{self.reads}")


KV_ONLY = Phase("kv", "kv")
DUAL = Phase("dual", "kv")
CUTOVER = Phase("dual", "postgres")
CLEANED = Phase("postgres", "postgres")
PHASE_NAMES = {
    ("kv", "kv"): "kv",
    ("dual", "kv"): "dual-write",
    ("dual", "postgres"): "cutover",
    ("postgres", "postgres"): "cleanup",
}

#: step → (the phases it may start from, the phase it ends in, the command to run first otherwise)
STEPS: dict[str, tuple[tuple[Phase, ...], Phase, str]] = {
    "dual-write": ((KV_ONLY, DUAL), DUAL, "kvmigrate setup"),
    "dual-write-rollback": ((DUAL, KV_ONLY), KV_ONLY, "kvmigrate cutover --rollback"),
    "cutover": ((DUAL, CUTOVER), CUTOVER, "kvmigrate dual-write"),
    "cutover-rollback": ((CUTOVER, DUAL), DUAL, "kvmigrate dual-write"),
    "cleanup": ((CUTOVER, CLEANED), CLEANED, "kvmigrate cutover"),
}


def kv_entities(entities: Sequence[Entity] = ENTITIES) -> tuple[Entity, ...]:
    """Entities whose data lives in KV (memories come from files and have no flags)."""
    return tuple(e for e in entities if e.families)


def current(conn: psycopg.Connection, entity: str) -> Phase:
    """The entity's phase (kv/kv when it was never changed). Read-only."""
    row = flags.phase_row(conn, entity)
    return Phase(*row) if row else KV_ONLY


def all_phases(conn: psycopg.Connection) -> dict[str, Phase]:
    """Every KV entity's phase. Read-only."""
    rows = {e: Phase(w, r) for e, (w, r) in flags.phase_rows(conn).items()}
    return {e.name: rows.get(e.name, KV_ONLY) for e in kv_entities()}


ORDER = (KV_ONLY, DUAL, CUTOVER, CLEANED)


def check_step(conn: psycopg.Connection, entity: str, step: str) -> Phase:
    """Return the entity's phase if `step` may start from it, else raise GateRefused naming the
    command to run first. Read-only."""
    allowed, _, first = STEPS[step]
    phase = current(conn, entity)
    if phase not in allowed:
        raise GateRefused(
            f"{entity}: `{step.replace('-rollback', ' --rollback')}` is not allowed in phase "
            f"{phase.name} (writes={phase.writes}, reads={phase.reads})",
            hint=_hint(entity, step, phase, allowed, first))
    return phase


def _hint(entity: str, step: str, phase: Phase, allowed: tuple[Phase, ...], first: str) -> str:
    rank = ORDER.index(phase) if phase in ORDER else -1
    earliest = min(ORDER.index(p) for p in allowed)
    rollback = step.endswith("-rollback")
    if rollback and rank < earliest or not rollback and rank > max(ORDER.index(p) for p in allowed):
        what = "nothing to roll back" if rollback else "the entity is already past this step"
        if phase == CLEANED:
            what += "; after cleanup, KV no longer receives writes (see the runbook for going back)"
        return f"{what}: see `kvmigrate status`"
    return f"run `{first} --entity {entity}` first"


def set_phase(conn: psycopg.Connection, kv: KvClient | None, entity: str, to: Phase, *, reason: str) -> bool:
    """Move the entity to `to` (recording history) and, given a KV client, republish the flags
    hash. One transaction in Postgres, then 1 KV command (HSET). Returns False when already there
    (and then publishes nothing: callers that change several entities pass `kv=None` and call
    `publish` once at the end, which also repairs a hash a failed earlier run left stale)."""
    with conn.transaction():
        flags.lock_phases(conn)
        before = current(conn, entity)
        if before == to:
            return False
        flags.write_phase(conn, entity, (before.writes, before.reads), (to.writes, to.reads), user=_user(),
                          host=socket.gethostname(), reason=reason)
    if kv is not None:
        publish(conn, kv)
    return True


def publish(conn: psycopg.Connection, kv: KvClient) -> dict[str, str]:
    """Write every entity's flags to the KV hash `kvmigrate:flags`. Costs 1 command (HSET)."""
    phases = all_phases(conn)
    version = flags.changes_made(conn)
    conn.commit()
    published = {"version": str(version), "updated_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    for name, phase in phases.items():
        published[f"{name}.writes"] = phase.writes
        published[f"{name}.reads"] = phase.reads
    kv.call("HSET", FLAGS_KEY, *[part for item in published.items() for part in item])
    return published


@dataclass
class PhaseChange:
    """One entity's flag move: its phase before and after, and whether anything changed."""

    entity: str
    before: str
    after: str
    changed: bool


def move_flags(conn: psycopg.Connection, kv: KvClient, entities: Sequence[str], to: Phase, *,
               reason: str) -> list[PhaseChange]:
    """Move every entity to `to` (one Postgres transaction and a history row each), then publish
    the flags hash once. Costs 1 KV command (HSET), charged to the budget's `flags` phase; the
    budget is checked before any flag moves, so a spent budget changes nothing."""
    kv.budget.check(1)
    changes = []
    for name in entities:
        before = current(conn, name)
        changes.append(PhaseChange(name, before.name, to.name, set_phase(conn, None, name, to, reason=reason)))
    spending, kv.budget.phase = kv.budget.phase, "flags"
    try:
        publish(conn, kv)
    finally:
        kv.budget.phase = spending
    return changes


@dataclass(frozen=True)
class HistoryRow:
    entity: str
    from_phase: str
    to_phase: str
    changed_at: dt.datetime
    by: str
    reason: str


def history(conn: psycopg.Connection, entity: str | None = None, *, limit: int = 50) -> list[HistoryRow]:
    """The latest phase changes, newest first. Read-only."""
    rows = flags.history_rows(conn, entity, limit)
    return [HistoryRow(e, Phase(fw or "kv", fr or "kv").name, Phase(tw, tr).name, at, f"{u}@{h}", why or "")
            for e, fw, fr, tw, tr, at, u, h, why in rows]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
