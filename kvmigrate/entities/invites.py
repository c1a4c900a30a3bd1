"""Invites: the `vibe:invites` hash (invite code → JSON record) → one `invites` row per code.

Rules (README, "Data rules"):
* the hash field is the code (the identity); a JSON `code` that differs from it is kept in
  `details`;
* created_by is required (missing_field when absent) and used_by optional; both are handles,
  normalised (stat `handle_normalised`); one that is not a valid handle rejects the invite
  (invalid_handle);
* created_at, used_at and expires_at take the `*_ts` epoch value when present, else the ISO
  text; an ISO twin that names another instant is kept in `details`;
* status is kept as stored (text); bonus_for_inviting and every other field go to `details`;
* `vibe:invites:by:{handle}` sets are a derived index: migrated with zero rows once every member
  is valid UTF-8 text (else the key is rejected), so cleanup archives them with the invites;
* `invite:{code}` keys are friend invites, another feature: not read here, reported as unknown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities.base import EntityBase, Family, TableSpec
from kvmigrate.entities.users import absent, pick
from kvmigrate.model.records import Outcome, RawRecord, Row

TABLE = TableSpec(
    "invites",
    "code",
    ("code", "created_by", "used_by", "created_at", "used_at", "expires_at", "status", "details"),
    user_refs=("created_by", "used_by"),
    json_columns=("details",),
)
_TIMES = {
    "created_at": ("created_at_ts", "created_at"),
    "used_at": ("used_at_ts", "used_at"),
    "expires_at": ("expires_at_ts", "expires_at"),
}
_MAPPED = frozenset({"code", "created_by", "used_by", "status"}) | {
    name for names in _TIMES.values() for name in names}


class Invites(EntityBase):
    name = "invites"
    load_order = 50
    families: tuple[Family, ...] = (
        Family("invites", "vibe:invites", frozenset({"hash"}), rank=10, split_fields=True),
        Family("by_handle", "vibe:invites:by:*", frozenset({"set"}), index=True),
    )
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_invites(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected JSON text")
        code = c.text(record.field.encode("utf-8", "surrogateescape"), what="invite code")
        if not code:
            raise c.Bad("missing_field", "the invite code (hash field) is empty")
        fields = c.checked_object(record.value, what="record")
        values, stats = invite_row(code, fields)
        rank = self.family("invites").rank
        return Outcome(rows=(Row("invites", values, rank),), stats=dict(stats))

    def from_by_handle(self, record: RawRecord) -> Outcome:
        if not isinstance(record.value, list):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected a set")
        for member in record.value:
            if not isinstance(member, bytes):
                raise c.Bad("wrong_type", f"member {member!r} is not text")
            c.text(member, what=f"member {member!r}")
        return Outcome()


def invite_row(code: str, fields: Mapping[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """The `invites` row for one invite record, with its stats; raise Bad if it cannot migrate."""
    stats: Counter[str] = Counter()
    raw_creator = fields.get("created_by")
    if absent(raw_creator):
        raise c.Bad("missing_field", "created_by is missing")
    created_by = c.handle(raw_creator, what="created_by")
    used_by = c.optional_handle(fields.get("used_by"), what="used_by")
    for raw, normalised in ((raw_creator, created_by), (fields.get("used_by"), used_by)):
        if normalised is not None and normalised != raw:
            stats["handle_normalised"] += 1
    details = {k: v for k, v in fields.items() if k not in _MAPPED}
    stored_code = fields.get("code")
    if stored_code is not None and stored_code != code:
        details["code"] = stored_code
    status = fields.get("status")
    if status is not None and not isinstance(status, str):
        raise c.Bad("wrong_type", f"status {status!r} is {type(status).__name__}, expected text")
    row: dict[str, Any] = {"code": code, "created_by": created_by, "used_by": used_by}
    for column, names in _TIMES.items():
        _, row[column], extra = pick(fields, names, c.timestamp)
        details.update(extra)
    row["status"] = status
    row["details"] = details
    return row, +stats


INVITES = Invites()
