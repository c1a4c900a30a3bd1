"""DM consent: A's `consent:{from}:{to}` records and B's `consent:{status}:{h}` sets → one
`user_connections` row per ordered pair (from, to): may `from` send DMs to `to`.

Sources (KV-LAYOUT.md "Persistent, not in the RFC's list"):
* A (rank 20): `consent:{from}:{to}`, a JSON string `{status, requestedAt, respondedAt?,
  grandfathered?, message?}` (`from` asked to message `to`);
* B (rank 10): sets `consent:pending:{h}`, `consent:accepted:{h}`, `consent:blocked:{h}`. As B's
  `api/consent.js` writes and reads them, a member `m` of `consent:{status}:{h}` is the pair
  (from = m, to = h) in that status: a request adds the requester to the recipient's pending
  set; an accept moves it to accepted and also adds the reverse pair (to → from) as accepted.

Rules (README, "Data rules"):
* handles come from the key (A) or the key and the member (B), normalised; the id is
  `from:to`; A's own `from`/`to` fields are dropped when they name the same handles, else kept
  in `details`;
* status must be `pending`, `accepted` or `blocked` (`bad_status`; a missing one is
  `missing_field`); created_at ← requestedAt, updated_at ← respondedAt, else requestedAt; every
  other field (`grandfathered`, `message`, …) goes to `details`. B's sets carry no times;
* a string at `consent:pending:{x}` (or accepted/blocked) is A's record from the handle
  `pending` to `x` (the Redis type tells the two apart); a key that does not name two handles
  is `invalid_key`, a set member that is not a valid handle an item reject `[member]`.

Several sources of one pair (A and B, B's sets among themselves, or keys collapsing into one
pair after normalising) combine by a rule that does not depend on scan order:
* **the furthest status wins: blocked > accepted > pending** — B's own read order (its GET
  checks blocked, then accepted, then pending), applied across A and B too; among sources with
  that status, A's record decides the row (ties: the most recent respondedAt/requestedAt, the
  key already in canonical form, the key name);
* created_at is the earliest and updated_at the latest time any A source holds; `details`
  fill from every A source (the deciding one's keys win);
* when the sources disagree on the status, `details.sources` lists every source key with the
  status it holds, so the disagreement stays visible in the row;
* every A key that does not decide the row is recorded as `merged` (ledger reason, and a
  reject keeping its original value). A B set holds many pairs, so it is never marked for one
  of them: the row's `details.sources` records what it said.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.model.records import Merged, Outcome, RawRecord, Reject, Row, SourcedRow

STATUSES = ("pending", "accepted", "blocked")  # in the order a later status overrules an earlier
A_RANK, B_RANK = 20, 10
MERGE_RULE = "the furthest status wins (blocked > accepted > pending); A's record decides among equals"
_MAPPED = frozenset({"status", "requestedAt", "respondedAt", "from", "to"})


def combine(sources: Sequence[SourcedRow]) -> Merged:
    """One `user_connections` row from every source of a pair (module rules); independent of order."""
    ranked = sorted(sources, key=_decides, reverse=True)
    winner = ranked[0]
    a_sources = [s for s in ranked if s.rank == A_RANK]
    values = dict(winner.values)
    details: dict[str, Any] = {}
    for src in reversed(a_sources):
        details.update(src.values.get("details") or {})
    if len({s.values.get("status") for s in sources}) > 1:
        details["sources"] = {s.source_key: s.values.get("status") for s in sorted(sources, key=lambda r: r.order)}
    values["details"] = details
    values["created_at"] = _pick(min, (s.values.get("created_at") for s in a_sources))
    values["updated_at"] = _pick(max, (s.values.get("updated_at") for s in a_sources))
    away = tuple(s for s in a_sources if s is not winner)
    kept = tuple(s for s in ranked[1:] if s not in away)
    row = SourcedRow(values, winner.rank, winner.source_key, winner.source_field, winner.meta)
    return Merged(row, away, MERGE_RULE if away else "", kept, reports=True)


def _decides(src: SourcedRow) -> tuple[Any, ...]:
    v = src.values
    status = v.get("status")
    fresh = v.get("updated_at") or v.get("created_at")
    canonical = src.source_key == f"consent:{v.get('from_handle')}:{v.get('to_handle')}"
    return (STATUSES.index(status) if status in STATUSES else -1, src.rank,
            fresh.isoformat() if isinstance(fresh, datetime) else "", canonical, src.source_key)


def _pick(choose: Any, times: Any) -> datetime | None:
    present = [t for t in times if t is not None]
    return choose(present) if present else None


TABLE = TableSpec(
    "user_connections",
    "id",
    ("id", "from_handle", "to_handle", "status", "created_at", "updated_at", "details"),
    user_refs=("from_handle", "to_handle"),
    merge="fill",
    json_columns=("details",),
    combine=combine,
)


class Consent(EntityBase):
    name = "consent"
    load_order = 80
    families: tuple[Family, ...] = (
        Family("record", "consent:*", frozenset({"string"}), rank=A_RANK),
        *(Family(status, f"consent:{status}:*", frozenset({"set", "string"}), rank=B_RANK) for status in STATUSES),
    )
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_record(self, record: RawRecord) -> Outcome:
        parts = record.key.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise c.Bad("invalid_key", "expected consent:{from}:{to}, two handles")
        src, dst = (c.handle(p, what=f"handle {p!r} in the key") for p in parts[1:])
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected JSON text")
        fields = c.checked_object(record.value, what="record")
        values = consent_row(src, dst, fields)
        stats = {"handle_normalised": 1} if (src, dst) != (parts[1], parts[2]) else {}
        meta = {"raw": {"text": c.text(record.value)}}
        return Outcome(rows=(Row("user_connections", values, A_RANK, meta),), stats=stats)

    def from_pending(self, record: RawRecord) -> Outcome:
        return self._from_set(record, "pending")

    def from_accepted(self, record: RawRecord) -> Outcome:
        return self._from_set(record, "accepted")

    def from_blocked(self, record: RawRecord) -> Outcome:
        return self._from_set(record, "blocked")

    def _from_set(self, record: RawRecord, status: str) -> Outcome:
        if record.redis_type == "string":  # A's record from the handle `pending` (or accepted/blocked)
            return self.from_record(record)
        members = c.set_members(record.value)
        raw_to = record.key.split(":", 2)[2]
        dst = c.handle(raw_to, what=f"handle {raw_to!r} in the key")
        rows: dict[str, Row] = {}
        bad: list[tuple[str, Reject]] = []
        normalised = int(dst != raw_to)
        for label, src, data in members:
            if isinstance(src, c.Bad):
                bad.append((label, Reject(src.code, f"{record.key} member {label}: {src}", data)))
                continue
            normalised += src.encode() != data
            values: dict[str, Any] = {"id": f"{src}:{dst}", "from_handle": src, "to_handle": dst, "status": status,
                                      "created_at": None, "updated_at": None, "details": {}}
            rows[f"{src}:{dst}"] = Row("user_connections", values, B_RANK)
        stats = {"handle_normalised": normalised} if normalised else {}
        return Outcome(rows=tuple(rows[k] for k in sorted(rows)), item_rejects=tuple(bad), stats=stats)


def consent_row(src: str, dst: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The `user_connections` row of one A record (handles already normalised), or raise Bad."""
    status = fields.get("status")
    if status is None:
        raise c.Bad("missing_field", "status is missing")
    if status not in STATUSES:
        raise c.Bad("bad_status", f"status {status!r} is not one of {', '.join(STATUSES)}")
    created = c.optional_timestamp(fields.get("requestedAt"), what="requestedAt")
    responded = c.optional_timestamp(fields.get("respondedAt"), what="respondedAt")
    details = {k: v for k, v in fields.items() if k not in _MAPPED}
    for name, handle in (("from", src), ("to", dst)):
        if name in fields and not _names(fields[name], handle):
            details[name] = fields[name]
    return {"id": f"{src}:{dst}", "from_handle": src, "to_handle": dst, "status": status,
            "created_at": created, "updated_at": responded or created, "details": details}


def _names(raw: Any, handle: str) -> bool:
    try:
        return c.handle(raw) == handle
    except c.Bad:
        return False


CONSENT = Consent()
