"""Phase 2 and 3 steps: `dual-write` (flags, then backfill + verify) and the gated `cutover`.

The cutover gate reads `kvmigrate.verify_results`: an entity's reads move to Postgres only when
its latest verify is clean, checked every key (not a sample), is younger than `max_verify_age`
and ran after the entity started dual writes (so it proves the dual writes too). Cutover of
several entities is all or nothing: every gate is checked before any flag moves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.pg import results, state
from kvmigrate.adapters.pg.flags import dual_writes_since
from kvmigrate.engine import phases
from kvmigrate.engine.phases import DEFAULT_SETTLE, PhaseChange
from kvmigrate.engine.run import require_schema
from kvmigrate.engine.wrong_store import HINT, QUESTION, before_cleanup, ledger_keys
from kvmigrate.entities import Entity, select_entities
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError, GateRefused, WrongStore
from kvmigrate.model.progress import Reporter, countdown, silent
from kvmigrate.model.serial import to_dict
from kvmigrate.phases.backfill import run_backfill
from kvmigrate.phases.backfill_result import BackfillResult, Progress
from kvmigrate.phases.cleanup import CleanupResult, run_cleanup
from kvmigrate.phases.shadow import shadow_gate
from kvmigrate.phases.verify import VerifyResult, run_verify


@dataclass(frozen=True)
class Gate:
    """Whether one entity may cut over, and why (or why not)."""

    entity: str
    ok: bool
    reason: str
    wrong_store: bool = False  # refused because the verify checked nothing: likely another store


@dataclass
class CutoverResult:
    rollback: bool
    forced: bool
    gates: list[Gate] = field(default_factory=list)
    changes: list[PhaseChange] = field(default_factory=list)
    kv_requests: int = 0


@dataclass
class DualWriteResult:
    changes: list[PhaseChange]
    backfill: BackfillResult | None
    verify: VerifyResult | None
    settle_seconds: float
    kv_requests: int = 0

    @property
    def clean(self) -> bool:
        return self.verify is None or self.verify.clean


def _kv_only(names: Sequence[str]) -> tuple[Entity, ...]:
    chosen = phases.kv_entities(select_entities(names))
    if not chosen:
        raise ConfigError("none of the chosen entities lives in KV",
                          hint="memories come from files and have no phase flags")
    return chosen


def gate(conn: psycopg.Connection, entity: str, *, max_age: dt.timedelta) -> Gate:
    """Check the cutover gate for one entity against its latest verify. Read-only."""
    row = results.latest_verify_gate(conn, entity)
    since = dual_writes_since(conn, entity)
    conn.commit()
    if row is None:
        return Gate(entity, False, "never verified")
    clean, sampled, at, diffs, age, checked = row
    if not checked:
        return empty_verify_gate(conn, entity, at)
    if sampled:
        return Gate(entity, False, f"the latest verify ({at:%Y-%m-%d %H:%M} UTC) was a sample, not every key")
    if not clean:
        return Gate(entity, False, f"the latest verify found {diffs} differences")
    if age > max_age:
        return Gate(entity, False, f"the latest verify is {_ago(age)} old (limit {_ago(max_age)})")
    if since and at < since:
        return Gate(entity, False, "the latest verify ran before dual writes started, so it does not cover them")
    return Gate(entity, True, f"clean full verify {_ago(age)} ago")


def empty_verify_gate(conn: psycopg.Connection, entity: str, at: dt.datetime) -> Gate:
    """The refusal for a latest verify that checked 0 rows: no gate passes on it. Read-only."""
    keys = ledger_keys(conn, [entity]).get(entity, 0)
    found = (f"though the ledger holds {keys} keys of {entity} from an earlier backfill" if keys
             else f"no key of the KV store matched {entity}")
    return Gate(entity, False, f"the latest verify ({at:%Y-%m-%d %H:%M} UTC) checked 0 rows, {found}: {QUESTION}",
                wrong_store=True)


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def cutover(config: Config, *, entities: Sequence[str] = (), force: bool = False, rollback: bool = False,
            max_verify_age: dt.timedelta = dt.timedelta(hours=1), require_shadow: bool = False) -> CutoverResult:
    """Switch reads to Postgres (phase 3) if each entity's latest verify is clean, full and recent.

    With `require_shadow`, the latest `kvmigrate shadow` run must also have compared every view
    and found them all matching (its gate is reported as the entity `shadow`). Refuses
    (GateRefused, exit 1) otherwise, unless `force`. `rollback` switches reads back to KV.
    Writes Postgres state and the KV flags hash (1 HSET per change).
    """
    chosen = _kv_only(entities)
    result = CutoverResult(rollback, force)
    step = "cutover-rollback" if rollback else "cutover"
    budget = RequestBudget(cap=config.max_requests, phase="flags")
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        require_schema(conn)
        for e in chosen:
            phases.check_step(conn, e.name, step)
        if not rollback:
            result.gates = [gate(conn, e.name, max_age=max_verify_age) for e in chosen]
            if require_shadow:
                ok, why = shadow_gate(conn)
                result.gates.append(Gate("shadow", ok, why))
            refused = [g for g in result.gates if not g.ok]
            if refused and not force:
                if any(g.wrong_store for g in refused):
                    raise WrongStore("cutover refused: " + "; ".join(f"{g.entity}: {g.reason}" for g in refused),
                                     hint=HINT + "; --force skips the gate (only for an entity that truly has no data)")
                names = " ".join(f"--entity {g.entity}" for g in refused if g.entity != "shadow")
                todo = ([f"`kvmigrate verify {names}` (a full verify, not --sample)"] if names else []) + (
                    ["`kvmigrate shadow` until every view matches"] if any(g.entity == "shadow" for g in refused) else [])
                raise GateRefused(
                    "cutover refused: " + "; ".join(f"{g.entity}: {g.reason}" for g in refused),
                    hint=f"run {' and '.join(todo)}, then cutover again; --force skips the gate")
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries)
        target = phases.DUAL if rollback else phases.CUTOVER
        reason = "cutover rollback" if rollback else ("cutover (forced past the gate)" if force else "cutover")
        result.changes = phases.move_flags(conn, kv, [e.name for e in chosen], target, reason=reason)
        _log_flags(conn, budget)
    result.kv_requests = budget.spent
    return result


def dual_write(config: Config, *, entities: Sequence[str] = (), settle: float = DEFAULT_SETTLE, rollback: bool = False,
               recheck_delay: float = 3.0, progress: Progress | None = None,
               report: Reporter = silent) -> DualWriteResult:
    """Mark entities dual-written (phase 2), wait `settle` seconds for apps to see the flag, then
    backfill and verify them. With `rollback`, writes go back to KV only (reads must still be on KV).

    Writes Postgres (state, rows) and the KV flags hash (1 HSET per change); then the KV cost of a
    backfill plus a verify.
    """
    chosen = _kv_only(entities)
    budget = RequestBudget(cap=config.max_requests, phase="flags")
    step = "dual-write-rollback" if rollback else "dual-write"
    target = phases.KV_ONLY if rollback else phases.DUAL
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        require_schema(conn)
        for e in chosen:
            phases.check_step(conn, e.name, step)
        kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries)
        changes = phases.move_flags(conn, kv, [e.name for e in chosen], target, reason=step.replace("-", " "))
        _log_flags(conn, budget)
    if rollback:
        return DualWriteResult(changes, None, None, 0.0, budget.spent)
    if settle > 0 and any(c.changed for c in changes):
        countdown(settle, report, note="until every app instance sees the new flags")
    names = [e.name for e in chosen]
    remaining = None if config.max_requests is None else max(config.max_requests - budget.spent, 1)
    sub = config.model_copy(update={"max_requests": remaining})
    backfill = run_backfill(sub, entities=names, progress=progress, explicit=bool(entities))
    if remaining is not None:
        sub = config.model_copy(update={"max_requests": max(remaining - backfill.budget.spent, 1)})
    # Repair what the re-check still finds: under dual writes the app writes KV first, so a row
    # that differs is a stale copy the backfill committed after the app's own write (backfill
    # does not read a page twice), or a write the app's Postgres side missed.
    verify = run_verify(sub, entities=names, recheck_delay=recheck_delay, repair=True, explicit=bool(entities),
                        report=report)
    spent = budget.spent + backfill.budget.spent + verify.budget.spent
    return DualWriteResult(changes, backfill, verify, settle, spent)


@dataclass
class CleanupPhaseResult:
    """`kvmigrate cleanup`: the flags moved to writes=postgres, the verify that ran after the
    apps settled, and the archive + delete."""

    changes: list[PhaseChange]
    verify: VerifyResult | None
    cleanup: CleanupResult
    kv_requests: int = 0


DEFAULT_ARCHIVE_DIR = Path("kvmigrate-archive")


def cleanup(config: Config, *, entities: Sequence[str] = (), archive_dir: Path = DEFAULT_ARCHIVE_DIR,
            dry_run: bool = False, yes: bool = False, settle: float = DEFAULT_SETTLE, verify_first: bool = False,
            recheck_delay: float = 3.0, report: Reporter = silent) -> CleanupPhaseResult:
    """Phase 4. Move writes to Postgres, wait `settle` seconds for every app instance to see it,
    then archive and delete the verified keys in one read pass (see kvmigrate.cleanup: keys the
    app changed since the last verify are verified as that pass reads them). `verify_first` runs
    a full verify before it (one more read of every key).
    `dry_run` changes nothing and reports what would be archived and deleted.

    Refuses before cutover (GateRefused, exit 1) and without `yes` (unless `dry_run`). Writes the
    flags, the archive folder (files 0600, manifest last), the ledger; deletes only keys whose
    value still has its verified digest. Never touches presence, sessions, rate limits, unknown
    or `kvmigrate:*` keys.
    """
    chosen = _kv_only(entities)
    names = [e.name for e in chosen]
    changes: list[PhaseChange] = []
    verify = None
    spent = 0
    if not dry_run and verify_first:
        budget = RequestBudget(cap=config.max_requests, phase="flags")
        with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
            require_schema(conn)
            before = {e.name: phases.check_step(conn, e.name, "cleanup") for e in chosen}
            before_cleanup(conn, [n for n, p in before.items() if p != phases.CLEANED])
            if not yes:
                raise ConfigError("cleanup deletes KV keys (after archiving them)",
                                  hint="confirm with --yes, or see what it would delete with --dry-run")
            kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries)
            changes = phases.move_flags(conn, kv, names, phases.CLEANED, reason="cleanup")
            _log_flags(conn, budget)
        if settle > 0 and any(c.changed for c in changes):
            countdown(settle, report, note="until every app instance sees the new flags")
        verify = run_verify(_left(config, budget.spent), entities=names, recheck_delay=recheck_delay,
                            explicit=bool(entities), report=report)
        spent = budget.spent + verify.budget.spent
    cleaned = run_cleanup(_left(config, spent), entities=names, archive_dir=archive_dir, dry_run=dry_run, yes=yes,
                          settle=0.0 if verify_first else settle, report=report)
    return CleanupPhaseResult(changes, verify, cleaned, spent + cleaned.kv_requests)


def _left(config: Config, spent: int) -> Config:
    """The config with what is left of its request cap after `spent` commands."""
    if config.max_requests is None:
        return config
    return config.model_copy(update={"max_requests": max(config.max_requests - spent, 1)})


def _log_flags(conn: psycopg.Connection, budget: RequestBudget) -> None:
    """Add the flag changes' KV commands to today's tally (status sums it)."""
    with conn.transaction():
        state.record_kv_spend(conn, budget)


@to_dict.register
def _(r: DualWriteResult) -> dict[str, Any]:
    return {
        "changes": [to_dict(c) for c in r.changes],
        "settle_seconds": r.settle_seconds,
        "backfill": None if r.backfill is None else to_dict(r.backfill),
        "verify": None if r.verify is None else to_dict(r.verify),
        "clean": r.clean,
        "kv_requests": r.kv_requests,
    }


@to_dict.register
def _(r: CutoverResult) -> dict[str, Any]:
    return {"rollback": r.rollback, "forced": r.forced, "gates": [to_dict(g) for g in r.gates],
            "changes": [to_dict(c) for c in r.changes], "kv_requests": r.kv_requests}


@to_dict.register
def _(r: CleanupPhaseResult) -> dict[str, Any]:
    return {"changes": [to_dict(c) for c in r.changes], "verify": None if r.verify is None else to_dict(r.verify),
            "cleanup": to_dict(r.cleanup), "kv_requests": r.kv_requests}





