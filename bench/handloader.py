"""The hand-written loader kvmigrate is held to, on its own store of `msg:*` strings.

* `seed_strings`: `keys` JSON `msg:{id}` strings between `users` handles registered in
  `vibe:handles`, the shape of the app's newest messages, in an empty logical db.
* `hand_loader`: what an engineer writes in forty lines for that store: SCAN COUNT 1000 + one
  MGET per page + orjson + COPY into a temp stage + `INSERT … ON CONFLICT DO UPDATE … WHERE …
  IS DISTINCT FROM`, one commit per 5,000 keys, users first. No ledger, no rejects, no resume,
  no merge of copies, no read state: the bookkeeping kvmigrate adds is what it must make cheap.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import psycopg
import redis
from psycopg import sql

from kvmigrate import api as commands
from kvmigrate.model.config import build_config

MSG_COLS = ("id", "from_handle", "to_handle", "content", "read", "created_at")


def seed_strings(*, kv_url: str, keys: int, users: int = 2000, seed: int = 17) -> int:
    """Write the store (flushing the db first); returns the keys written."""
    client = redis.Redis.from_url(kv_url)
    client.flushdb()
    rng = random.Random(seed)
    handles = [f"user{i:05d}" for i in range(users)]
    client.hset("vibe:handles", mapping={h: orjson.dumps({"handle": h, "registeredAt": "2025-01-01T00:00:00Z"})
                                         for h in handles})
    pipe = client.pipeline(transaction=False)
    for i in range(keys - 1):
        a, b = rng.sample(handles, 2)
        mid = f"msg_{i:08x}"
        pipe.set(f"msg:{mid}", orjson.dumps({
            "id": mid, "from": a, "to": b, "text": f"hello {i}", "createdAt": f"2025-06-01T12:{i % 60:02d}:00.000Z",
            "read": bool(i % 3)}))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    n = int(client.dbsize())
    client.close()
    return n


def _upsert(conn: psycopg.Connection, table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    ident = sql.Identifier
    t, stage, names = ident(table), ident(f"hand_{table}"), sql.SQL(", ").join(map(ident, cols))
    conn.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {s} AS SELECT {c} FROM {t} WITH NO DATA").format(
        s=stage, c=names, t=t))
    conn.execute(sql.SQL("TRUNCATE {}").format(stage))
    with conn.cursor().copy(sql.SQL("COPY {s} ({c}) FROM STDIN").format(s=stage, c=names)) as cp:
        for row in rows:
            cp.write_row(row)
    rest = cols[1:]
    conn.execute(sql.SQL(
        "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT ({pk}) DO UPDATE SET {set}"
        " WHERE ({old}) IS DISTINCT FROM ({new})").format(
        t=t, c=names, s=stage, pk=ident(cols[0]),
        set=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in rest),
        old=sql.SQL(", ").join(sql.SQL("{}.{}").format(t, ident(c)) for c in rest),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in rest)))


def hand_loader(*, pg_url: str, kv_url: str, keys: int, commit_every: int = 5000) -> dict[str, Any]:
    """Load the `seed_strings` store the hand-written way; keys/s over the whole store."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    client = redis.Redis.from_url(kv_url)
    started = time.perf_counter()
    with psycopg.connect(pg_url) as conn:
        registry = client.hgetall("vibe:handles")
        _upsert(conn, "users", ("handle", "created_at"),
                [(h.decode(), orjson.loads(v).get("registeredAt")) for h, v in registry.items()])
        conn.commit()
        cursor, pending, loaded = 0, [], 0
        while True:
            cursor, page = client.scan(cursor, count=1000)
            names = [k for k in page if k.startswith(b"msg:")]
            for value in client.mget(names) if names else ():
                m = orjson.loads(value)
                pending.append((m["id"], m["from"], m["to"], m.get("body") or m["text"], bool(m.get("read")),
                                m.get("createdAt")))
            if len(pending) >= commit_every or cursor == 0:
                _upsert(conn, "messages", MSG_COLS, pending)
                conn.commit()
                loaded += len(pending)
                pending = []
            if cursor == 0:
                break
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "keys": keys, "keys_per_s": keys / seconds, "rows": loaded + len(registry)}
