"""Users: the `vibe:handles` registry, legacy `user:*` hashes, `vibe:agents` and `vibe:users`.

Every fifth handle is missing from the registry and lives only in a legacy hash; `nova` is
stored as `user:@Nova`; `user:the dude` is the deliberately bad handle.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from kvmigrate.tryout.seed.data import (
    ALNUM_UP,
    DAY,
    GHOST_INVITER,
    VERIFIED,
    dumps,
    is_agent,
    iso,
    sentence,
)
from kvmigrate.tryout.seed.writer import Seed


def seed_users(s: Seed) -> None:
    registry: dict[str, bytes] = {}
    agents: dict[str, bytes] = {}
    vusers: dict[str, bytes] = {}
    for i, h in enumerate(s.handles):
        reg_ms = s.ms(240, 30)
        in_registry = i % 5 != 4
        if in_registry:
            registry[h] = dumps(_registry_record(s, i, h, reg_ms))
        if not is_agent(i) and (not in_registry or h == "nova" or s.r.random() < 0.25):
            key = "user:@Nova" if h == "nova" else f"user:{h}"
            s.w.hash("user:*", key, _legacy_user(s, "@Nova" if h == "nova" else h, reg_ms))
        if is_agent(i):
            agents[h] = dumps(_agent_record(s, h, reg_ms))
        if is_agent(i) or s.r.random() < 0.2:
            vusers[h] = dumps({"handle": h, "display_name": h.title(), "one_liner": sentence(s.r),
                               "is_agent": is_agent(i), "operator": s.handles[0] if is_agent(i)
                               else None, "created_at": iso(reg_ms)})
    s.w.hash("vibe:handles", "vibe:handles", registry)
    s.w.hash("vibe:agents", "vibe:agents", agents)
    s.w.hash("vibe:users", "vibe:users", vusers)
    s.w.hash("user:*", "user:the dude", {"username": "the dude", "building": "abiding",
                                         "createdAt": iso(s.ms(200, 100))})
    s.bad("user:the dude", "invalid_handle")


def _registry_record(s: Seed, i: int, h: str, reg_ms: int) -> dict[str, Any]:
    r = s.r
    rec: dict[str, Any] = {"handle": h, "registeredAt": iso(reg_ms), "registeredAtTs": reg_ms}
    if r.random() < 0.8:
        rec["first_active_at"] = iso(reg_ms + r.randrange(DAY))
        rec["last_active_at"] = iso(reg_ms + r.randrange(30 * DAY)) if r.random() < 0.8 else None
    rec.update(messages_sent=r.randrange(120), genesis=i < 12, verified=r.choice(VERIFIED))
    if rec["verified"] == "x" or r.random() < 0.3:
        rec["x_handle"] = f"{h}_x"
    if rec["verified"] == "github" or r.random() < 0.2:
        rec["github_handle"] = f"{h}-dev"
    if r.random() < 0.3:
        rec["displayName"] = h.title()
    if r.random() < 0.7:
        rec["one_liner"] = sentence(r)
    if i == 7 or (i > 0 and r.random() < 0.4):
        rec["invited_by"] = GHOST_INVITER if i == 7 else s.handles[r.randrange(i)]
        rec["invite_code"] = f"VIBE-{''.join(r.choices(ALNUM_UP, k=4))}-{rec['invited_by'][:4].upper()}"
    if is_agent(i):
        rec.update(isAgent=True, operator=s.handles[0], agentType=r.choice(("assistant", "bot")),
                   capabilities=r.sample(("dm", "board", "games", "code", "search"), 2),
                   model=r.choice(("claude-sonnet-4", "gpt-4o", "llama-3.1-70b")))
    rec["status"] = "active" if r.random() < 0.9 else "suspended"
    return rec


def _legacy_user(s: Seed, username: str, reg_ms: int) -> dict[str, str]:
    r = s.r
    rec = {"username": username, "building": sentence(r), "createdAt": iso(reg_ms),
           "updatedAt": iso(reg_ms + r.randrange(60 * DAY)),
           "invitedBy": r.choice(s.handles[:6]) if r.random() < 0.4 else "null",
           "inviteCode": "null", "publicKey": base64.b64encode(r.randbytes(32)).decode(),
           "registry": "vibe", "status": "active"}
    if r.random() < 0.5:
        rec["recoveryKey"] = base64.b64encode(r.randbytes(24)).decode()
    if r.random() < 0.5:
        rec["keyRotatedAt"] = str(reg_ms + r.randrange(90 * DAY))
    return rec


def _agent_record(s: Seed, h: str, reg_ms: int) -> dict[str, Any]:
    return {"handle": h, "display_name": h.replace("_", " ").title(), "one_liner": sentence(s.r),
            "is_agent": True, "operator": s.handles[0], "model": "claude-sonnet-4",
            "api_key_hash": hashlib.sha256(s.r.randbytes(32)).hexdigest(),
            "registered_at": iso(reg_ms), "status": "active"}
