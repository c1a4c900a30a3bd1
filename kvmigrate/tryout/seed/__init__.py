"""Seed a realistic /vibe keyspace: every shape in KV-LAYOUT.md, legacy and bad records included.

Used by `kvmigrate seed`, `kvmigrate demo`, end-to-end tests and benchmarks. `seed_keyspace`
writes; it refuses a non-empty logical db unless `force`. Cost: DBSIZE, then one command per key
(plus one DEL before each non-string key with `force`) on non-transactional pipelines of
PIPELINE_SIZE commands, then DBSIZE.

Output is deterministic: the same (users, seed, scale, now) gives a byte-identical keyspace. Data
timestamps derive from BASE_TIME, never from the clock; `now` (default BASE_TIME) only stamps the
keys that stay in KV (presence, sessions, rate limits: their values and the date in
`agent:budget:*`). Only expiring keys carry a TTL: presence:data (EX 300), typing (EX 5),
sessions (EX 3600), nonces (PX), rate limits and friend invites `invite:*` (7 days). Handles,
streaks, invites and the kept/unknown families grow with `users`; messages, board entries and
games with `users * scale`. 46 users at scale 1 is the size of the real store (about
1,400 messages, a tenth of them already deleted, in 3,300 keys); 2,000 users at scale 3 make
about 220,000 keys. `vibe:messages`, the oldest generation, stops at 2,000 messages;
the board always has more entries (at least 130) than `board:entries` keeps (100).

`SeedResult.expected` is the oracle tests compare against: only facts fixed by the layout document
(which ids exist, what dangles, which records are deliberately bad), never a transformer's rule.
`typing:*` keys expire after 5 s, so `expected.kept["typing:*"]` holds only right after seeding.

Modules: `keyspace` (the entry point, the order of the steps and the result types), `writer` (the
pipelined writer, the seeding state and the oracle it builds), `data` (fixed vocabularies and how
values are spelled), `users`, `messages` (every message generation and the per-handle lists),
`content` (board, streaks, invites, games), `connections` (DM consent, friends, moderation
reports), `policy` (families that stay in KV or that kvmigrate does not know) and `memories` (the thread-memory files).
"""

from __future__ import annotations

from kvmigrate.tryout.seed.data import BASE_TIME, MIN_USERS
from kvmigrate.tryout.seed.keyspace import SeedResult, SeedRun, seed_keyspace
from kvmigrate.tryout.seed.memories import ExpectedMemories, write_memory_files
from kvmigrate.tryout.seed.writer import Expected

__all__ = [
    "BASE_TIME", "MIN_USERS", "Expected", "ExpectedMemories", "SeedResult", "SeedRun",
    "seed_keyspace", "write_memory_files",
]
