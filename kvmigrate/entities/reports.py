"""Moderation reports: A's `vibe:reports` hash (report id → JSON) and B's `report:{id}` JSON
strings → one `reports` row per report id.

A's `api/report.js` writes `{id, reporter, reported, reason, message_id, details, created_at,
created_at_ts, status, reviewed_at, reviewed_by, action_taken, notes}` and then
`HINCRBY vibe:report_counts {reported} 1`; B keeps the same facts in `report:{id}`, the ids of
open reports in the `reports:pending` list and a `reports:count:{h}` counter per reported handle.

Rules (README, "Data rules"):
* the hash field (A) or the key's suffix (B) is the report id; a JSON `id` that differs is kept
  in `details`; the same id in both: A's record wins whole (rank 20 over 10);
* reported ← reported/target/reportedHandle (required: `missing_field`), reporter ←
  reporter/reportedBy (optional), both handles normalised (`invalid_handle` rejects the report);
  reason and status are kept as stored (text, else `wrong_type`); message_id ←
  message_id/messageId; created_at ← created_at_ts/created_at/createdAt/timestamp (the first
  present), reviewed_at ← reviewed_at/reviewedAt; every other field (`details`, `reviewed_by`,
  `action_taken`, `notes`, a disagreeing alias, …) goes to `details`;
* the counters (`vibe:report_counts`, `reports:count:{h}`) and the `reports:pending` list are
  derived from the reports (a count per reported handle, the ids with status pending): derived
  indexes, never read by backfill or verify, archived and deleted by cleanup with the reports.
  The counts are a query on `reports` after cutover (`GROUP BY reported`).
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
    "reports",
    "id",
    ("id", "reporter", "reported", "reason", "status", "message_id", "created_at", "reviewed_at", "details"),
    user_refs=("reporter", "reported"),
    json_columns=("details",),
)
_REPORTED = ("reported", "target", "reportedHandle")
_REPORTER = ("reporter", "reportedBy")
_MESSAGE = ("message_id", "messageId")
_CREATED = ("created_at_ts", "created_at", "createdAt", "timestamp")
_REVIEWED = ("reviewed_at", "reviewedAt")
_MAPPED = frozenset({"id", "reason", "status", *_REPORTED, *_REPORTER, *_MESSAGE, *_CREATED, *_REVIEWED})


class Reports(EntityBase):
    name = "reports"
    load_order = 100
    families: tuple[Family, ...] = (
        Family("reports", "vibe:reports", frozenset({"hash"}), rank=20, split_fields=True),
        Family("report", "report:*", frozenset({"string"}), rank=10),
        Family("counts", "vibe:report_counts", frozenset({"hash"}), index=True),
        Family("count", "reports:count:*", frozenset({"string"}), index=True),
        Family("pending", "reports:pending", frozenset({"list"}), index=True),
    )
    tables: tuple[TableSpec, ...] = (TABLE,)

    def from_reports(self, record: RawRecord) -> Outcome:
        return self._outcome(record, record.field, "reports")

    def from_report(self, record: RawRecord) -> Outcome:
        return self._outcome(record, record.key.split(":", 1)[1], "report")

    def _outcome(self, record: RawRecord, report_id: str, family: str) -> Outcome:
        if not isinstance(record.value, bytes):
            raise c.Bad("wrong_type", f"value is {type(record.value).__name__}, expected JSON text")
        if not report_id:
            raise c.Bad("missing_field", "the report id is empty")
        fields = c.checked_object(record.value, what="report")
        values, stats = report_row(report_id, fields)
        return Outcome(rows=(Row("reports", values, self.family(family).rank),), stats=dict(stats))


def report_row(report_id: str, fields: Mapping[str, Any]) -> tuple[dict[str, Any], Counter[str]]:
    """The `reports` row of one report record (either shape) with its stats, or raise Bad."""
    stats: Counter[str] = Counter()
    name, raw_reported, details = pick(fields, _REPORTED, lambda v: v)
    if name is None:
        raise c.Bad("missing_field", "reported (the reported handle) is missing")
    reported = c.handle(raw_reported, what=name)
    rname, raw_reporter, more = pick(fields, _REPORTER, lambda v: v)
    details.update(more)
    reporter = c.handle(raw_reporter, what=rname) if rname is not None else None
    stats["handle_normalised"] += (reported != raw_reported) + (reporter is not None and reporter != raw_reporter)
    _, message_id, more = pick(fields, _MESSAGE, _text)
    details.update(more)
    _, created_at, more = pick(fields, _CREATED, c.timestamp)
    details.update(more)
    _, reviewed_at, more = pick(fields, _REVIEWED, c.timestamp)
    details.update(more)
    details.update({k: v for k, v in fields.items() if k not in _MAPPED})
    stored_id = fields.get("id")
    if not absent(stored_id) and stored_id != report_id:
        details["id"] = stored_id
    row = {"id": report_id, "reporter": reporter, "reported": reported,
           "reason": _optional_text(fields.get("reason"), "reason"),
           "status": _optional_text(fields.get("status"), "status"), "message_id": message_id,
           "created_at": created_at, "reviewed_at": reviewed_at, "details": details}
    return row, +stats


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise c.Bad("wrong_type", f"{raw!r} is {type(raw).__name__}, expected text")
    return raw


def _optional_text(raw: Any, what: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise c.Bad("wrong_type", f"{what} {raw!r} is {type(raw).__name__}, expected text")
    return raw


REPORTS = Reports()
