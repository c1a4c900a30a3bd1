"""Turn one page of read records into a loadable batch: rows per table, ledger, rejects.

Pure: no I/O. The backfill engine (and verify) feed it records and decide what to write.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.adapters.pg.state import LedgerEntry, RejectEntry
from kvmigrate.entities.base import Entity, Family, TableSpec
from kvmigrate.model.records import ContainerJson, Outcome, RawRecord, RawValue, Reject, SourcedRow
from kvmigrate.model.serial import to_dict

#: Given a row's values, the name of a required column it leaves empty (or None).
RequiredCheck = Callable[[Mapping[str, Any]], "str | None"]


@dataclass
class Tally:
    """Counts for one entity (or the pseudo-entities `kept` and `unknown`)."""

    scanned: int = 0
    migrated: int = 0
    rejected: int = 0
    kept: int = 0
    unknown: int = 0
    rows_written: int = 0
    item_rejects: int = 0
    stats: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        for name in ("scanned", "migrated", "rejected", "kept", "unknown", "rows_written", "item_rejects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stats.update(other.stats)


@dataclass
class Batch:
    """Everything one page produces, ready for one transaction."""

    rows: dict[str, list[SourcedRow]] = field(default_factory=lambda: defaultdict(list))
    ledger: list[LedgerEntry] = field(default_factory=list)
    rejects: list[RejectEntry] = field(default_factory=list)
    records: list[tuple[str, str]] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    refs: set[str] = field(default_factory=set)
    kept_patterns: Counter[str] = field(default_factory=Counter)
    unknown_patterns: dict[str, list[object]] = field(default_factory=dict)

    def note_policy(self, key: str, status: str, pattern: str, redis_type: str = "") -> None:
        """Record a key kept by policy or unknown (never read)."""
        self.ledger.append(LedgerEntry(key, "", status, pattern, redis_type or "?", None, status, None, 0))
        tally = self.tallies[status]
        tally.scanned += 1
        setattr(tally, status, getattr(tally, status) + 1)
        if status == "kept":
            self.kept_patterns[pattern] += 1
        else:
            slot = self.unknown_patterns.setdefault(pattern, [0, key])
            slot[0] = int(slot[0]) + 1  # type: ignore[call-overload]

    def note_index(self, key: str, entity: str, family: Family) -> None:
        """Record a derived index key that was not read: migrated with no rows of its own (its
        entity's cleanup archives and deletes it)."""
        self.ledger.append(LedgerEntry(key, "", entity, family.name, "/".join(sorted(family.types)), None,
                                       "migrated", None, 0))
        tally = self.tallies[entity]
        tally.scanned += 1
        tally.migrated += 1
        tally.stats["index_not_read"] += 1

    def note_unchanged(self, entity: str, item_rejects: int) -> None:
        """Count a record a run with the same rules migrated for the same value (with
        `item_rejects`, still in the rejects table): not transformed, nothing to write."""
        tally = self.tallies[entity]
        tally.scanned += 1
        tally.migrated += 1
        tally.item_rejects += item_rejects
        tally.stats["unchanged"] += 1

    def add_part(self, entity: Entity, record: RawRecord, part: OutcomePart,
                 required: Mapping[str, RequiredCheck] | None = None) -> None:
        """Fold one part of a record's outcome into the batch (see `outcome_parts`): the last
        as a whole outcome, an earlier one as its rows alone."""
        if part.last:
            self.add_outcome(entity, record, part.outcome, required, earlier_rows=part.earlier_rows)
        else:
            self._add_rows(record, part.outcome)

    def add_outcome(self, entity: Entity, record: RawRecord, outcome: Outcome,
                    required: Mapping[str, RequiredCheck] | None = None, *, earlier_rows: int = 0,
                    digests: tuple[str, str | None] | None = None) -> None:
        """Fold one transformer outcome into the batch (rows, ledger, rejects, tallies);
        `earlier_rows`: the rows of the record's parts loaded before this, its last;
        `digests`: the record's `record_digests`, when already worked out."""
        tally = self.tallies[entity.name]
        tally.scanned += 1
        if outcome.stats:
            tally.stats.update(outcome.stats)
        self.records.append((record.key, record.field))
        digest, companion = digests or record_digests(record)
        reject = outcome.reject or _missing_required(outcome, required)
        if reject is not None:
            tally.rejected += 1
            self.ledger.append(LedgerEntry(record.key, record.field, entity.name, record.family,
                                           record.redis_type, digest, "rejected", reject.code, 0))
            self.rejects.append(RejectEntry(record.key, record.field, entity.name, reject.code,
                                            reject.message, raw_bytes(record.value)))
            return
        tally.migrated += 1
        for label, item in outcome.item_rejects:
            tally.item_rejects += 1
            self.rejects.append(RejectEntry(record.key, f"{record.field}#{label}", entity.name, item.code,
                                            item.message, item.raw))
        self._add_rows(record, outcome)
        self.refs.update(outcome.refs)
        self.ledger.append(LedgerEntry(record.key, record.field, entity.name, record.family, record.redis_type,
                                       digest, "migrated", None, earlier_rows + len(outcome.rows), companion))

    def _add_rows(self, record: RawRecord, outcome: Outcome) -> None:
        for row in outcome.rows:
            self.rows[row.table].append(SourcedRow(row.values, row.rank, record.key, record.field, row.meta))


@dataclass(frozen=True, slots=True)
class OutcomePart:
    """One part of a record's outcome (see `outcome_parts`): `last` carries the record's
    ledger row, item rejects, stats and refs; an earlier part its rows alone."""

    outcome: Outcome
    last: bool = True
    earlier_rows: int = 0


def outcome_parts(entity: Entity, record: RawRecord, rows: int,
                  required: Mapping[str, RequiredCheck] | None = None) -> Iterator[OutcomePart]:
    """A record's outcome in parts of about `rows` rows where its entity splits it (see
    Entity.transform_parts), so a value of a million rows is never held whole. Pure.

    The parts are first checked in a pass that keeps no rows: when one rejects the record, or
    has a row that leaves a required column empty, the record comes whole, as `transform`
    makes it (and is rejected as a whole), so rows loaded with an earlier part never belong
    to a rejected record. Otherwise the parts are made again and given in order, the last
    with every part's item rejects, stats and refs. A record of one part costs one transform."""
    parts = entity.transform_parts(record, rows)
    first = next(parts)
    second = next(parts, None)
    if second is None:
        yield OutcomePart(first)
        return
    item_rejects: list[tuple[str, Reject]] = []
    stats: Counter[str] = Counter()
    refs: list[str] = []
    for part in itertools.chain((first, second), parts):
        if part.reject is not None or _missing_required(part, required) is not None:
            yield OutcomePart(entity.transform(record))
            return
        item_rejects.extend(part.item_rejects)
        stats.update(part.stats)
        refs.extend(part.refs)
    del first, second
    earlier = 0
    parts = entity.transform_parts(record, rows)
    held = next(parts)
    for part in parts:
        yield OutcomePart(Outcome(rows=held.rows), last=False, earlier_rows=earlier)
        earlier += len(held.rows)
        held = part
    yield OutcomePart(Outcome(rows=held.rows, item_rejects=tuple(item_rejects), stats=dict(stats), refs=tuple(refs)),
                      earlier_rows=earlier)


def _missing_required(outcome: Outcome, required: Mapping[str, RequiredCheck] | None) -> Reject | None:
    """A row that leaves a NOT NULL column empty would fail the whole batch: reject it here."""
    if not required:
        return None
    for row in outcome.rows:
        check = required.get(row.table)
        col = check(row.values) if check else None
        if col:
            return Reject("missing_field", f"{row.table}.{col} would be empty (the column is required)")
    return None


def _digest_start(redis_type: str) -> hashlib.blake2b:
    return hashlib.blake2b(redis_type.encode(), digest_size=16)


_DIGEST_START = {t: _digest_start(t) for t in ("string", "hash")}


def record_digests(record: RawRecord) -> tuple[str, str | None]:
    """(digest of the record's value, of its companion key's or None) for its ledger row.
    Rows that also depend on a companion key (the `unread:{h}` counters of `messages:{h}`)
    carry its digest too: a rerun skips the record only when neither changed."""
    companion = None if record.companion is None else value_digest("hash", record.companion)
    return value_digest(record.redis_type, record.value), companion


def value_digest(redis_type: str, value: RawValue | None) -> str:
    """A stable 128-bit digest of a raw value, whatever its Redis type. A set's members are
    digested in sorted order: SMEMBERS and a script's reply may list them in different orders."""
    if isinstance(value, bytes):  # a string or a field: its one part, in one update
        h = _DIGEST_START[redis_type].copy() if redis_type in _DIGEST_START else _digest_start(redis_type)
        h.update(len(value).to_bytes(8, "little") + value)
        return h.hexdigest()
    h = _digest_start(redis_type)
    if redis_type == "set" and isinstance(value, list):
        value = sorted(value)  # type: ignore[assignment]
    for part in _parts(value):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _parts(value: RawValue | None) -> Iterable[bytes]:
    if value is None:
        return ()
    if isinstance(value, bytes):
        return (value,)
    if isinstance(value, dict):
        return (p for k in sorted(value) for p in (k, value[k]))
    return (p if isinstance(p, bytes) else repr(p).encode() for item in value
            for p in (item if isinstance(item, tuple) else (item,)))


def raw_bytes(value: RawValue | None) -> bytes | str | None:
    """The original value as stored in the rejects table: the bytes of a string, or, for a
    container, lossless JSON: a hash as [[field, value], …] pairs, a list or set as [member, …],
    a sorted set as [[member, score], …]; each field, value and member a JSON string when it is
    UTF-8 without NUL, else {"base64": "…"} (so the byte 0xff and the text "\\xff" stay apart)."""
    if value is None or isinstance(value, bytes):
        return value
    import orjson

    if isinstance(value, dict):
        items: list[Any] = [[_member(k), _member(v)] for k, v in value.items()]
    else:
        items = [[_member(i[0]), i[1]] if isinstance(i, tuple) else _member(i) for i in value]
    return ContainerJson(orjson.dumps(items).decode())


def _member(part: object) -> object:
    if not isinstance(part, bytes):
        return part
    try:
        text = part.decode("utf-8")
        if "\x00" not in text:
            return text
    except UnicodeDecodeError:
        pass
    return {"base64": base64.b64encode(part).decode("ascii")}


def table_specs(entities: Iterable[Entity]) -> dict[str, TableSpec]:
    """Every target table the given entities write, by name (one TableSpec per table)."""
    specs: dict[str, TableSpec] = {}
    for entity in entities:
        for spec in entity.tables:
            specs.setdefault(spec.name, spec)
    return specs


@to_dict.register
def _(t: Tally) -> dict[str, Any]:
    return {"scanned": t.scanned, "migrated": t.migrated, "rejected": t.rejected, "kept": t.kept,
            "unknown": t.unknown, "rows_written": t.rows_written, "item_rejects": t.item_rejects,
            "stats": dict(sorted(t.stats.items()))}
