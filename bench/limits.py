"""The limits each backfill figure is compared with, measured on the same servers and keyspace.

* `read_limit`: SCAN COUNT 1000 + one MGET per page over the whole keyspace, values discarded:
  the fastest the KV side can hand out keys to one client.
* `upsert_limit`: the rows the backfill wrote, replayed as pre-encoded COPY text: per page, COPY
  into a temp stage + one `INSERT … ON CONFLICT DO UPDATE … WHERE IS DISTINCT FROM` per table
  (users first, in one transaction, so foreign keys hold). No KV, no Python per row, no ledger:
  the fastest Postgres absorbs these rows with the loader's technique.
* `naive_loop`: what the app's own one-off backfill did: one typed read per key (TYPE first when
  the family allows several types), the same transformer, one INSERT … ON CONFLICT DO UPDATE per
  row (a placeholder-user INSERT per referenced handle first), one commit per key. Timed on a
  bounded sample of entity keys and extrapolated to the whole keyspace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb

from kvmigrate import api as commands
from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.engine.batch import table_specs
from kvmigrate.entities import ENTITIES
from kvmigrate.entities.base import TableSpec
from kvmigrate.entities.common import json_bytes
from kvmigrate.model.config import build_config
from kvmigrate.model.records import RawRecord

_READ = {"string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", 0, -1),
         "set": ("SMEMBERS",), "zset": ("ZRANGE", 0, -1, "WITHSCORES")}


def read_limit(*, kv_url: str, keys: int, count: int = 1000) -> dict[str, Any]:
    """SCAN + MGET over the whole keyspace. Read-only."""
    client = redis.Redis.from_url(kv_url)
    cursor, seen, commands_sent = 0, 0, 0
    started = time.perf_counter()
    while True:
        cursor_raw, page = client.execute_command("SCAN", cursor, "COUNT", count)
        commands_sent += 1
        if page:
            client.execute_command("MGET", *page)
            commands_sent += 1
        seen += len(page)
        cursor = int(cursor_raw)
        if cursor == 0:
            break
    seconds = time.perf_counter() - started
    client.close()
    return {"seconds": seconds, "keys": seen, "keys_per_s": seen / seconds, "kv_total": commands_sent}


def _specs() -> dict[str, TableSpec]:
    return table_specs(sorted(ENTITIES, key=lambda e: e.load_order))


def _dump(src_pg_url: str, specs: dict[str, TableSpec]) -> dict[str, list[bytes]]:
    """Every row of the app tables as COPY text lines, in the order they were written."""
    out: dict[str, list[bytes]] = {}
    with psycopg.connect(src_pg_url) as src:
        for name, spec in specs.items():
            buf = bytearray()
            query = sql.SQL("COPY (SELECT {cols} FROM {t}) TO STDOUT").format(
                cols=sql.SQL(", ").join(map(sql.Identifier, spec.columns)), t=sql.Identifier(name))
            with src.cursor().copy(query) as cp:
                for data in cp:
                    buf += data
            out[name] = bytes(buf).split(b"\n")[:-1]
    return out


def _upsert_sql(spec: TableSpec, stage: str) -> sql.Composed:
    ident = sql.Identifier
    cols = sql.SQL(", ").join(map(ident, spec.columns))
    rest = [c for c in spec.columns if c != spec.pk]
    return sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ON CONFLICT ({pk}) DO UPDATE SET {set}"
        " WHERE ({old}) IS DISTINCT FROM ({new})").format(
        t=ident(spec.name), cols=cols, s=ident(stage), pk=ident(spec.pk),
        set=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in rest),
        old=sql.SQL(", ").join(sql.SQL("{}.{}").format(ident(spec.name), ident(c)) for c in rest),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident(c)) for c in rest))


def _load_chunk(conn: psycopg.Connection, spec: TableSpec, lines: Sequence[bytes]) -> None:
    stage = f"bench_stage_{spec.name}"
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
    if not lines:
        return
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(stage))) as cp:
        cp.write(b"\n".join(lines) + b"\n")
    conn.execute(_upsert_sql(spec, stage))


def upsert_limit(*, src_pg_url: str, pg_url: str, keys: int, pages: int) -> dict[str, Any]:
    """Replay the rows a backfill wrote (in `src_pg_url`) into a fresh database, `pages` pages."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    specs = _specs()
    dumps = _dump(src_pg_url, specs)
    with psycopg.connect(pg_url) as conn:
        for name, spec in specs.items():
            conn.execute(sql.SQL("CREATE TEMP TABLE {s} AS SELECT {cols} FROM {t} WITH NO DATA").format(
                s=sql.Identifier(f"bench_stage_{name}"), t=sql.Identifier(name),
                cols=sql.SQL(", ").join(map(sql.Identifier, spec.columns))))
        conn.commit()
        started = time.perf_counter()
        with conn.transaction():
            _load_chunk(conn, specs["users"], dumps["users"])
        for k in range(pages):
            with conn.transaction():
                for name, spec in specs.items():
                    if name != "users":
                        lines = dumps[name]
                        _load_chunk(conn, spec, lines[k * len(lines) // pages:(k + 1) * len(lines) // pages])
        seconds = time.perf_counter() - started
    rows = sum(len(v) for v in dumps.values())
    return {"seconds": seconds, "keys": keys, "keys_per_s": keys / seconds, "rows": rows, "pages": pages}


def _naive_read(client: redis.Redis, key: bytes, types: frozenset[str]) -> tuple[str, Any, int]:
    """(type, value, commands) the way a per-key script reads: one typed read, TYPE first if needed."""
    sent = 0
    if len(types) == 1:
        (rtype,) = types
    else:
        rtype = client.execute_command("TYPE", key).decode()
        sent += 1
    if rtype not in _READ:
        return rtype, None, sent
    value = client.execute_command(_READ[rtype][0], key, *_READ[rtype][1:])
    if rtype == "hash" and isinstance(value, list):
        value = dict(zip(value[0::2], value[1::2], strict=True))
    elif rtype == "zset":
        value = [(m, float(s)) for m, s in (value if value and isinstance(value[0], (list, tuple))
                                           else zip(value[0::2], value[1::2], strict=True))]
    return rtype, value, sent + 1


def _naive_insert(conn: psycopg.Connection, spec: TableSpec, values: dict[str, Any]) -> None:
    for col in spec.user_refs:
        if values.get(col):
            conn.execute("INSERT INTO users (handle) VALUES (%s) ON CONFLICT DO NOTHING", (values[col],))
    ident = sql.Identifier
    rest = [c for c in spec.columns if c != spec.pk]
    query = sql.SQL("INSERT INTO {t} ({cols}) VALUES ({ph}) ON CONFLICT ({pk}) DO UPDATE SET {set}").format(
        t=ident(spec.name), cols=sql.SQL(", ").join(map(ident, spec.columns)),
        ph=sql.SQL(", ").join(sql.Placeholder() * len(spec.columns)), pk=ident(spec.pk),
        set=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident(c), ident(c)) for c in rest))
    # JSON as the transformer made it (a game's state is already JSON text): what the app would write
    conn.execute(query, [Jsonb(values.get(c), dumps=json_bytes) if c in spec.json_columns and values.get(c) is not None
                         else values.get(c) for c in spec.columns])


def naive_loop(*, pg_url: str, kv_url: str, keys: int, sample: int = 4000,
               max_seconds: float = 20.0) -> dict[str, Any]:
    """Per-key read + per-row INSERT + commit per key, on up to `sample` entity keys."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    client = redis.Redis.from_url(kv_url)
    classifier = Classifier(ENTITIES)
    specs = _specs()
    started = time.perf_counter()
    entity_keys: list[tuple[bytes, Any, Any]] = []
    cursor, scans = 0, 0
    while True:  # the key listing (the app used KEYS; SCAN is the same work in pages)
        cursor_raw, page = client.execute_command("SCAN", cursor, "COUNT", 1000)
        scans += 1
        for raw in page:
            c = classifier.classify(raw.decode("utf-8", "surrogateescape"))
            if c.status == "entity" and c.family is not None and not c.family.split_fields \
                    and c.family.read_by_backfill:
                entity_keys.append((raw, c.entity, c.family))
        cursor = int(cursor_raw)
        if cursor == 0:
            break
    listing = time.perf_counter() - started
    done, sent, failed = 0, 0, 0
    loop_start = time.perf_counter()
    with psycopg.connect(pg_url) as conn:
        for raw, entity, family in entity_keys[:sample]:
            rtype, value, n = _naive_read(client, raw, family.types)
            sent += n
            done += 1
            if value is None:
                continue
            outcome = entity.transform(RawRecord(raw.decode("utf-8", "surrogateescape"), rtype, value, "",
                                                 family.name))
            try:
                for row in outcome.rows:
                    if row.table in specs:
                        _naive_insert(conn, specs[row.table], dict(row.values))
                conn.commit()
            except psycopg.Error:
                conn.rollback()
                failed += 1
            if time.perf_counter() - loop_start > max_seconds:
                break
    loop = time.perf_counter() - loop_start
    client.close()
    per_key = loop / max(done, 1)
    seconds = listing + per_key * len(entity_keys)
    return {"seconds": seconds, "keys": keys, "keys_per_s": keys / seconds, "sampled": done,
            "entity_keys": len(entity_keys), "failed": failed, "sample_seconds": loop,
            "kv_total": round(scans + sent / max(done, 1) * len(entity_keys))}
