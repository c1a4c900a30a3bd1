"""`kvmigrate shadow`: the app's read views from KV and from Postgres, side by side.

For a sample of users (or the named ones) each view (see `kvmigrate.phases.shadow_views`) is computed
from KV as the app's read code shows it and from Postgres with the SQL the migrated app serves,
and compared field by field. KV is read strictly read-only, each key at most once per run:

1. one SCAN pass names the keys (and one HLEN per registry hash);
2. the keys every chosen view needs that are known by name (the users' `messages:*` with their
   `unread:*`, `inbox:*`, `outbox:*`, `thread:*`, `user:*`, `vibe:invites:by:*`; the registries,
   `vibe:messages`, `vibe:games`, every `board:entry:*` and `streak:*`) — forecast exactly, then read;
3. the `msg:{id}` keys those lists and copies name (MGET), then the thread partners'
   `messages:*` lists and the `msg:*` keys they name.

The forecast (printed before step 2) is exact for step 2 and an upper bound for step 3;
`--max-requests` is a hard bound (BudgetExhausted, exit 4, before a batch would pass it).
Writes only kvmigrate's own records in Postgres (`kvmigrate.shadow_results`).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from kvmigrate.adapters.connections import connect_kv, connect_pg
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.pg import results, state
from kvmigrate.engine.run import require_schema
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import Config
from kvmigrate.model.errors import ConfigError
from kvmigrate.model.serial import to_dict
from kvmigrate.phases import shadow_views as v
from kvmigrate.phases.shadow_keys import MGET_KEYS, KeyCache, KeyIndex, canonical, scan_index

EXAMPLES = 5


@dataclass(frozen=True)
class FieldDiff:
    """One field of one view that differs: where (`items[3].read`), and both values."""

    path: str
    kv: Any
    pg: Any


@dataclass
class ViewCheck:
    """One view for one subject (a handle, or `all`/a category for the global views)."""

    view: str
    subject: str
    matched: bool
    differences: list[FieldDiff] = field(default_factory=list)


@dataclass
class ViewSummary:
    view: str
    checked: int = 0
    matched: int = 0
    first: list[ViewCheck] = field(default_factory=list)  # the first mismatching checks

    @property
    def share(self) -> float:
        return 1.0 if not self.checked else self.matched / self.checked


@dataclass
class ShadowResult:
    handles: list[str]
    views: dict[str, ViewSummary]
    forecast: int
    budget: RequestBudget
    keys_read: int = 0
    merged_keys: dict[str, list[str]] = field(default_factory=dict)  # handle -> keys that collapse into it
    healed: int = 0  # differences gone on the second look (writes in flight)
    run_id: int | None = None
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return all(s.matched == s.checked for s in self.views.values())

    @property
    def kv_requests(self) -> int:
        return self.budget.spent


def compare(view: str, subject: str, kv: v.View, pg: v.View) -> ViewCheck:
    """Compare two forms of one view field by field: scalar fields, then items by position."""
    diffs = [FieldDiff(k, kv.get(k), pg.get(k)) for k in sorted(set(kv) | set(pg) - {"items"})
             if k != "items" and kv.get(k) != pg.get(k)]
    a, b = kv.get("items", []), pg.get("items", [])
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            diffs.append(FieldDiff(f"items[{i}]", a[i] if i < len(a) else None, b[i] if i < len(b) else None))
            continue
        for k in sorted(set(a[i]) | set(b[i])):
            if a[i].get(k) != b[i].get(k):
                diffs.append(FieldDiff(f"items[{i}].{k}", a[i].get(k), b[i].get(k)))
    return ViewCheck(view, subject, not diffs, diffs[:EXAMPLES])


def choose_views(names: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(names) - set(v.VIEWS))
    if unknown:
        raise ConfigError(f"unknown view {', '.join(unknown)}", hint="views are: " + ",".join(v.VIEWS))
    return tuple(n for n in v.VIEWS if not names or n in names)


def sample_handles(conn: psycopg.Connection, index: KeyIndex, n: int) -> list[str]:
    """N handles, the same for the same store: users in Postgres and handles owning KV keys,
    ordered by a hash of the handle. Read-only."""
    rows = conn.execute("SELECT handle FROM users WHERE NOT coalesce(settings @> '{\"placeholder\": true}', false)")
    pool = {r[0] for r in rows.fetchall()} | index.handles()
    conn.rollback()
    return sorted(pool, key=lambda h: hashlib.sha1(h.encode()).hexdigest())[:n]


class _Kv:
    """The KV side of a run: which keys a handle's views need, read through one cache."""

    def __init__(self, cache: KeyCache) -> None:
        self.cache = cache
        self.ix = cache.index

    def single(self, *families: str) -> list[str]:
        return [k for f in families for k in self.ix.by_family[f]]

    def message_lists(self, h: str, *, partner: bool = False) -> list[str]:
        fams = ("inbox",) if partner else ("inbox", "inbox_ids", "outbox_ids")
        keys = [k for f in fams for k in self.ix.keys_of(f, h)] + self.single("archive")
        return keys if partner else keys + list(self.ix.threads.get(h, ()))

    def first_keys(self, handles: Sequence[str], views: Sequence[str]) -> list[str]:
        keys: list[str] = []
        if {"inbox", "unread", "thread", "games"} & set(views):
            keys += [k for h in handles for k in self.message_lists(h)]
        if "games" in views:
            keys += self.single("games")
        if "profile" in views:
            keys += self.single("handles", "agents", "registry_users")
            keys += [k for h in handles for k in self.ix.keys_of("legacy", h)]
        if "invites" in views:
            keys += self.single("invites") + [k for h in handles for k in self.ix.keys_of("by_handle", h)]
        if "board" in views:
            keys += self.single("entry")
        if "leaderboard" in views:
            keys += self.single("streak")
        return keys

    def msg_keys(self, keys: Iterable[str]) -> list[str]:
        """The `msg:{id}` keys the lists and copies among `keys` name (those the SCAN found)."""
        ids: set[str] = set()
        for key in keys:
            family = self.ix.families.get(key, (None, None))[1]
            if family is not None and family.name in ("inbox_ids", "outbox_ids", "thread"):
                ids |= {i for i in map(str, self.cache.items(key)) if not i.lstrip().startswith("{")}
        ids |= {str(r.values["id"]) for r in self.cache.rows(keys, "messages")}
        return [k for k in (f"msg:{i}" for i in sorted(ids)) if k in self.ix.families]

    def messages(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        return [dict(r) for r in v.combine("messages", self.cache.rows(keys, "messages"))]


def _forecast_bound(kv: _Kv, handles: Sequence[str], views: Sequence[str]) -> int:
    """An upper bound for step 3: every `msg:*` key in two rounds of MGETs, and each thread
    partner's lists as the largest any handle has."""
    if not {"inbox", "unread", "thread", "games"} & set(views):
        return 0
    n = len(kv.ix.by_family["msg"])
    bound = 2 * (math.ceil(n / MGET_KEYS) + 1)
    if "thread" in views:
        most = max((len(keys) for keys in kv.ix.by_handle["inbox"].values()), default=0)
        bound += len(handles) * 2 * most
    return bound


def run_shadow(config: Config, *, users: int = 20, handles: Sequence[str] = (), views: Sequence[str] = (),
               on_forecast: Callable[[int, int], None] | None = None, recheck_delay: float = 3.0) -> ShadowResult:
    """Compare the chosen views for the chosen users. KV read-only (cost: see module docstring);
    writes kvmigrate.runs and kvmigrate.shadow_results.

    A view that differs is looked at once more after `recheck_delay` seconds, from a fresh read
    of the keys its users' views need (KV and Postgres are read at different moments, and a
    dual-writing app's write can be in flight between them): a difference that is gone then is
    counted as `healed`, not reported. That second look costs one more read of those keys."""
    started = time.perf_counter()
    chosen = choose_views(views)
    budget = RequestBudget(cap=config.max_requests, phase="shadow")
    with connect_pg(config.require_pg(), retries=config.connect_retries) as conn:
        require_schema(conn)
        kvc = connect_kv(config.require_kv(), budget, read_only=True, retries=config.connect_retries)
        index = scan_index(kvc)
        picked = _pick(conn, index, users, handles)
        kv = _Kv(KeyCache(kvc, index))
        first = kv.first_keys(picked, chosen)
        exact = kv.cache.cost(first)
        forecast = budget.spent + exact + _forecast_bound(kv, picked, chosen)
        if on_forecast is not None:
            on_forecast(budget.spent + exact, forecast)
        budget.check(exact)
        kv.cache.ensure(first)
        checks = _check_all(conn, kv, picked, chosen)
        healed = 0
        if recheck_delay > 0 and not all(c.matched for c in checks):
            time.sleep(recheck_delay)
            checks, healed = _second_look(conn, kvc, index, checks)
        result = ShadowResult(picked, _summarise(chosen, checks), forecast, budget,
                              keys_read=len(kv.cache.records), merged_keys=_merged(index, picked), healed=healed)
        result.seconds = time.perf_counter() - started
        result.run_id = record(conn, result, checks)
    return result


def _second_look(conn: psycopg.Connection, kvc: KvClient, index: KeyIndex,
                 checks: Sequence[ViewCheck]) -> tuple[list[ViewCheck], int]:
    """Compute the views that differed again, for the users they differed for, from a fresh read
    (a new cache); a check that matches now replaces the first. Returns (checks, healed)."""
    bad = [c for c in checks if not c.matched]
    views = sorted({c.view for c in bad})
    users = sorted({c.subject for c in bad if c.view not in v.GLOBAL_VIEWS})
    fresh = _Kv(KeyCache(kvc, index))
    fresh.cache.ensure(fresh.first_keys(users, views))
    again = {(c.view, c.subject): c for c in _check_all(conn, fresh, users, views)}
    out, healed = [], 0
    for c in checks:
        second = again.get((c.view, c.subject)) if not c.matched else None
        if second is not None and second.matched:
            healed += 1
            out.append(second)
        else:
            out.append(c)
    return out, healed


def _pick(conn: psycopg.Connection, index: KeyIndex, users: int, handles: Sequence[str]) -> list[str]:
    if not handles:
        return sample_handles(conn, index, users)
    picked = []
    for raw in handles:
        h = canonical(raw)
        if h is None:
            raise ConfigError(f"{raw!r} is not a valid handle", hint="handles are [a-z0-9_], at most 40 characters")
        picked.append(h)
    return sorted(set(picked))


def _check_all(conn: psycopg.Connection, kv: _Kv, handles: Sequence[str], views: Sequence[str]) -> list[ViewCheck]:
    checks: list[ViewCheck] = []
    per_user: dict[str, list[dict[str, Any]]] = {}
    if {"inbox", "unread", "thread", "games"} & set(views):
        lists = {h: kv.message_lists(h) for h in handles}
        kv.cache.ensure(k for h in handles for k in kv.msg_keys(lists[h]))
        for h in handles:
            per_user[h] = kv.messages(lists[h] + kv.msg_keys(lists[h]))
    if "thread" in views:
        checks += _threads(conn, kv, handles, per_user)
    for h in handles:
        msgs = per_user.get(h, [])
        for name in views:
            if name in v.GLOBAL_VIEWS or name == "thread":
                continue
            mine = _kv_user_view(kv, name, h, msgs)
            checks.append(compare(name, h, mine, v.PG_USER_VIEWS[name](conn, h)))
    if "board" in views:
        posts = [dict(r) for r in v.combine("board_posts", kv.cache.rows(kv.single("entry"), "board_posts"))]
        cats = sorted({str(p["category"]) for p in posts if p.get("category")} | v.pg_board_categories(conn))
        for cat in [None, *cats]:
            checks.append(compare("board", cat or "all", v.kv_board(posts, cat), v.pg_board(conn, cat)))
    if "leaderboard" in views:
        rows = [dict(r) for r in v.combine("streaks", kv.cache.rows(kv.single("streak"), "streaks"))]
        checks.append(compare("leaderboard", "all", v.kv_leaderboard(rows), v.pg_leaderboard(conn)))
    conn.rollback()
    return checks


def _threads(conn: psycopg.Connection, kv: _Kv, handles: Sequence[str],
             per_user: dict[str, list[dict[str, Any]]]) -> list[ViewCheck]:
    partners = {h: p for h in handles if (p := v.thread_partner(per_user[h], h)) is not None}
    extra = {h: [k for k in kv.message_lists(p, partner=True)] for h, p in partners.items()}
    kv.cache.ensure(k for keys in extra.values() for k in keys)
    kv.cache.ensure(k for keys in extra.values() for k in kv.msg_keys(keys))
    out = []
    for h, p in partners.items():
        keys = kv.message_lists(h) + extra[h]
        msgs = kv.messages(keys + kv.msg_keys(keys))
        out.append(compare("thread", f"{h}<->{p}", v.kv_thread(msgs, h, p), v.pg_thread(conn, h, p)))
    return out


def _kv_user_view(kv: _Kv, name: str, h: str, msgs: list[dict[str, Any]]) -> v.View:
    if name == "inbox":
        return v.kv_inbox(msgs, h)
    if name == "unread":
        return v.kv_unread(msgs, h)
    if name == "games":
        keys = kv.message_lists(h) + kv.msg_keys(kv.message_lists(h)) + kv.single("games")
        return v.kv_games([dict(r) for r in v.combine("game_results", kv.cache.rows(keys, "game_results"))], h)
    if name == "invites":
        codes = {str(c) for k in kv.ix.keys_of("by_handle", h) for c in kv.cache.items(k)}
        rows = v.combine("invites", kv.cache.rows(kv.single("invites"), "invites"))
        return v.kv_invites([dict(r) for r in rows], codes)
    keys = kv.single("handles", "agents", "registry_users") + kv.ix.keys_of("legacy", h)
    return v.kv_profile([dict(r) for r in v.combine("users", kv.cache.rows(keys, "users"))], h)


def _summarise(views: Sequence[str], checks: Sequence[ViewCheck]) -> dict[str, ViewSummary]:
    out = {name: ViewSummary(name) for name in views}
    for check in checks:
        s = out[check.view]
        s.checked += 1
        s.matched += check.matched
        if not check.matched and len(s.first) < EXAMPLES:
            s.first.append(check)
    return out


def _merged(index: KeyIndex, handles: Sequence[str]) -> dict[str, list[str]]:
    """Per handle, the per-handle keys of one family that collapse into it (`streak:Fred`,
    `streak:fred`): the views show them combined by the entity's rule."""
    out: dict[str, list[str]] = {}
    for family, owners in index.by_handle.items():
        for h, keys in owners.items():
            if len(keys) > 1 and (h in handles or family == "streak"):
                out.setdefault(h, []).extend(sorted(keys))
    return out


def record(conn: psycopg.Connection, result: ShadowResult, checks: Sequence[ViewCheck]) -> int:
    """Record the run and one row per view in kvmigrate.shadow_results (the cutover gate reads
    them), with today's KV spend. One transaction."""
    with conn.transaction():
        run_id = results.record_shadow_run(conn, result.budget.spent, result.handles, [
            (s.view, s.checked, s.matched, s.matched == s.checked,
             [{"subject": c.subject, "differences": [[d.path, str(d.kv), str(d.pg)] for d in c.differences]}
              for c in s.first])
            for s in result.views.values()])
        state.record_kv_spend(conn, result.budget)
    return run_id


def shadow_gate(conn: psycopg.Connection) -> tuple[bool, str]:
    """Whether the latest shadow run compared every view and all matched, and why. Read-only."""
    row = results.latest_shadow(conn)
    conn.commit()
    if row is None:
        return False, "no shadow run recorded (run `kvmigrate shadow`)"
    _, views, dirty, checked, at = row
    if dirty:
        return False, f"the latest shadow run ({at:%Y-%m-%d %H:%M} UTC) found {dirty} views differing"
    if views < len(v.VIEWS) or not checked:
        return False, "the latest shadow run did not compare every view"
    return True, f"clean shadow run of {views} views ({checked} comparisons)"


def _check(c: ViewCheck) -> dict[str, Any]:
    return {"subject": c.subject, "differences": [{"field": d.path, "kv": to_dict(d.kv), "postgres": to_dict(d.pg)}
                                                  for d in c.differences]}


@to_dict.register
def _(r: ShadowResult) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "clean": r.clean,
        "handles": r.handles,
        "views": {n: {"checked": s.checked, "matched": s.matched, "share": round(s.share, 4),
                      "first_differences": [_check(c) for c in s.first]} for n, s in r.views.items()},
        "merged_keys": r.merged_keys,
        "keys_read": r.keys_read,
        "healed": r.healed,
        "kv_requests_forecast": r.forecast,
        "kv_requests": r.budget.spent,
        "kv_requests_by_command": dict(sorted(r.budget.by_command.items())),
        "seconds": round(r.seconds, 3),
    }
