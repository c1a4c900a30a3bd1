"""The app's read views, each computed twice: from KV rows (read by `shadow_keys`) and from
Postgres with the SQL the migrated app serves. Pure on the KV side; the Postgres side only reads.

Where the app's two codebases differ, the view is the one the migrated app serves
(README, "shadow"):

* inbox — A's `api/messages.js` list: a user's messages, newest first (created_at, then id),
  the newest INBOX_LIMIT ids with their read flags, and the user's unread total.
* unread — A's `api/messages/inbox.js` grouping: per sender the count, the unread count and the
  newest time, unread senders first, then the newest, at most 50 senders.
* thread — A's `api/messages/thread.js`: the oldest THREAD_LIMIT messages between the user and
  the sender of their newest message, oldest first.
* board — A's `api/board.js`: the newest BOARD_LIMIT posts, overall and per category.
* leaderboard — A's `api/streaks.js` leaderboard: handles not ending in `_agent`, by current
  then longest streak (then handle), top LEADERBOARD_LIMIT.
* invites — A's `api/invites/my.js`: the codes of the user's `vibe:invites:by:{h}` set found in
  `vibe:invites` (Postgres: invites created by the user), available first, then newest.
* profile — A's `api/users.js` GET: the users row (display_name, one_liner, created_at,
  invited_by); a placeholder row (a handle referenced but never registered) is no profile.
* games — a user's game results (id, game, players, winner; NULL winner = a draw), newest first.

A KV copy of a message is every copy the app's read paths hold (`msg:*`, `messages:{to}` with
its `unread:{to}` counters, `thread:*`, `vibe:messages`), combined by the data rules (read in
any copy is read); keys that collapse into one handle combine by the rule of their entity.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

from kvmigrate.adapters.pg.loader import dedupe
from kvmigrate.entities import select_entities
from kvmigrate.model.records import SourcedRow

INBOX_LIMIT = 50
THREAD_LIMIT = 100
BOARD_LIMIT = 20
LEADERBOARD_LIMIT = 20
UNREAD_SENDERS = 50
VIEWS = ("inbox", "unread", "thread", "board", "leaderboard", "invites", "profile", "games")
#: Views computed once per run rather than per user.
GLOBAL_VIEWS = frozenset({"board", "leaderboard"})

Item = dict[str, Any]
View = dict[str, Any]  # {"items": [...], plus scalar fields}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _spec(table: str) -> Any:
    for entity in select_entities(()):
        for spec in entity.tables:
            if spec.name == table:
                return spec
    raise KeyError(table)


def combine(table: str, rows: Sequence[SourcedRow]) -> list[Mapping[str, Any]]:
    """One row per primary key, by the table's rule (the loader's own)."""
    return [r.values for r in dedupe(_spec(table), rows)]


def _when(v: Any) -> dt.datetime:
    return v if isinstance(v, dt.datetime) else _EPOCH


def _desc(rows: list[Mapping[str, Any]], pk: str) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: (_when(r.get("created_at")), str(r[pk])), reverse=True)


# --- KV side: the views from combined rows --------------------------------------------------

def kv_inbox(messages: Sequence[Mapping[str, Any]], handle: str) -> View:
    mine = _desc([m for m in messages if m["to_handle"] == handle], "id")
    return {"items": [{"id": m["id"], "from": m["from_handle"], "read": bool(m["read"])} for m in mine[:INBOX_LIMIT]],
            "unread": sum(1 for m in mine if not m["read"]), "total": len(mine)}


def kv_unread(messages: Sequence[Mapping[str, Any]], handle: str) -> View:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for m in messages:
        if m["to_handle"] == handle:
            groups.setdefault(m["from_handle"], []).append(m)
    items: list[Item] = [{"from": s, "count": len(ms), "unread": sum(1 for m in ms if not m["read"]),
                          "latest": max(_when(m.get("created_at")) for m in ms)} for s, ms in groups.items()]
    items.sort(key=lambda i: (-int(i["unread"]), -_when(i["latest"]).timestamp(), str(i["from"])))
    return {"items": items[:UNREAD_SENDERS]}


def thread_partner(messages: Sequence[Mapping[str, Any]], handle: str) -> str | None:
    """The sender of the user's newest message (the thread a user opens first)."""
    mine = _desc([m for m in messages if m["to_handle"] == handle and m["from_handle"] != handle], "id")
    return str(mine[0]["from_handle"]) if mine else None


def kv_thread(messages: Sequence[Mapping[str, Any]], handle: str, other: str) -> View:
    pair = {handle, other}
    both = [m for m in messages if {m["from_handle"], m["to_handle"]} == pair]
    both.sort(key=lambda m: (_when(m.get("created_at")), str(m["id"])))
    return {"with": other, "items": [{"id": m["id"], "from": m["from_handle"], "read": bool(m["read"])}
                                     for m in both[:THREAD_LIMIT]]}


def kv_board(posts: Sequence[Mapping[str, Any]], category: str | None) -> View:
    chosen = _desc([p for p in posts if category is None or p.get("category") == category], "id")
    return {"category": category or "all",
            "items": [{"id": p["id"], "author": p["author"], "category": p.get("category")}
                      for p in chosen[:BOARD_LIMIT]]}


def _streak_item(r: Mapping[str, Any]) -> Item:
    last = r.get("last_active")
    return {"handle": r["handle"], "current": r.get("current_streak") or 0, "longest": r.get("longest_streak") or 0,
            "last_active": last.isoformat() if isinstance(last, dt.date) else last}


def kv_leaderboard(streaks: Sequence[Mapping[str, Any]]) -> View:
    ranked = sorted((r for r in streaks if not str(r["handle"]).endswith("_agent")),
                    key=lambda r: (-(r.get("current_streak") or 0), -(r.get("longest_streak") or 0), r["handle"]))
    return {"items": [_streak_item(r) for r in ranked[:LEADERBOARD_LIMIT]]}


def kv_invites(invites: Sequence[Mapping[str, Any]], codes: set[str]) -> View:
    mine = [i for i in invites if i["code"] in codes]
    mine.sort(key=lambda i: (i.get("status") != "available", -_when(i.get("created_at")).timestamp(), i["code"]))
    return {"items": [{"code": i["code"], "status": i.get("status"), "used_by": i.get("used_by")} for i in mine]}


def kv_profile(users: Sequence[Mapping[str, Any]], handle: str) -> View:
    row = next((u for u in users if u["handle"] == handle), None)
    return {"items": [] if row is None else [_profile_item(row)]}


def _profile_item(row: Mapping[str, Any]) -> Item:
    return {"handle": row["handle"], "display_name": row.get("display_name"), "one_liner": row.get("one_liner"),
            "created_at": row.get("created_at"), "invited_by": row.get("invited_by")}


def kv_games(games: Sequence[Mapping[str, Any]], handle: str) -> View:
    mine = _desc([g for g in games if handle in (g.get("players") or ())], "id")
    return {"items": [{"id": g["id"], "game": g.get("game"), "players": sorted(g.get("players") or ()),
                       "winner": g.get("winner")} for g in mine]}


# --- Postgres side: the SQL the migrated app serves ------------------------------------------

def _all(conn: psycopg.Connection, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def pg_inbox(conn: psycopg.Connection, handle: str) -> View:
    rows = _all(conn, "SELECT id, from_handle, read FROM messages WHERE to_handle = %s"
                " ORDER BY created_at DESC, id DESC LIMIT %s", (handle, INBOX_LIMIT))
    unread, total = _all(conn, "SELECT count(*) FILTER (WHERE NOT read), count(*) FROM messages"
                         " WHERE to_handle = %s", (handle,))[0]
    return {"items": [{"id": i, "from": f, "read": bool(r)} for i, f, r in rows], "unread": unread, "total": total}


def pg_unread(conn: psycopg.Connection, handle: str) -> View:
    rows = _all(conn, "SELECT from_handle, count(*), count(*) FILTER (WHERE NOT read) AS unread,"
                " max(created_at) AS latest FROM messages WHERE to_handle = %s GROUP BY from_handle"
                " ORDER BY unread DESC, latest DESC, from_handle LIMIT %s", (handle, UNREAD_SENDERS))
    return {"items": [{"from": f, "count": n, "unread": u, "latest": t} for f, n, u, t in rows]}


def pg_thread(conn: psycopg.Connection, handle: str, other: str) -> View:
    rows = _all(conn, "SELECT id, from_handle, read FROM messages WHERE LEAST(from_handle, to_handle) = LEAST(%s, %s)"
                " AND GREATEST(from_handle, to_handle) = GREATEST(%s, %s) ORDER BY created_at ASC, id ASC LIMIT %s",
                (handle, other, handle, other, THREAD_LIMIT))
    return {"with": other, "items": [{"id": i, "from": f, "read": bool(r)} for i, f, r in rows]}


def pg_board(conn: psycopg.Connection, category: str | None) -> View:
    rows = _all(conn, "SELECT id, author, category FROM board_posts WHERE %s::text IS NULL OR category = %s"
                " ORDER BY created_at DESC, id DESC LIMIT %s", (category, category, BOARD_LIMIT))
    return {"category": category or "all", "items": [{"id": i, "author": a, "category": c} for i, a, c in rows]}


def pg_board_categories(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in _all(conn, "SELECT DISTINCT category FROM board_posts WHERE category IS NOT NULL", ())}


def pg_leaderboard(conn: psycopg.Connection) -> View:
    rows = _all(conn, "SELECT handle, current_streak, longest_streak, last_active FROM streaks"
                " WHERE handle NOT LIKE %s ORDER BY current_streak DESC, longest_streak DESC, handle LIMIT %s",
                ("%\\_agent", LEADERBOARD_LIMIT))
    return {"items": [_streak_item({"handle": h, "current_streak": c, "longest_streak": lg, "last_active": la})
                      for h, c, lg, la in rows]}


def pg_invites(conn: psycopg.Connection, handle: str) -> View:
    rows = _all(conn, "SELECT code, status, used_by FROM invites WHERE created_by = %s"
                " ORDER BY status IS DISTINCT FROM 'available', created_at DESC NULLS LAST, code", (handle,))
    return {"items": [{"code": c, "status": s, "used_by": u} for c, s, u in rows]}


def pg_profile(conn: psycopg.Connection, handle: str) -> View:
    rows = _all(conn, "SELECT handle, display_name, one_liner, created_at, invited_by FROM users"
                " WHERE handle = %s AND NOT coalesce(settings @> '{\"placeholder\": true}', false) LIMIT 1",
                (handle,))
    cols = ("handle", "display_name", "one_liner", "created_at", "invited_by")
    return {"items": [_profile_item(dict(zip(cols, r, strict=True))) for r in rows]}


def pg_games(conn: psycopg.Connection, handle: str) -> View:
    rows = _all(conn, "SELECT id, game, players, winner FROM game_results WHERE %s = ANY(players)"
                " ORDER BY created_at DESC NULLS LAST, id DESC", (handle,))
    return {"items": [{"id": i, "game": g, "players": sorted(p or ()), "winner": w} for i, g, p, w in rows]}


PG_USER_VIEWS: dict[str, Callable[[psycopg.Connection, str], View]] = {
    "inbox": pg_inbox, "unread": pg_unread, "invites": pg_invites, "profile": pg_profile, "games": pg_games}
