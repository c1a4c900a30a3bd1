"""`kvmigrate inventory`: a census of the keyspace and what a backfill would cost.

One SCAN pass plus one read-only script per page that returns each key's type, size and TTL
(never its value): about 2 commands per 1,000 keys. Without scripting, one TYPE per key (sizes
and TTLs are then not measured). Read-only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import redis

from kvmigrate.budget import RequestBudget
from kvmigrate.config import Config
from kvmigrate.connections import connect_kv
from kvmigrate.entities import ENTITIES
from kvmigrate.kv.classify import Classifier
from kvmigrate.kv.client import KvClient
from kvmigrate.kv.scanner import TYPED_READS, encode_key, scan_pages

CENSUS_SCRIPT = """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local n = 0
  if t == 'string' then n = redis.call('STRLEN', k)
  elseif t == 'hash' then n = redis.call('HLEN', k)
  elseif t == 'list' then n = redis.call('LLEN', k)
  elseif t == 'set' then n = redis.call('SCARD', k)
  elseif t == 'zset' then n = redis.call('ZCARD', k) end
  local ok, mem = pcall(redis.call, 'MEMORY', 'USAGE', k, 'SAMPLES', '0')
  if not ok then mem = -1 end
  out[i] = {t, n, mem or -1, redis.call('PTTL', k)}
end
return out
"""

@dataclass
class PatternCensus:
    """Keys of one pattern: count, types, bytes (server memory, when it tells), TTLs, an example."""

    status: str
    entity: str | None
    keys: int = 0
    types: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    with_ttl: int = 0
    items: int = 0
    example: str = ""


@dataclass
class InventoryResult:
    patterns: dict[str, PatternCensus]
    total_keys: int
    pages: int
    predicted_backfill: int
    predicted_backfill_pipeline: int
    naive_requests: int
    budget: RequestBudget
    entity_pages: int = 0  # SCAN pages holding at least one entity key (cleanup reads and deletes these)
    plain_pages: int = 0  # SCAN pages holding entity keys read in one batch (1 script each)
    hscan_calls: int = 0  # HSCAN calls to read the big registry hashes field by field
    pipelined_reads: int = 0  # commands to read the entity keys without scripting (MGETs included)
    used_eval: bool = True

    def by_status(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for p in self.patterns.values():
            counts[p.status] += p.keys
        return counts


def run_inventory(config: Config) -> InventoryResult:
    """Count keys per entity and pattern; predict the backfill's KV cost. Read-only."""
    budget = RequestBudget(cap=config.max_requests, phase="inventory")
    kv = connect_kv(config.require_kv(), budget, retries=config.connect_retries, read_only=True)
    classifier = Classifier(ENTITIES)
    patterns: dict[str, PatternCensus] = {}
    pages = entity_pages = plain_entity_pages = 0
    hscan_calls = pipeline_cost = naive = 0
    use_eval = config.use_eval
    for _, keys in scan_pages(kv, count=config.scan_count):
        pages += 1
        classes = [classifier.classify(key) for key in keys]
        census, use_eval = _census(kv, keys, use_eval, registries={
            k for k, c in zip(keys, classes, strict=True) if c.family is not None and c.family.split_fields})
        page_plain = page_entity = page_mget = False
        for key, c, (rtype, items, mem, pttl) in zip(keys, classes, census, strict=True):
            entry = patterns.setdefault(c.pattern, PatternCensus(c.status, c.entity.name if c.entity else None, example=key))
            entry.keys += 1
            entry.types[rtype] += 1
            entry.items += items
            entry.bytes += max(mem, 0)
            entry.with_ttl += 1 if pttl >= 0 else 0
            if c.status != "entity" or rtype == "none" or c.family is None:
                continue
            naive += 1
            page_entity = True
            if c.family.split_fields and rtype == "hash":
                hscan_calls += max(1, math.ceil(items / config.scan_count))
            else:
                hscan_calls += c.family.split_fields  # the HSCAN that finds it is not a hash
                page_plain = True
                page_mget |= "string" in c.family.types
                pipeline_cost += pipelined_reads(c.family.types, rtype)
        plain_entity_pages += page_plain
        pipeline_cost += page_mget
        entity_pages += page_entity
    fixed = 4  # backfill's PING (connect), DBSIZE (progress total) and 2 INFO (server restarts)
    scripted = fixed + pages + plain_entity_pages + hscan_calls
    pipelined = fixed + pages + pipeline_cost + hscan_calls
    return InventoryResult(
        patterns=patterns,
        total_keys=sum(p.keys for p in patterns.values()),
        pages=pages,
        predicted_backfill=scripted if use_eval else pipelined,
        predicted_backfill_pipeline=pipelined,
        naive_requests=naive,
        budget=budget,
        entity_pages=entity_pages,
        plain_pages=plain_entity_pages,
        hscan_calls=hscan_calls,
        pipelined_reads=pipeline_cost,
        used_eval=use_eval,
    )


def pipelined_reads(types: frozenset[str], rtype: str) -> int:
    """Commands the pipelined reader (no scripting) spends on one key of a family holding
    `types`, found to be `rtype`, beyond its page's one MGET (see BatchReader._read_pipeline)."""
    if "string" in types and rtype == "string":
        return 0  # in the page's MGET
    others = types - {"string"}
    if len(others) == 1 and next(iter(others)) in TYPED_READS:
        return 1 if rtype in others else 3  # the typed read; else WRONGTYPE, TYPE, the right read
    return 2 if rtype in TYPED_READS else 1  # TYPE, then the read


def _census(kv: KvClient, keys: list[str], use_eval: bool, *,
            registries: set[str]) -> tuple[list[tuple[str, int, int, int]], bool]:
    """(type, items, bytes, PTTL) per key. Scripted: 1 command for the page. Without scripting:
    1 TYPE per key, plus 1 HLEN per registry hash (its HSCANs are predicted from it); sizes and
    TTLs are not measured (bytes and PTTL come back as -1)."""
    if not keys:
        return [], use_eval
    if use_eval:
        try:
            reply = kv.eval_ro(CENSUS_SCRIPT, [encode_key(k) for k in keys])
            return [(_s(t), int(n), int(m), int(p)) for t, n, m, p in reply], True
        except redis.ResponseError:
            use_eval = False
    types = [_s(t) for t in kv.pipeline([("TYPE", encode_key(k)) for k in keys])]
    big = [k for k, t in zip(keys, types, strict=True) if k in registries and t == "hash"]
    lengths = kv.pipeline([("HLEN", encode_key(k)) for k in big])  # a key changed since TYPE: an error here
    items = {k: 0 if isinstance(n, Exception) else int(n) for k, n in zip(big, lengths, strict=True)}
    return [(t, items.get(k, 0), -1, -1) for k, t in zip(keys, types, strict=True)], False


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
