"""`kvmigrate inventory`: a census of the keyspace and what each pass of the migration costs.

By default from SCAN alone: one untyped pass (the pages a backfill will walk) and one
`SCAN … TYPE t` pass per Redis type, so every key's type is known at one command per page per
type, never per key; plus one HLEN per registry hash (its HSCANs are predicted from it).
`sizes=True` also measures each key (STRLEN/HLEN/LLEN/SCARD/ZCARD and PTTL, pipelined): two
billed commands per key. Read-only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.kv.classify import Classification, Classifier
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.scanner import (
    LIST_CHUNK,
    TYPED_READS,
    ValueSizes,
    decode_key,
    encode_key,
    scan_pages,
)
from kvmigrate.adapters.pg import state
from kvmigrate.entities import ENTITIES
from kvmigrate.entities.base import Family
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.serial import to_dict

TYPES = ("string", "hash", "list", "set", "zset")
_SIZE = {"string": "STRLEN", "hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD"}
#: Assumed size of a string value when sizes were not measured (for sizing MGETs): about 1.5
#: times a /vibe message (260 bytes on average in the demo's store), so a page of 1,000 such
#: strings is predicted as the one MGET it costs.
ASSUMED_VALUE_BYTES = 384


@dataclass
class PatternCensus:
    """Keys of one pattern: count, types, an example; items and TTLs when measured."""

    status: str
    entity: str | None
    keys: int = 0
    types: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    with_ttl: int = 0
    items: int = 0
    example: str = ""


@dataclass
class PassCost:
    """Billed commands of one read pass over the entity keys, and the floor: the fewest any tool
    needs for the same reads (one SCAN per page, one MGET per 1,000 strings, one read per other
    key, one HSCAN per 1,000 fields)."""

    commands: int = 0
    floor: int = 0
    strings: int = 0
    others: int = 0

    def add(self, other: PassCost) -> None:
        self.commands += other.commands
        self.floor += other.floor
        self.strings += other.strings
        self.others += other.others


@dataclass
class InventoryResult:
    patterns: dict[str, PatternCensus]
    total_keys: int
    pages: int
    budget: RequestBudget
    sizes_measured: bool = False
    backfill: PassCost = field(default_factory=PassCost)  # a backfill's (and a verify's) read pass
    cleanup: PassCost = field(default_factory=PassCost)  # cleanup's pass: indexes too, WATCH, MULTI/DEL/EXEC
    entity_keys: int = 0  # keys a naive per-key migration reads: every key of an entity family
    candidate_pages: int = 0  # pages holding keys cleanup reads

    @property
    def predicted_backfill(self) -> int:
        """Billed commands a backfill of every entity will spend: its pass and two DBSIZE (before
        it, and after it to tell a store wiped meanwhile)."""
        return self.backfill.commands + 2

    @property
    def naive_requests(self) -> int:
        return self.entity_keys

    def by_status(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for p in self.patterns.values():
            counts[p.status] += p.keys
        return counts


def run_inventory(config: Config, *, sizes: bool = False) -> InventoryResult:
    """Count keys per entity and pattern; predict each pass's billed KV commands. Read-only.
    Costs (1 + 5) SCAN commands per page, 1 HLEN per registry hash, and with `sizes` 2 per key."""
    budget = RequestBudget(cap=config.max_requests, phase="inventory")
    kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
    types = _types(kv, config.scan_count)
    classifier = Classifier(ENTITIES)
    result = InventoryResult({}, 0, 0, budget, sizes_measured=sizes)
    model = _Model(config.scan_count)
    for _, keys in scan_pages(kv, count=config.scan_count):
        result.pages += 1
        classes = [classifier.classify(k) for k in keys]
        page_types = [types.get(k, "none") for k in keys]
        measured = _measure(kv, keys, page_types, classes, sizes=sizes)
        for key, c, rtype, (items, nbytes, pttl) in zip(keys, classes, page_types, measured, strict=True):
            entry = result.patterns.setdefault(c.pattern, PatternCensus(c.status, c.entity.name if c.entity else None,
                                                                        example=key))
            entry.keys += 1
            entry.types[rtype] += 1
            entry.items += items
            entry.bytes += nbytes
            entry.with_ttl += 1 if pttl >= 0 else 0
        entity = [(c.family, t, m) for c, t, m in zip(classes, page_types, measured, strict=True)
                  if c.status == "entity" and c.family is not None and t != "none"]
        result.entity_keys += len(entity)
        result.backfill.add(model.backfill_page([e for e in entity if e[0].read_by_backfill]))
        cleanup = model.cleanup_page(entity)
        result.cleanup.add(cleanup)
        result.candidate_pages += bool(entity)
    result.total_keys = sum(p.keys for p in result.patterns.values())
    return result


def _types(kv: KvClient, count: int) -> dict[str, str]:
    """Every key's type, from one `SCAN … TYPE t` pass per type (1 command per page per type)."""
    out: dict[str, str] = {}
    for rtype in TYPES:
        cursor = 0
        while True:
            cursor_raw, keys = kv.call("SCAN", cursor, "COUNT", count, "TYPE", rtype)
            for raw in keys:
                out[decode_key(raw)] = rtype
            cursor = int(cursor_raw)
            if cursor == 0:
                break
    return out


def _measure(kv: KvClient, keys: Sequence[str], types: Sequence[str], classes: Sequence[Classification], *,
             sizes: bool) -> list[tuple[int, int, int]]:
    """(items, bytes, PTTL) per key: with `sizes`, a size command and a PTTL per key; else only
    an HLEN per registry hash, and -1 for what was not measured."""
    if sizes:
        wanted = [i for i, t in enumerate(types) if t in _SIZE]
        cmds = [c for i in wanted for c in ((_SIZE[types[i]], encode_key(keys[i])), ("PTTL", encode_key(keys[i])))]
        replies = iter(kv.pipeline(cmds))
        got = {i: (int(next(replies)), int(next(replies))) for i in wanted}
        return [(got[i][0] if types[i] != "string" else 1, got[i][0] if types[i] == "string" else 0, got[i][1])
                if i in got else (0, 0, -1) for i in range(len(keys))]
    registries = [i for i, (c, t) in enumerate(zip(classes, types, strict=True))
                  if t == "hash" and c.family is not None and c.family.split_fields]
    lengths = dict(zip(registries, kv.pipeline([("HLEN", encode_key(keys[i])) for i in registries]), strict=True))
    return [(int(lengths[i]) if i in lengths else 0, 0, -1) for i in range(len(keys))]


class _Model:
    """The readers' cost rules (kvmigrate.kv.scanner.read_values), applied to a census."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sizes = ValueSizes()
        self.cleanup_sizes = ValueSizes()

    def backfill_page(self, keys: Sequence[tuple[Family, str, tuple[int, int, int]]]) -> PassCost:
        """SCAN, the MGETs of the page's strings, one read per other key (more for a key of a
        type its family does not expect, or a long list), HSCANs of registry hashes."""
        cost = PassCost(1, 1)
        plain = [(f, t, m) for f, t, m in keys if not (f.split_fields and t == "hash")]
        for f, t, (items, _, _) in keys:
            if f.split_fields and t == "hash":
                n = max(1, math.ceil(items / self.count))
                cost.commands += n
                cost.floor += n
            elif f.split_fields:
                cost.commands += 1  # the HSCAN that finds it is not a hash
        cost.add(self._reads(plain, self.sizes, companions=True))
        return cost

    def cleanup_page(self, keys: Sequence[tuple[Family, str, tuple[int, int, int]]]) -> PassCost:
        """SCAN; with candidates WATCH, their reads (derived indexes and registries whole), PTTL
        where the family can expire, MULTI, DEL, EXEC. The floor: SCAN, reads, one DEL."""
        cost = PassCost(1, 1)
        if not keys:
            return cost
        cost.add(self._reads(keys, self.cleanup_sizes))
        expiring = sum(1 for f, _, _ in keys if f.may_expire)
        cost.commands += 1 + expiring + 3
        cost.floor += expiring + 1
        return cost

    def _reads(self, keys: Sequence[tuple[Family, str, tuple[int, int, int]]], sizes: ValueSizes, *,
               companions: bool = False) -> PassCost:
        cost = PassCost()
        for f, t, (items, _, _) in keys:
            if t == "string" and "string" in f.types:
                cost.strings += 1
                continue
            cost.others += 1
            chunks = max(1, math.ceil(items / LIST_CHUNK)) if t == "list" else 1
            chunks += bool(f.companion) and companions  # its companion key, read with it (backfill, verify)
            cost.floor += chunks
            cost.commands += chunks + _extra(f.types, t)
        # as read_values: a first round of MGETs for families not seen yet, then the rest
        strings = [(f.name, nbytes if nbytes > 0 else ASSUMED_VALUE_BYTES) if t == "string" else (f.name, None)
                   for f, t, (_, nbytes, _) in keys if "string" in f.types]
        names = [name for name, _ in strings]
        first = sizes.first_round(names)
        for j in (j for group in first for j in group):
            _saw(sizes, *strings[j])
        second = sizes.second_round(names, first)
        cost.commands += len(first) + len(second)
        for j in (j for group in second for j in group):
            _saw(sizes, *strings[j])
        cost.floor += math.ceil(cost.strings / sizes.most)
        return cost


def _saw(sizes: ValueSizes, family: str, size: int | None) -> None:
    if size is not None:  # a key of another type: its MGET finds nothing
        sizes.saw(family, size)


def _extra(types: frozenset[str], rtype: str) -> int:
    """Commands beyond the one typed read for a non-string key (see read_values)."""
    others = types - {"string"}
    if len(others) == 1 and next(iter(others)) in TYPED_READS:
        return 0 if rtype in others else 2  # WRONGTYPE on the guess, then TYPE (and the right read)
    return 1  # a TYPE first


__all__ = ["InventoryResult", "PassCost", "PatternCensus", "run_inventory"]


@to_dict.register
def _(r: InventoryResult) -> dict[str, Any]:
    measured = r.sizes_measured
    return {
        "total_keys": r.total_keys,
        "by_status": dict(r.by_status()),
        "patterns": {
            p: {"status": c.status, "entity": c.entity, "keys": c.keys, "types": dict(c.types),
                # sizes and TTLs only with --sizes (two billed commands per key); registry hash lengths always
                "items": c.items if measured or c.items else None, "bytes": c.bytes if measured else None,
                "with_ttl": c.with_ttl if measured else None, "example": c.example}
            for p, c in sorted(r.patterns.items())
        },
        "sizes_measured": measured,
        "scan_pages": r.pages,
        "predicted_backfill_requests": r.predicted_backfill,
        "backfill_floor": r.backfill.floor + 1,
        "naive_requests": r.naive_requests,
        "kv_requests": r.budget.spent,
    }


def inventory(config: Config, *, sizes: bool = False) -> InventoryResult:
    """Census of the keyspace and the predicted cost of each pass. Read-only; 6 billed KV
    commands per 1,000 keys (SCAN and SCAN … TYPE passes), 2 more per key with `sizes`."""
    result = run_inventory(config, sizes=sizes)
    state.log_spend(config, "inventory", result.budget)
    return result


def keys_by_owner(kv: KvClient, *, count: int = 1000) -> dict[str, int]:
    """Every key, counted by what kvmigrate makes of it: the entity that owns it, or its
    status (kept, unknown). Read-only; 1 SCAN per `count` keys."""
    classifier = Classifier(ENTITIES)
    left: dict[str, int] = {}
    for _, keys in scan_pages(kv, count=count):
        for key in keys:
            c = classifier.classify(key)
            name = c.entity.name if c.entity is not None else c.status
            left[name] = left.get(name, 0) + 1
    return dict(sorted(left.items()))
