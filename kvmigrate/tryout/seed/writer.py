"""The pipelined writer, the seeding state every step shares, and the oracle it builds.

Cost: one command per key (plus one DEL before each non-string key when replacing) on
non-transactional pipelines of PIPELINE_SIZE commands, sent through the library's KV client
(so they are charged to its budget like any other command kvmigrate sends).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from kvmigrate.api import KvClient
from kvmigrate.tryout.seed.data import (
    BASE_MS,
    DAY,
    ENTITY_FAMILIES,
    KEPT_PATTERNS,
    PIPELINE_SIZE,
    REAL_USERS,
    is_agent,
    make_handles,
)


@dataclass(frozen=True)
class Expected:
    """What a correct migration of the seeded keyspace must show; tests compare against it.

    `message_ids`: ids of every good message, wherever it is stored (each must land exactly
    once); ids inside bad records are not in it. `board_entries`: distinct `board:entry:*` keys,
    bad ones included. `streak_handles`, `invite_codes`, `game_ids` (`vibe:games` only): those of
    good records. `dangling_ids`: ids in inbox/outbox/thread lists whose `msg:{id}` is gone and
    that are stored nowhere else. `kept` / `unknown`: key counts by pattern (`unknown` uses the
    key's first segment, `consent:*`). `bad_keys`: (key, why) for every deliberately bad whole
    key; `bad_items`: (key, index, why) for broken items inside otherwise good lists/arrays.
    `connection_ids` (`from:to`), `friendship_ids` (`a:b`, sorted) and `report_ids`: the
    consent pairs, friendships and reports of good records, handles normalised.
    `why` names the defect: common.py's reject code where one names it, `huge_value` for the
    ≥1 MB value (also truncated JSON, so it is bad whatever the size limit).
    """

    message_ids: frozenset[str]
    board_entries: int
    streak_handles: frozenset[str]
    invite_codes: frozenset[str]
    game_ids: frozenset[str]
    dangling_ids: frozenset[str]
    kept: Mapping[str, int]
    unknown: Mapping[str, int]
    bad_keys: tuple[tuple[str, str], ...]
    bad_items: tuple[tuple[str, int, str], ...]
    connection_ids: frozenset[str] = frozenset()
    friendship_ids: frozenset[str] = frozenset()
    report_ids: frozenset[str] = frozenset()


class Writer:
    """Queue one command per key on a non-transactional pipeline; send every PIPELINE_SIZE."""

    def __init__(self, client: KvClient, *, replace: bool) -> None:
        self._kv = client
        self._pipe: list[list[Any]] = []
        self._replace = replace
        self.by_family: Counter[str] = Counter()
        self.commands = 0

    def string(self, family: str, key: str, value: bytes | str, *, ex: int = 0, px: int = 0) -> None:
        ttl = ["EX", ex] if ex else ["PX", px] if px else []
        self._send(family, ["SET", key, value, *ttl], fresh=False)

    def hash(self, family: str, key: str, mapping: Mapping[str, Any]) -> None:
        self._send(family, ["HSET", key, *[x for kv in mapping.items() for x in kv]])

    def rpush(self, family: str, key: str, items: list[Any]) -> None:
        self._send(family, ["RPUSH", key, *items])

    def sadd(self, family: str, key: str, members: list[str]) -> None:
        self._send(family, ["SADD", key, *members])

    def zadd(self, family: str, key: str, scores: Mapping[str, int]) -> None:
        self._send(family, ["ZADD", key, *[x for m, sc in scores.items() for x in (sc, m)]])

    def _send(self, family: str, args: list[Any], *, fresh: bool = True) -> None:
        if fresh and self._replace:
            self._queue(["DEL", args[1]])
        self._queue(args)
        self.by_family[family] += 1

    def _queue(self, args: list[Any]) -> None:
        self._pipe.append(args)
        self.commands += 1
        if len(self._pipe) >= PIPELINE_SIZE:
            self.flush()

    def flush(self) -> None:
        """Send the queued commands in one round trip; raise the first error a command got."""
        queued, self._pipe = self._pipe, []
        for reply in self._kv.pipeline(queued):
            if isinstance(reply, Exception):
                raise reply


class Seed:
    """Seeding state: the random source, the handles, list contents and the oracle's facts."""

    def __init__(self, w: Writer, rng: random.Random, users: int, scale: int, now_ms: int) -> None:
        self.w, self.r, self.now_ms = w, rng, now_ms
        self.handles = make_handles(users)
        self.agents = [h for i, h in enumerate(self.handles) if is_agent(i)]
        self.volume = users * scale / REAL_USERS
        self.lists: dict[str, tuple[str, list[Any]]] = {}
        self.taken: set[str] = set()
        self.pairs: list[tuple[str, str]] = []
        self.message_ids: set[str] = set()
        self.dangling: set[str] = set()
        self.streaks: set[str] = set()
        self.codes: set[str] = set()
        self.games: set[str] = set()
        self.consent: set[str] = set()
        self.friends: set[str] = set()
        self.reports: set[str] = set()
        self.board_keys = 0
        self.bad_keys: list[tuple[str, str]] = []
        self.bad_items: list[tuple[str, int, str]] = []

    def n(self, base: float) -> int:
        """`base` scaled by users * scale (message/board/game volume)."""
        return max(1, round(base * self.volume))

    def ms(self, days_ago_from: float, days_ago_to: float) -> int:
        """A data time between two ages (in days before BASE_TIME)."""
        return BASE_MS - int(days_ago_from * DAY) + self.r.randrange(
            max(1, int((days_ago_from - days_ago_to) * DAY)))

    def unique(self, make: Callable[[], str]) -> str:
        while (value := make()) in self.taken:
            pass
        self.taken.add(value)
        return value

    def pair(self) -> tuple[str, str]:
        a, b = self.r.choice(self.pairs)
        return (a, b) if self.r.random() < 0.5 else (b, a)

    def push(self, family: str, key: str, item: Any) -> None:
        self.lists.setdefault(key, (family, []))[1].append(item)

    def bad(self, key: str, why: str) -> None:
        self.bad_keys.append((key, why))

    def expected(self, by_family: Mapping[str, int]) -> Expected:
        kept: Counter[str] = Counter()
        unknown: Counter[str] = Counter()
        for fam, count in by_family.items():
            pattern = next((p for p in KEPT_PATTERNS if fnmatchcase(fam, p)), None)
            if pattern:
                kept[pattern] += count
            elif fam not in ENTITY_FAMILIES:
                head, sep, _ = fam.partition(":")
                unknown[f"{head}:*" if sep else fam] += count
        return Expected(
            frozenset(self.message_ids), self.board_keys, frozenset(self.streaks),
            frozenset(self.codes), frozenset(self.games), frozenset(self.dangling),
            dict(sorted(kept.items())), dict(sorted(unknown.items())),
            tuple(self.bad_keys), tuple(self.bad_items), frozenset(self.consent),
            frozenset(self.friends), frozenset(self.reports))
