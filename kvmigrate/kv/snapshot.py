"""Read keys whole for the archive: type, value in server order, PTTL and a server-side digest.

One read-only Lua script per batch (EVAL_RO) returns, for each key, its type, its parts (hash
and sorted set flattened, scores as the server prints them), its PTTL and the sha1 of
`<type>\n` followed by `<length>:<bytes>` for each part. The compare-and-delete script in
`kvmigrate.cleanup` computes the same digest from the same Lua library, so a key is deleted only
while its value is exactly the one archived. Without scripting, a pipeline reads the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from kvmigrate.kv.client import KvClient
from kvmigrate.kv.scanner import encode_key
from kvmigrate.records import RawValue

# Shared by the read and the compare-and-delete scripts: a key's parts in server order, and
# the digest of `<type>\n` followed by `<length>:<bytes>` for each part (sha1, server side).
LUA_LIB = """
local function parts_of(t, k)
  if t == 'string' then return {redis.call('GET', k)}
  elseif t == 'hash' then return redis.call('HGETALL', k)
  elseif t == 'list' then return redis.call('LRANGE', k, 0, -1)
  elseif t == 'set' then return redis.call('SMEMBERS', k)
  elseif t == 'zset' then return redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  end
  return nil
end
local function digest(t, parts)
  local buf = {t, '\\n'}
  for i = 1, #parts do buf[#buf + 1] = #parts[i] .. ':' .. parts[i] end
  return redis.sha1hex(table.concat(buf))
end
"""
READ_SCRIPT = LUA_LIB + """
local out = {}
for i, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k)['ok']
  local parts = parts_of(t, k)
  if parts then out[i] = {t, parts, redis.call('PTTL', k), digest(t, parts)} else out[i] = {t} end
end
return out
"""
_READS: dict[str, tuple[Any, ...]] = {
    "string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", 0, -1), "set": ("SMEMBERS",),
    "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
}



@dataclass(frozen=True, slots=True)
class Snapshot:
    """A key as read: type ("none" when absent, "?" when it changed type while read), its parts
    in server order (hash/zset flattened; scores as the server prints them), PTTL, digest."""

    key: str
    rtype: str
    parts: tuple[bytes, ...] = ()
    pttl: int | None = None
    digest: str | None = None

    def raw_value(self) -> RawValue:
        """The value in the shape the scanner gives transformers (what the ledger digests)."""
        return raw_value(self.rtype, self.parts)


def raw_value(rtype: str, parts: Sequence[bytes]) -> RawValue:
    if rtype == "string":
        return parts[0]
    if rtype == "hash":
        return dict(zip(parts[0::2], parts[1::2], strict=True))
    if rtype == "zset":
        return [(m, float(s)) for m, s in zip(parts[0::2], parts[1::2], strict=True)]
    return list(parts)


def server_digest(rtype: str, parts: Iterable[bytes]) -> str:
    """The same digest the Lua scripts compute (used when scripting is refused)."""
    h = hashlib.sha1(rtype.encode() + b"\n", usedforsecurity=False)
    for part in parts:
        h.update(b"%d:" % len(part))
        h.update(part)
    return h.hexdigest()


def canonical(rtype: str, parts: Sequence[bytes]) -> tuple[object, ...]:
    """A value in a form where equal values compare equal (hash and set order ignored)."""
    if rtype == "hash":
        return (rtype, tuple(sorted(zip(parts[0::2], parts[1::2], strict=True))))
    if rtype == "set":
        return (rtype, tuple(sorted(parts)))
    if rtype == "zset":
        return (rtype, tuple(sorted((float(s), m) for m, s in zip(parts[0::2], parts[1::2], strict=True))))
    return (rtype, tuple(parts))


def raw_replies(kv: KvClient) -> KvClient:
    """Make this client keep HGETALL/SMEMBERS/ZRANGE replies in server order (no dict/set
    conversion by the client library), as the Lua scripts see them."""
    for command in ("HGETALL", "SMEMBERS", "ZRANGE"):
        kv.redis.set_response_callback(command, lambda reply, **_: reply)
    return kv


class SnapshotReader:
    """Reads keys with type, value, PTTL and digest: 1 EVAL per batch, or, where scripting is
    refused, 1 TYPE per key plus 2 commands per existing key in two pipelines. Read-only."""

    def __init__(self, kv: KvClient, *, use_eval: bool = True) -> None:
        self.kv = raw_replies(kv)
        self.use_eval = use_eval
        self.fallback_reason: str | None = None

    def read(self, keys: Sequence[str]) -> list[Snapshot]:
        if not keys:
            return []
        if self.use_eval:
            try:
                reply = self.kv.eval_ro(READ_SCRIPT, [encode_key(k) for k in keys])
                return [_from_script(k, item) for k, item in zip(keys, reply, strict=True)]
            except redis.ResponseError as exc:
                self.use_eval = False
                self.fallback_reason = str(exc).splitlines()[0]
        return self.read_pipelined(keys)

    def read_pipelined(self, keys: Sequence[str]) -> list[Snapshot]:
        types = [_text(t) for t in self.kv.pipeline([("TYPE", encode_key(k)) for k in keys])]
        readable = [(k, t) for k, t in zip(keys, types, strict=True) if t in _READS]
        cmds: list[tuple[Any, ...]] = []
        for key, rtype in readable:
            verb, *args = _READS[rtype]
            cmds += [(verb, encode_key(key), *args), ("PTTL", encode_key(key))]
        replies = iter(self.kv.pipeline(cmds))
        found: dict[str, Snapshot] = {}
        for key, rtype in readable:
            value, pttl = next(replies), next(replies)
            if isinstance(value, Exception) or value is None:  # changed type or vanished meanwhile
                found[key] = Snapshot(key, "?")
                continue
            parts = _flat(rtype, value)
            found[key] = Snapshot(key, rtype, parts, _ttl(pttl), server_digest(rtype, parts))
        return [found.get(k) or Snapshot(k, "?" if t in _READS else t) for k, t in zip(keys, types, strict=True)]


def _flat(rtype: str, reply: Any) -> tuple[bytes, ...]:
    """A pipelined reply as the scripts see it: RESP3 maps and score pairs flattened, scores as
    text (a float from RESP3 is printed as its shortest repr, "inf"/"-inf", no trailing ".0")."""
    if rtype == "string":
        return (reply,)
    if isinstance(reply, dict):
        return tuple(p for item in reply.items() for p in item)
    items = list(reply)
    if items and isinstance(items[0], (list, tuple)):
        return tuple(p for m, s in items for p in (m, _score_text(s)))
    return tuple(items)


def _score_text(score: object) -> bytes:
    if isinstance(score, bytes):
        return score
    text = repr(float(score))  # type: ignore[arg-type]
    return (text[:-2] if text.endswith(".0") else text).encode()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ttl(pttl: object) -> int | None:
    return int(pttl) if isinstance(pttl, int) and pttl >= 0 else None


def _from_script(key: str, item: Sequence[Any]) -> Snapshot:
    rtype = _text(item[0])
    if len(item) < 4:
        return Snapshot(key, rtype)
    return Snapshot(key, rtype, tuple(item[1]), _ttl(item[2]), _text(item[3]))


# --- the line format ---------------------------------------------------------------------
