"""The KV side of `kvmigrate shadow`: which keys each view needs, read once each. Read-only.

One SCAN pass names every key (1 command per 1,000 keys); keys are grouped by family and by the
canonical handle their name holds (`inbox:Fred` and `inbox:fred` both belong to `fred`), so a
view asks for the keys of a handle, never for a guessed name. `KeyCache.ensure` reads what it
has not read yet: strings in MGETs of at most `MGET_KEYS` keys, one pipelined typed read per
other key (HGETALL, LRANGE, SMEMBERS), the registry hashes with HSCAN; a key is read at most
once per run, whichever views and users need it. `cost` forecasts a batch exactly before it is
sent (HSCAN pages, when a registry has over 1,000 fields, approximately).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.scanner import FIRST_MGET, LIST_CHUNK, ValueSizes, scan_pages
from kvmigrate.adapters.kv.source import KvSource, _companion
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.entities import common as c
from kvmigrate.entities.base import Family
from kvmigrate.model.records import RawRecord, SourcedRow

#: Keys per MGET: fixed, so the forecast is exact (values of these families are small).
MGET_KEYS = FIRST_MGET
#: Families keyed by one handle: family name -> the handle is the key's suffix.
PER_HANDLE = ("inbox", "inbox_ids", "outbox_ids", "legacy", "streak", "by_handle")


class _FixedSizes(ValueSizes):
    """MGETs of exactly MGET_KEYS keys (the forecast must not depend on sizes seen)."""

    learns = False

    def expect(self, family: str) -> float:
        return self.limit / MGET_KEYS


def canonical(raw: str) -> str | None:
    """The canonical form of a handle in a key name, or None when it is not a valid handle."""
    try:
        return c.handle(raw)
    except c.Bad:
        return None


@dataclass
class KeyIndex:
    """Every key of the keyspace the views can use, by family and handle (from one SCAN pass)."""

    families: dict[str, tuple[Entity, Family]] = field(default_factory=dict)  # key -> (entity, family)
    by_handle: dict[str, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    threads: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # handle -> thread keys
    by_family: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lengths: dict[str, int] = field(default_factory=dict)  # registry hash -> HLEN

    def keys_of(self, family: str, handle: str) -> list[str]:
        return list(self.by_handle[family].get(handle, ()))

    def handles(self) -> set[str]:
        """Canonical handles that own a per-handle key."""
        return {h for fam in ("inbox", "inbox_ids", "legacy", "streak") for h in self.by_handle[fam]}

    def add(self, key: str, entity: Entity, family: Family) -> None:
        self.families[key] = (entity, family)
        self.by_family[family.name].append(key)
        suffix = key[len(family.pattern) - 1:] if family.pattern.endswith("*") else ""
        if family.name in PER_HANDLE:
            h = canonical(suffix)
            if h is not None:
                self.by_handle[family.name][h].append(key)
        elif family.name == "thread":
            for part in set(suffix.split(":")):
                h = canonical(part)
                if h is not None:
                    self.threads[h].append(key)


def scan_index(kv: KvClient, *, count: int = 1000) -> KeyIndex:
    """Name every entity key (one SCAN per page; kept and unknown keys are never read), and
    the field count of each registry hash (one HLEN each). Read-only."""
    classifier = Classifier(ENTITIES)
    index = KeyIndex()
    for _, keys in scan_pages(kv, count=count):
        for key in keys:
            cl = classifier.classify(key)
            if cl.status == "entity" and cl.entity is not None and cl.family is not None:
                index.add(key, cl.entity, cl.family)
    registries = sorted(k for k, (_, f) in index.families.items() if f.split_fields)
    if registries:
        lengths = kv.pipeline([("HLEN", k) for k in registries])
        index.lengths = {k: int(n) if isinstance(n, int) else 0 for k, n in zip(registries, lengths, strict=True)}
    return index


class KeyCache:
    """Reads keys at most once per run and keeps their records, their rows and their raw items."""

    def __init__(self, kv: KvClient, index: KeyIndex) -> None:
        self.kv = kv
        self.index = index
        self.source = KvSource(kv, ENTITIES)
        self.source.reader.sizes = _FixedSizes()
        self.records: dict[str, list[RawRecord]] = {}

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not read yet that exist (by the SCAN), in a stable order, once each."""
        return sorted({k for k in keys if k not in self.records and k in self.index.families})

    def cost(self, keys: Iterable[str]) -> int:
        """The billed commands `ensure(keys)` will send: MGETs of MGET_KEYS strings, one typed
        read per other key (and its companion, `unread:*` with `messages:*`), HSCAN pages."""
        todo = self.missing(keys)
        strings = n = 0
        for key in todo:
            entity, family = self.index.families[key]
            if family.split_fields:
                n += max(1, math.ceil(self.index.lengths.get(key, 0) / 1000))
            elif "string" in family.types:
                strings += 1
                n += 0 if family.types == {"string"} else 1  # MGET says nil for a hash: one HGETALL
            else:
                n += 1
                if _companion(key, entity, family) is not None:
                    n += 1
        return n + math.ceil(strings / MGET_KEYS)

    def ensure(self, keys: Iterable[str]) -> None:
        """Read every key of `keys` not read yet. Read-only; costs `cost(keys)` (a list over
        LIST_CHUNK items one more LRANGE per chunk; a streak key that is a string costs no
        HGETALL, so a mixed family may cost less than forecast)."""
        todo = self.missing(keys)
        items = [(k, *self.index.families[k]) for k in todo]
        for key in todo:
            self.records[key] = []
        for record, _ in self.source.read(items):
            self.records[record.key].append(record)

    def rows(self, keys: Iterable[str], table: str) -> list[SourcedRow]:
        """The rows of `table` the records of `keys` (read already) transform to."""
        out: list[SourcedRow] = []
        for key in sorted(set(keys)):
            entity, _ = self.index.families.get(key, (None, None))
            for record in self.records.get(key, ()):
                if entity is None:
                    continue
                for row in entity.transform(record).rows:
                    if row.table == table:
                        out.append(SourcedRow(row.values, row.rank, record.key, record.field, row.meta))
        return out

    def items(self, key: str) -> Sequence[bytes | str]:
        """The raw members of a list or set key read already (ids, codes), decoded."""
        out: list[bytes | str] = []
        for record in self.records.get(key, ()):
            if isinstance(record.value, list):
                out += [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in record.value
                        if isinstance(v, (bytes, str))]
        return out


__all__ = ["LIST_CHUNK", "KeyCache", "KeyIndex", "canonical", "scan_index"]
