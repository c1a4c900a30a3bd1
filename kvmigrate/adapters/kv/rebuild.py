"""The KV commands that write one archived key back whole, and read it back to compare. Pure:
nothing here sends a command (`kvmigrate.phases.restore` sends them and counts them).

* **Whole or not at all.** A string that fits in one request is one `SET key value NX [PXAT t]`.
  Anything else is built under a temporary key, `kvmigrate:restore:<sha1 of the key>`, with its
  TTL set there (`PEXPIREAT`, an absolute time: resending it changes nothing), then moved onto the
  real key by `RENAMENX` (or `RENAME` when replacing), which the server runs atomically and only
  while the real key is absent. A run killed at any point leaves either the whole key or no key,
  plus at most a temporary key that the next run deletes (its name says whose it is; the
  classifier keeps every `kvmigrate:*` key out of the migration).
* **Safe to send twice.** Every round trip here may be resent after a lost reply: a `SET … NX`
  or a `RENAMENX` that already ran finds the key in place, and a resent build starts with
  `DEL` of the temporary key, so nothing is appended twice. The first send may leave that `DEL`
  out when an `EXISTS` just proved that neither key is there.
* **Under 1 MB.** Each round trip carries at most `REQUEST_BYTES` of arguments; a bigger value is
  built in several round trips (`SET` + `APPEND`, or several `RPUSH`/`HSET`/`SADD`/`ZADD`), and is
  read back in pages sized by its archived bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvmigrate.adapters.kv.scanner import encode_key
from kvmigrate.model.records import ArchivedKey

Command = tuple[Any, ...]

#: Argument bytes per round trip (request or reply); the protocol adds about 16 bytes an argument.
REQUEST_BYTES = 900_000
ARG_OVERHEAD = 16
TEMP_PREFIX = b"kvmigrate:restore:"

_BUILD = {"list": "RPUSH", "set": "SADD", "hash": "HSET", "zset": "ZADD"}
LENGTH = {"string": "STRLEN", "list": "LLEN", "set": "SCARD", "hash": "HLEN", "zset": "ZCARD"}


def temp_key(key: str) -> bytes:
    """The temporary key a restore builds `key` under (one per key, so a rerun finds its own)."""
    return TEMP_PREFIX + hashlib.sha1(encode_key(key), usedforsecurity=False).hexdigest().encode()


def size(cmd: Sequence[Any]) -> int:
    """About how many bytes `cmd` takes on the wire."""
    return sum(len(a) if isinstance(a, (bytes, str)) else 20 for a in cmd) + ARG_OVERHEAD * len(cmd)


def value_bytes(item: ArchivedKey) -> int:
    return sum(len(p) for p in item.parts) + ARG_OVERHEAD * len(item.parts)


def one_shot(item: ArchivedKey) -> bool:
    """True for a string small enough to be written by one `SET … NX` (no temporary key)."""
    return item.rtype == "string" and value_bytes(item) + len(item.key) < REQUEST_BYTES


def _groups(item: ArchivedKey) -> list[tuple[bytes, ...]]:
    """The value's arguments in groups of whole elements (pairs for hash/zset) under REQUEST_BYTES."""
    p = item.parts
    if item.rtype == "string":
        step = REQUEST_BYTES
        return [(p[0][i:i + step],) for i in range(0, max(len(p[0]), 1), step)]
    if item.rtype == "hash":
        units: list[tuple[bytes, ...]] = [(p[i], p[i + 1]) for i in range(0, len(p), 2)]
    elif item.rtype == "zset":
        units = [(p[i + 1], p[i]) for i in range(0, len(p), 2)]  # ZADD takes score, member
    else:
        units = [(x,) for x in p]
    out: list[tuple[bytes, ...]] = []
    group: list[bytes] = []
    used = 0
    for unit in units:
        n = sum(len(x) + ARG_OVERHEAD for x in unit)
        if group and used + n > REQUEST_BYTES:
            out.append(tuple(group))
            group, used = [], 0
        group.extend(unit)
        used += n
    if group:
        out.append(tuple(group))
    return out


def build_trips(item: ArchivedKey, *, fresh: bool, replace: bool = False) -> list[list[Command]]:
    """The round trips that write `item` whole: one for a key under REQUEST_BYTES, more for a
    bigger one. `fresh`: an EXISTS just proved the real and temporary keys absent (the first
    `DEL` of the temporary key is left out). `replace`: overwrite the real key (`--force`)."""
    key, exp = encode_key(item.key), item.expires_at_ms
    if one_shot(item):
        ttl: tuple[Any, ...] = () if exp is None else ("PXAT", exp)
        return [[("SET", key, item.parts[0], *ttl, *(() if replace else ("NX",)))]]
    tmp = temp_key(item.key)
    if item.rtype == "string":
        parts = _groups(item)
        cmds: list[Command] = [("SET", tmp, parts[0][0])] + [("APPEND", tmp, g[0]) for g in parts[1:]]
    else:
        cmds = [(_BUILD[item.rtype], tmp, *g) for g in _groups(item)]
    if not fresh and item.rtype != "string":  # SET already replaces a leftover temporary string
        cmds.insert(0, ("DEL", tmp))
    tail: list[Command] = [] if exp is None else [("PEXPIREAT", tmp, exp)]
    tail.append(("RENAME" if replace else "RENAMENX", tmp, key))
    trips = _pack(cmds + tail)
    if len(trips) == 1:
        return trips
    # a big key: the rename goes alone, after every part was acknowledged without an error
    return _pack(cmds) + [tail]


def _pack(cmds: Sequence[Command]) -> list[list[Command]]:
    trips: list[list[Command]] = [[]]
    used = 0
    for cmd in cmds:
        n = size(cmd)
        if trips[-1] and used + n > REQUEST_BYTES:
            trips.append([])
            used = 0
        trips[-1].append(cmd)
        used += n
    return trips


def pack(batches: Sequence[Sequence[Command]]) -> Iterator[list[Command]]:
    """Group whole command lists (each a key's single round trip) into round trips under
    REQUEST_BYTES; each list stays in one round trip."""
    trip: list[Command] = []
    used = 0
    for cmds in batches:
        n = sum(size(c) for c in cmds)
        if trip and used + n > REQUEST_BYTES:
            yield trip
            trip, used = [], 0
        trip.extend(cmds)
        used += n
    if trip:
        yield trip


# --- reading back ------------------------------------------------------------------------

def length_command(item: ArchivedKey) -> Command:
    """STRLEN/LLEN/SCARD/HLEN/ZCARD of the real key: 0 when absent, an error for another type."""
    return (LENGTH[item.rtype], encode_key(item.key))


def archived_length(item: ArchivedKey) -> int:
    if item.rtype == "string":
        return len(item.parts[0])
    return len(item.parts) // (2 if item.rtype in ("hash", "zset") else 1)


@dataclass(frozen=True)
class Page:
    """One read command and the slice of the archived value its reply must equal."""

    cmd: Command
    start: int
    stop: int


def read_pages(item: ArchivedKey) -> list[Page]:
    """Reads that check the real key against the archive in pages of about REQUEST_BYTES of the
    archived value: GETRANGE, LRANGE, ZRANGE … WITHSCORES, HMGET of the archived fields and
    SMISMEMBER of the archived members (with the length already equal, all present = equal)."""
    key = encode_key(item.key)
    if item.rtype == "string":
        n = len(item.parts[0])
        return [Page(("GETRANGE", key, i, min(i + REQUEST_BYTES, n) - 1), i, min(i + REQUEST_BYTES, n))
                for i in range(0, n, REQUEST_BYTES)] or [Page(("GET", key), 0, 0)]
    width = 2 if item.rtype in ("hash", "zset") else 1
    pages: list[Page] = []
    start = used = 0
    units = len(item.parts) // width
    for u in range(units):
        used += sum(len(x) + ARG_OVERHEAD for x in item.parts[u * width:(u + 1) * width])
        if used >= REQUEST_BYTES or u == units - 1:
            pages.append(_page(item, key, start, u + 1))
            start, used = u + 1, 0
    return pages


def _page(item: ArchivedKey, key: bytes, start: int, stop: int) -> Page:
    if item.rtype == "list":
        return Page(("LRANGE", key, start, stop - 1), start, stop)
    if item.rtype == "zset":
        return Page(("ZRANGE", key, start, stop - 1, "WITHSCORES"), start, stop)
    if item.rtype == "hash":
        return Page(("HMGET", key, *item.parts[2 * start:2 * stop:2]), start, stop)
    return Page(("SMISMEMBER", key, *item.parts[start:stop]), start, stop)


def page_matches(item: ArchivedKey, page: Page, reply: Any) -> bool:
    """Whether one page's reply equals the archived value's slice (scores compared as numbers)."""
    if isinstance(reply, Exception):
        return False
    p = item.parts
    if item.rtype == "string":
        return bytes(reply or b"") == p[0][page.start:page.stop]
    got = list(reply)
    if item.rtype == "list":
        return got == list(p[page.start:page.stop])
    if item.rtype == "hash":
        return got == list(p[2 * page.start + 1:2 * page.stop:2])
    if item.rtype == "set":
        return all(int(x) == 1 for x in got) and len(got) == page.stop - page.start
    flat = [x for pair in got for x in pair] if got and isinstance(got[0], (list, tuple)) else got
    want = p[2 * page.start:2 * page.stop]
    if len(flat) != len(want):
        return False
    members_ok = flat[0::2] == list(want[0::2])
    return members_ok and all(_score(a) == _score(b) for a, b in zip(flat[1::2], want[1::2], strict=True))


def _score(x: Any) -> float:
    return float(x.decode() if isinstance(x, bytes) else x)
