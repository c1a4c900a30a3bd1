"""Fixed vocabularies of the seeded keyspace and how its values are spelled.

Every data timestamp derives from BASE_TIME (never the clock); `iso` and `iso_day` spell
milliseconds the way the app's JavaScript did (`toISOString()` and its date part).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

BASE_TIME = datetime(2025, 6, 1, tzinfo=timezone.utc)
PIPELINE_SIZE = 2000
MIN_USERS = 8
BASE_MS = int(BASE_TIME.timestamp() * 1000)
DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1)  # naive on purpose: iso appends the "Z" itself
REAL_USERS = 46
_HUMANS = (
    "mara", "bram", "cleo", "nova", "dmitri", "elif", "farah", "gus", "hana", "ivo", "juno", "kai",
    "lena", "milo", "nadia", "otto", "pia", "quinn", "rafa", "sana", "tomas", "uma", "vik", "wren",
    "yara", "zed", "alba", "boris", "chen", "dara", "emeka", "fenna", "goran", "hugo", "ines",
    "jomo", "kira", "luca", "mira", "noor", "oskar", "priya", "rosa", "sven", "tara", "ugo")
_AGENTS = ("ops_agent", "scout_bot", "echo_agent", "muse_agent", "relay_bot", "sage_agent")
#: Handles referenced but never registered: an inviter and a sender whose records are gone.
GHOST_INVITER, GHOST_SENDER = "early_bird", "gone_user"
SYSTEM_SENDERS = ("vibe", "system", "solienne")
WORDS = tuple(
    "ship build parser deploy presence thread invite board streak agent model prompt token "
    "latency cache schema migration postgres redis vercel edge function review merge branch "
    "demo idea help tonight tomorrow coffee pair debug fix broken works finally nice great "
    "launch feedback design music late early weekend sprint test green red".split())
CATEGORIES = ("general", "shipping", "ideas", "help", "showcase", "random")
BADGES = ("early_adopter", "first_message", "streak_7", "streak_30", "board_poster", "night_owl")
VERIFIED = ("none", "none", "x", "farcaster", "github", "team")
CHESS = ("e4", "e5", "Nf3", "Nc6", "Bb5", "a6", "Ba4", "Nf6", "O-O", "Be7", "Re1", "b5", "d4",
         "d5", "c4", "Qxd5", "Qh5", "Bc4", "Qxf7#")
HANGMAN = ("postgres", "presence", "upstash", "migration", "handshake")
LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
ALNUM_UP = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: Families whose lists the app keeps newest first (LPUSH); threads are kept oldest first.
NEWEST_FIRST = ("messages:*", "inbox:*", "outbox:*", "board:entries", "board:category:*",
                "board:user:*")
#: The by_family labels of keys an entity reads (data or derived index).
ENTITY_FAMILIES = frozenset({
    "vibe:handles", "user:*", "vibe:agents", "vibe:users", "messages:*", "thread:*", "msg:*",
    "inbox:*", "outbox:*", "vibe:messages", "unread:*", "board:entry:*", "board:entries",
    "board:category:*", "board:user:*", "streak:*", "vibe:invites", "vibe:invites:by:*",
    "vibe:games", "consent:*", "consent:pending:*", "consent:accepted:*", "consent:blocked:*",
    "friends:*", "vibe:reports", "vibe:report_counts", "report:*", "reports:pending", "reports:count:*"})
#: KV-LAYOUT's "stays in KV" patterns; `Expected.kept` counts keys by these.
KEPT_PATTERNS = ("presence:*", "typing:*", "session:*", "session-key:*", "airc:nonce:*",
                 "agent:rate:*", "agent:budget:*", "agent:greeted:*", "tip:ratelimit:*",
                 "ratelimit:*", "observations:count:*", "observations:ratelimit:*", "invite:*")


def is_agent(i: int) -> bool:
    return i % 8 == 5


def make_handles(users: int) -> list[str]:
    """`users` distinct handles: humans, and an agent in every 8th slot (ops_agent first)."""
    out: list[str] = []
    humans = agents = 0
    for i in range(users):
        names, k = (_AGENTS, agents) if is_agent(i) else (_HUMANS, humans)
        out.append(names[k % len(names)] + (str(k // len(names)) if k >= len(names) else ""))
        agents, humans = (agents + 1, humans) if is_agent(i) else (agents, humans + 1)
    return out


def wire(h: str) -> str:
    """The handle as message keys and fields spell it (`ops-agent` for `ops_agent`)."""
    return "ops-agent" if h == "ops_agent" else h


def iso(ms: int) -> str:
    """JavaScript's toISOString()."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"


def iso_day(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).date().isoformat()


def b36(n: int) -> str:
    out = ""
    while n:
        n, d = divmod(n, 36)
        out = B36[d] + out
    return out or "0"


def sentence(r: random.Random, lo: int = 3, hi: int = 14) -> str:
    return " ".join(r.choices(WORDS, k=r.randint(lo, hi))).capitalize()


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def thread_key(a: str, b: str) -> str:
    return "thread:" + ":".join(sorted((a, b)))
