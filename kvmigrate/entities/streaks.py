"""Streaks (with achievements): `streak:{handle}` → one `streaks` row.

Two codebases wrote the same key name in two Redis types (KV-LAYOUT.md):
* a hash of strings (A): `current`, `longest`, `totalDays`, `lastActive` ("YYYY-MM-DD"),
  numbers as strings, any field may be missing;
* a JSON string (B): `current`, `longest`, `lastActive`, `activeDays` (up to 30 dates),
  `badges` (the achievements).

Rules (README, "Data rules"): the handle comes from the key, normalised; `total_days` is
`totalDays` when present, else the number of distinct `activeDays`, else 0 (a missing number
is 0, the column's default); `lastActive` is a date, or an epoch or ISO time (its UTC date); `badges` (or
`achievements`) become `achievements`, in the order stored; every other field — `activeDays`
included — is kept in `details` so nothing is dropped.

Keys that collapse into one handle (`streak:Fred` and `streak:fred`; `streak:Bob`, `streak:@bob`
and `streak:bob`: two codebases, one lowercasing) become one row by a rule that does not depend
on scan order: the source with the most recent `lastActive` decides the counters (ties: the
higher current, longest and total_days, then the key already in canonical form, then the key
name); `activeDays` and `badges` are unioned (the deciding source's first, in stored order);
`total_days` is never below the number of distinct days in that union; other `details` keys come
from the deciding source, the others fill gaps. Every other source is recorded as `merged` (the
ledger's reason, and a reject keeping its original value): never silent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Merged, Outcome, RawRecord, Row, SourcedRow

MERGE_RULE = "the most recent lastActive decides the counters; activeDays and badges are unioned"


def combine(sources: Sequence[SourcedRow]) -> Merged:
    """One `streaks` row from every key that normalises to its handle (module rules)."""
    ranked = sorted(sources, key=_decides, reverse=True)
    winner = ranked[0]
    if len(ranked) == 1:
        return Merged(winner, reports=True)
    values = dict(winner.values)
    details: dict[str, Any] = {}
    for src in reversed(ranked):
        details.update(src.values.get("details") or {})
    days = _union(src.values.get("details", {}).get("activeDays") for src in ranked)
    if days:
        details["activeDays"] = days
    values["details"] = details
    values["achievements"] = _union(src.values.get("achievements") for src in ranked)
    distinct = {_day(d) for d in days} - {None}
    values["total_days"] = max(values.get("total_days") or 0, len(distinct))
    row = SourcedRow(values, winner.rank, winner.source_key, winner.source_field, winner.meta)
    return Merged(row, tuple(ranked[1:]), MERGE_RULE, reports=True)


def _decides(src: SourcedRow) -> tuple[Any, ...]:
    v = src.values
    canonical = src.source_key == f"streak:{v.get('handle')}"
    return (v.get("last_active") or date.min, v.get("current_streak") or 0, v.get("longest_streak") or 0,
            v.get("total_days") or 0, canonical, src.source_key, src.source_field)


def _union(lists: Any) -> list[Any]:
    """The distinct items of several lists, in order of first appearance."""
    out: list[Any] = []
    for items in lists:
        for item in items if isinstance(items, list) else ():
            if item not in out:
                out.append(item)
    return out


def _day(raw: Any) -> date | None:
    try:
        return c.day(raw)
    except c.Bad:
        return None


TABLE = TableSpec(
    "streaks",
    "handle",
    ("handle", "current_streak", "longest_streak", "total_days", "last_active", "achievements", "details"),
    user_refs=("handle",),
    merge="fill",
    json_columns=("details",),
    combine=combine,
)
_MAPPED = {"current", "longest", "totalDays", "total_days", "lastActive", "last_active", "badges", "achievements"}


class Streaks(EntityBase):
    name = "streaks"
    load_order = 40
    families: tuple[Family, ...] = (Family("streak", "streak:*", frozenset({"hash", "string"}), rank=10),)
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_streak(self, record: RawRecord) -> Outcome:
        raw_handle = record.key.split(":", 1)[1]
        handle = c.handle(raw_handle, what=f"handle {raw_handle!r} in the key")
        if isinstance(record.value, dict):
            text = c.hash_text(record.value)
            fields: dict[str, Any] = c.check_json_text({k: c.unjson(v) for k, v in text.items()})
            raw: dict[str, Any] = {"hash": [[k, v] for k, v in text.items()]}
        elif isinstance(record.value, bytes):
            fields = c.checked_object(record.value)
            raw = {"text": c.text(record.value)}
        else:
            raise c.Bad("wrong_redis_type", f"unexpected value of type {type(record.value).__name__}")
        row = streak_row(handle, fields)
        stats = {"handle_normalised": 1} if handle != raw_handle else {}
        return Outcome(rows=(Row("streaks", row, self.family("streak").rank, {"raw": raw}),), stats=stats)


def streak_row(handle: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The `streaks` row for one streak record (either shape), or raise Bad."""
    active = fields.get("activeDays")
    if active is not None and not isinstance(active, list):
        raise c.Bad("wrong_type", f"activeDays is {type(active).__name__}, expected a list of dates")
    total = fields.get("totalDays", fields.get("total_days"))
    if total is None and active is not None:
        days = {c.day(d, what="activeDays entry") for d in active}
        total_days: int | None = len({d for d in days if d is not None})
    else:
        total_days = c.integer(total, what="totalDays")
    badges = fields.get("badges", fields.get("achievements"))
    if badges is None:
        achievements: list[str] = []
    elif isinstance(badges, list) and all(isinstance(b, str) for b in badges):
        achievements = list(badges)
    else:
        raise c.Bad("wrong_type", "badges must be a list of text")
    return {
        "handle": handle,
        "current_streak": c.integer(fields.get("current"), what="current"),
        "longest_streak": c.integer(fields.get("longest"), what="longest"),
        "total_days": total_days,
        "last_active": c.day(fields.get("lastActive", fields.get("last_active")), what="lastActive"),
        "achievements": achievements,
        "details": {k: v for k, v in fields.items() if k not in _MAPPED},
    }


STREAKS = Streaks()
