"""Seed a realistic /vibe keyspace: every shape in KV-LAYOUT.md, legacy and bad records included.

Used by `kvmigrate seed`, `kvmigrate demo`, end-to-end tests and benchmarks. `seed_keyspace`
writes; it refuses a non-empty logical db unless `force`. Cost: DBSIZE, then one command per key
(plus one DEL before each non-string key with `force`) on non-transactional pipelines of
PIPELINE_SIZE commands, then DBSIZE.

Output is deterministic: the same (users, seed, scale, now) gives a byte-identical keyspace. Data
timestamps derive from BASE_TIME, never from the clock; `now` (default BASE_TIME) only stamps the
keys that stay in KV (presence, sessions, rate limits: their values and the date in
`agent:budget:*`). Only expiring keys carry a TTL: presence:data (EX 300), typing (EX 5),
sessions (EX 3600), nonces (PX), rate limits and friend invites `invite:*` (7 days). Handles, streaks, invites and the kept/unknown families grow with `users`; messages, board
entries and games with `users * scale`. 46 users at scale 1 is the size of the real store (about
1,400 messages, a tenth of them already deleted, in 3,300 keys); 2,000 users at scale 3 make
about 220,000 keys. `vibe:messages`, the oldest generation, stops at 2,000 messages;
the board always has more entries (at least 130) than `board:entries` keeps (100).

`SeedResult.expected` is the oracle tests compare against: only facts fixed by the layout document
(which ids exist, what dangles, which records are deliberately bad), never a transformer's rule.
`typing:*` keys expire after 5 s, so `expected.kept["typing:*"]` holds only right after seeding.
"""

from __future__ import annotations

import base64
import hashlib
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import orjson
import redis

from kvmigrate.errors import ConfigError

BASE_TIME = datetime(2025, 6, 1, tzinfo=timezone.utc)
PIPELINE_SIZE = 2000
MIN_USERS = 8
_BASE_MS = int(BASE_TIME.timestamp() * 1000)
_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1)  # naive on purpose: _iso appends the "Z" itself
_REAL_USERS = 46
_HUMANS = (
    "mara", "bram", "cleo", "nova", "dmitri", "elif", "farah", "gus", "hana", "ivo", "juno", "kai",
    "lena", "milo", "nadia", "otto", "pia", "quinn", "rafa", "sana", "tomas", "uma", "vik", "wren",
    "yara", "zed", "alba", "boris", "chen", "dara", "emeka", "fenna", "goran", "hugo", "ines",
    "jomo", "kira", "luca", "mira", "noor", "oskar", "priya", "rosa", "sven", "tara", "ugo")
_AGENTS = ("ops_agent", "scout_bot", "echo_agent", "muse_agent", "relay_bot", "sage_agent")
#: Handles referenced but never registered: an inviter and a sender whose records are gone.
GHOST_INVITER, GHOST_SENDER = "early_bird", "gone_user"
_SYSTEM_SENDERS = ("vibe", "system", "solienne")
_WORDS = tuple(
    "ship build parser deploy presence thread invite board streak agent model prompt token "
    "latency cache schema migration postgres redis vercel edge function review merge branch "
    "demo idea help tonight tomorrow coffee pair debug fix broken works finally nice great "
    "launch feedback design music late early weekend sprint test green red".split())
_CATEGORIES = ("general", "shipping", "ideas", "help", "showcase", "random")
_BADGES = ("early_adopter", "first_message", "streak_7", "streak_30", "board_poster", "night_owl")
_VERIFIED = ("none", "none", "x", "farcaster", "github", "team")
_CHESS = ("e4", "e5", "Nf3", "Nc6", "Bb5", "a6", "Ba4", "Nf6", "O-O", "Be7", "Re1", "b5", "d4",
          "d5", "c4", "Qxd5", "Qh5", "Bc4", "Qxf7#")
_HANGMAN = ("postgres", "presence", "upstash", "migration", "handshake")
_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_ALNUM_UP = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: Families whose lists the app keeps newest first (LPUSH); threads are kept oldest first.
_NEWEST_FIRST = ("messages:*", "inbox:*", "outbox:*", "board:entries", "board:category:*",
                 "board:user:*")
#: The by_family labels of keys an entity reads (data or derived index).
ENTITY_FAMILIES = frozenset({
    "vibe:handles", "user:*", "vibe:agents", "vibe:users", "messages:*", "thread:*", "msg:*",
    "inbox:*", "outbox:*", "vibe:messages", "unread:*", "board:entry:*", "board:entries",
    "board:category:*", "board:user:*", "streak:*", "vibe:invites", "vibe:invites:by:*",
    "vibe:games"})
#: KV-LAYOUT's "stays in KV" patterns; `Expected.kept` counts keys by these.
KEPT_PATTERNS = ("presence:*", "typing:*", "session:*", "session-key:*", "airc:nonce:*",
                 "agent:rate:*", "agent:budget:*", "agent:greeted:*", "tip:ratelimit:*",
                 "ratelimit:*", "observations:count:*", "observations:ratelimit:*")


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


@dataclass(frozen=True)
class SeedResult:
    keys_written: int  # keys in the store after seeding
    by_family: dict[str, int]  # keys the seed wrote, per family label ("msg:*", "vibe:handles")
    expected: Expected
    commands: int  # KV commands the seeding sent


@dataclass(frozen=True)
class ExpectedMemories:
    """`ids` of the good memory lines; `bad_lines`: (file name, 1-based line number)."""

    ids: frozenset[str]
    bad_lines: tuple[tuple[str, int], ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class SeedRun:
    """What `kvmigrate seed` did: the keyspace written and, if asked, the memory files."""

    keyspace: SeedResult
    memories: ExpectedMemories | None
    memories_dir: str | None


def seed_keyspace(client: redis.Redis, *, users: int = 46, seed: int = 7, force: bool = False,
                  scale: int = 1, now: datetime | None = None) -> SeedResult:
    """Write a deterministic /vibe keyspace into the client's logical db and return its oracle.

    Writes; refuses a non-empty db unless `force` (then keys it writes are replaced, others
    stay). Costs one command per key plus two DBSIZE.
    """
    if users < MIN_USERS or scale < 1:
        raise ConfigError(f"cannot seed {users} users at scale {scale}",
                          hint=f"use at least {MIN_USERS} users and a scale of 1 or more")
    existing = int(client.dbsize())
    if existing and not force:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        raise ConfigError(f"KV db {db} is not empty ({existing} key{'s' * (existing != 1)}); "
                          "seed writes only to an empty db",
                          hint="point --kv-url at an empty logical db, or pass --force to seed anyway")
    when = now or BASE_TIME
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    s = _Seed(_Writer(client, replace=force), random.Random(seed), users, scale,
              int(when.timestamp() * 1000))
    for step in _STEPS:
        step(s)
    s.w.flush()
    by_family = dict(sorted(s.w.by_family.items()))
    return SeedResult(int(client.dbsize()), by_family, s.expected(by_family), s.w.commands + 2)


def write_memory_files(folder: Path, *, users: int = 46, seed: int = 7) -> ExpectedMemories:
    """Write `thread_{handle}.jsonl` files (KV-LAYOUT "Thread memories") owned by the first
    seeded handle, one bad line among them. Writes files; deterministic for (users, seed)."""
    rng = random.Random(seed * 1_000_003 + 1)
    handles = _handles(max(users, MIN_USERS))
    owner = handles[0]
    ids: set[str] = set()
    bad: list[tuple[str, int]] = []
    files: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    for k, about in enumerate(handles[1:1 + max(3, users // 6)]):
        lines = []
        for _ in range(rng.randint(3, 6)):
            ms = _BASE_MS - rng.randrange(90 * _DAY)
            mem: dict[str, Any] = {"id": f"mem_{rng.getrandbits(48):012x}", "timestamp": _iso(ms),
                   "observation": _sentence(rng), "from": owner, "about": about}
            if rng.random() < 0.3:
                mem["tags"] = rng.sample(_WORDS, 2)
            ids.add(mem["id"])
            lines.append(orjson.dumps(mem))
        name = f"thread_{about}.jsonl"
        if k == 1:
            lines.insert(1, b'{"id": "mem_broken", "timestamp": "2025-05-0')
            bad.append((name, 2))
        (folder / name).write_bytes(b"\n".join(lines) + b"\n")
        files.append(name)
    return ExpectedMemories(frozenset(ids), tuple(bad), tuple(files))


# ---------------------------------------------------------------- plumbing


class _Writer:
    """Queue one command per key on a non-transactional pipeline; send every PIPELINE_SIZE."""

    def __init__(self, client: redis.Redis, *, replace: bool) -> None:
        self._pipe = client.pipeline(transaction=False)
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
        self._pipe.execute_command(*args)
        self.commands += 1
        if len(self._pipe) >= PIPELINE_SIZE:
            self.flush()

    def flush(self) -> None:
        if len(self._pipe):
            self._pipe.execute()


class _Seed:
    """Seeding state: the random source, the handles, list contents and the oracle's facts."""

    def __init__(self, w: _Writer, rng: random.Random, users: int, scale: int, now_ms: int) -> None:
        self.w, self.r, self.now_ms = w, rng, now_ms
        self.handles = _handles(users)
        self.agents = [h for i, h in enumerate(self.handles) if _is_agent(i)]
        self.volume = users * scale / _REAL_USERS
        self.lists: dict[str, tuple[str, list[Any]]] = {}
        self.taken: set[str] = set()
        self.pairs: list[tuple[str, str]] = []
        self.message_ids: set[str] = set()
        self.dangling: set[str] = set()
        self.streaks: set[str] = set()
        self.codes: set[str] = set()
        self.games: set[str] = set()
        self.board_keys = 0
        self.bad_keys: list[tuple[str, str]] = []
        self.bad_items: list[tuple[str, int, str]] = []

    def n(self, base: float) -> int:
        """`base` scaled by users * scale (message/board/game volume)."""
        return max(1, round(base * self.volume))

    def ms(self, days_ago_from: float, days_ago_to: float) -> int:
        """A data time between two ages (in days before BASE_TIME)."""
        return _BASE_MS - int(days_ago_from * _DAY) + self.r.randrange(
            max(1, int((days_ago_from - days_ago_to) * _DAY)))

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
            tuple(self.bad_keys), tuple(self.bad_items))


def _is_agent(i: int) -> bool:
    return i % 8 == 5


def _handles(users: int) -> list[str]:
    """`users` distinct handles: humans, and an agent in every 8th slot (ops_agent first)."""
    out: list[str] = []
    humans = agents = 0
    for i in range(users):
        names, k = (_AGENTS, agents) if _is_agent(i) else (_HUMANS, humans)
        out.append(names[k % len(names)] + (str(k // len(names)) if k >= len(names) else ""))
        agents, humans = (agents + 1, humans) if _is_agent(i) else (agents, humans + 1)
    return out


def _wire(h: str) -> str:
    """The handle as message keys and fields spell it (`ops-agent` for `ops_agent`)."""
    return "ops-agent" if h == "ops_agent" else h


def _iso(ms: int) -> str:
    """JavaScript's toISOString()."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def _day(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).date().isoformat()


def _b36(n: int) -> str:
    out = ""
    while n:
        n, d = divmod(n, 36)
        out = _B36[d] + out
    return out or "0"


def _sentence(r: random.Random, lo: int = 3, hi: int = 14) -> str:
    return " ".join(r.choices(_WORDS, k=r.randint(lo, hi))).capitalize()


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _thread_key(a: str, b: str) -> str:
    return "thread:" + ":".join(sorted((a, b)))


# ---------------------------------------------------------------- users


def _seed_users(s: _Seed) -> None:
    registry: dict[str, bytes] = {}
    agents: dict[str, bytes] = {}
    vusers: dict[str, bytes] = {}
    for i, h in enumerate(s.handles):
        reg_ms = s.ms(240, 30)
        in_registry = i % 5 != 4
        if in_registry:
            registry[h] = _dumps(_registry_record(s, i, h, reg_ms))
        if not _is_agent(i) and (not in_registry or h == "nova" or s.r.random() < 0.25):
            key = "user:@Nova" if h == "nova" else f"user:{h}"
            s.w.hash("user:*", key, _legacy_user(s, "@Nova" if h == "nova" else h, reg_ms))
        if _is_agent(i):
            agents[h] = _dumps(_agent_record(s, h, reg_ms))
        if _is_agent(i) or s.r.random() < 0.2:
            vusers[h] = _dumps({"handle": h, "display_name": h.title(), "one_liner": _sentence(s.r),
                                "is_agent": _is_agent(i), "operator": s.handles[0] if _is_agent(i)
                                else None, "created_at": _iso(reg_ms)})
    s.w.hash("vibe:handles", "vibe:handles", registry)
    s.w.hash("vibe:agents", "vibe:agents", agents)
    s.w.hash("vibe:users", "vibe:users", vusers)
    s.w.hash("user:*", "user:the dude", {"username": "the dude", "building": "abiding",
                                         "createdAt": _iso(s.ms(200, 100))})
    s.bad("user:the dude", "invalid_handle")


def _registry_record(s: _Seed, i: int, h: str, reg_ms: int) -> dict[str, Any]:
    r = s.r
    rec: dict[str, Any] = {"handle": h, "registeredAt": _iso(reg_ms), "registeredAtTs": reg_ms}
    if r.random() < 0.8:
        rec["first_active_at"] = _iso(reg_ms + r.randrange(_DAY))
        rec["last_active_at"] = _iso(reg_ms + r.randrange(30 * _DAY)) if r.random() < 0.8 else None
    rec.update(messages_sent=r.randrange(120), genesis=i < 12, verified=r.choice(_VERIFIED))
    if rec["verified"] == "x" or r.random() < 0.3:
        rec["x_handle"] = f"{h}_x"
    if rec["verified"] == "github" or r.random() < 0.2:
        rec["github_handle"] = f"{h}-dev"
    if r.random() < 0.3:
        rec["displayName"] = h.title()
    if r.random() < 0.7:
        rec["one_liner"] = _sentence(r)
    if i == 7 or (i > 0 and r.random() < 0.4):
        rec["invited_by"] = GHOST_INVITER if i == 7 else s.handles[r.randrange(i)]
        rec["invite_code"] = f"VIBE-{''.join(r.choices(_ALNUM_UP, k=4))}-{rec['invited_by'][:4].upper()}"
    if _is_agent(i):
        rec.update(isAgent=True, operator=s.handles[0], agentType=r.choice(("assistant", "bot")),
                   capabilities=r.sample(("dm", "board", "games", "code", "search"), 2),
                   model=r.choice(("claude-sonnet-4", "gpt-4o", "llama-3.1-70b")))
    rec["status"] = "active" if r.random() < 0.9 else "suspended"
    return rec


def _legacy_user(s: _Seed, username: str, reg_ms: int) -> dict[str, str]:
    r = s.r
    rec = {"username": username, "building": _sentence(r), "createdAt": _iso(reg_ms),
           "updatedAt": _iso(reg_ms + r.randrange(60 * _DAY)),
           "invitedBy": r.choice(s.handles[:6]) if r.random() < 0.4 else "null",
           "inviteCode": "null", "publicKey": base64.b64encode(r.randbytes(32)).decode(),
           "registry": "vibe", "status": "active"}
    if r.random() < 0.5:
        rec["recoveryKey"] = base64.b64encode(r.randbytes(24)).decode()
    if r.random() < 0.5:
        rec["keyRotatedAt"] = str(reg_ms + r.randrange(90 * _DAY))
    return rec


def _agent_record(s: _Seed, h: str, reg_ms: int) -> dict[str, Any]:
    return {"handle": h, "display_name": h.replace("_", " ").title(), "one_liner": _sentence(s.r),
            "is_agent": True, "operator": s.handles[0], "model": "claude-sonnet-4",
            "api_key_hash": hashlib.sha256(s.r.randbytes(32)).hexdigest(),
            "registered_at": _iso(reg_ms), "status": "active"}


# ---------------------------------------------------------------- messages


def _seed_pairs(s: _Seed) -> None:
    pairs = {(GHOST_SENDER, s.handles[0])}
    for i, h in enumerate(s.handles):
        for j in s.r.sample(range(len(s.handles)), 3):
            if j != i:
                a, b = sorted((_wire(h), _wire(s.handles[j])))
                pairs.add((a, b))
    s.pairs = sorted(pairs)


def _old_id(s: _Seed, ms: int) -> str:
    return s.unique(lambda: f"{ms}-{''.join(s.r.choices(_B36, k=6))}")


def _msg_id(s: _Seed, ms: int) -> str:
    return s.unique(lambda: f"msg_{_b36(ms)}{_b36(s.r.getrandbits(25)):0>5}")


def _seed_oldest_generation(s: _Seed) -> None:
    """`vibe:messages`: one JSON array; every 4th message was also copied to `msg:{id}`."""
    items: list[Any] = []
    for ms in sorted(s.ms(200, 150) for _ in range(min(2000, s.n(150)))):
        a, b = s.pair()
        items.append({"id": _old_id(s, ms), "from": a, "to": b, "text": _sentence(s.r),
                      "timestamp": ms, "read": s.r.random() < 0.7})
    for k, m in enumerate(items):
        s.message_ids.add(m["id"])
        if k % 4 == 1:
            s.w.string("msg:*", f"msg:{m['id']}", _dumps({
                "id": m["id"], "from": m["from"], "to": m["to"], "text": m["text"],
                "createdAt": _iso(m["timestamp"]), "read": m["read"]}))
    index = len(items) // 2
    items.insert(index, "[object Object]")
    s.bad_items.append(("vibe:messages", index, "wrong_json_type"))
    s.w.string("vibe:messages", "vibe:messages", _dumps(items))


def _seed_inbox_generation(s: _Seed) -> None:
    """`messages:{to}` full JSON items, repeated in `thread:{a}:{b}`; older ones use `text`."""
    times = sorted(s.ms(150, 40) for _ in range(s.n(320)))
    for k, ms in enumerate(times):
        a, b = s.pair()
        sender = "@Nova" if a == "nova" and s.r.random() < 0.5 else a
        m: dict[str, Any] = {"id": _old_id(s, ms), "from": sender, "to": b}
        m["text" if k < len(times) * 0.4 else "body"] = _sentence(s.r)
        read_at = _iso(ms + s.r.randrange(_DAY)) if s.r.random() < 0.7 else None
        m.update(type="ping" if s.r.random() < 0.1 else "dm", timestamp=ms, read_at=read_at)
        s.message_ids.add(m["id"])
        s.push("messages:*", f"messages:{b}", _dumps(m))
        s.push("thread:*", _thread_key(a, b), _dumps(m))


def _seed_msg_generation(s: _Seed) -> None:
    """`msg:{id}` + id lists; messages older than 30 days were deleted but stay in the lists."""
    msgs = [_plain_message(s) for _ in range(s.n(850))] + _system_messages(s) + _dm_games(s)
    msgs.sort(key=lambda tm: tm[0])
    unread: dict[str, Counter[str]] = defaultdict(Counter)
    for ms, m in msgs:
        if ms < _BASE_MS - 30 * _DAY:
            s.dangling.add(m["id"])
        else:
            s.w.string("msg:*", f"msg:{m['id']}", _dumps(m))
            s.message_ids.add(m["id"])
        s.push("inbox:*", f"inbox:{m['to']}", m["id"])
        if not m.get("system"):
            s.push("outbox:*", f"outbox:{m['from']}", m["id"])
            s.push("thread:*", _thread_key(m["from"], m["to"]), m["id"])
            if not m["read"]:
                unread[m["to"]][m["from"]] += 1
    for to, counts in sorted(unread.items()):
        s.w.hash("unread:*", f"unread:{to}", {f: str(c) for f, c in sorted(counts.items())})


def _plain_message(s: _Seed) -> tuple[int, dict[str, Any]]:
    r, ms = s.r, s.ms(36, 0)
    a, b = s.pair()
    mid = s.unique(lambda: str(uuid.UUID(int=r.getrandbits(128), version=4))) \
        if r.random() < 0.03 else _msg_id(s, ms)
    m: dict[str, Any] = {"id": mid, "from": a, "to": b, "text": _sentence(r)}
    if r.random() < 0.3:
        m["body"] = m["text"]
    if r.random() < 0.05:
        m["payload"] = {"type": "handshake", "step": r.choice(("hello", "ack")),
                        "publicKey": base64.b64encode(r.randbytes(32)).decode()}
    if r.random() < 0.2:
        m.update(v=2, signature=base64.b64encode(r.randbytes(64)).decode(),
                 signatureVerified=r.random() < 0.9)
    m.update(createdAt=_iso(ms), read=r.random() < 0.6)
    if m["read"]:
        m["readAt"] = _iso(ms + r.randrange(1, _DAY))
    if r.random() < 0.05:
        m["consent"] = r.choice(("pending", "accepted"))
    return ms, m


def _system_messages(s: _Seed) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for _ in range(s.n(20)):
        ms = s.ms(36, 0)
        out.append((ms, {"id": _msg_id(s, ms), "from": s.r.choice(_SYSTEM_SENDERS),
                         "to": _wire(s.r.choice(s.handles)), "text": _sentence(s.r),
                         "createdAt": _iso(ms), "read": False, "system": True}))
    return out


def _dm_games(s: _Seed) -> list[tuple[int, dict[str, Any]]]:
    """Games played through DMs: one message per move, the last state has the result."""
    out = []
    for g in range(s.n(10)):
        a, b = s.pair()
        game = "tictactoe" if g % 2 == 0 else "chess"
        if game == "tictactoe":
            states = _ttt_states(s.r, a, b)
        else:
            states = _chess_states(s.r, a, b, draw=g % 4 == 3)
        ms = s.ms(29, 2)
        for k, state in enumerate(states):
            ms += s.r.randrange(60_000, 3_600_000)
            payload = {"type": "game", "version": 1, "game": game, "state": state,
                       "idempotencyKey": f"{game}-{a}-{b}-{g}-{k}"}
            out.append((ms, {"id": _msg_id(s, ms), "from": (a, b)[k % 2], "to": (b, a)[k % 2],
                             "text": f"{game}: move {k + 1}", "payload": payload,
                             "createdAt": _iso(ms), "read": True}))
    return out


def _ttt_states(r: random.Random, x: str, o: str) -> list[dict[str, Any]]:
    board, marks, states = [""] * 9, {"X": x, "O": o}, []
    for turn in range(9):
        board[r.choice([i for i, c in enumerate(board) if not c])] = "XO"[turn % 2]
        winner = next((marks[board[i]] for i, j, k in _LINES
                       if board[i] and board[i] == board[j] == board[k]), None)
        state: dict[str, Any] = {"board": list(board), "players": marks,
                                 "turn": marks["OX"[turn % 2]], "moves": turn + 1}
        states.append(state)
        if winner or turn == 8:
            state.update(gameOver=True, winner=winner, isDraw=winner is None)
            break
    return states


def _chess_states(r: random.Random, white: str, black: str, *, draw: bool) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = [
        {"white": white, "black": black, "pgn": " ".join(_CHESS[:k + 1]),
         "turn": "b" if k % 2 == 0 else "w", "moveCount": k + 1}
        for k in range(r.randrange(5, len(_CHESS)))]
    winner = None if draw else r.choice((white, black))
    states[-1].update(gameOver=True, winner=winner, isDraw=draw,
                      result="stalemate" if draw else "checkmate")
    return states


def _seed_bad_messages(s: _Seed) -> None:
    """Whole `msg:*` records that cannot migrate; no list points to them."""
    ms = s.ms(20, 10)
    ids = [_msg_id(s, ms + k) for k in range(5)]
    good = {"from": s.handles[1], "to": s.handles[2], "createdAt": _iso(ms), "read": False}
    s.w.string("msg:*", f"msg:{ids[0]}", _dumps({"id": ids[0], "text": "hi", **good})[:-9])
    s.bad(f"msg:{ids[0]}", "invalid_json")
    s.w.string("msg:*", f"msg:{ids[1]}", _dumps({"id": ids[1], "text": "caf?", **good})
               .replace(b"caf?", b"caf\xe9 cr\xe8me"))
    s.bad(f"msg:{ids[1]}", "invalid_utf8")
    s.w.string("msg:*", f"msg:{ids[2]}", _dumps(
        {"id": ids[2], "text": "from the future", **good, "createdAt": "+275760-09-13T00:00:00.000Z"}))
    s.bad(f"msg:{ids[2]}", "bad_timestamp")
    s.w.string("msg:*", f"msg:{ids[3]}", _dumps({"id": ids[3], **good, "from": "john doe", "text": "yo"}))
    s.bad(f"msg:{ids[3]}", "invalid_handle")
    blob = base64.b64encode(s.r.randbytes(900_000)).decode()
    huge = _dumps({"id": ids[4], **good, "text": "screenshot", "payload": {"image": blob}})
    s.w.string("msg:*", f"msg:{ids[4]}", huge[: len(huge) - 100])
    s.bad(f"msg:{ids[4]}", "huge_value")


def _break_list_items(s: _Seed) -> None:
    """One truncated JSON item inside a good `messages:*` list and a good `thread:*` list."""
    for family in ("messages:*", "thread:*"):
        keys = sorted(k for k, (fam, items) in s.lists.items()
                      if fam == family and sum(isinstance(i, bytes) for i in items) >= 3)
        key = s.r.choice(keys)
        items = s.lists[key][1]
        index = len(items) // 2
        items.insert(index, b'{"id": "' + str(s.r.getrandbits(40)).encode() + b'", "from": "')
        s.bad_items.append((key, index, "invalid_json"))


def _emit_lists(s: _Seed) -> None:
    for key, (family, items) in s.lists.items():
        s.w.rpush(family, key, items)


def _order_lists(s: _Seed) -> None:
    for _key, (family, items) in s.lists.items():
        if family in _NEWEST_FIRST:
            items.reverse()


# ---------------------------------------------------------------- board, streaks, invites, games


def _seed_board(s: _Seed) -> None:
    """A and B entries; `board:entries` keeps only the newest 100, B indexes by category/author."""
    entries = sorted((_board_entry(s, k) for k in range(max(130, s.n(130)))),
                     key=lambda e: e["timestamp"])
    for e in entries:
        s.w.string("board:entry:*", f"board:entry:{e['id']}", _dumps(e))
        if "reactions" in e:
            s.push("board:category:*", f"board:category:{e['category']}", e["id"])
            s.push("board:user:*", f"board:user:{e['author']}", e["id"])
    for e in entries[-100:]:
        s.push("board:entries", "board:entries", e["id"])
    s.board_keys = len(entries) + 3
    old = s.ms(300, 250)
    bad: list[tuple[dict[str, Any] | list[Any], str]] = [
        ({"content": "pasted from a terminal \x00 oops"}, "nul_byte"),
        ({"timestamp": -1}, "bad_timestamp"),
        (["entry", s.handles[4], "an array, not an object"], "wrong_json_type")]
    for k, (patch, why) in enumerate(bad):
        eid = f"entry_{old + k}_{s.r.getrandbits(24):06x}"
        base = {"id": eid, "author": s.handles[k + 1], "content": _sentence(s.r),
                "category": "general", "tags": [], "timestamp": old + k}
        s.w.string("board:entry:*", f"board:entry:{eid}", _dumps(
            patch if isinstance(patch, list) else {**base, **patch}))
        s.bad(f"board:entry:{eid}", why)


def _board_entry(s: _Seed, k: int) -> dict[str, Any]:
    r, ms = s.r, s.ms(200, 0)
    author, category = r.choice(s.handles), r.choice(_CATEGORIES)
    tags = r.sample(_WORDS, r.randrange(4))
    if k % 5 in (1, 3):  # B
        eid = s.unique(lambda: f"{category}_{ms}_{''.join(r.choices(_B36, k=7))}")
        reactions = {e: r.sample(s.handles, r.randint(1, 3)) for e in ("🔥", "🚀") if r.random() < 0.4}
        comments = [{"author": r.choice(s.handles), "text": _sentence(r), "timestamp": ms + 60_000 * (c + 1)}
                    for c in range(r.randrange(3))]
        return {"id": eid, "author": author, "category": category, "content": _sentence(r, 5, 30),
                "tags": tags, "timestamp": ms, "reactions": reactions, "comments": comments}
    entry = {"id": s.unique(lambda: f"entry_{ms}_{r.getrandbits(24):06x}"), "author": author,
             "content": _sentence(r, 5, 30), "category": category, "tags": tags, "timestamp": ms}
    if r.random() < 0.2:
        del entry["category"]
    return entry


def _seed_streaks(s: _Seed) -> None:
    """Hash (A) or JSON string (B) per handle; every 7th handle has none; three bad ones."""
    for i, h in enumerate(s.handles):
        if i % 7 == 6:
            continue
        last_ms, current = s.ms(20, 0), s.r.randrange(0, 40)
        longest, active = current + s.r.randrange(0, 30), sorted(
            {_day(last_ms - d * _DAY) for d in s.r.sample(range(60), s.r.randint(1, 30))})
        if i % 2 == 0:
            fields = {"current": str(current), "longest": str(longest),
                      "totalDays": str(longest + s.r.randrange(40)), "lastActive": _day(last_ms)}
            if s.r.random() < 0.2:
                del fields[s.r.choice(("current", "longest", "totalDays"))]
            s.w.hash("streak:*", f"streak:{h}", fields)
        else:
            rec = {"current": current, "longest": longest, "lastActive": _day(last_ms),
                   "activeDays": active, "badges": s.r.sample(_BADGES, s.r.randrange(4))}
            if s.r.random() < 0.2:
                rec["totalDays"] = len(active) + s.r.randrange(10)
            s.w.string("streak:*", f"streak:{h}", _dumps(rec))
        s.streaks.add(h)
    spare = [h for i, h in enumerate(s.handles) if i % 7 == 6]
    s.w.rpush("streak:*", f"streak:{spare[0]}", ["2025-05-01", "2025-05-02"])
    s.bad(f"streak:{spare[0]}", "wrong_redis_type")
    s.w.string("streak:*", "streak:lapsed_user", "null")
    s.bad("streak:lapsed_user", "wrong_json_type")
    s.w.hash("streak:*", f"streak:{GHOST_SENDER}", {"current": "lots", "lastActive": "2025-04-01"})
    s.bad(f"streak:{GHOST_SENDER}", "wrong_type")


def _seed_invites(s: _Seed) -> None:
    invites: dict[str, bytes] = {}
    for i, h in enumerate(s.handles):
        if _is_agent(i) or s.r.random() > 0.4:
            continue
        codes = [_invite_code(s, h) for _ in range(s.r.randint(1, 3))]
        for code in codes:
            invites[code] = _dumps(_invite(s, code, h))
        s.codes.update(codes)
        s.w.sadd("vibe:invites:by:*", f"vibe:invites:by:{h}", codes)
    s.w.hash("vibe:invites", "vibe:invites", invites)


def _invite_code(s: _Seed, creator: str) -> str:
    return s.unique(lambda: f"VIBE-{''.join(s.r.choices(_ALNUM_UP, k=4))}-{creator[:4].upper()}")


def _invite(s: _Seed, code: str, creator: str) -> dict[str, Any]:
    created = s.ms(200, 5)
    expires = created + 30 * _DAY
    used = s.r.random() < 0.5
    used_at = created + s.r.randrange(1, 10 * _DAY) if used else None
    rec: dict[str, Any] = {
        "code": code, "created_by": creator, "created_at": _iso(created), "created_at_ts": created,
        "expires_at": _iso(expires), "expires_at_ts": expires,
        "used_by": s.r.choice(s.handles) if used else None,
        "used_at": _iso(used_at) if used_at else None, "status": "used" if used else "available"}
    if s.r.random() < 0.3:
        rec["bonus_for_inviting"] = True
    return rec


def _seed_games(s: _Seed) -> None:
    """`vibe:games`: one JSON object, gameId → game (tictactoe, hangman, wordassociation)."""
    games: dict[str, Any] = {}
    for g in range(s.n(15)):
        kind, created = ("tictactoe", "hangman", "wordassociation")[g % 3], s.ms(120, 1)
        gid = _game_id(s, created)
        a, b = s.pair()
        if kind == "tictactoe":
            state = _ttt_states(s.r, a, b)[-1]
        elif kind == "hangman":
            word = s.r.choice(_HANGMAN)
            guessed = s.r.sample("aeinorstuhgmpdc", s.r.randint(3, 10))
            wrong = sum(c not in word for c in guessed)
            state = {"word": word, "guessed": guessed, "wrongGuesses": wrong, "maxWrong": 6,
                     "winner": a if set(word) <= set(guessed) else None}
        else:
            state = {"words": [{"word": w, "by": (a, b)[k % 2]} for k, w in
                               enumerate(s.r.sample(_WORDS, s.r.randint(2, 8)))], "turn": a}
        status = "finished" if state.get("gameOver") or state.get("winner") else "active"
        games[gid] = {"id": gid, "type": kind, "players": [a, b], "status": status, "state": state,
                      "created_at": _iso(created), "updated_at": _iso(created + 3_600_000)}
        s.games.add(gid)
    s.w.string("vibe:games", "vibe:games", _dumps(games))


def _game_id(s: _Seed, created: int) -> str:
    return s.unique(lambda: f"game_{created}_{s.r.getrandbits(24):06x}")


# ---------------------------------------------------------------- kept in KV, unknown


def _seed_presence(s: _Seed) -> None:
    r, hs, now = s.r, s.handles, s.now_ms
    online = r.sample(hs, max(3, len(hs) // 4))
    index = {}
    for h in online:
        seen = now - r.randrange(300_000)
        index[h] = seen
        s.w.string("presence:data:*", f"presence:data:{h}", _dumps(
            {"handle": h, "status": r.choice(("online", "away")), "workingOn": _sentence(r, 2, 5),
             "lastSeen": seen}), ex=300)
    s.w.zadd("presence:index", "presence:index", index)
    legacy = r.sample(hs, max(4, len(hs) // 3))
    for k, h in enumerate(legacy):
        last = str(now - r.randrange(86_400_000))
        if k % 2:
            s.w.hash("presence:*", f"presence:{h}", {"status": "online", "lastSeen": last})
        else:
            s.w.string("presence:*", f"presence:{h}", _dumps({"status": "away", "lastSeen": last}))
    s.w.sadd("presence:active", "presence:active", online)


def _seed_auth(s: _Seed) -> None:
    r, hs = s.r, s.handles
    for _ in range(len(hs) * 4):
        sid = s.unique(lambda: f"{r.getrandbits(128):032x}")
        s.w.string("session:*", f"session:{sid}", _dumps(
            {"handle": r.choice(hs), "createdAt": _iso(s.now_ms - r.randrange(3_600_000))}), ex=3600)
    for h in hs[::2]:
        s.w.string("session-key:*", f"session-key:{h}", base64.b64encode(r.randbytes(32)))
    for _ in range(len(hs) * 10):
        nonce = s.unique(lambda: f"{r.getrandbits(64):016x}")
        s.w.string("airc:nonce:*", f"airc:nonce:{nonce}", "1", px=600_000)


def _seed_limits(s: _Seed) -> None:
    r, day = s.r, _day(s.now_ms)
    for a in s.agents:
        s.w.string("agent:rate:*", f"agent:rate:{a}", str(r.randrange(1, 30)), ex=60)
        s.w.string("agent:budget:*", f"agent:budget:{a}:{day}", str(r.randrange(100, 5000)), ex=86400)
    for h in s.handles[1::4]:
        s.w.string("agent:greeted:*", f"agent:greeted:{h}", "1")
        s.w.string("tip:ratelimit:*", f"tip:ratelimit:{h}", str(r.randrange(1, 5)), ex=3600)
    kinds = ("message", "register", "board", "presence", "invite", "api")
    for _ in range(len(s.handles) * 10):
        key = _ratelimit_key(s, kinds)
        s.w.string("ratelimit:*", key, str(r.randrange(1, 60)), ex=r.choice((60, 600, 3600)))
    for h in s.handles[::3]:
        s.w.string("observations:count:*", f"observations:count:{h}", str(r.randrange(1, 50)), ex=86400)
    for h in s.handles[::10]:
        s.w.string("observations:ratelimit:*", f"observations:ratelimit:{h}", "1", ex=60)


def _ratelimit_key(s: _Seed, kinds: tuple[str, ...]) -> str:
    """A fresh `ratelimit:{type}:{handle or IP}` key (IPs from the 100.64.0.0/10 block)."""
    def make() -> str:
        ip = f"100.{s.r.randrange(64, 128)}.{s.r.randrange(256)}.{s.r.randrange(1, 255)}"
        return f"ratelimit:{s.r.choice(kinds)}:{s.r.choice(s.handles) if s.r.random() < 0.6 else ip}"
    return s.unique(make)


def _seed_typing(s: _Seed) -> None:
    for a, b in s.r.sample(s.pairs, max(2, len(s.handles) // 15)):
        s.w.string("typing:*", f"typing:{a}:{b}", "1", ex=5)


def _seed_unknown(s: _Seed) -> None:
    """Families kvmigrate does not know: reported by pattern, never touched."""
    r, hs = s.r, s.handles
    for a, b in r.sample(s.pairs, min(len(s.pairs), len(hs) * 2)):
        s.w.string("consent:*", f"consent:{a}:{b}", _dumps(
            {"from": a, "to": b, "status": r.choice(("pending", "accepted", "blocked")),
             "requestedAt": _iso(s.ms(90, 0))}))
    for state in ("pending", "accepted", "blocked"):
        for h in r.sample(hs, max(2, len(hs) // 4)):
            s.w.sadd(f"consent:{state}:*", f"consent:{state}:{h}", r.sample(hs, r.randint(1, 4)))
    for h in hs[::2]:
        s.w.sadd("friends:*", f"friends:{h}", r.sample(hs, r.randint(1, 6)))
    for _ in range(max(2, len(hs) // 3)):
        code = s.unique(lambda: f"{r.getrandbits(40):010x}")
        s.w.string("invite:*", f"invite:{code}", _dumps(
            {"code": code, "from": r.choice(hs), "createdAt": _iso(s.ms(6, 0))}), ex=7 * 86400)
    ids = [s.unique(lambda: f"obs_{r.getrandbits(48):012x}") for _ in range(len(hs) * 10)]
    for oid in ids:
        s.w.string("observation:*", f"observation:{oid}", _dumps(
            {"id": oid, "agent": r.choice(s.agents), "about": r.choice(hs), "text": _sentence(r),
             "createdAt": _iso(s.ms(60, 0))}))
    s.w.rpush("observations:list", "observations:list", ids[::-1])
    s.w.rpush("waitlist", "waitlist", [_dumps({"email": f"person{k}@example.com",
                                               "at": _iso(s.ms(200, 0))}) for k in range(12)])
    _seed_misc_unknown(s)


def _seed_misc_unknown(s: _Seed) -> None:
    r, hs = s.r, s.handles
    for k in range(5):
        s.w.string("reports:*", f"reports:{k + 1}", _dumps(
            {"reporter": r.choice(hs), "target": r.choice(hs), "reason": "spam",
             "at": _iso(s.ms(90, 0))}))
    for k in range(4):
        s.w.string("artifact:*", f"artifact:art_{k}", _dumps({"owner": r.choice(hs), "kind": "snippet",
                                                              "body": _sentence(r)}))
    for h in hs[:4]:
        s.w.rpush("tips:*", f"tips:{h}", [_dumps({"from": r.choice(hs), "amount": r.randint(1, 9)})])
    s.w.hash("webhook:*", "webhook:wh_1", {"url": "https://example.com/hook", "events": "dm,board"})


_STEPS: tuple[Callable[[_Seed], None], ...] = (
    _seed_users, _seed_pairs, _seed_oldest_generation, _seed_inbox_generation,
    _seed_msg_generation, _seed_bad_messages, _seed_board, _order_lists, _break_list_items,
    _emit_lists, _seed_streaks, _seed_invites, _seed_games, _seed_unknown, _seed_auth,
    _seed_limits, _seed_presence, _seed_typing)
