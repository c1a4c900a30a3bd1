"""Several copies of one message (`msg:{id}`, `messages:{to}`, `thread:…`, `vibe:messages`)
combined into its one `messages` row, by the read-state rule of entities.messages: the
highest-ranked copy gives the row, the message is read when any copy is read, and
`payload._extra.read_at` is the earliest read time of any copy. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kvmigrate.entities import common as c
from kvmigrate.entities import games
from kvmigrate.model.records import Merged, SourcedRow


def combine(sources: Sequence[SourcedRow]) -> Merged:
    """One `messages` row from every copy of a message (module rules); independent of order."""
    winner = max(sources, key=lambda r: r.order)
    if len(sources) == 1:
        return Merged(winner)
    values = dict(winner.values)
    values["read"] = any(s.values.get("read") for s in sources)
    times = [t for t in (_read_time(s.values.get("payload")) for s in sources) if t is not None]
    if times:
        earliest = min(times).isoformat()
        payload = values.get("payload")
        extra = dict(payload.get("_extra") or {}) if isinstance(payload, dict) else {}
        if extra.get("read_at") != earliest:
            base = {k: v for k, v in payload.items() if k != "_extra"} if isinstance(payload, dict) else payload
            values["payload"] = games.with_extra(base, {**extra, "read_at": earliest})
    return Merged(SourcedRow(values, winner.rank, winner.source_key, winner.source_field, winner.meta))


def _read_time(payload: Any) -> datetime | None:
    extra = payload.get("_extra") if isinstance(payload, dict) else None
    raw = extra.get("read_at") if isinstance(extra, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return c.timestamp(raw, what="read_at")
    except c.Bad:
        return None
