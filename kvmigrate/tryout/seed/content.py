"""Board entries (shapes A and B), streaks, invites and `vibe:games`, bad records included."""

from __future__ import annotations

from typing import Any

from kvmigrate.tryout.seed.data import (
    ALNUM_UP,
    B36,
    BADGES,
    CATEGORIES,
    DAY,
    GHOST_SENDER,
    HANGMAN,
    WORDS,
    dumps,
    is_agent,
    iso,
    iso_day,
    sentence,
)
from kvmigrate.tryout.seed.messages import ttt_states
from kvmigrate.tryout.seed.writer import Seed


def seed_board(s: Seed) -> None:
    """A and B entries; `board:entries` keeps only the newest 100, B indexes by category/author."""
    entries = sorted((_board_entry(s, k) for k in range(max(130, s.n(130)))),
                     key=lambda e: e["timestamp"])
    for e in entries:
        s.w.string("board:entry:*", f"board:entry:{e['id']}", dumps(e))
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
        base = {"id": eid, "author": s.handles[k + 1], "content": sentence(s.r),
                "category": "general", "tags": [], "timestamp": old + k}
        s.w.string("board:entry:*", f"board:entry:{eid}", dumps(
            patch if isinstance(patch, list) else {**base, **patch}))
        s.bad(f"board:entry:{eid}", why)


def _board_entry(s: Seed, k: int) -> dict[str, Any]:
    r, ms = s.r, s.ms(200, 0)
    author, category = r.choice(s.handles), r.choice(CATEGORIES)
    tags = r.sample(WORDS, r.randrange(4))
    if k % 5 in (1, 3):  # B
        eid = s.unique(lambda: f"{category}_{ms}_{''.join(r.choices(B36, k=7))}")
        reactions = {e: r.sample(s.handles, r.randint(1, 3)) for e in ("🔥", "🚀") if r.random() < 0.4}
        comments = [{"author": r.choice(s.handles), "text": sentence(r), "timestamp": ms + 60_000 * (c + 1)}
                    for c in range(r.randrange(3))]
        return {"id": eid, "author": author, "category": category, "content": sentence(r, 5, 30),
                "tags": tags, "timestamp": ms, "reactions": reactions, "comments": comments}
    entry = {"id": s.unique(lambda: f"entry_{ms}_{r.getrandbits(24):06x}"), "author": author,
             "content": sentence(r, 5, 30), "category": category, "tags": tags, "timestamp": ms}
    if r.random() < 0.2:
        del entry["category"]
    return entry


def seed_streaks(s: Seed) -> None:
    """Hash (A) or JSON string (B) per handle; every 7th handle has none; three bad ones."""
    for i, h in enumerate(s.handles):
        if i % 7 == 6:
            continue
        last_ms, current = s.ms(20, 0), s.r.randrange(0, 40)
        longest, active = current + s.r.randrange(0, 30), sorted(
            {iso_day(last_ms - d * DAY) for d in s.r.sample(range(60), s.r.randint(1, 30))})
        if i % 2 == 0:
            fields = {"current": str(current), "longest": str(longest),
                      "totalDays": str(longest + s.r.randrange(40)), "lastActive": iso_day(last_ms)}
            if s.r.random() < 0.2:
                del fields[s.r.choice(("current", "longest", "totalDays"))]
            s.w.hash("streak:*", f"streak:{h}", fields)
        else:
            rec = {"current": current, "longest": longest, "lastActive": iso_day(last_ms),
                   "activeDays": active, "badges": s.r.sample(BADGES, s.r.randrange(4))}
            if s.r.random() < 0.2:
                rec["totalDays"] = len(active) + s.r.randrange(10)
            s.w.string("streak:*", f"streak:{h}", dumps(rec))
        s.streaks.add(h)
    spare = [h for i, h in enumerate(s.handles) if i % 7 == 6]
    s.w.rpush("streak:*", f"streak:{spare[0]}", ["2025-05-01", "2025-05-02"])
    s.bad(f"streak:{spare[0]}", "wrong_redis_type")
    s.w.string("streak:*", "streak:lapsed_user", "null")
    s.bad("streak:lapsed_user", "wrong_json_type")
    s.w.hash("streak:*", f"streak:{GHOST_SENDER}", {"current": "lots", "lastActive": "2025-04-01"})
    s.bad(f"streak:{GHOST_SENDER}", "wrong_type")


def seed_invites(s: Seed) -> None:
    invites: dict[str, bytes] = {}
    for i, h in enumerate(s.handles):
        if is_agent(i) or s.r.random() > 0.4:
            continue
        codes = [_invite_code(s, h) for _ in range(s.r.randint(1, 3))]
        for code in codes:
            invites[code] = dumps(_invite(s, code, h))
        s.codes.update(codes)
        s.w.sadd("vibe:invites:by:*", f"vibe:invites:by:{h}", codes)
    s.w.hash("vibe:invites", "vibe:invites", invites)


def _invite_code(s: Seed, creator: str) -> str:
    return s.unique(lambda: f"VIBE-{''.join(s.r.choices(ALNUM_UP, k=4))}-{creator[:4].upper()}")


def _invite(s: Seed, code: str, creator: str) -> dict[str, Any]:
    created = s.ms(200, 5)
    expires = created + 30 * DAY
    used = s.r.random() < 0.5
    used_at = created + s.r.randrange(1, 10 * DAY) if used else None
    rec: dict[str, Any] = {
        "code": code, "created_by": creator, "created_at": iso(created), "created_at_ts": created,
        "expires_at": iso(expires), "expires_at_ts": expires,
        "used_by": s.r.choice(s.handles) if used else None,
        "used_at": iso(used_at) if used_at else None, "status": "used" if used else "available"}
    if s.r.random() < 0.3:
        rec["bonus_for_inviting"] = True
    return rec


def seed_games(s: Seed) -> None:
    """`vibe:games`: one JSON object, gameId → game (tictactoe, hangman, wordassociation)."""
    games: dict[str, Any] = {}
    for g in range(s.n(15)):
        kind, created = ("tictactoe", "hangman", "wordassociation")[g % 3], s.ms(120, 1)
        gid = _game_id(s, created)
        a, b = s.pair()
        if kind == "tictactoe":
            state = ttt_states(s.r, a, b)[-1]
        elif kind == "hangman":
            word = s.r.choice(HANGMAN)
            guessed = s.r.sample("aeinorstuhgmpdc", s.r.randint(3, 10))
            wrong = sum(c not in word for c in guessed)
            state = {"word": word, "guessed": guessed, "wrongGuesses": wrong, "maxWrong": 6,
                     "winner": a if set(word) <= set(guessed) else None}
        else:
            state = {"words": [{"word": w, "by": (a, b)[k % 2]} for k, w in
                               enumerate(s.r.sample(WORDS, s.r.randint(2, 8)))], "turn": a}
        status = "finished" if state.get("gameOver") or state.get("winner") else "active"
        games[gid] = {"id": gid, "type": kind, "players": [a, b], "status": status, "state": state,
                      "created_at": iso(created), "updated_at": iso(created + 3_600_000)}
        s.games.add(gid)
    s.w.string("vibe:games", "vibe:games", dumps(games))


def _game_id(s: Seed, created: int) -> str:
    return s.unique(lambda: f"game_{created}_{s.r.getrandbits(24):06x}")
