"""Cleanup's rules and its result: which key may be deleted (`verdict`, pure), why the others stay
in KV (reasons with the command to run next) and what a run did, with its JSON form. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.adapters.kv.scanner import decode_key, storable_name
from kvmigrate.adapters.kv.snapshot import Snapshot
from kvmigrate.adapters.pg.state import LedgerState
from kvmigrate.engine.batch import value_digest
from kvmigrate.entities.base import Family
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.serial import to_dict

EXAMPLES = 5

_VERIFY_AGAIN = "run `kvmigrate verify --entity {e}`, then cleanup again"
HINTS = {
    "not_migrated": "never backfilled: run `kvmigrate backfill --entity {e}` and verify, then cleanup again",
    "rejected": "rejected at backfill: see `kvmigrate rejects --entity {e}`; the key stays in KV",
    "not_verified": _VERIFY_AGAIN,
    "changed_since_verify": "the value changed since verify: " + _VERIFY_AGAIN,
    "changed_during_cleanup": "the value changed while cleanup ran: " + _VERIFY_AGAIN,
    "differs_from_postgres": "the value read now differs from Postgres: run `kvmigrate verify --entity {e}` "
    "(and --repair if Postgres misses it), then cleanup again",
    "unsupported_type": "a Redis type kvmigrate does not archive; the key stays in KV",
}


@dataclass
class KeptReason:
    count: int = 0
    hint: str = ""
    examples: list[str] = field(default_factory=list)


@dataclass
class EntityCleanup:
    """Per entity: keys of its families seen, deletable, archived, deleted, gone before they
    were read, and kept (by reason, with a few example keys)."""

    candidates: int = 0
    deletable: int = 0
    archived: int = 0
    deleted: int = 0
    vanished: int = 0
    kept: dict[str, KeptReason] = field(default_factory=dict)

    def keep(self, entity: str, reason: str, example: str) -> None:
        slot = self.kept.setdefault(reason, KeptReason(hint=HINTS[reason].format(e=entity)))
        slot.count += 1
        if len(slot.examples) < EXAMPLES:
            slot.examples.append(example)


@dataclass
class CleanupResult:
    run_id: int | None
    dry_run: bool
    archive_dir: str
    budget: RequestBudget
    entities: dict[str, EntityCleanup]
    manifest: str | None = None
    flags_changed: list[str] = field(default_factory=list)
    settled_seconds: float = 0.0
    resumed_from: int | None = None
    complete: bool = False
    verified_now: int = 0  # keys that changed since the last verify, verified as cleanup read them
    kv_requests: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # a dry run's refusals, as warnings

    @property
    def deleted(self) -> int:
        return sum(e.deleted for e in self.entities.values())


def verdict(snap: Snapshot, family: Family, rows: Mapping[str, LedgerState]) -> tuple[str, str] | None:
    """None when the key may be deleted, else (reason, example naming the key or field). Pure.

    `rows` are the key's ledger rows by field, names as the ledger stores them (`storable_name`:
    \\xNN for bytes that are not UTF-8 or NUL); the example names the key the same way. A key or
    field whose name had to be escaped was rejected (`invalid_key`) and is never deleted."""
    name, problem = storable_name(snap.key)
    if snap.digest is None:
        return ("changed_during_cleanup" if snap.rtype == "?" else "unsupported_type"), name
    if family.index and not family.decides:  # holds nothing of its own: in the ledger is enough
        row = rows.get("")
        ok = row is not None and row.status == "migrated" and not problem
        return None if ok else ("rejected" if row is not None and row.status == "rejected" or problem
                                else "not_migrated", name)
    if family.split_fields and snap.rtype == "hash":
        p = snap.parts
        checks = [(storable_name(decode_key(f)), value_digest("hash", v)) for f, v in zip(p[0::2], p[1::2], strict=True)]
    else:
        checks = [(("", ""), value_digest(snap.rtype, snap.raw_value()))]
    for (fld, fld_problem), digest in checks:
        row = rows.get(fld)
        reason = (
            "not_migrated" if row is None or row.status not in ("migrated", "rejected")
            else "rejected" if row.status == "rejected" or problem or fld_problem
            else "not_verified" if row.verified_hash is None
            else "changed_since_verify" if row.verified_hash != digest
            else None
        )
        if reason:
            return reason, name + (f" field {fld!r}" if fld else "")
    return None


@to_dict.register
def _(r: CleanupResult) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "dry_run": r.dry_run,
        "complete": r.complete,
        "archive_dir": r.archive_dir,
        "manifest": r.manifest,
        "deleted": r.deleted,
        "entities": {name: to_dict(e) for name, e in r.entities.items()},
        "flags_changed": r.flags_changed,
        "resumed_from_cursor": r.resumed_from,
        "verified_now": r.verified_now,
        "kv_requests": r.kv_requests,
        "kv_requests_by_command": dict(sorted(r.budget.by_command.items())),
        "warnings": r.warnings,
        "seconds": round(r.seconds, 3),
    }
