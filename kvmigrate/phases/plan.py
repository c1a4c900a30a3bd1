"""`kvmigrate plan`: what the whole migration will cost in billed KV commands, phase by phase,
beside the floor and a naive per-key migration.

One inventory (SCAN passes only, see kvmigrate.inventory) measures the keyspace; the rest is
the readers' own rules applied to it: one SCAN per page, one MGET per batch of strings, one read
per other key a pass needs (backfill and verify skip derived indexes), one HSCAN per 1,000
fields of a registry hash; cleanup adds WATCH, MULTI, DEL and EXEC per page; one HSET per flag
change. The floor is the fewest billed commands any tool needs for the same passes: one SCAN
per page, one MGET per 1,000 strings, one read per other key, one DEL per page. Connections'
AUTH, SELECT and PING are free. Re-checks of differences and repairs are extra and not
predicted. Read-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.adapters.pg import state
from kvmigrate.model.config import Config
from kvmigrate.model.serial import to_dict
from kvmigrate.phases.inventory import InventoryResult, run_inventory

FLAG_WRITES = 3  # one HSET of kvmigrate:flags each for dual-write, cutover and cleanup


@dataclass(frozen=True)
class PhaseCost:
    phase: str
    commands: int
    how: str
    naive: int | None = None
    floor: int | None = None
    optional: bool = False  # not part of the migration (left out of the totals)


@dataclass
class PlanResult:
    inventory: InventoryResult
    phases: list[PhaseCost] = field(default_factory=list)
    daily_quota: int = 3000

    @property
    def migration(self) -> list[PhaseCost]:
        return [p for p in self.phases if not p.optional]

    @property
    def total(self) -> int:
        return sum(p.commands for p in self.migration)

    @property
    def naive_total(self) -> int:
        return sum(p.naive if p.naive is not None else p.commands for p in self.migration)

    @property
    def floor_total(self) -> int:
        return sum(p.floor if p.floor is not None else p.commands for p in self.migration)


def run_plan(config: Config, *, sizes: bool = False) -> PlanResult:
    """Measure the keyspace and predict every phase's billed KV commands. Read-only."""
    inv = run_inventory(config, sizes=sizes)
    pages, keys = inv.pages, inv.entity_keys
    read = inv.backfill
    candidates = inv.cleanup.strings + inv.cleanup.others
    delete = 3 * inv.candidate_pages  # MULTI, DEL, EXEC per page with candidates
    phases = [
        PhaseCost("inventory", inv.budget.spent, "measured: SCAN, and SCAN … TYPE per type, per page",
                  pages + inv.total_keys, pages),
        PhaseCost("flags", FLAG_WRITES, "one HSET of kvmigrate:flags each for dual-write, cutover and cleanup",
                  FLAG_WRITES, FLAG_WRITES),
        PhaseCost("backfill", inv.predicted_backfill, "DBSIZE before and after, SCAN, MGET per batch of strings, a read per other key",
                  pages + keys, read.floor),
        PhaseCost("verify", read.commands + 2, "dual-write's verify: DBSIZE before and after, and the same read pass",
                  pages + keys, read.floor),
        PhaseCost("archive", inv.cleanup.commands - delete + 2, "cleanup's one pass: DBSIZE before and after, SCAN, WATCH, the reads "
                  "of every candidate (derived indexes too)", pages + 2 * candidates, inv.cleanup.floor - inv.candidate_pages),
        PhaseCost("delete", delete, "MULTI, one multi-key DEL, EXEC per page", candidates, inv.candidate_pages),
        # the undo, if it is ever needed: a string is one SET NX, another key is built under a
        # temporary key and moved with RENAMENX (kvmigrate.restore), one EXISTS per 1,000 keys
        PhaseCost("restore", inv.cleanup.strings + 2 * inv.cleanup.others + math.ceil(candidates / 1000),
                  "only if cleanup is undone: SET NX per string, build + RENAMENX per other key", optional=True),
    ]
    return PlanResult(inv, phases, config.daily_quota)


@to_dict.register
def _(r: PlanResult) -> dict[str, Any]:
    return {
        "phases": {p.phase: {"commands": p.commands, "floor": p.floor, "naive": p.naive, "how": p.how,
                             "in_total": not p.optional} for p in r.phases},
        "total": r.total,
        "floor_total": r.floor_total,
        "naive_total": r.naive_total,
        "daily_quota": r.daily_quota,
        "share_of_daily_quota": round(r.total / r.daily_quota, 4) if r.daily_quota else None,
        "keys": r.inventory.total_keys,
        "entity_keys": r.inventory.entity_keys,
        "kv_requests": r.inventory.budget.spent,
    }


def plan(config: Config, *, sizes: bool = False) -> PlanResult:
    """Predict the billed KV commands of every phase of the migration on this store, beside the
    floor. Read-only; costs one inventory."""
    result = run_plan(config, sizes=sizes)
    state.log_spend(config, "plan", result.inventory.budget)
    return result
