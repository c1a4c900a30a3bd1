"""Refuse the wrong store: an entity that no key of the KV store matches.

Pointed at another app's KV database (`cart:*`, `order:*` …), a scan matches no key of any
entity, verify finds nothing to differ and a gate would pass on a verify of 0 rows. Backfill
and verify count, from the scan they already make, how many keys matched each entity, and
these checks turn "nothing matched" into a refusal (exit 1) or, in a dry run, a warning. No
KV command of their own; the ledger lookups are read-only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import psycopg

from kvmigrate.adapters.pg import ledger, results
from kvmigrate.entities import Entity
from kvmigrate.model.errors import WrongStore

log = logging.getLogger("kvmigrate")

QUESTION = "is this the right store and database?"
HINT = (QUESTION + " Check --kv-url (and its logical database, the /N at its end) and --pg-url;"
        " `kvmigrate inventory` lists what the store holds (read-only)")


def patterns(entity: Entity) -> str:
    """The key patterns an entity reads, for messages (`vibe:handles, user:*`)."""
    return ", ".join(f.pattern for f in entity.families)


def ledger_keys(conn: psycopg.Connection, names: Sequence[str]) -> dict[str, int]:
    """Keys the ledger holds per entity (any status). Read-only; one query."""
    if not names:
        return {}
    counts = ledger.keys_per_entity(conn, names)
    conn.rollback()
    return counts


def unmatched(matched: Mapping[str, int], chosen: Sequence[Entity]) -> list[Entity]:
    """The KV entities among `chosen` that no key matched (memories read files: never)."""
    return [e for e in chosen if e.families and not matched.get(e.name)]


def verdict(matched: Mapping[str, int], chosen: Sequence[Entity], *, explicit: bool, what: str,
            dry_run: bool = False) -> tuple[list[str], WrongStore | None]:
    """Judge a complete scan's matches: the refusal to raise (no key matched any chosen KV
    entity, or one asked for by name), and the warnings (logged) for the rest. In a dry run the
    refusal is a warning too. Pure but for the log."""
    kv_chosen = [e for e in chosen if e.families]
    empty = unmatched(matched, kv_chosen)
    if not empty:
        return [], None
    lines = [f"no key of the KV store matches {e.name} ({patterns(e)})" for e in empty]
    if not (len(empty) == len(kv_chosen) or explicit):
        warnings = lines
    else:
        which = "any entity" if len(empty) == len(kv_chosen) and len(empty) > 1 else ", ".join(e.name for e in empty)
        detail = "; ".join(f"{e.name}: {patterns(e)}" for e in empty)
        message = f"no key of the KV store matches {which} ({detail})"
        if not dry_run:
            return [], WrongStore(f"{what} refused: {message}", hint=HINT)
        warnings = [f"{what} would be refused: {message}: {QUESTION}"]
    for line in warnings:
        log.warning("warning: %s", line)
    return warnings, None


def check_matched(matched: Mapping[str, int], chosen: Sequence[Entity], *, explicit: bool, what: str,
                  dry_run: bool = False) -> list[str]:
    """`verdict`, raising its refusal. Returns the warnings."""
    warnings, refusal = verdict(matched, chosen, explicit=explicit, what=what, dry_run=dry_run)
    if refusal is not None:
        raise refusal
    return warnings


def before_cleanup(conn: psycopg.Connection, entities: Sequence[str], *, what: str = "cleanup",
                   dry_run: bool = False) -> list[str]:
    """Cleanup's step check, for entities whose writes are about to move to Postgres: refuse
    (WrongStore) when the latest verify checked 0 rows, or when none ran and the ledger holds
    no key of the entity (a cutover forced on another app's store). A dry run warns instead.
    Read-only; no KV command."""
    problems: list[str] = []
    for entity in entities:
        row = results.latest_verify_checked(conn, entity)
        conn.rollback()
        if row is not None and not row[0]:
            problems.append(f"{entity}: the latest verify ({row[1]:%Y-%m-%d %H:%M} UTC) checked 0 rows")
        elif row is None and not ledger_keys(conn, [entity]).get(entity):
            problems.append(f"{entity}: never verified, and no key of it was ever backfilled")
    if not problems:
        return []
    if not dry_run:
        raise WrongStore(f"{what} refused: " + "; ".join(problems) + f": {QUESTION}",
                         hint=HINT + "; writes would move to a Postgres that holds nothing of these entities")
    warnings = [f"{what} would be refused: {p}: {QUESTION}" for p in problems]
    for line in warnings:
        log.warning("warning: %s", line)
    return warnings
