"""`seed_keyspace`: check the target db, run every seeding step in order, return the oracle."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from kvmigrate.api import KvClient
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.serial import to_dict
from kvmigrate.tryout.seed.connections import seed_connections
from kvmigrate.tryout.seed.content import seed_board, seed_games, seed_invites, seed_streaks
from kvmigrate.tryout.seed.data import BASE_TIME, MIN_USERS
from kvmigrate.tryout.seed.memories import ExpectedMemories
from kvmigrate.tryout.seed.messages import (
    break_list_items,
    emit_lists,
    order_lists,
    seed_bad_messages,
    seed_inbox_generation,
    seed_msg_generation,
    seed_oldest_generation,
    seed_pairs,
)
from kvmigrate.tryout.seed.policy import (
    seed_auth,
    seed_limits,
    seed_presence,
    seed_typing,
    seed_unknown,
)
from kvmigrate.tryout.seed.users import seed_users
from kvmigrate.tryout.seed.writer import Expected, Seed, Writer


@dataclass(frozen=True)
class SeedResult:
    """What `seed_keyspace` wrote, what it cost, and the oracle for it."""

    keys_written: int  # keys in the store after seeding
    by_family: dict[str, int]  # keys the seed wrote, per family label ("msg:*", "vibe:handles")
    expected: Expected
    commands: int  # KV commands the seeding sent


@dataclass(frozen=True)
class SeedRun:
    """What `kvmigrate seed` did: the keyspace written and, if asked, the memory files."""

    keyspace: SeedResult
    memories: ExpectedMemories | None
    memories_dir: str | None


def seed_keyspace(client: KvClient | redis.Redis, *, users: int = 46, seed: int = 7, force: bool = False,
                  scale: int = 1, now: datetime | None = None) -> SeedResult:
    """Write a deterministic /vibe keyspace into the client's logical db and return its oracle.

    Writes; refuses a non-empty db unless `force` (then keys it writes are replaced, others
    stay). Costs one command per key plus two DBSIZE, sent through the library's KV client (a
    plain redis-py client is wrapped in one, with an uncapped budget).
    """
    kv = client if isinstance(client, KvClient) else KvClient(client, RequestBudget(cap=None, phase="seed"))
    if users < MIN_USERS or scale < 1:
        raise ConfigError(f"cannot seed {users} users at scale {scale}",
                          hint=f"use at least {MIN_USERS} users and a scale of 1 or more")
    existing = int(kv.call("DBSIZE"))
    if existing and not force:
        db = kv.redis.connection_pool.connection_kwargs.get("db", 0)
        raise ConfigError(f"KV db {db} is not empty ({existing} key{'s' * (existing != 1)}); "
                          "seed writes only to an empty db",
                          hint="point --kv-url at an empty logical db, or pass --force to seed anyway")
    when = now or BASE_TIME
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    s = Seed(Writer(kv, replace=force), random.Random(seed), users, scale,
             int(when.timestamp() * 1000))
    for step in _STEPS:
        step(s)
    s.w.flush()
    by_family = dict(sorted(s.w.by_family.items()))
    return SeedResult(int(kv.call("DBSIZE")), by_family, s.expected(by_family), s.w.commands + 2)


#: The steps, in order: the random stream they share makes the order part of the output.
_STEPS: tuple[Callable[[Seed], None], ...] = (
    seed_users, seed_pairs, seed_oldest_generation, seed_inbox_generation,
    seed_msg_generation, seed_bad_messages, seed_board, order_lists, break_list_items,
    emit_lists, seed_streaks, seed_invites, seed_games, seed_connections, seed_unknown, seed_auth,
    seed_limits, seed_presence, seed_typing)


@to_dict.register
def _(r: SeedRun) -> dict[str, Any]:
    k = r.keyspace
    out: dict[str, Any] = {"keys": k.keys_written, "commands": k.commands, "by_family": k.by_family,
                           "bad_keys": [list(b) for b in k.expected.bad_keys],
                           "bad_items": [list(b) for b in k.expected.bad_items]}
    if r.memories is not None:
        out["memories"] = {"dir": r.memories_dir, "files": list(r.memories.files), "memories": len(r.memories.ids),
                           "bad_lines": [list(b) for b in r.memories.bad_lines]}
    return out
