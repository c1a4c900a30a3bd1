"""`kvmigrate inventory`: a census of the keyspace and what a backfill would cost.

One SCAN pass plus one read-only script per page that returns each key's type, size and TTL
(never its value): about 2 commands per 1,000 keys. Read-only.
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
from kvmigrate.kv.scanner import encode_key, scan_pages

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

_CENSUS_PIPE = {"string": "STRLEN", "hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD"}


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
        census, use_eval = _census(kv, keys, use_eval)
        page_plain = page_entity = False
        string_keys = 0
        for key, (rtype, items, mem, pttl) in zip(keys, census, strict=True):
            c = classifier.classify(key)
            entry = patterns.setdefault(c.pattern, PatternCensus(c.status, c.entity.name if c.entity else None, example=key))
            entry.keys += 1
            entry.types[rtype] += 1
            entry.items += items
            entry.bytes += max(mem, 0)
            entry.with_ttl += 1 if pttl >= 0 else 0
            if c.status != "entity" or rtype == "none":
                continue
            naive += 1
            page_entity = True
            if c.family is not None and c.family.split_fields:
                hscan_calls += max(1, math.ceil(items / config.scan_count))
            else:
                page_plain = True
                string_keys += rtype == "string"
                pipeline_cost += 0 if rtype == "string" and c.family and c.family.types == {"string"} else 2
        plain_entity_pages += page_plain
        pipeline_cost += 1 if string_keys else 0
        entity_pages += page_entity
    fixed = 4  # backfill's PING (connect), DBSIZE (progress total) and 2 INFO (server restarts)
    return InventoryResult(
        patterns=patterns,
        total_keys=sum(p.keys for p in patterns.values()),
        pages=pages,
        predicted_backfill=fixed + pages + plain_entity_pages + hscan_calls,
        predicted_backfill_pipeline=fixed + pages + pipeline_cost + hscan_calls,
        naive_requests=naive,
        budget=budget,
        entity_pages=entity_pages,
        plain_pages=plain_entity_pages,
        hscan_calls=hscan_calls,
        used_eval=use_eval,
    )


def _census(kv: KvClient, keys: list[str], use_eval: bool) -> tuple[list[tuple[str, int, int, int]], bool]:
    if not keys:
        return [], use_eval
    if use_eval:
        try:
            reply = kv.eval_ro(CENSUS_SCRIPT, [encode_key(k) for k in keys])
            return [(_s(t), int(n), int(m), int(p)) for t, n, m, p in reply], True
        except redis.ResponseError:
            use_eval = False
    types = [_s(t) for t in kv.pipeline([("TYPE", encode_key(k)) for k in keys])]
    sizes = kv.pipeline([(_CENSUS_PIPE.get(t, "EXISTS"), encode_key(k)) for k, t in zip(keys, types, strict=True)])
    ttls = kv.pipeline([("PTTL", encode_key(k)) for k in keys])
    return [(t, int(n) if not isinstance(n, Exception) else 0, -1, int(p))
            for t, n, p in zip(types, sizes, ttls, strict=True)], False


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
