"""Hostile input, fuzzed with hypothesis against every transformer and end to end.

The corpus is every record of the seeded keyspace (every layout shape), as the scanner reads
it. Hypothesis mutates those records: fields set to hostile values (wrong JSON types, huge,
negative, float and string timestamps, NaN, deeply nested values, handles with spaces, unicode,
`@`, uppercase, glob characters and newlines), fields dropped, bytes corrupted (invalid UTF-8,
NUL, truncation), other Redis types, hostile keys and hash fields. Every case must end
migrated, rejected with a reason, or handled by a documented rule: no exception, no
`transform_error`, and rows Postgres can store. End to end, every key written must have its
ledger row (and a rejects row when rejected). Runs are derandomized (reproducible in CI); the
number of cases is reported. Huge values (≥ 10 MB) have their own tests.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.kv.scanner import encode_key
from kvmigrate.adapters.kv.source import KvSource, storable
from kvmigrate.adapters.pg.loader import json_dumps
from kvmigrate.engine.batch import value_digest
from kvmigrate.entities import ENTITIES, Entity
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord
from tests.fixtures.faults import note, seed_world

#: Cases per run; `make stress` (or KVMIGRATE_FUZZ_CASES) runs more, KVMIGRATE_FUZZ_RANDOM=1 explores
#: new cases instead of CI's reproducible ones.
PURE_CASES = int(os.environ.get("KVMIGRATE_FUZZ_CASES", "1000"))
E2E_CASES = max(30, PURE_CASES // 40)
FUZZ = settings(max_examples=PURE_CASES, deadline=None, database=None,
                derandomize=not os.environ.get("KVMIGRATE_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
HOSTILE_TEXT = ("", " ", "null", "NaN", "-1", "0", "1e400", "2025-13-45", "2025-06-01T25:00:00Z", "9999-12-31",
                "0001-01-01T00:00:00Z", "1748736000", "1748736000000", "17487360000000000", "@", " @Alice ",
                "ALICE", "al ice", "a@b", "élodie", "💥", "*?[]", "a\nb", "a\x00b", "'; DROP TABLE users; --",
                "x" * 300, "\u202e", "true", "[]", "{}")
BY_NAME = {e.name: e for e in ENTITIES}
_CORPUS: list[tuple[RawRecord, str]] = []
_COLUMNS: dict[str, dict[str, str]] = {}


# --------------------------------------------------------------------------- corpus


@pytest.fixture
def corpus(kv_url: str, kv: redis.Redis) -> list[tuple[RawRecord, str]]:
    """Every record of the seeded keyspace, read the way backfill reads it (cached)."""
    if not _CORPUS:
        seed_world(kv)
        source = KvSource(connect_kv(kv_url, RequestBudget(), read_only=True), ENTITIES, count=500)
        for page in source.pages():
            _CORPUS.extend((record, entity.name) for record, entity in page.records)
        _CORPUS.sort(key=lambda item: (item[0].key, item[0].field))  # not the server's SCAN order
        kv.flushdb()
    return _CORPUS


@pytest.fixture
def columns(pg_url: str) -> dict[str, dict[str, str]]:
    """Column types of the app's tables (cached)."""
    if not _COLUMNS:
        commands.setup(build_config(pg_url=pg_url, env={}))
        with psycopg.connect(pg_url) as conn:
            for table, column, typ in conn.execute(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = 'public'"):
                _COLUMNS.setdefault(table, {})[column] = typ
    return _COLUMNS


# --------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Deep:
    """A JSON value nested `depth` levels deep (written out only when serialised, so reports
    stay short)."""

    depth: int

    def __str__(self) -> str:
        return '{"k":[' * (self.depth // 2) + '"deep"' + "]}" * (self.depth // 2)


hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(HOSTILE_TEXT), st.integers(1, 1500).map(Deep),
    st.lists(st.sampled_from(HOSTILE_TEXT), max_size=3),
    st.dictionaries(st.sampled_from(HOSTILE_TEXT), st.sampled_from(HOSTILE_TEXT), max_size=3),
)
hostile_names = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=10))


def dumps(obj: Any, rng: random.Random) -> bytes:
    """JSON text as the app (or a broken app) might have written it: big ints, NaN, any escaping."""
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5, default=lambda d: f"@@DEEP{d.depth}@@")
    text = re.sub(r'"@@DEEP(\d+)@@"', lambda m: str(Deep(int(m.group(1)))), text)
    return text.encode("utf-8", "surrogatepass")


def corrupt(raw: bytes, draw: Callable[[Any], Any]) -> bytes:
    how = draw(st.sampled_from(("none", "none", "none", "nul", "invalid_utf8", "truncate", "array", "deep")))
    at = draw(st.integers(0, max(len(raw), 0)))
    if how == "nul":
        return raw[:at] + b"\x00" + raw[at:]
    if how == "invalid_utf8":
        return raw[:at] + draw(st.sampled_from((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9"))) + raw[at:]
    if how == "truncate":
        return raw[:at]
    if how == "array":
        return b"[" + raw + b"]"
    if how == "deep":
        return b'{"a":' * 2000 + raw + b"}" * 2000
    return raw


def mutate_json(raw: bytes, draw: Callable[[Any], Any], fields: list[str]) -> bytes:
    rng = random.Random(draw(st.integers(0, 2**32)))
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return corrupt(raw, draw)
    if isinstance(obj, dict):
        for _ in range(draw(st.integers(1, 4))):
            name = draw(st.one_of(st.sampled_from(sorted(obj) or ["id"]), st.sampled_from(fields), hostile_names))
            if draw(st.integers(0, 5)) == 0:
                obj.pop(name, None)
            else:
                obj[name] = draw(hostile_values)
    elif isinstance(obj, list) and obj:
        obj[draw(st.integers(0, len(obj) - 1))] = draw(hostile_values)
    else:
        obj = draw(hostile_values)
    return corrupt(dumps(obj, rng), draw)


def mutate_bytes(raw: bytes, draw: Callable[[Any], Any], fields: list[str]) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    if raw[:1] in (b"{", b"["):
        return mutate_json(raw, draw, fields)
    value = draw(hostile_values)
    if isinstance(value, str) or not draw(st.booleans()):
        return corrupt(str(value).encode("utf-8", "surrogatepass"), draw)
    return corrupt(dumps(value, random.Random(0)), draw)


def mutate(record: RawRecord, draw: Callable[[Any], Any], fields: list[str]) -> RawRecord:
    """One hostile variant of a real record (its key, field, type or value)."""
    key, rtype, value, fld = record.key, record.redis_type, record.value, record.field
    target = draw(st.sampled_from(("value", "value", "value", "key", "type")))
    if target == "type" and fld:  # a registry hash as a whole, of another type
        fld = ""
    if target == "key":
        if fld:
            fld = draw(hostile_names)
        elif ":" in key:
            key = key.rsplit(":", 1)[0] + ":" + draw(hostile_names)
    elif target == "type":
        rtype = draw(st.sampled_from(("string", "hash", "list", "set", "zset")))
        value = {"string": b"x", "hash": {b"f": b"v"}, "list": [b"a"], "set": [b"a"], "zset": [(b"a", 1.0)]}[rtype]
    elif isinstance(value, bytes):
        value = mutate_bytes(value, draw, fields)
    elif isinstance(value, dict) and value:
        name = draw(st.one_of(st.sampled_from(sorted(value)), st.sampled_from(fields).map(str.encode)))
        value = {**value, name: mutate_bytes(value.get(name, b"{}"), draw, fields)}
    elif isinstance(value, list) and value and not isinstance(value[0], tuple):
        i = draw(st.integers(0, len(value) - 1))
        value = [*value[:i], mutate_bytes(value[i], draw, fields), *value[i + 1:]]  # type: ignore[misc]
    elif isinstance(value, list) and value:
        value = [(m, draw(st.floats(allow_nan=False))) for m, _ in value]  # type: ignore[misc]
    # as the source hands it over: a name Postgres cannot store is escaped, with the reason
    return storable(RawRecord(key, rtype, value, fld, record.family))


def field_names(corpus: list[tuple[RawRecord, str]]) -> list[str]:
    names: set[str] = set()
    for record, _ in corpus:
        for raw in ([record.value] if isinstance(record.value, bytes) else
                    list(record.value.values()) if isinstance(record.value, dict) else []):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                names.update(obj)
    return sorted(names)


# --------------------------------------------------------------------------- checks


def storable_problem(value: Any, typ: str) -> str | None:
    """Why Postgres would refuse `value` in a column of type `typ` (None when it would not)."""
    if value is None:
        return None
    if typ == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31
        return None if ok else f"{value!r} does not fit an integer"
    if typ == "timestamp with time zone":
        return None if isinstance(value, datetime) and value.tzinfo else f"{value!r} is not an aware datetime"
    if typ == "date":
        return None if isinstance(value, date) and not isinstance(value, datetime) else f"{value!r} is not a date"
    if typ == "boolean":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if typ == "jsonb":  # the loader writes it with json_dumps; Postgres parses the text
        try:
            text = json_dumps(value).decode()
        except (TypeError, ValueError, RecursionError) as exc:
            return f"not storable as JSONB: {type(exc).__name__}: {str(exc)[:80]}"
        if re.search(r"(?:^|[^\\])(?:\\\\)*\\u0000", text):  # an escape, not the text `\u0000`
            return "JSON holds \\u0000, which JSONB refuses"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "JSON holds a lone surrogate, which JSONB refuses"
        return None
    if typ == "ARRAY":
        if not isinstance(value, list):
            return f"{value!r} is not a list"
        return next((p for p in (storable_problem(v, "text") for v in value) if p), None)
    if not isinstance(value, str):
        return f"{value!r} is not text"
    if "\x00" in value:
        return "text holds NUL"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text is not encodable as UTF-8"
    return None


def check_outcome(entity: Entity, record: RawRecord, outcome: Outcome, columns: dict[str, dict[str, str]]) -> None:
    where = record.key + (f" field {record.field!r}" if record.field else "")
    if outcome.reject is not None:
        assert outcome.reject.code != "transform_error", outcome.reject.message
        assert outcome.reject.code.replace("_", "").isalnum() and outcome.reject.code.islower()
        assert outcome.reject.message.startswith(where), outcome.reject.message
        assert not outcome.rows
        return
    tables = {t.name: t for t in entity.tables}
    for label, item in outcome.item_rejects:
        assert item.code != "transform_error", (label, item.message)
    for row in outcome.rows:
        spec = tables.get(row.table) or next(t for e in ENTITIES for t in e.tables if t.name == row.table)
        assert row.values.get(spec.pk) is not None, f"{where}: {row.table} row without {spec.pk}"
        for col, value in row.values.items():
            problem = storable_problem(value, columns[row.table][col])
            assert problem is None, f"{where}: {row.table}.{col}: {problem}"


def transformer_fuzz(corpus: list[tuple[RawRecord, str]], columns: dict[str, dict[str, str]],
                     fuzz: settings) -> dict[str, int]:
    """Run hostile variants of corpus records through their transformers; outcomes by kind."""
    fields = field_names(corpus)
    seen: dict[str, int] = {}

    @fuzz
    @given(st.data())
    def case(data: st.DataObject) -> None:
        record, name = data.draw(st.sampled_from(corpus))
        variant = mutate(record, data.draw, fields)
        entity = BY_NAME[name]
        outcome = entity.transform(variant)
        assert outcome == entity.transform(variant)  # pure: the same record, the same outcome
        check_outcome(entity, variant, outcome, columns)
        kind = "rejected" if outcome.reject else "item rejects" if outcome.item_rejects else "migrated"
        seen[kind] = seen.get(kind, 0) + 1

    case()
    return seen


def test_every_transformer_survives_hostile_variants_of_every_record_shape(
        corpus: list[tuple[RawRecord, str]], columns: dict[str, dict[str, str]],
        request: pytest.FixtureRequest) -> None:
    seen = transformer_fuzz(corpus, columns, FUZZ)
    total = sum(seen.values())
    assert total >= PURE_CASES * 0.9 and seen.get("migrated") and seen.get("rejected")
    note(request, f"{total} hostile records through the transformers: "
         + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())) + "; exceptions 0")


@pytest.mark.slow
@pytest.mark.skipif("KVMIGRATE_STRESS_KILLS" not in os.environ, reason="the long loops run with `make stress`")
def test_stress_transformer_fuzz_explores_new_cases(
        corpus: list[tuple[RawRecord, str]], columns: dict[str, dict[str, str]],
        request: pytest.FixtureRequest) -> None:
    seen = transformer_fuzz(corpus, columns, settings(FUZZ, max_examples=20_000, derandomize=False))
    note(request, f"{sum(seen.values())} new hostile records (not derandomized): exceptions 0")


# --------------------------------------------------------------------------- end to end


def write(client: redis.Redis, record: RawRecord) -> None:
    key = encode_key(record.key)
    value = record.value
    if record.field:
        if client.type(key) not in (b"hash", b"none"):
            client.delete(key)
        client.hset(key, encode_key(record.field), value)  # type: ignore[arg-type]
    elif record.redis_type == "string":
        client.set(key, value)  # type: ignore[arg-type]
    elif record.redis_type == "hash" and isinstance(value, dict):
        client.delete(key)
        if value:
            client.hset(key, mapping=value)  # type: ignore[arg-type]
    elif record.redis_type in ("list", "set") and isinstance(value, list):
        client.delete(key)
        if value:
            (client.rpush if record.redis_type == "list" else client.sadd)(key, *value)
    elif isinstance(value, list) and value:
        client.delete(key)
        client.zadd(key, {m: s for m, s in value})  # type: ignore[misc]


def storable_key(record: RawRecord) -> bool:
    """Keys and fields Postgres TEXT can hold (the others are rejected as invalid_key, tested below)."""
    return not any("\x00" in s or any(0xD800 <= ord(ch) <= 0xDFFF for ch in s) for s in (record.key, record.field))


def test_hostile_keyspaces_end_migrated_or_rejected_with_a_reason_end_to_end(
        corpus: list[tuple[RawRecord, str]], pg_url: str, kv_url: str, kv: redis.Redis,
        request: pytest.FixtureRequest) -> None:
    fields = field_names(corpus)
    commands.setup(build_config(pg_url=pg_url, env={}))
    # every case empties KV on purpose while the ledger keeps the keys of earlier cases
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, batch_size=10, scan_count=10,
                          allow_shrunk_store=True)
    keys_checked = [0, 0]

    @settings(FUZZ, max_examples=E2E_CASES)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        kv.flushdb()
        count = data.draw(st.integers(1, 6))
        records = [mutate(data.draw(st.sampled_from(corpus))[0], data.draw, fields) for _ in range(count)]
        records = [r for r in records if storable_key(r)]
        for record in records:
            write(kv, record)
        result = commands.backfill(config)
        assert result.complete
        with psycopg.connect(pg_url) as conn:
            ledger = {(k, f): (status, reason, digest) for k, f, status, reason, digest in conn.execute(
                "SELECT key, field, status, reason, value_hash FROM kvmigrate.ledger")}
            rejects = dict(conn.execute("SELECT key || '|' || field, reason_code FROM kvmigrate.rejects"))
        for raw in kv.scan_iter():
            key = raw.decode("utf-8", "surrogateescape")
            rows = [(k, f) for (k, f) in ledger if k == key]
            assert rows, f"{key!r} has no ledger row: silently skipped"
            for k, f in rows:
                status, reason, digest = ledger[(k, f)]
                assert status in ("migrated", "rejected", "kept", "unknown")
                if status == "rejected":
                    assert rejects.get(f"{k}|{f}") == reason, (k, f, reason)
                if status in ("migrated", "rejected") and not f:
                    assert digest == value_digest(*current(kv, raw)), f"{key!r}: stale ledger row"
            keys_checked[0] += 1
        keys_checked[1] += 1

    case()
    assert keys_checked[1] >= E2E_CASES * 0.9
    note(request, f"{keys_checked[1]} hostile keyspaces ({keys_checked[0]} keys) backfilled: "
         "every key in the ledger, every reject with its reason; exceptions 0")


def current(client: redis.Redis, key: bytes) -> tuple[str, Any]:
    t = client.type(key).decode()
    value: Any = (client.get(key) if t == "string" else client.hgetall(key) if t == "hash"
                  else client.lrange(key, 0, -1) if t == "list" else list(client.smembers(key)) if t == "set"
                  else [(m, float(s)) for m, s in client.zrange(key, 0, -1, withscores=True)])
    return t, value


# --------------------------------------------------------------------------- documented rules


def test_a_deeply_nested_item_is_an_item_reject_and_its_neighbours_migrate() -> None:
    deep = str(Deep(300))
    good = orjson.dumps({"id": "m1", "from": "alice", "to": "bob", "text": "hi", "timestamp": 1_748_736_000_000})
    bad = b'{"id": "m2", "from": "alice", "to": "bob", "text": "hi", "extra": ' + deep.encode() + b"}"
    record = RawRecord("vibe:messages", "string", b"[" + good + b"," + bad + b"]", "", "archive")
    outcome = BY_NAME["messages"].transform(record)
    assert outcome.reject is None
    assert [r.values["id"] for r in outcome.rows] == ["m1"]
    [(label, item)] = outcome.item_rejects
    assert (label, item.code) == ("[1]", "too_deep")


HUGE = 10 * 1024 * 1024 + 7


def test_values_of_10_mb_are_rejected_as_too_large_and_the_run_completes(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    big = b"x" * HUGE
    post = b'{"author": "alice", "content": "' + big + b'", "timestamp": 1748736000000}'
    kv.set("board:entry:huge", post)
    kv.hset("vibe:handles", mapping={"alice": orjson.dumps({"handle": "alice"}), "bigfoot": big})
    kv.hset("streak:bob", mapping={"current": "1", "notes": big})
    kv.rpush("thread:alice:bob", orjson.dumps({"id": "t1", "from": "alice", "to": "bob", "text": "hi"}), big)
    kv.set("board:entry:fine", orjson.dumps({"author": "alice", "content": "ok", "timestamp": 1748736000000}))
    commands.setup(build_config(pg_url=pg_url, env={}))
    result = commands.backfill(build_config(pg_url=pg_url, kv_url=kv_url, env={}))
    assert result.complete
    rejects = {(k, f): code for k, f, code in pg.execute("SELECT key, field, reason_code FROM kvmigrate.rejects")}
    assert rejects == {("board:entry:huge", ""): "too_large", ("vibe:handles", "bigfoot"): "too_large",
                       ("streak:bob", ""): "too_large", ("thread:alice:bob", "#[1]"): "too_large"}
    assert pg.execute("SELECT id FROM board_posts").fetchall() == [("fine",)]
    assert pg.execute("SELECT id FROM messages").fetchall() == [("t1",)]
    assert pg.execute("SELECT handle FROM users WHERE settings->>'placeholder' IS NULL").fetchall() == [("alice",)]


def test_keys_with_glob_characters_newlines_and_quotes_are_handled_by_name(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    post = {"author": "Alice", "content": "x", "timestamp": 1748736000000}
    keys = ["board:entry:a*b", "board:entry:a?b", "board:entry:[ab]", "board:entry:new\nline",
            "board:entry:'; DROP TABLE users; --", "board:entry:é 💥", "streak:*", "streak:@Alice"]
    for key in keys:
        kv.set(key, orjson.dumps(post) if key.startswith("board") else b'{"current": 1}')
    commands.setup(build_config(pg_url=pg_url, env={}))
    commands.backfill(build_config(pg_url=pg_url, kv_url=kv_url, env={}))
    ids = {i for (i,) in pg.execute("SELECT id FROM board_posts")}
    assert ids == {"a*b", "a?b", "[ab]", "new\nline", "'; DROP TABLE users; --", "é 💥"}
    assert pg.execute("SELECT author FROM board_posts GROUP BY author").fetchall() == [("alice",)]
    ledger = dict(pg.execute("SELECT key, coalesce(reason, status) FROM kvmigrate.ledger"))
    assert ledger == {**dict.fromkeys(keys, "migrated"), "streak:*": "invalid_handle"}
    assert pg.execute("SELECT handle FROM streaks").fetchall() == [("alice",)]


# --------------------------------------------------------------------------- names Postgres cannot store


def test_a_key_that_is_not_utf8_is_recorded_and_the_others_migrate(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.set(b"streak:caf\xe9", b'{"current": 1}')
    kv.set("streak:alice", b'{"current": 2}')
    commands.setup(build_config(pg_url=pg_url, env={}))
    assert commands.backfill(build_config(pg_url=pg_url, kv_url=kv_url, env={})).complete
    assert pg.execute("SELECT handle FROM streaks").fetchall() == [("alice",)]
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone() == (2,)
    assert pg.execute("SELECT key, reason_code, raw_value FROM kvmigrate.rejects").fetchall() == [
        ("streak:caf\\xe9", "invalid_key", '{"current": 1}')]


def test_a_key_with_a_nul_byte_is_recorded_and_the_others_migrate(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.hset("vibe:handles", mapping={b"al\x00ice": b'{"handle": "alice"}', b"bob": b'{"handle": "bob"}'})
    commands.setup(build_config(pg_url=pg_url, env={}))
    assert commands.backfill(build_config(pg_url=pg_url, kv_url=kv_url, env={})).complete
    assert pg.execute("SELECT handle FROM users").fetchall() == [("bob",)]
    assert pg.execute("SELECT key, field, reason_code FROM kvmigrate.rejects").fetchall() == [
        ("vibe:handles", "al\\x00ice", "invalid_key")]


_SOURCES = (  # three sources of one user, as the registries hold them (rank: handles 40 > agents 30 > users 20)
    ("vibe:handles", {"handle": "ops_agent", "registeredAt": "2025-02-06T16:19:42.840Z"}),
    ("vibe:agents", {"handle": "ops_agent", "display_name": "Ops Agent", "is_agent": True}),
    ("vibe:users", {"handle": "ops_agent", "display_name": "Ops_Agent", "created_at": "2025-02-06T16:19:42.840Z"}),
)


def _user_rows(order: tuple[int, ...]) -> list[Any]:
    from kvmigrate.adapters.pg.loader import SourcedRow

    users = BY_NAME["users"]
    out = []
    for i in order:
        key, value = _SOURCES[i]
        family = {"vibe:handles": "handles", "vibe:agents": "agents", "vibe:users": "registry_users"}[key]
        outcome = users.transform(RawRecord(key, "hash", orjson.dumps(value), "ops_agent", family))
        [row] = outcome.rows
        out.append(SourcedRow(row.values, row.rank, key, "ops_agent"))
    return out


@given(st.permutations((0, 1, 2)))
@settings(deadline=None, derandomize=True, database=None)
def test_merging_the_sources_of_one_user_does_not_depend_on_their_order(order: list[int]) -> None:
    from kvmigrate.adapters.pg.loader import dedupe

    spec = BY_NAME["users"].tables[0]
    [merged] = dedupe(spec, _user_rows(tuple(order)))
    [expected] = dedupe(spec, _user_rows((0, 1, 2)))
    assert merged.values == expected.values
    assert merged.values["display_name"] == "Ops Agent"  # vibe:agents outranks vibe:users


def _load_in_batches(url: str, batches: list[tuple[int, ...]]) -> Any:
    """Load the sources in the given batches through the backfill's writer; the merged row."""
    from kvmigrate.adapters.pg import state
    from kvmigrate.engine.batch import Batch
    from kvmigrate.engine.writer import BatchWriter

    users = BY_NAME["users"]
    families = {"vibe:handles": "handles", "vibe:agents": "agents", "vibe:users": "registry_users"}
    commands.setup(build_config(pg_url=url, env={}))
    with psycopg.connect(url) as conn:
        writer = BatchWriter(conn, state.start_run(conn, "backfill", dry_run=False, options={}))
        for indexes in batches:
            batch = Batch()
            for i in indexes:
                key, value = _SOURCES[i]
                record = RawRecord(key, "hash", orjson.dumps(value), "ops_agent", families[key])
                batch.add_outcome(users, record, users.transform(record), writer.required())
            writer.write(batch)
        return conn.execute("SELECT * FROM users WHERE handle = 'ops_agent'").fetchone()


def test_each_column_comes_from_the_highest_ranked_source_whatever_the_batches(
        new_pg_url: Callable[[], str]) -> None:
    at_once = _load_in_batches(new_pg_url(), [(0, 1, 2)])
    one_by_one = _load_in_batches(new_pg_url(), [(0,), (2,), (1,)])  # SCAN order decides this in a backfill
    assert at_once == one_by_one
