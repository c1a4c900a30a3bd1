"""Families that stay in KV (presence, sessions, nonces, rate limits, typing, friend invites
`invite:*`) and families kvmigrate does not know (`observation:*`, `waitlist`, ...): written so
the migration can prove it leaves them alone. Keys that stay in KV are stamped from `now`, not BASE_TIME.
"""

from __future__ import annotations

import base64

from kvmigrate.tryout.seed.data import dumps, iso, iso_day, sentence
from kvmigrate.tryout.seed.writer import Seed


def seed_presence(s: Seed) -> None:
    r, hs, now = s.r, s.handles, s.now_ms
    online = r.sample(hs, max(3, len(hs) // 4))
    index = {}
    for h in online:
        seen = now - r.randrange(300_000)
        index[h] = seen
        s.w.string("presence:data:*", f"presence:data:{h}", dumps(
            {"handle": h, "status": r.choice(("online", "away")), "workingOn": sentence(r, 2, 5),
             "lastSeen": seen}), ex=300)
    s.w.zadd("presence:index", "presence:index", index)
    legacy = r.sample(hs, max(4, len(hs) // 3))
    for k, h in enumerate(legacy):
        last = str(now - r.randrange(86_400_000))
        if k % 2:
            s.w.hash("presence:*", f"presence:{h}", {"status": "online", "lastSeen": last})
        else:
            s.w.string("presence:*", f"presence:{h}", dumps({"status": "away", "lastSeen": last}))
    s.w.sadd("presence:active", "presence:active", online)


def seed_auth(s: Seed) -> None:
    r, hs = s.r, s.handles
    for _ in range(len(hs) * 4):
        sid = s.unique(lambda: f"{r.getrandbits(128):032x}")
        s.w.string("session:*", f"session:{sid}", dumps(
            {"handle": r.choice(hs), "createdAt": iso(s.now_ms - r.randrange(3_600_000))}), ex=3600)
    for h in hs[::2]:
        s.w.string("session-key:*", f"session-key:{h}", base64.b64encode(r.randbytes(32)))
    for _ in range(len(hs) * 10):
        nonce = s.unique(lambda: f"{r.getrandbits(64):016x}")
        s.w.string("airc:nonce:*", f"airc:nonce:{nonce}", "1", px=600_000)


def seed_limits(s: Seed) -> None:
    r, day = s.r, iso_day(s.now_ms)
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


def _ratelimit_key(s: Seed, kinds: tuple[str, ...]) -> str:
    """A fresh `ratelimit:{type}:{handle or IP}` key (IPs from the 100.64.0.0/10 block)."""
    def make() -> str:
        ip = f"100.{s.r.randrange(64, 128)}.{s.r.randrange(256)}.{s.r.randrange(1, 255)}"
        return f"ratelimit:{s.r.choice(kinds)}:{s.r.choice(s.handles) if s.r.random() < 0.6 else ip}"
    return s.unique(make)


def seed_typing(s: Seed) -> None:
    for a, b in s.r.sample(s.pairs, max(2, len(s.handles) // 15)):
        s.w.string("typing:*", f"typing:{a}:{b}", "1", ex=5)


def seed_unknown(s: Seed) -> None:
    """Families kvmigrate does not know: reported by pattern, never touched."""
    r, hs = s.r, s.handles
    for _ in range(max(2, len(hs) // 3)):
        code = s.unique(lambda: f"{r.getrandbits(40):010x}")
        s.w.string("invite:*", f"invite:{code}", dumps(
            {"code": code, "from": r.choice(hs), "createdAt": iso(s.ms(6, 0))}), ex=7 * 86400)
    ids = [s.unique(lambda: f"obs_{r.getrandbits(48):012x}") for _ in range(len(hs) * 10)]
    for oid in ids:
        s.w.string("observation:*", f"observation:{oid}", dumps(
            {"id": oid, "agent": r.choice(s.agents), "about": r.choice(hs), "text": sentence(r),
             "createdAt": iso(s.ms(60, 0))}))
    s.w.rpush("observations:list", "observations:list", ids[::-1])
    s.w.rpush("waitlist", "waitlist", [dumps({"email": f"person{k}@example.com",
                                              "at": iso(s.ms(200, 0))}) for k in range(12)])
    _seed_misc_unknown(s)


def _seed_misc_unknown(s: Seed) -> None:
    r, hs = s.r, s.handles
    for k in range(4):
        s.w.string("artifact:*", f"artifact:art_{k}", dumps({"owner": r.choice(hs), "kind": "snippet",
                                                             "body": sentence(r)}))
    for h in hs[:4]:
        s.w.rpush("tips:*", f"tips:{h}", [dumps({"from": r.choice(hs), "amount": r.randint(1, 9)})])
    s.w.hash("webhook:*", "webhook:wh_1", {"url": "https://example.com/hook", "events": "dm,board"})
