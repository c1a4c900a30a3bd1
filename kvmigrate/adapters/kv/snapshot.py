"""Read keys whole for the archive: type, value in server order, PTTL where the family can
expire, and a digest of exactly those bytes.

No Lua (Upstash bills every command a script runs): strings come from MGET, other types from one
pipelined typed read per key (see `kvmigrate.adapters.kv.scanner.read_values`), PTTL only for families
that can carry a TTL. The digest is sha1 of `<type>\n` followed by `<length>:<bytes>` for each
part. Cleanup reads its snapshots on a connection that WATCHes the keys first, so the keys it
deletes in MULTI/EXEC are exactly the ones archived.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.kv.scanner import TYPED_READS as _READS
from kvmigrate.adapters.kv.scanner import Send, ValueSizes, encode_key, read_values
from kvmigrate.entities.base import Family
from kvmigrate.model.records import RawValue

#: For keys read without a family (restore looks at whatever is there): any type, any TTL.
ANY_KEY = Family("any", "*", frozenset({"string", "hash", "list", "set", "zset"}), may_expire=True)


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
    """sha1 of `<type>\n` then `<length>:<bytes>` per part (the archive's digest of a key)."""
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


class SnapshotReader:
    """Reads keys with type, value (server order), PTTL and digest. Read-only.

    Costs one MGET per batch of string keys, one read per other key, and one PTTL per key of a
    family that can expire (`Family.may_expire`); pass `send` to read on a WATCHing session."""

    def __init__(self, kv: KvClient) -> None:
        self.kv = kv
        self.sizes = ValueSizes()

    def read(self, keys: Sequence[str], families: Sequence[Family] | None = None, *,
             send: Send | None = None) -> list[Snapshot]:
        if not keys:
            return []
        fams = list(families) if families is not None else [ANY_KEY] * len(keys)
        pipe = send or self.kv.pipeline
        values = read_values(pipe, keys, fams, self.sizes)
        timed = [i for i, (f, (t, _)) in enumerate(zip(fams, values, strict=True)) if f.may_expire and t in _READS]
        ttls = dict(zip(timed, pipe([("PTTL", encode_key(keys[i])) for i in timed]), strict=True))
        out = []
        for i, (key, (rtype, value)) in enumerate(zip(keys, values, strict=True)):
            if rtype not in _READS or value is None:
                out.append(Snapshot(key, rtype))
                continue
            parts = _flat(rtype, value)
            out.append(Snapshot(key, rtype, parts, _ttl(ttls.get(i)), server_digest(rtype, parts)))
        return out


def _flat(rtype: str, reply: Any) -> tuple[bytes, ...]:
    """A reply as stored: maps and score pairs flattened, scores as text (a float is printed as
    its shortest repr, "inf"/"-inf", no trailing ".0")."""
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


def _ttl(pttl: object) -> int | None:
    return int(pttl) if isinstance(pttl, int) and pttl >= 0 else None


# --- the line format ---------------------------------------------------------------------
