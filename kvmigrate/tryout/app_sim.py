"""A simulated /vibe app that keeps writing while the migration runs (used by `kvmigrate demo`).

It obeys the phase flags exactly as the README's "For the app" section tells a real app to:
flags are read from the KV hash `kvmigrate:flags` (one HGETALL, cached for `flag_ttl` seconds);
`writes=kv` writes KV only, `writes=dual` writes KV first and then upserts Postgres, and
`writes=postgres` writes Postgres only; reads come from where `reads` says. Presence heartbeats
always stay in KV. A Postgres write that fails is logged and not retried — like the real app,
which treats Postgres errors as non-fatal — so verify and repair have something real to catch.

Every write is logged (`AppWrite`), and `check_writes` proves each one is in Postgres exactly
once with the value the app wrote last: present under its key, with that value, and under no
other key (every DM and post the app writes has content of its own). The Postgres row an app writes is the canonical row of
the KV record it wrote (the same transformer kvmigrate uses), as the README asks apps to do.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from kvmigrate import api
from kvmigrate.api import ENTITIES, FLAGS_KEY, Entity, json_dumps
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.records import RawRecord, Row


@dataclass(frozen=True)
class AppWrite:
    """One write the app made: which row, where it went, and the row it meant."""

    entity: str
    table: str
    pk: str
    kv: bool
    pg: bool | None  # None: not attempted (writes=kv); False: failed (non-fatal)
    row: Mapping[str, Any]
    phase: str
    error: str = ""


class FlagCache:
    """The app's view of the phase flags: one HGETALL every `ttl` seconds."""

    def __init__(self, client: api.KvClient, ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self.flags: dict[str, str] = {}
        self.loaded = -1e9
        self.reads = 0

    def get(self, entity: str) -> tuple[str, str]:
        if time.monotonic() - self.loaded >= self.ttl:
            raw = self.client.call("HGETALL", FLAGS_KEY)
            self.reads += 1
            self.flags = _hash(raw)
            self.loaded = time.monotonic()
        return self.flags.get(f"{entity}.writes", "kv"), self.flags.get(f"{entity}.reads", "kv")


@dataclass
class SimApp:
    """Writes DMs, board posts, streak updates and presence heartbeats until stopped."""

    kv_url: str
    pg_url: str
    handles: list[str]
    seed: int = 1
    flag_ttl: float = 1.0
    interval: float = 0.02
    writes: list[AppWrite] = field(default_factory=list)
    kv_commands: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # the library's KV client, on a budget of its own: the app's commands are not the migration's
        self.kv = api.connect_kv(self.kv_url, RequestBudget(cap=None, phase="app"))
        self.flags = FlagCache(self.kv, self.flag_ttl)
        self.pg = psycopg.connect(self.pg_url, autocommit=True, application_name="vibe-app-sim")
        self.entities = {e.name: e for e in ENTITIES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vibe-app-sim", daemon=True)
        self.n = 0
        # The app (codebase A) updates streaks it keeps as hashes; B's JSON-string streaks and
        # broken keys are not its to touch.
        types = self.kv.pipeline([("TYPE", f"streak:{h}") for h in self.handles])
        self.streak_handles = [h for h, t in zip(self.handles, types, strict=True) if _s(t) in ("hash", "none")]
        self.kv_commands += len(self.handles)

    def start(self) -> SimApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.kv.redis.close()
        self.pg.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the demo reports it; the app keeps going
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def step(self) -> None:
        """One user action, chosen at random."""
        self.n += 1
        action = self.rng.choices(("dm", "post", "streak", "presence"), weights=(5, 2, 2, 3))[0]
        getattr(self, f"_{action}")()

    # ---------------------------------------------------------------- actions

    def _dm(self) -> None:
        sender, to = self.rng.sample(self.handles, 2)
        mid = f"msg_sim{self.seed}x{self.n:06d}"
        now = dt.datetime.now(dt.timezone.utc)
        body = {"id": mid, "from": sender, "to": to, "text": f"hi {to}, #{self.n}",
                "createdAt": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "read": False}
        value = orjson.dumps(body)
        commands = [("SET", f"msg:{mid}", value), ("LPUSH", f"inbox:{to}", mid), ("LPUSH", f"outbox:{sender}", mid)]
        self._write("messages", RawRecord(f"msg:{mid}", "string", value, "", "msg"), commands)

    def _post(self) -> None:
        author = self.rng.choice(self.handles)
        ms = int(time.time() * 1000)
        pid = f"entry_{ms}_{self.seed:x}{self.n:05x}"
        value = orjson.dumps({"id": pid, "author": author, "content": f"shipping thing #{self.n}",
                              "category": self.rng.choice(["general", "ship", "ask"]), "tags": ["demo"],
                              "timestamp": ms})
        commands = [("SET", f"board:entry:{pid}", value), ("LPUSH", "board:entries", pid),
                    ("LTRIM", "board:entries", 0, 99)]
        self._write("board", RawRecord(f"board:entry:{pid}", "string", value, "", "entry"), commands)

    def _streak(self) -> None:
        if not self.streak_handles:
            return
        handle = self.rng.choice(self.streak_handles)
        fields = self._read_streak(handle)
        if fields is None:
            return
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        current = int(fields.get("current") or 0) + 1
        new = {"current": str(current), "longest": str(max(current, int(fields.get("longest") or 0))),
               "totalDays": str(int(fields.get("totalDays") or 0) + 1), "lastActive": today}
        raw = {k.encode(): v.encode() for k, v in new.items()}
        commands = [("HSET", f"streak:{handle}", *[p for kv in new.items() for p in kv])]
        self._write("streaks", RawRecord(f"streak:{handle}", "hash", raw, "", "streak"), commands,
                    columns=("handle", "current_streak", "longest_streak", "total_days", "last_active"))

    def _presence(self) -> None:
        handle = self.rng.choice(self.handles)
        self.kv.call("SET", f"presence:data:{handle}", orjson.dumps({"handle": handle, "status": "online"}), "EX", 300)
        self.kv_commands += 1

    # ---------------------------------------------------------------- plumbing

    def _read_streak(self, handle: str) -> dict[str, Any] | None:
        """The app reads its streak hash from wherever `streaks.reads` points."""
        _, reads = self.flags.get("streaks")
        if reads == "postgres":
            row = self.pg.execute("SELECT current_streak, longest_streak, total_days FROM streaks"
                                  " WHERE handle = %s", (handle,)).fetchone()
            return {} if row is None else {"current": row[0], "longest": row[1], "totalDays": row[2]}
        self.kv_commands += 1
        return _hash(self.kv.call("HGETALL", f"streak:{handle}"))

    def _write(self, entity_name: str, record: RawRecord, commands: list[tuple[Any, ...]],
               columns: tuple[str, ...] | None = None) -> None:
        """Write one record as the flags say. `columns`: the row's columns this change sets (an
        update touches only what it changed); default all."""
        entity: Entity = self.entities[entity_name]
        writes, reads = self.flags.get(entity_name)
        values = _canonical_row(entity, record).values
        values = {c: values[c] for c in columns} if columns else dict(values)
        phase = f"{writes}/{reads}"
        if writes in ("kv", "dual"):
            replies = self.kv.pipeline(commands)
            self.kv_commands += len(commands)
            failed = next((r for r in replies if isinstance(r, Exception)), None)
            if failed is not None:
                raise failed
        pg_ok: bool | None = None
        error = ""
        if writes in ("dual", "postgres"):
            try:
                _upsert(self.pg, entity.tables[0].name, entity.tables[0].pk, values)
                pg_ok = True
            except psycopg.Error as exc:
                pg_ok, error = False, str(exc).splitlines()[0]
        table = entity.tables[0]
        self.writes.append(AppWrite(entity_name, table.name, str(values[table.pk]), writes != "postgres",
                                    pg_ok, values, phase, error))


def _hash(raw: Any) -> dict[str, str]:
    """A hash as HGETALL answers it (flat field, value list, or a mapping) with text keys and values."""
    items = list(raw.items()) if isinstance(raw, dict) else list(zip(raw[0::2], raw[1::2], strict=True))
    return {_s(k): _s(v) for k, v in items}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _canonical_row(entity: Entity, record: RawRecord) -> Row:
    """The row kvmigrate would load for this record (the app writes the same form)."""
    outcome = entity.transform(record)
    if outcome.reject is not None or not outcome.rows:
        raise ValueError(f"the simulated app wrote a record kvmigrate rejects: {outcome.reject}")
    return outcome.rows[0]


def _upsert(conn: psycopg.Connection, table: str, pk: str, values: Mapping[str, Any]) -> None:
    cols = list(values)
    ident = sql.Identifier
    query = sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ({pk}) DO UPDATE SET {sets}").format(
        t=ident(table), cols=sql.SQL(", ").join(map(ident, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)), pk=ident(pk),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident(c)) for c in cols if c != pk))
    conn.execute(query, [Jsonb(v, dumps=json_dumps) if isinstance(v, dict) else v for v in values.values()])


@dataclass
class AppCheck:
    """The demo's final check: every app write is in Postgres exactly once, as last written."""

    writes: int
    rows_checked: int
    missing: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)  # a write's content under another key too
    pg_failures_healed: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong and not self.duplicated


def check_writes(conn: psycopg.Connection, writes: list[AppWrite]) -> AppCheck:
    """Compare the last write of every row the app touched with Postgres. Read-only."""
    last: dict[tuple[str, str], AppWrite] = {}
    for w in writes:
        last[(w.table, w.pk)] = w
    check = AppCheck(len(writes), len(last), pg_failures_healed=sum(1 for w in writes if w.pg is False))
    by_table: dict[str, list[AppWrite]] = {}
    for w in last.values():
        by_table.setdefault(w.table, []).append(w)
    for table, items in by_table.items():
        pk = next(e.tables[0].pk for e in ENTITIES if e.tables and e.tables[0].name == table)
        cols = sorted({c for w in items for c in w.row})
        query = sql.SQL("SELECT {pk}::text, count(*) OVER (PARTITION BY {pk}), {cols} FROM {t}"
                        " WHERE {pk}::text = ANY(%s)").format(
            pk=sql.Identifier(pk), cols=sql.SQL(", ").join(map(sql.Identifier, cols)), t=sql.Identifier(table))
        found = {r[0]: r for r in conn.execute(query, ([w.pk for w in items],)).fetchall()}
        for w in items:
            row = found.get(w.pk)
            if row is None:
                check.missing.append(f"{table}.{w.pk}")
            elif row[1] != 1 or any(dict(zip(cols, row[2:], strict=True))[c] != v for c, v in w.row.items()):
                check.wrong.append(f"{table}.{w.pk}")
        check.duplicated += _copies(conn, table, pk, items)
    return check


def _copies(conn: psycopg.Connection, table: str, pk: str, items: list[AppWrite]) -> list[str]:
    """Rows that hold the content of an app write under a key the app never wrote it to: the
    same message or post landed twice (the app's contents are unique per write). Read-only."""
    wrote: dict[str, set[str]] = {}
    for w in items:
        if isinstance(w.row.get("content"), str):
            wrote.setdefault(w.row["content"], set()).add(w.pk)
    if not wrote:
        return []
    query = sql.SQL("SELECT {pk}::text, content FROM {t} WHERE content = ANY(%s)").format(
        pk=sql.Identifier(pk), t=sql.Identifier(table))
    rows = conn.execute(query, (sorted(wrote),)).fetchall()
    return sorted(f"{table}.{key}" for key, content in rows if key not in wrote[content])
