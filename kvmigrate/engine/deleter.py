"""The deleter: how cleanup removes keys from KV, and learns which are gone.

A page's keys are deleted with one multi-key DEL in MULTI/EXEC on the connection that WATCHed
them, so if the app changed any of them after the read, the server runs nothing. A lost reply
is settled by asking which keys still exist: the transaction ran whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import redis

from kvmigrate.adapters.kv.client import KvClient, KvSession
from kvmigrate.adapters.kv.scanner import encode_key


def delete_watched(session: KvSession, reader: KvClient, keys: Sequence[str]) -> set[str] | None:
    """DEL `keys` in MULTI/EXEC on the WATCHing `session`; the keys deleted, or None when a
    WATCHed key changed and nothing was deleted. Costs 3 commands (MULTI, DEL, EXEC), charged to
    the budget's `delete` phase; after a lost reply, 1 EXISTS per key (on `reader`)."""
    budget = session.client.budget
    spending, budget.phase = budget.phase, "delete"
    try:
        reply: list[object] | None = session.transaction([("DEL", *[encode_key(k) for k in keys])])
        return set(keys) if reply is not None else None
    except (redis.ConnectionError, redis.TimeoutError):
        # The reply was lost: the transaction ran whole or not at all. Keys now gone were deleted by
        # it (writes are on Postgres, so nothing else deletes them); if none is, nothing ran.
        there = reader.pipeline([("EXISTS", encode_key(k)) for k in keys])
        return {k for k, n in zip(keys, there, strict=True) if n == 0} or None
    finally:
        budget.phase = spending


def vanished(kv: KvClient, keys: Sequence[str], *, count: int) -> Iterator[list[str]]:
    """Per chunk of `count` keys, the ones no longer in KV. Costs 1 multi-key EXISTS per chunk,
    and 1 EXISTS per key only in a chunk where some are gone and some are not."""
    for start in range(0, len(keys), count):
        chunk = keys[start:start + count]
        present = int(kv.call("EXISTS", *[encode_key(k) for k in chunk]))
        if present == len(chunk):
            continue
        if present == 0:
            yield list(chunk)
            continue
        there = kv.pipeline([("EXISTS", encode_key(k)) for k in chunk])
        gone = [k for k, n in zip(chunk, there, strict=True) if n == 0]
        if gone:
            yield gone
