"""Read the keyspace with as few KV commands as possible. Read-only: never sends a write.

* Keys: one `SCAN cursor COUNT n` per page over the whole keyspace (a per-pattern MATCH scan
  would walk the whole keyspace once per pattern).
* Values: one read-only Lua script per batch returns every key's type and value (1 command per
  batch, whatever the types). Where the server refuses scripting, the fallback is one `MGET`
  for the keys that may be strings plus one pipelined typed read per other key (a `TYPE`
  first only where the family allows several non-string types).
* A big registry hash (a `split_fields` family) is read with `HSCAN … COUNT n`, one record per
  field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from kvmigrate.entities.base import Family
from kvmigrate.kv.client import KvClient
from kvmigrate.records import RawRecord, RawValue

log = logging.getLogger("kvmigrate")

READ_SCRIPT = """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  if t == 'string' then out[i] = {t, redis.call('GET', k)}
  elseif t == 'hash' then out[i] = {t, redis.call('HGETALL', k)}
  elseif t == 'list' then out[i] = {t, redis.call('LRANGE', k, 0, -1)}
  elseif t == 'set' then out[i] = {t, redis.call('SMEMBERS', k)}
  elseif t == 'zset' then out[i] = {t, redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')}
  else out[i] = {t} end
end
return out
"""

TYPED_READS = {
    "string": ("GET",),
    "hash": ("HGETALL",),
    "list": ("LRANGE", 0, -1),
    "set": ("SMEMBERS",),
    "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
}


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as read: its Redis type ("none" when it vanished since SCAN) and raw value."""

    key: str
    redis_type: str
    value: RawValue | None


def decode_key(raw: bytes) -> str:
    """Keys are text; undecodable bytes survive as surrogate escapes (round-trip safe)."""
    return raw.decode("utf-8", "surrogateescape")


def storable_name(name: str) -> tuple[str, str]:
    """(a form of `name` Postgres TEXT can hold, why it had to change or ""). A name that is not
    UTF-8 keeps its bytes as \\xNN escapes; a NUL byte becomes \\x00."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        escaped = encode_key(name).decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
        return escaped, "the name is not valid UTF-8"
    if "\x00" in name:
        return name.replace("\x00", "\\x00"), "the name contains a NUL byte"
    return name, ""


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def server_id(kv: KvClient) -> str | None:
    """The KV server process's run id (INFO server), or None where the server does not say.
    A SCAN cursor is only valid on the process that returned it. Costs 1 command."""
    try:
        info = kv.call("INFO", "server")
    except redis.ResponseError:
        return None
    run_id = info.get("run_id") if isinstance(info, dict) else None
    return str(run_id) if run_id else None


def scan_pages(kv: KvClient, *, cursor: int = 0, count: int = 1000) -> Iterator[tuple[int, list[str]]]:
    """Yield (next_cursor, keys) per SCAN page until the cursor returns to 0. 1 command a page."""
    while True:
        cursor_raw, keys = kv.call("SCAN", cursor, "COUNT", count)
        cursor = int(cursor_raw)
        yield cursor, [decode_key(k) for k in keys]
        if cursor == 0:
            return


def _shape(redis_type: str, raw: object) -> RawValue | None:
    if raw is None:
        return None
    if redis_type == "hash":
        items = list(raw) if isinstance(raw, list) else list(raw.items())  # type: ignore[attr-defined]
        if items and not isinstance(items[0], tuple):
            return dict(zip(items[0::2], items[1::2], strict=True))
        return dict(items)
    if redis_type == "zset":
        flat = list(raw)  # type: ignore[call-overload]
        if flat and isinstance(flat[0], (list, tuple)):
            return [(m, float(s)) for m, s in flat]
        return [(m, float(s)) for m, s in zip(flat[0::2], flat[1::2], strict=True)]
    if redis_type in ("list", "set"):
        return list(raw)  # type: ignore[call-overload]
    return raw  # type: ignore[return-value]


class BatchReader:
    """Reads values for batches of keys; switches to pipelines if scripting is refused."""

    def __init__(self, kv: KvClient, *, use_eval: bool = True) -> None:
        self.kv = kv
        self.use_eval = use_eval
        self.fallback_reason: str | None = None

    def read(self, keys: Sequence[str], families: Sequence[Family]) -> list[KeyValue]:
        """Read keys' types and values. 1 command (EVAL) per batch, else MGET + 1 per key."""
        if not keys:
            return []
        if self.use_eval:
            try:
                return self._read_eval(keys)
            except redis.ResponseError as exc:
                self.use_eval = False
                self.fallback_reason = str(exc).splitlines()[0]
                log.warning("scripting refused (%s): reading with pipelines", self.fallback_reason)
        return self._read_pipeline(keys, families)

    def _read_eval(self, keys: Sequence[str]) -> list[KeyValue]:
        reply = self.kv.eval_ro(READ_SCRIPT, [encode_key(k) for k in keys])
        out = []
        for key, item in zip(keys, reply, strict=True):
            rtype = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
            out.append(KeyValue(key, rtype, _shape(rtype, item[1]) if len(item) > 1 else None))
        return out

    def _read_pipeline(self, keys: Sequence[str], families: Sequence[Family]) -> list[KeyValue]:
        """One MGET for every key whose family may hold a string, then one pipelined typed read
        per other key, sent straight away when its family allows a single other type (TYPE
        first otherwise, or when the server says the key holds another type)."""
        found: dict[str, KeyValue] = {}
        maybe_string = [k for k, f in zip(keys, families, strict=True) if "string" in f.types]
        if maybe_string:
            values = self.kv.call("MGET", *[encode_key(k) for k in maybe_string])
            for key, value in zip(maybe_string, values, strict=True):
                if value is not None:
                    found[key] = KeyValue(key, "string", value)
        guessed: list[tuple[str, str]] = []
        unknown: list[str] = []
        for key, family in zip(keys, families, strict=True):
            if key in found:
                continue
            others = family.types - {"string"} if key in maybe_string else family.types
            if len(others) == 1 and next(iter(others)) in TYPED_READS:
                guessed.append((key, next(iter(others))))
            else:
                unknown.append(key)
        for (key, rtype), value in zip(guessed, self._typed_reads(guessed), strict=True):
            if isinstance(value, Exception):  # WRONGTYPE: another type than the family's
                unknown.append(key)
            else:  # Redis keeps no empty container: an empty reply means the key is gone
                found[key] = KeyValue(key, rtype, _shape(rtype, value)) if value else KeyValue(key, "none", None)
        types = self.kv.pipeline([("TYPE", encode_key(k)) for k in unknown])
        typed = [(k, t.decode() if isinstance(t, bytes) else str(t)) for k, t in zip(unknown, types, strict=True)]
        readable = [(k, t) for k, t in typed if t in TYPED_READS]
        for (key, rtype), value in zip(readable, self._typed_reads(readable), strict=True):
            if isinstance(value, Exception):  # changed type between TYPE and read: treat as gone
                found[key] = KeyValue(key, "none", None)
            else:
                found[key] = KeyValue(key, rtype, _shape(rtype, value))
        for key, rtype in typed:
            found.setdefault(key, KeyValue(key, rtype if rtype not in TYPED_READS else "none", None))
        return [found[k] for k in keys]

    def _typed_reads(self, items: Sequence[tuple[str, str]]) -> list[Any]:
        """One pipelined read per (key, type). Costs len(items) commands."""
        return self.kv.pipeline([(TYPED_READS[t][0], encode_key(k), *TYPED_READS[t][1:]) for k, t in items])


def hscan_records(kv: KvClient, key: str, family: Family, *, count: int = 1000) -> Iterator[RawRecord]:
    """Yield one record per field of a big hash. `HSCAN … COUNT n`: about 1 command per n fields."""
    cursor = 0
    while True:
        cursor_raw, flat = kv.call("HSCAN", encode_key(key), cursor, "COUNT", count)
        cursor = int(cursor_raw)
        pairs = flat.items() if isinstance(flat, dict) else zip(flat[0::2], flat[1::2], strict=True)
        for field, value in pairs:
            yield RawRecord(key, "hash", value, decode_key(field), family.name)
        if cursor == 0:
            return


def key_type(kv: KvClient, key: str) -> str:
    """TYPE of one key. 1 command."""
    t = kv.call("TYPE", encode_key(key))
    return t.decode() if isinstance(t, bytes) else str(t)
