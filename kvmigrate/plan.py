"""`kvmigrate plan`: what the whole migration will cost in KV commands, phase by phase.

One inventory pass (about 2 commands per 1,000 keys) measures the keyspace; the rest is
arithmetic over how each phase reads: one SCAN per page, one read-only script per page of
entity keys, one HSCAN per 1,000 fields of a registry hash, one compare-and-delete script per
page of deletable keys, one HSET per flag change, and 2 INFO per pass (a pass checks that the
KV server did not restart under it). Read-only.

The model follows what the inventory found: server-side scripting (what Upstash, Vercel KV,
Redis and Valkey allow), or, where it is refused, pipelined reads at about one command per
non-string key and three per archived or deleted key. Re-checks of differences, repairs and
retries are extra and not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from kvmigrate.config import Config
from kvmigrate.inventory import InventoryResult, run_inventory

#: Naive per-key costs, for comparison: read each key (GET/HGETALL/LRANGE…) in the backfill and
#: again in the verify and the archive (plus PTTL), and DEL each key.
NAIVE_PER_KEY = {"backfill": 1, "verify": 1, "archive": 2, "delete": 1}


@dataclass(frozen=True)
class PhaseCost:
    phase: str
    commands: int
    how: str
    naive: int | None = None


@dataclass
class PlanResult:
    inventory: InventoryResult
    phases: list[PhaseCost] = field(default_factory=list)
    daily_quota: int = 3000

    @property
    def total(self) -> int:
        return sum(p.commands for p in self.phases)

    @property
    def naive_total(self) -> int:
        return sum(p.naive if p.naive is not None else p.commands for p in self.phases)


def run_plan(config: Config) -> PlanResult:
    """Measure the keyspace and predict every phase's KV commands. Read-only."""
    inv = run_inventory(config)
    pages, hscans, keys = inv.pages, inv.hscan_calls, inv.naive_requests
    # One read of the entity keys: a script per page, or without scripting an MGET per page and
    # about one command per non-string key; cleanup's snapshots then cost 3 per key (TYPE, read,
    # PTTL), and its deletes re-read them under WATCH, plus WATCH, MULTI, DEL and EXEC per page.
    scripted = inv.used_eval
    reads = inv.plain_pages if scripted else inv.pipelined_reads
    snapshots = inv.entity_pages if scripted else 3 * keys
    deletes = inv.entity_pages if scripted else 4 * inv.entity_pages + 3 * keys
    read_pass = pages + reads + hscans  # one full, read pass over the entity keys
    c = 1 + _setup_commands(config.require_kv())  # a new connection: PING, plus AUTH and SELECT
    how = "a script" if scripted else "pipelined reads"
    phases = [
        PhaseCost("inventory", inv.budget.spent, "measured: SCAN + one census script per page" if scripted
                  else "measured: SCAN + one TYPE per key (scripting refused)"),
        PhaseCost("flags", 3 * (c + 1), "a connection + HSET for each of dual-write, cutover and cleanup"),
        PhaseCost("backfill", c + 3 + read_pass + reads + hscans,
                  "a connection, DBSIZE, 2 INFO, the read pass, and re-reading each page once under dual writes",
                  1 + keys * NAIVE_PER_KEY["backfill"]),
        PhaseCost("verify", 2 * (c + 2 + read_pass), "two full verifies (dual-write's and cleanup's), 2 INFO each",
                  2 * keys * NAIVE_PER_KEY["verify"]),
        PhaseCost("archive", 2 * c + 3 + pages + snapshots,
                  f"2 connections, HSET, 2 INFO, SCAN, {how} for the snapshots of the entity keys",
                  keys * NAIVE_PER_KEY["archive"]),
        PhaseCost("delete", deletes, "one compare-and-delete script per page" if scripted
                  else "per page WATCH, a re-read of its keys, MULTI, DEL, EXEC", keys * NAIVE_PER_KEY["delete"]),
    ]
    return PlanResult(inv, phases, config.daily_quota)


def _setup_commands(url: str) -> int:
    """Commands a new connection sends before kvmigrate's first: AUTH with a password (Upstash,
    Vercel KV), SELECT for a logical db other than 0."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    return int(bool(parts.password or parts.username)) + int(db not in ("", "0"))
