"""The KV side of every command: pages of classified, read records. Read-only.

Backfill, verify and cleanup all see the keyspace through `read_pages`, so they agree on what
each key is and read it the same way (one SCAN per page, one batch read per page).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import redis

from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.scanner import (
    BatchReader,
    KeyValue,
    hscan_records,
    scan_pages,
    storable_name,
)
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.entities.base import Family
from kvmigrate.model.records import RawRecord, RawValue


@dataclass
class Page:
    """One SCAN page: where to resume after it, keys kept/unknown by policy, and entity records.

    With `KvSource(parts=n)`, a page holding a registry hash (a `split_fields` family) comes as
    several: parts of n records (`whole` False, `keys` 0: resuming after one would skip the rest
    of its page), then the page itself with its last records, its keys and policy."""

    cursor: int
    keys: int
    policy: list[tuple[str, str, str]] = field(default_factory=list)  # (key, status, pattern)
    indexes: list[tuple[str, Entity, Family]] = field(default_factory=list)  # derived indexes, not read
    records: list[tuple[RawRecord, Entity]] = field(default_factory=list)
    whole: bool = True


class KvSource:
    """Reads pages of the keyspace for a set of entities."""

    def __init__(self, kv: KvClient, entities: Sequence[Entity], *, count: int = 1000,
                 parts: int | None = None) -> None:
        """`parts`: yield a page that holds a registry hash in parts of this many records (see
        Page), so a hash of a field per user is not held, nor loaded, whole."""
        self.kv = kv
        self.wanted = {e.name for e in entities}
        self.count = count
        self.parts = parts
        self.classifier = Classifier(ENTITIES)
        self.reader = BatchReader(kv)

    def pages(self, cursor: int = 0) -> Iterator[Page]:
        """Yield every page from `cursor` until the scan completes. Costs 1 SCAN a page plus the
        reads of its entity keys (`read`); derived indexes are named, not read."""
        for next_cursor, keys in scan_pages(self.kv, cursor=cursor, count=self.count):
            page = Page(next_cursor, len(keys))
            items: list[tuple[str, Entity, Family]] = []
            for key in keys:
                c = self.classifier.classify(key)
                if c.status != "entity":
                    page.policy.append((storable_name(key)[0], c.status, c.pattern))
                elif c.entity is not None and c.family is not None and c.entity.name in self.wanted:
                    if c.family.read_by_backfill:
                        items.append((key, c.entity, c.family))
                    else:
                        page.indexes.append((storable_name(key)[0], c.entity, c.family))
            parts = self.parts if any(f.split_fields for _, _, f in items) else None
            for record in self.read(items):
                page.records.append(record)
                if parts is not None and len(page.records) >= parts:
                    yield Page(next_cursor, 0, records=page.records, whole=False)
                    page.records = []
            yield page

    def read(self, items: Sequence[tuple[str, Entity, Family]]) -> Iterator[tuple[RawRecord, Entity]]:
        """Read the given entity keys: registry hashes field by field (HSCAN), the rest in one
        batch (MGETs for strings, one pipelined read per other key). Keys deleted since SCAN are
        skipped; a registry key that is not a hash costs one more command and is read with the
        batch."""
        plain = [(k, e, f) for k, e, f in items if not f.split_fields]
        for key, entity, family in items:
            if family.split_fields:
                seen: set[str] = set()
                try:
                    for record in hscan_records(self.kv, key, family, count=self.count):
                        if record.field not in seen:
                            seen.add(record.field)
                            yield storable(record), entity
                except redis.ResponseError as exc:
                    if "WRONGTYPE" not in str(exc) or seen:
                        raise
                    # Not a hash (the other codebase wrote another type here): read it whole,
                    # and the transformer rejects it by its type, naming the key.
                    plain.append((key, entity, family))
        companions = [_companion(key, entity, family) for key, entity, family in plain]
        extra = [c for c in companions if c is not None]
        values = self.reader.read([k for k, _, _ in plain] + [k for k, _ in extra],
                                  [f for _, _, f in plain] + [f for _, f in extra])
        read_with = iter(values[len(plain):])
        for kv_value, (_, entity, family), companion in zip(values[:len(plain)], plain, companions, strict=True):
            other = _companion_value(next(read_with)) if companion is not None else None
            if kv_value.redis_type != "none" and kv_value.value is not None:
                record = RawRecord(kv_value.key, kv_value.redis_type, kv_value.value, "", family.name,
                                   companion=other)
                yield storable(record), entity

    def read_keys(self, keys: Sequence[str]) -> list[tuple[RawRecord, Entity]]:
        """Classify and read specific keys (verify's re-check, repair, sampling); derived
        indexes are not read."""
        items = []
        for key in keys:
            c = self.classifier.classify(key)
            if c.status == "entity" and c.entity is not None and c.family is not None and c.family.read_by_backfill:
                items.append((key, c.entity, c.family))
        return list(self.read(items))



def _companion(key: str, entity: Entity, family: Family) -> tuple[str, Family] | None:
    """The key read with `key` (a family's `companion`: same suffix, the other family's
    prefix), e.g. `unread:bob` with `messages:bob`; one more read in the same batch."""
    other = next((f for f in entity.families if f.name == family.companion), None) if family.companion else None
    if other is None or not family.pattern.endswith("*") or not other.pattern.endswith("*"):
        return None
    return other.pattern[:-1] + key[len(family.pattern) - 1:], other


def _companion_value(kv_value: KeyValue) -> RawValue | None:
    """A companion as the transformer gets it: its value, {} when the key does not exist, and
    None when it holds another type than its family's (then it decides nothing)."""
    if kv_value.redis_type == "none" or kv_value.value is None:
        return {}
    return kv_value.value if kv_value.redis_type == "hash" else None


def storable(record: RawRecord) -> RawRecord:
    """The record, or, when its key or field cannot be stored as Postgres text, a copy with
    escaped names and the reason (the transformer then rejects it: `invalid_key`)."""
    key, key_problem = storable_name(record.key)
    field, field_problem = storable_name(record.field)
    problem = key_problem or field_problem
    if not problem:
        return record
    return RawRecord(key, record.redis_type, record.value, field, record.family,
                     f"{'key' if key_problem else 'field'}: {problem}", record.companion)
