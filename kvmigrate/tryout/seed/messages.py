"""Messages in all three generations, the lists that index them, and the bad ones.

Oldest: the `vibe:messages` array; then full JSON items in `messages:{to}` and `thread:{a}:{b}`;
newest: `msg:{id}` strings indexed by id lists (`inbox:*`, `outbox:*`, `thread:*`) and counted
in `unread:*`. List contents are collected on the seeding state and written last, in the order
the app kept them, after one item in a `messages:*` and a `thread:*` list is broken.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections import Counter, defaultdict
from typing import Any

from kvmigrate.tryout.seed.data import (
    B36,
    BASE_MS,
    CHESS,
    DAY,
    GHOST_SENDER,
    LINES,
    NEWEST_FIRST,
    SYSTEM_SENDERS,
    b36,
    dumps,
    iso,
    sentence,
    thread_key,
    wire,
)
from kvmigrate.tryout.seed.writer import Seed


def seed_pairs(s: Seed) -> None:
    pairs = {(GHOST_SENDER, s.handles[0])}
    for i, h in enumerate(s.handles):
        for j in s.r.sample(range(len(s.handles)), 3):
            if j != i:
                a, b = sorted((wire(h), wire(s.handles[j])))
                pairs.add((a, b))
    s.pairs = sorted(pairs)


def _old_id(s: Seed, ms: int) -> str:
    return s.unique(lambda: f"{ms}-{''.join(s.r.choices(B36, k=6))}")


def _msg_id(s: Seed, ms: int) -> str:
    return s.unique(lambda: f"msg_{b36(ms)}{b36(s.r.getrandbits(25)):0>5}")


def seed_oldest_generation(s: Seed) -> None:
    """`vibe:messages`: one JSON array; every 4th message was also copied to `msg:{id}`."""
    items: list[Any] = []
    for ms in sorted(s.ms(200, 150) for _ in range(min(2000, s.n(150)))):
        a, b = s.pair()
        items.append({"id": _old_id(s, ms), "from": a, "to": b, "text": sentence(s.r),
                      "timestamp": ms, "read": s.r.random() < 0.7})
    for k, m in enumerate(items):
        s.message_ids.add(m["id"])
        if k % 4 == 1:
            s.w.string("msg:*", f"msg:{m['id']}", dumps({
                "id": m["id"], "from": m["from"], "to": m["to"], "text": m["text"],
                "createdAt": iso(m["timestamp"]), "read": m["read"]}))
    index = len(items) // 2
    items.insert(index, "[object Object]")
    s.bad_items.append(("vibe:messages", index, "wrong_json_type"))
    s.w.string("vibe:messages", "vibe:messages", dumps(items))


def seed_inbox_generation(s: Seed) -> None:
    """`messages:{to}` full JSON items, repeated in `thread:{a}:{b}`; older ones use `text`."""
    times = sorted(s.ms(150, 40) for _ in range(s.n(320)))
    for k, ms in enumerate(times):
        a, b = s.pair()
        sender = "@Nova" if a == "nova" and s.r.random() < 0.5 else a
        m: dict[str, Any] = {"id": _old_id(s, ms), "from": sender, "to": b}
        m["text" if k < len(times) * 0.4 else "body"] = sentence(s.r)
        read_at = iso(ms + s.r.randrange(DAY)) if s.r.random() < 0.7 else None
        m.update(type="ping" if s.r.random() < 0.1 else "dm", timestamp=ms, read_at=read_at)
        s.message_ids.add(m["id"])
        s.push("messages:*", f"messages:{b}", dumps(m))
        s.push("thread:*", thread_key(a, b), dumps(m))


def seed_msg_generation(s: Seed) -> None:
    """`msg:{id}` + id lists; messages older than 30 days were deleted but stay in the lists."""
    msgs = [_plain_message(s) for _ in range(s.n(850))] + _system_messages(s) + _dm_games(s)
    msgs.sort(key=lambda tm: tm[0])
    unread: dict[str, Counter[str]] = defaultdict(Counter)
    for ms, m in msgs:
        if ms < BASE_MS - 30 * DAY:
            s.dangling.add(m["id"])
        else:
            s.w.string("msg:*", f"msg:{m['id']}", dumps(m))
            s.message_ids.add(m["id"])
        s.push("inbox:*", f"inbox:{m['to']}", m["id"])
        if not m.get("system"):
            s.push("outbox:*", f"outbox:{m['from']}", m["id"])
            s.push("thread:*", thread_key(m["from"], m["to"]), m["id"])
            if not m["read"]:
                unread[m["to"]][m["from"]] += 1
    for to, counts in sorted(unread.items()):
        s.w.hash("unread:*", f"unread:{to}", {f: str(c) for f, c in sorted(counts.items())})


def _plain_message(s: Seed) -> tuple[int, dict[str, Any]]:
    r, ms = s.r, s.ms(36, 0)
    a, b = s.pair()
    mid = s.unique(lambda: str(uuid.UUID(int=r.getrandbits(128), version=4))) \
        if r.random() < 0.03 else _msg_id(s, ms)
    m: dict[str, Any] = {"id": mid, "from": a, "to": b, "text": sentence(r)}
    if r.random() < 0.3:
        m["body"] = m["text"]
    if r.random() < 0.05:
        m["payload"] = {"type": "handshake", "step": r.choice(("hello", "ack")),
                        "publicKey": base64.b64encode(r.randbytes(32)).decode()}
    if r.random() < 0.2:
        m.update(v=2, signature=base64.b64encode(r.randbytes(64)).decode(),
                 signatureVerified=r.random() < 0.9)
    m.update(createdAt=iso(ms), read=r.random() < 0.6)
    if m["read"]:
        m["readAt"] = iso(ms + r.randrange(1, DAY))
    if r.random() < 0.05:
        m["consent"] = r.choice(("pending", "accepted"))
    return ms, m


def _system_messages(s: Seed) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for _ in range(s.n(20)):
        ms = s.ms(36, 0)
        out.append((ms, {"id": _msg_id(s, ms), "from": s.r.choice(SYSTEM_SENDERS),
                         "to": wire(s.r.choice(s.handles)), "text": sentence(s.r),
                         "createdAt": iso(ms), "read": False, "system": True}))
    return out


def _dm_games(s: Seed) -> list[tuple[int, dict[str, Any]]]:
    """Games played through DMs: one message per move, the last state has the result."""
    out = []
    for g in range(s.n(10)):
        a, b = s.pair()
        game = "tictactoe" if g % 2 == 0 else "chess"
        if game == "tictactoe":
            states = ttt_states(s.r, a, b)
        else:
            states = chess_states(s.r, a, b, draw=g % 4 == 3)
        ms = s.ms(29, 2)
        for k, state in enumerate(states):
            ms += s.r.randrange(60_000, 3_600_000)
            payload = {"type": "game", "version": 1, "game": game, "state": state,
                       "idempotencyKey": f"{game}-{a}-{b}-{g}-{k}"}
            out.append((ms, {"id": _msg_id(s, ms), "from": (a, b)[k % 2], "to": (b, a)[k % 2],
                             "text": f"{game}: move {k + 1}", "payload": payload,
                             "createdAt": iso(ms), "read": True}))
    return out


def ttt_states(r: random.Random, x: str, o: str) -> list[dict[str, Any]]:
    board, marks, states = [""] * 9, {"X": x, "O": o}, []
    for turn in range(9):
        board[r.choice([i for i, c in enumerate(board) if not c])] = "XO"[turn % 2]
        winner = next((marks[board[i]] for i, j, k in LINES
                       if board[i] and board[i] == board[j] == board[k]), None)
        state: dict[str, Any] = {"board": list(board), "players": marks,
                                 "turn": marks["OX"[turn % 2]], "moves": turn + 1}
        states.append(state)
        if winner or turn == 8:
            state.update(gameOver=True, winner=winner, isDraw=winner is None)
            break
    return states


def chess_states(r: random.Random, white: str, black: str, *, draw: bool) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = [
        {"white": white, "black": black, "pgn": " ".join(CHESS[:k + 1]),
         "turn": "b" if k % 2 == 0 else "w", "moveCount": k + 1}
        for k in range(r.randrange(5, len(CHESS)))]
    winner = None if draw else r.choice((white, black))
    states[-1].update(gameOver=True, winner=winner, isDraw=draw,
                      result="stalemate" if draw else "checkmate")
    return states


def seed_bad_messages(s: Seed) -> None:
    """Whole `msg:*` records that cannot migrate; no list points to them."""
    ms = s.ms(20, 10)
    ids = [_msg_id(s, ms + k) for k in range(5)]
    good = {"from": s.handles[1], "to": s.handles[2], "createdAt": iso(ms), "read": False}
    s.w.string("msg:*", f"msg:{ids[0]}", dumps({"id": ids[0], "text": "hi", **good})[:-9])
    s.bad(f"msg:{ids[0]}", "invalid_json")
    s.w.string("msg:*", f"msg:{ids[1]}", dumps({"id": ids[1], "text": "caf?", **good})
               .replace(b"caf?", b"caf\xe9 cr\xe8me"))
    s.bad(f"msg:{ids[1]}", "invalid_utf8")
    s.w.string("msg:*", f"msg:{ids[2]}", dumps(
        {"id": ids[2], "text": "from the future", **good, "createdAt": "+275760-09-13T00:00:00.000Z"}))
    s.bad(f"msg:{ids[2]}", "bad_timestamp")
    s.w.string("msg:*", f"msg:{ids[3]}", dumps({"id": ids[3], **good, "from": "john doe", "text": "yo"}))
    s.bad(f"msg:{ids[3]}", "invalid_handle")
    blob = base64.b64encode(s.r.randbytes(900_000)).decode()
    huge = dumps({"id": ids[4], **good, "text": "screenshot", "payload": {"image": blob}})
    s.w.string("msg:*", f"msg:{ids[4]}", huge[: len(huge) - 100])
    s.bad(f"msg:{ids[4]}", "huge_value")


def break_list_items(s: Seed) -> None:
    """One truncated JSON item inside a good `messages:*` list and a good `thread:*` list."""
    for family in ("messages:*", "thread:*"):
        keys = sorted(k for k, (fam, items) in s.lists.items()
                      if fam == family and sum(isinstance(i, bytes) for i in items) >= 3)
        key = s.r.choice(keys)
        items = s.lists[key][1]
        index = len(items) // 2
        items.insert(index, b'{"id": "' + str(s.r.getrandbits(40)).encode() + b'", "from": "')
        s.bad_items.append((key, index, "invalid_json"))


def emit_lists(s: Seed) -> None:
    for key, (family, items) in s.lists.items():
        s.w.rpush(family, key, items)


def order_lists(s: Seed) -> None:
    for _key, (family, items) in s.lists.items():
        if family in NEWEST_FIRST:
            items.reverse()
