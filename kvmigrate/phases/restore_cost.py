"""What a restore costs and what it did: the per-entity counts, the forecast of billed commands
(`restore_cost`, pure, also used by `plan`) and the result with its JSON form. No I/O."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.adapters.kv.rebuild import Command, build_trips, length_command, one_shot, read_pages
from kvmigrate.model.budget import FREE_COMMANDS, RequestBudget
from kvmigrate.model.records import ArchivedKey
from kvmigrate.model.serial import to_dict

FLAGS_UNCHANGED = ("phase flags are unchanged: restore writes KV only, and the app keeps reading and "
                   "writing what its flags say (see `kvmigrate status`)")
EXAMPLES = 10


@dataclass
class RestoreCounts:
    restored: int = 0
    equal: int = 0
    overwritten: int = 0
    refused: int = 0
    expired: int = 0
    failed: int = 0


@dataclass(frozen=True)
class RestoreCost:
    """Billed KV commands a restore of `keys` archived keys sends (`by_command`; the
    connection's PING, AUTH and SELECT are free)."""

    keys: int
    by_command: dict[str, int]

    @property
    def commands(self) -> int:
        return sum(self.by_command.values())

    def to_dict(self) -> dict[str, Any]:
        return {"keys": self.keys, "commands": self.commands,
                "per_key": round(self.commands / self.keys, 3) if self.keys else 0.0,
                "by_command": dict(sorted(self.by_command.items()))}


@dataclass
class RestoreResult:
    archive_dir: str
    manifest: str
    files_verified: list[str]
    force: bool
    budget: RequestBudget
    dry_run: bool = False
    forecast: RestoreCost | None = None
    entities: dict[str, RestoreCounts] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    ledger_checked: bool = False
    resends: int = 0
    kv_requests: int = 0
    flags: str = FLAGS_UNCHANGED

    @property
    def clean(self) -> bool:
        return not (self.refused or self.failed or self.unlisted_files or self.missing)


def restore_cost(items: Sequence[ArchivedKey], *, batch_size: int = 1000, now_ms: int | None = None,
                 in_place: Mapping[str, int] | None = None, replaced: frozenset[str] = frozenset(),
                 setup: Mapping[str, int] | None = None) -> RestoreCost:
    """The billed commands `run_restore` sends for `items`: the keys of `in_place` exist (each
    with the number of page reads its comparison takes: 0 when its length differs), those in
    `replaced` are overwritten (`force`), the others are absent, with no leftovers of a killed
    run. Pure: no I/O. `setup`: what the connection sends before its PING (`{"AUTH": 1}`).
    For `plan` too: `restore_cost(latest_lines(verified_blobs(folder, manifest), ()))`."""
    now = clock_ms() if now_ms is None else now_ms
    there = dict(in_place or {})
    spent: Counter[str] = Counter({"PING": 1})
    spent.update({k: v for k, v in (setup or {}).items() if v})
    live = [i for i in items if not has_expired(i, now)]
    for start in range(0, len(live), batch_size):
        batch = live[start:start + batch_size]
        built = [i for i in batch if not one_shot(i)]
        probed = any(i.key in there for i in built)
        spent["EXISTS"] += int(bool(built))
        for item in batch:
            cmds: list[Command] = []
            if one_shot(item):
                cmds.append(("SET",))
            if item.key in there:
                reads = [p.cmd for p in read_pages(item)][:there[item.key]]
                cmds += [length_command(item), *reads] + ([] if one_shot(item) else [("DEL",)])
                if item.key in replaced:
                    cmds += [c for trip in build_trips(item, fresh=False, replace=True) for c in trip]
            elif not one_shot(item):
                cmds += [c for trip in build_trips(item, fresh=not probed) for c in trip]
                cmds += [length_command(item)] if probed else []
            spent.update(str(c[0]) for c in cmds)
    return RestoreCost(len(items), {k: n for k, n in spent.items() if k not in FREE_COMMANDS})


def clock_ms() -> int:
    return int(time.time() * 1000)


def has_expired(item: ArchivedKey, now_ms: int) -> bool:
    return item.expires_at_ms is not None and item.expires_at_ms <= now_ms


@to_dict.register
def _(r: RestoreResult) -> dict[str, Any]:
    return {"archive_dir": r.archive_dir, "manifest": r.manifest, "files_verified": r.files_verified,
            "dry_run": r.dry_run, "force": r.force, "clean": r.clean,
            "forecast": None if r.forecast is None else r.forecast.to_dict(),
            "entities": {n: to_dict(c) for n, c in r.entities.items()},
            "refused": r.refused, "failed": [list(f) for f in r.failed], "unlisted_files": r.unlisted_files,
            "ledger_checked": r.ledger_checked, "missing": r.missing, "missing_examples": r.missing_examples,
            "resends": r.resends, "kv_requests": r.kv_requests,
            "kv_requests_by_command": dict(sorted(r.budget.by_command.items())), "flags": r.flags}
