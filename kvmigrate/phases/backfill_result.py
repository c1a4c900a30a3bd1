"""What a backfill did (per entity tallies, patterns kept and unknown, restarts), with its JSON
form, and the progress callback it reports through. Plain values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.engine.batch import Tally
from kvmigrate.entities import ENTITY_NAMES
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.serial import to_dict

#: Called after each committed page with (keys scanned so far, keys in the store, tallies).
Progress = Callable[[int, int, dict[str, Tally]], None]


@dataclass
class BackfillResult:
    run_id: int | None
    dry_run: bool
    budget: RequestBudget
    tallies: dict[str, Tally] = field(default_factory=dict)
    kept_patterns: Counter[str] = field(default_factory=Counter)
    unknown_patterns: dict[str, list[object]] = field(default_factory=dict)
    placeholders: int = 0
    dangling_refs: int = 0
    resumed_from: int | None = None
    complete: bool = False
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # entities that write to Postgres only now
    server_restarts: int = 0  # KV restarts seen during the run (each costs a rescan)
    warnings: list[str] = field(default_factory=list)  # e.g. an entity no key matched

    @property
    def rejected(self) -> int:
        return sum(t.rejected + t.item_rejects for t in self.tallies.values())


@to_dict.register
def _(r: BackfillResult) -> dict[str, Any]:
    order: list[str] = [n for n in ENTITY_NAMES if n in r.tallies]
    order += sorted(n for n in r.tallies if n not in order)
    return {
        "run_id": r.run_id,
        "dry_run": r.dry_run,
        "complete": r.complete,
        "resumed_from_cursor": r.resumed_from,
        "kv_requests": r.budget.spent,
        "kv_requests_by_command": dict(sorted(r.budget.by_command.items())),
        "entities": {n: to_dict(r.tallies[n]) for n in order},
        "kept_patterns": dict(sorted(r.kept_patterns.items())),
        "unknown_patterns": {p: {"keys": c, "example": e} for p, (c, e) in sorted(r.unknown_patterns.items())},
        "placeholder_users": r.placeholders,
        "dangling_refs": r.dangling_refs,
        "skipped_entities": r.skipped,
        "kv_server_restarts": r.server_restarts,
        "warnings": r.warnings,
        "seconds": round(r.seconds, 3),
    }
