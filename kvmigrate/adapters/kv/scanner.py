"""Read the keyspace with as few billed KV commands as the data allows. Read-only.

* Keys: one `SCAN cursor COUNT n` per page over the whole keyspace (a per-pattern MATCH scan
  would walk the whole keyspace once per pattern).
* Strings: one `MGET` per batch, sized so its reply stays under `REPLY_LIMIT` bytes. MGET
  answers nil for a key of another type, so a family that may hold strings and something else
  learns which keys are strings from the MGET itself.
* Other types: one typed read per key (HGETALL, LRANGE, SMEMBERS, ZRANGE), pipelined; a list is
  read in ranges of `LIST_CHUNK` items, so only a long list costs more than one command. A
  `TYPE` is sent only where the server said WRONGTYPE (a key holding a type its family does
  not expect) or the family allows several non-string types.
* A big registry hash (a `split_fields` family) is read with `HSCAN … COUNT n`.
* No Lua: Upstash bills every command a script runs, and a script holds its global lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.entities.base import Family
from kvmigrate.model.records import RawRecord, RawValue

log = logging.getLogger("kvmigrate")

TYPED_READS = {
    "string": ("GET",),
    "hash": ("HGETALL",),
    "list": ("LRANGE", 0, -1),
    "set": ("SMEMBERS",),
    "zset": ("ZRANGE", 0, -1, "WITHSCORES"),
}


@dataclass(slots=True, unsafe_hash=True)  # not frozen: see kvmigrate.model.records
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
    if name.isascii() and "\x00" not in name:  # most names: no encoding to try
        return name, ""
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


#: Every request and reply stays under Vercel KV's 1 MB limit (Upstash's is 10 MB): an MGET asks
#: for as many keys as fit this many bytes at 1.5 times the mean value size seen in its family.
REPLY_LIMIT = 768 * 1024
#: Keys in the first MGET of a family whose values have not been seen yet.
FIRST_MGET = 100
#: Keys per MGET at most. Above the scan page size: `SCAN … COUNT 1000` returns whole hash
#: buckets, up to a few more than 1,000 keys, and a page of small values must still be one MGET.
MGET_MOST = 2000
#: Items per LRANGE: a longer list is read in several ranges.
LIST_CHUNK = 1000

Send = Callable[[Sequence[Sequence[Any]]], list[Any]]


class ValueSizes:
    """The mean string value size seen per family, to size MGETs by bytes.

    A page is read in two rounds when it holds keys of a family whose values have not been seen
    yet: first one MGET of `FIRST_MGET` keys per such family (`first_round`), then the rest,
    sized by what that round saw. A page of small values costs two MGETs, not one per 100 keys."""

    #: Whether to learn sizes in a first round (a subclass whose sizes are fixed does not).
    learns = True

    def __init__(self, limit: int = REPLY_LIMIT, most: int = MGET_MOST) -> None:
        self.limit, self.most = limit, most
        self.seen: dict[str, tuple[int, int]] = {}  # family -> (values, bytes)
        self.tried: set[str] = set()  # families a first round has asked for

    def first_round(self, families: Sequence[str]) -> list[list[int]]:
        """MGETs to send (and `saw`) before packing the rest of positions 0..n-1: the first
        `FIRST_MGET` positions of each family not seen nor asked for yet, packed as any (so
        about 100 a MGET). A family whose keys hold another type (MGET finds nothing) is asked
        once, then packed with the rest at the cautious size. None when packing them all at
        once takes two MGETs or fewer: a first round would save nothing."""
        if not self.learns:
            return []
        taken: dict[str, int] = {}
        learn: list[int] = []
        for i, fam in enumerate(families):
            if fam not in self.seen and fam not in self.tried and taken.get(fam, 0) < FIRST_MGET:
                taken[fam] = taken.get(fam, 0) + 1
                learn.append(i)
        if not learn or len(self.pack(families)) <= 2:
            return []
        self.tried.update(taken)
        return self._packed(families, learn)

    def second_round(self, families: Sequence[str], first: Sequence[Sequence[int]]) -> list[list[int]]:
        """MGETs of the positions `first` did not ask for, packed by the sizes seen since."""
        if not first:  # nothing asked yet (most pages): every position
            return self.pack(families)
        asked = {i for group in first for i in group}
        return self._packed(families, [i for i in range(len(families)) if i not in asked])

    def _packed(self, families: Sequence[str], positions: Sequence[int]) -> list[list[int]]:
        return [[positions[j] for j in group] for group in self.pack([families[i] for i in positions])]

    def expect(self, family: str) -> float:
        """The bytes to reserve in a reply for one value of this family."""
        if family not in self.seen:
            return self.limit / FIRST_MGET
        n, total = self.seen[family]
        return 1.5 * total / n + 16

    def pack(self, families: Sequence[str]) -> list[list[int]]:
        """Split positions 0..n-1 (keys of these families, in order) into MGETs of at most
        `most` keys whose expected replies fit `limit` bytes."""
        out: list[list[int]] = []
        current: list[int] = []
        room = 0.0
        needs: dict[str, float] = {}  # a page holds a few families: each one's expectation once
        for i, fam in enumerate(families):
            need = needs.get(fam)
            if need is None:
                need = needs[fam] = self.expect(fam)
            if current and (len(current) >= self.most or room + need > self.limit):
                out.append(current)
                current, room = [], 0.0
            current.append(i)
            room += need
        if current:
            out.append(current)
        return out

    def saw(self, family: str, size: int, values: int = 1) -> None:
        """Note `values` values of `family` read, of `size` bytes in all."""
        n, total = self.seen.get(family, (0, 0))
        self.seen[family] = (n + values, total + size)


def read_values(send: Send, keys: Sequence[str], families: Sequence[Family],
                sizes: ValueSizes) -> list[tuple[str, Any]]:
    """(Redis type, raw reply) for each key, in order; ("none", None) for a key that is gone.

    Costs one MGET per batch of the keys whose family may hold strings (sized by `sizes`), one
    typed read per other key (one more per `LIST_CHUNK` items of a long list), and, only for a
    key of an unexpected type, a TYPE and the right read. Read-only. Replies are as the server
    sent them (hashes and sorted sets flat, in server order)."""
    found: dict[int, tuple[str, Any]] = {}
    maybe_string = [i for i, f in enumerate(families) if "string" in f.types]
    names = [families[i].name for i in maybe_string]
    first = sizes.first_round(names)
    if first:
        _mget(send, keys, families, sizes, [[maybe_string[j] for j in group] for group in first], found)
    second = sizes.second_round(names, first)  # sized by what the first round saw
    if second:
        _mget(send, keys, families, sizes, [[maybe_string[j] for j in group] for group in second], found)
    guessed: list[tuple[int, str]] = []
    unknown: list[int] = []
    for i, family in enumerate(families):
        if i in found:
            continue
        others = family.types - {"string"}
        if len(others) == 1 and next(iter(others)) in TYPED_READS:
            guessed.append((i, next(iter(others))))
        else:  # several other types, or a string family whose MGET said nil (gone, or another type)
            unknown.append(i)
    for (i, rtype), value in zip(guessed, _typed_reads(send, [(keys[i], t) for i, t in guessed]), strict=True):
        if isinstance(value, Exception):  # WRONGTYPE: another type than the family's
            unknown.append(i)
        else:  # Redis keeps no empty container: an empty reply means the key is gone
            found[i] = (rtype, value) if value else ("none", None)
    if unknown:
        types = send([("TYPE", encode_key(keys[i])) for i in unknown])
        typed = [(i, _text(t)) for i, t in zip(unknown, types, strict=True)]
        readable = [(i, t) for i, t in typed if t in TYPED_READS]
        values = _typed_reads(send, [(keys[i], t) for i, t in readable])
        for (i, rtype), value in zip(readable, values, strict=True):
            # changed type between TYPE and the read, or emptied meanwhile: treat as gone
            gone = isinstance(value, Exception) or value is None or (rtype != "string" and not value)
            found[i] = ("none", None) if gone else (rtype, value)
        for i, rtype in typed:
            found.setdefault(i, (rtype if rtype not in TYPED_READS else "none", None))
    return [found.get(i, ("none", None)) for i in range(len(keys))]


def _mget(send: Send, keys: Sequence[str], families: Sequence[Family], sizes: ValueSizes,
          mgets: Sequence[Sequence[int]], found: dict[int, tuple[str, Any]]) -> None:
    """Send these MGETs (positions in `keys`) in one pipeline; note each value found, and its size."""
    replies = send([("MGET", *[encode_key(keys[i]) for i in idx]) for idx in mgets])
    for idx, values in zip(mgets, replies, strict=True):
        if isinstance(values, Exception):
            raise values
        seen: dict[str, list[int]] = {}  # family -> [values, bytes] of this MGET
        for i, value in zip(idx, values, strict=True):
            if value is not None:
                found[i] = ("string", value)
                tally = seen.setdefault(families[i].name, [0, 0])
                tally[0] += 1
                tally[1] += len(value)
        for family, (n, size) in seen.items():
            sizes.saw(family, size, n)


def _typed_reads(send: Send, items: Sequence[tuple[str, str]]) -> list[Any]:
    """One pipelined read per (key, type); a list of `LIST_CHUNK` items or more is read on in
    further ranges (one more command per range)."""
    if not items:
        return []
    replies = send([_read_command(k, t, 0) for k, t in items])
    long_lists = [j for j, (_, t) in enumerate(items) if t == "list" and isinstance(replies[j], list)
                  and len(replies[j]) == LIST_CHUNK]
    start = LIST_CHUNK
    while long_lists:
        more = send([_read_command(items[j][0], "list", start) for j in long_lists])
        for j, part in zip(long_lists, more, strict=True):
            replies[j] = part if isinstance(part, Exception) else replies[j] + list(part)
        long_lists = [j for j, part in zip(long_lists, more, strict=True)
                      if isinstance(part, list) and len(part) == LIST_CHUNK]
        start += LIST_CHUNK
    return replies


def _read_command(key: str, rtype: str, start: int) -> tuple[Any, ...]:
    if rtype == "list":
        return ("LRANGE", encode_key(key), start, start + LIST_CHUNK - 1)
    verb, *args = TYPED_READS[rtype]
    return (verb, encode_key(key), *args)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchReader:
    """Reads values for batches of keys with MGET and pipelined typed reads (see read_values)."""

    def __init__(self, kv: KvClient) -> None:
        self.kv = kv
        self.sizes = ValueSizes()

    def read(self, keys: Sequence[str], families: Sequence[Family]) -> list[KeyValue]:
        """Read keys' types and values. Read-only; costs as `read_values` says."""
        if not keys:
            return []
        values = read_values(self.kv.pipeline, keys, families, self.sizes)
        return [KeyValue(k, t, v if t == "string" else _shape(t, v)) for k, (t, v) in zip(keys, values, strict=True)]


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
