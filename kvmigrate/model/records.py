"""Plain values that flow through the pipeline: raw KV records in, rows or rejects out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: A raw KV value as read: bytes for strings (and one field of a split hash), a dict for
#: hashes, a list for lists and sets, a list of (member, score) pairs for sorted sets.
RawValue = bytes | dict[bytes, bytes] | list[bytes] | list[tuple[bytes, float]]


# The values made per key (RawRecord, Row, SourcedRow, Outcome, and the ledger's entries) are
# not frozen, on purpose: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (2.4 µs for ten fields against 0.3 µs), several times per key scanned.
# Treat them as immutable; they hash as frozen ones do.
@dataclass(slots=True, unsafe_hash=True)
class RawRecord:
    """One source record: a whole KV key, or one field of a big registry hash.

    `redis_type` is the server's type name ("string", "hash", "list", "set", "zset"); for a
    field of a split hash it is "hash" and `field` names the field, `value` is its bytes.
    `name_problem` says why the key or field name cannot be stored as Postgres text (not UTF-8,
    or a NUL byte): `key`/`field` then hold an escaped form and the record is rejected.
    """

    key: str
    redis_type: str
    value: RawValue
    field: str = ""
    family: str = ""
    name_problem: str = ""
    #: The value of the key a family reads along with this one (`unread:{h}` for
    #: `messages:{h}`): None when not read, an empty dict when that key does not exist.
    companion: RawValue | None = None


@dataclass(slots=True, unsafe_hash=True)
class Row:
    """One target row. `values` maps column to a Python value (str, int, bool, float,
    timezone-aware datetime, date, list, dict for JSONB, or None). `rank` orders sources that
    produce the same primary key: the higher rank wins (or fills gaps, for merge tables)."""

    table: str
    values: Mapping[str, Any]
    rank: int = 0
    #: What a merge of several sources needs beyond the columns, never loaded as a column:
    #: `raw` (the source's original value, kept in rejects when it is merged away) and
    #: `fresh` (ISO time the source was last updated, for the freshest-value rule).
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(slots=True, unsafe_hash=True)
class SourcedRow:
    """A row with the record it came from: (rank, source key, source field) orders sources."""

    values: Mapping[str, Any]
    rank: int
    source_key: str
    source_field: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def order(self) -> tuple[int, str, str]:
        return (self.rank, self.source_key, self.source_field)


@dataclass(frozen=True, slots=True)
class Merged:
    """Every source of one row combined: the row (credited to the source that decided it),
    and the sources merged away into it (several keys collapsing into one row: reported as
    `merged`, never silent), with the rule that combined them."""

    row: SourcedRow
    merged_away: tuple[SourcedRow, ...] = ()
    rule: str = ""
    #: The row's other sources that are not merged away (their stale `merged` marks are
    #: cleared); set only by a combine that reports merges.
    kept: tuple[SourcedRow, ...] = ()
    reports: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Why a record cannot be migrated: a stable `code` and a message naming the problem.

    For an item rejected inside a container (one broken message in a list), `raw` holds that
    item's original value, so the rejects table keeps it; a whole-record reject keeps the
    record's value instead and leaves `raw` empty."""

    code: str
    message: str
    raw: bytes | str | None = field(default=None, compare=False)


@dataclass(slots=True, unsafe_hash=True)
class Outcome:
    """What a transformer made of one record.

    `reject` set → the record is rejected (rows must then be empty). Otherwise it is migrated,
    possibly into zero rows (a derived index). `item_rejects` lists bad items inside a
    migrated container (a list of messages with one broken element): (item label such as
    "[3]", Reject); the good items still migrate. `stats` carries counters worth reporting
    (e.g. {"dangling_ids": 2, "handle_normalised": 1}); `refs` names message ids a list points
    to, so the engine can count dangling references once all messages are known.
    """

    rows: tuple[Row, ...] = ()
    reject: Reject | None = None
    item_rejects: tuple[tuple[str, Reject], ...] = ()
    stats: Mapping[str, int] = field(default_factory=dict)
    refs: tuple[str, ...] = ()

    @staticmethod
    def rejected(code: str, message: str) -> Outcome:
        return Outcome(reject=Reject(code, message))


class ContainerJson(str):
    """A hash, list, set or sorted set's value written as lossless JSON (the rejects table's
    raw_encoding 'json'; see `kvmigrate.engine.batch.raw_bytes`)."""


@dataclass(frozen=True, slots=True)
class ArchivedKey:
    """One key as the cleanup archive holds it: its type, its parts (as the write commands take
    them) and its absolute expiry."""

    key: str
    entity: str
    rtype: str
    parts: tuple[bytes, ...]
    expires_at_ms: int | None
