"""`kvmigrate verify` against real servers: clean after a backfill, every kind of tamper reported
exactly, racing writes healed on re-check, repair, buckets mode, ledger.verified_hash, the CLI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.kv.classify import Classifier
from kvmigrate.entities import ENTITIES
from kvmigrate.model.config import build_config
from kvmigrate.model.errors import ConfigError
from kvmigrate.phases.verify import VerifyResult, run_verify
from kvmigrate.tryout.seed import seed_keyspace
from tests.fixtures.data import T_MS, mixed_keyspace
from tests.helpers import cli, cli_json

MSG_1 = {"id": "m1", "from": "alice", "to": "bob", "text": "hello", "createdAt": "2025-06-01T10:00:00Z",
         "read": True}
MSG_2 = {"id": "m2", "from": "bob", "to": "alice", "body": "yo", "type": "dm", "timestamp": T_MS + 2}
MSG_3 = {"from": "carol", "to": "alice", "text": "no id, copied twice", "timestamp": T_MS + 3}
MSG_4 = {"id": "1748736000004-abcdef", "from": "alice", "to": "carol", "text": "oldest", "timestamp": T_MS + 4}
MSG_5 = {"id": "m5", "from": "vibe", "to": "alice", "text": "welcome", "system": True, "timestamp": T_MS + 5}


def app_keyspace(r: redis.Redis) -> None:
    """`mixed_keyspace` (without its multi-megabyte values) plus users in several sources,
    messages in several lists, a system sender (a placeholder user), and games."""
    mixed_keyspace(r)
    p = r.pipeline(transaction=False)
    p.delete("board:entry:big", "board:entry:huge")
    p.hset("vibe:agents", mapping={
        "alice": orjson.dumps({"handle": "alice", "display_name": "Alice", "model": "m", "api_key_hash": "s"}),
        "dora": orjson.dumps({"handle": "dora", "display_name": "Dora", "operator": "alice"}),
    })
    p.hset("vibe:users", mapping={"alice": orjson.dumps({"one_liner": "ignored: the registry wins",
                                                         "created_at": "2024-01-01T00:00:00Z"})})
    p.hset("user:alice", mapping={"username": "alice", "building": "older", "inviteCode": "X1"})
    p.set("msg:m1", orjson.dumps(MSG_1))
    p.set("msg:m2", orjson.dumps(MSG_2))
    p.set("msg:m5", orjson.dumps(MSG_5))
    p.rpush("messages:bob", orjson.dumps(MSG_1), orjson.dumps({**MSG_1, "id": None, "text": "x"}))
    p.rpush("messages:alice", orjson.dumps(MSG_2), orjson.dumps(MSG_3))
    p.rpush("thread:alice:carol", orjson.dumps(MSG_3), orjson.dumps(MSG_4), "m404")
    p.set("vibe:messages", orjson.dumps([MSG_4, MSG_1]))
    p.rpush("inbox:bob", "m1", "m2")
    p.hset("unread:bob", "alice", "1")
    p.set("vibe:games", orjson.dumps({"g1": {"type": "tictactoe", "players": ["alice", "bob"],
                                             "state": {"winner": "alice", "board": ["x", None, "o"]},
                                             "created_at": "2025-06-01T00:00:00Z", "status": "done"}}))
    p.execute()


def _config(pg_url: str, kv_url: str, **options: Any) -> Any:
    return build_config(pg_url=pg_url, kv_url=kv_url, env={}, **options)


def _backfill(pg_url: str, kv_url: str, *, memories_dir: Path | None = None, **options: Any) -> None:
    config = _config(pg_url, kv_url, **options)
    commands.setup(config)
    commands.backfill(config, memories_dir=memories_dir)


def _verify(pg_url: str, kv_url: str, **kw: Any) -> VerifyResult:
    kw.setdefault("recheck_delay", 0)
    return run_verify(_config(pg_url, kv_url), **kw)


def _summary(result: VerifyResult) -> dict[str, dict[str, list[tuple[str, str, str]]]]:
    """Every difference as (table, pk, key) per kind, per entity (entities with none left out)."""
    out: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
    for name, check in result.entities.items():
        kinds = {k: sorted((d.table, d.pk, d.key) for d in getattr(check, k))
                 for k in ("missing", "extra", "different")}
        kinds = {k: v for k, v in kinds.items() if v}
        if kinds:
            out[name] = kinds
    return out



def _ledger(pg: psycopg.Connection, entity: str | None = None) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(key, field) → (status, value_hash, verified_hash) for every ledger row (of `entity`)."""
    rows = pg.execute("SELECT key, field, status, value_hash, verified_hash FROM kvmigrate.ledger"
                      " WHERE entity = coalesce(%s, entity)", (entity,)).fetchall()
    return {(k, f): (s, v, h) for k, f, s, v, h in rows}


def _unverified(pg: psycopg.Connection) -> set[tuple[str, str]]:
    """Migrated ledger rows whose value is not recorded as verified."""
    return {k for k, (status, value, verified) in _ledger(pg).items()
            if status == "migrated" and verified != value}


# --- clean -------------------------------------------------------------------------------------

def test_verify_after_backfill_is_clean_and_marks_every_migrated_key_verified(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {}
    assert result.clean
    assert {n: c.checked for n, c in result.entities.items()} == {
        "users": 4, "messages": 6, "board": 40, "streaks": 2, "invites": 1, "games": 1, "consent": 0,
        "friends": 0, "reports": 0}
    assert _unverified(pg) == set()
    classifier = Classifier(ENTITIES)
    for key, (status, _, verified) in _ledger(pg).items():
        family = classifier.classify(key[0] if isinstance(key, tuple) else key).family
        unread = family is not None and not family.read_by_backfill  # a derived index: never read
        assert (verified is None) == (status != "migrated" or unread), key
    recorded = pg.execute("SELECT entity, mode, sampled, checked, missing, extra, different, healed, clean"
                          " FROM kvmigrate.verify_results WHERE run_id = %s ORDER BY entity",
                          (result.run_id,)).fetchall()
    assert recorded == sorted((n, "rows", False, c.checked, 0, 0, 0, 0, True) for n, c in result.entities.items())


def test_users_merged_from_every_source_and_messages_copied_in_every_list_verify_clean(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url, scan_count=10, batch_size=2)  # sources of one row land in different pages
    assert pg.execute("SELECT display_name, one_liner, settings FROM users WHERE handle = 'alice'").fetchone() == (
        "Alice", "builds", {"model": "m", "inviteCode": "X1", "api_key_hash": "[redacted]"})
    assert pg.execute("SELECT count(*) FROM messages").fetchone() == (6,)
    result = _verify(pg_url, kv_url, entities=["users", "messages"])
    assert _summary(result) == {}
    assert (result.entities["users"].checked, result.entities["messages"].checked) == (4, 6)


def test_placeholder_users_are_never_extra(pg_url: str, kv_url: str, kv: redis.Redis,
                                           pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    placeholders = {h for (h,) in pg.execute(
        "SELECT pk FROM kvmigrate.row_origin WHERE tbl = 'users' AND rank < 0")}
    assert placeholders == {"vibe"}
    for entities, mode in (([], "rows"), (["users"], "rows"), (["users"], "buckets")):
        assert _summary(_verify(pg_url, kv_url, entities=entities, mode=mode)) == {}, (entities, mode)


# --- each tamper, reported exactly ---------------------------------------------------------------

def test_deleted_pg_row_is_missing(pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("DELETE FROM board_posts WHERE id = 'entry_3'")
    pg.execute("DELETE FROM messages WHERE id = 'm1'")
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {
        "board": {"missing": [("board_posts", "entry_3", "board:entry:entry_3")]},
        "messages": {"missing": [("messages", "m1", "msg:m1")]},
    }
    assert not result.clean


def test_changed_pg_fields_are_different_with_both_values(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("UPDATE board_posts SET content = 'edited', created_at = created_at + interval '1 hour',"
               " tags = '{t,u}' WHERE id = 'entry_3'")
    pg.execute("UPDATE streaks SET details = '{\"activeDays\": [\"2025-06-02\", \"2025-06-01\"], \"note\": null}',"
               " achievements = '{}' WHERE handle = 'bob'")
    pg.execute("UPDATE game_results SET state = state || '{\"board\": [\"x\", null, \"x\"]}' WHERE id = 'g1'")
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {
        "board": {"different": [("board_posts", "entry_3", "board:entry:entry_3")]},
        "streaks": {"different": [("streaks", "bob", "streak:Bob")]},
        "games": {"different": [("game_results", "g1", "vibe:games")]},
    }
    assert result.entities["board"].different[0].fields == {
        "content": ["post 3", "edited"],
        "created_at": ["2025-06-01T00:00:00.003+00:00", "2025-06-01T01:00:00.003+00:00"],
        "tags": [["t"], ["t", "u"]],
    }
    assert result.entities["streaks"].different[0].fields == {
        "details": [{"activeDays": ["2025-06-01", "2025-06-02"]},
                    {"activeDays": ["2025-06-02", "2025-06-01"], "note": None}],
        "achievements": [["first_dm"], []],
    }
    state = {"winner": "alice", "_extra": {"status": "done"}}
    assert result.entities["games"].different[0].fields == {
        "state": [{**state, "board": ["x", None, "o"]}, {**state, "board": ["x", None, "x"]}]}


def test_row_with_no_kv_source_is_extra(pg_url: str, kv_url: str, kv: redis.Redis,
                                        pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("INSERT INTO board_posts (id, author, content) VALUES ('stray', 'alice', 'only in Postgres')")
    pg.execute("INSERT INTO streaks (handle, current_streak) VALUES ('carol', 1)")
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {
        "board": {"extra": [("board_posts", "stray", "")]},
        "streaks": {"extra": [("streaks", "carol", "")]},
    }
    # an entity verified on its own answers for every row of its own tables
    assert _summary(_verify(pg_url, kv_url, entities=["streaks"])) == {
        "streaks": {"extra": [("streaks", "carol", "")]}}


def test_changed_kv_key_is_different(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    kv.hset("streak:alice", mapping={"current": "9", "lastActive": "2025-06-09"})
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {"streaks": {"different": [("streaks", "alice", "streak:alice")]}}
    assert result.entities["streaks"].different[0].fields == {
        "current_streak": [9, 3], "last_active": ["2025-06-09", "2025-06-01"]}


def test_deleted_kv_key_is_extra(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    kv.delete("board:entry:entry_5", "msg:m2")  # m2 is also in messages:alice: still expected
    result = _verify(pg_url, kv_url)
    assert _summary(result) == {"board": {"extra": [("board_posts", "entry_5", "board:entry:entry_5")]}}


def test_entity_verified_alone_does_not_report_other_entities_rows(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    kv.set("msg:g", orjson.dumps({"id": "g", "from": "alice", "to": "bob", "text": "mate", "timestamp": T_MS,
                                  "payload": {"type": "game", "game": "chess", "state": {"winner": "alice"}}}))
    _backfill(pg_url, kv_url)
    assert pg.execute("SELECT id FROM game_results ORDER BY id").fetchall() == [("dm_g",), ("g1",)]
    pg.execute("DELETE FROM board_posts WHERE id = 'entry_3'")
    streaks = _verify(pg_url, kv_url, entities=["streaks"])
    assert list(streaks.entities) == ["streaks"]
    assert streaks.clean
    games = _verify(pg_url, kv_url, entities=["games"])  # dm_g comes from messages: not an extra of games
    assert _summary(games) == {}
    assert _summary(_verify(pg_url, kv_url, entities=["messages"])) == {}


# --- live writes, repair --------------------------------------------------------------------------

def test_writes_racing_the_verify_heal_on_recheck(pg_url: str, kv_url: str, kv: redis.Redis,
                                                  pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    # a dual-writing app writes Postgres first, then KV: the KV writes land while verify waits
    pg.execute("UPDATE streaks SET current_streak = 7 WHERE handle = 'alice'")
    pg.execute("INSERT INTO board_posts (id, author, content, tags, details, created_at) VALUES"
               " ('entry_new', 'alice', 'new', '{}', '{}', '2025-06-01T00:00:00Z')")
    pg.execute("DELETE FROM board_posts WHERE id = 'entry_7'")
    pg.execute("UPDATE board_posts SET content = 'stale' WHERE id = 'entry_8'")  # not racing: stays
    waited: list[float] = []
    real_sleep = time.sleep

    def app_writes_kv(seconds: float) -> None:
        waited.append(seconds)
        kv.hset("streak:alice", "current", "7")
        kv.set("board:entry:entry_new", orjson.dumps({"author": "alice", "content": "new", "tags": [],
                                                      "timestamp": T_MS}))
        kv.delete("board:entry:entry_7")
        real_sleep(seconds)

    monkeypatch.setattr("kvmigrate.phases.verify.time.sleep", app_writes_kv)
    result = _verify(pg_url, kv_url, recheck_delay=0.2)
    assert waited == [0.2]
    assert _summary(result) == {"board": {"different": [("board_posts", "entry_8", "board:entry:entry_8")]}}
    assert (result.entities["streaks"].healed, result.entities["board"].healed) == (1, 2)
    assert ("streak:alice", "") in _unverified(pg)  # it was changing: the next verify vouches for it


def test_repair_recopies_missing_and_different_rows_and_leaves_extra_rows(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("DELETE FROM board_posts WHERE id = 'entry_3'")
    pg.execute("UPDATE messages SET content = 'edited' WHERE id = 'm2'")
    pg.execute("UPDATE users SET display_name = 'Eve' WHERE handle = 'alice'")
    kv.hset("streak:alice", "current", "9")
    kv.delete("board:entry:entry_5")
    repaired = _verify(pg_url, kv_url, repair=True)
    assert _summary(repaired) == {"board": {"extra": [("board_posts", "entry_5", "board:entry:entry_5")]}}
    assert {n: c.repaired for n, c in repaired.entities.items() if c.repaired} == {
        "board": 1, "messages": 1, "users": 1, "streaks": 1}
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (9,)
    assert pg.execute("SELECT display_name FROM users WHERE handle = 'alice'").fetchone() == ("Alice",)
    assert _summary(_verify(pg_url, kv_url)) == {"board": {"extra": [("board_posts", "entry_5", "board:entry:entry_5")]}}
    with pytest.raises(ConfigError, match="deletes rows"):
        commands.verify(_config(pg_url, kv_url), repair_extra=True, recheck_delay=0)
    deleted = commands.verify(_config(pg_url, kv_url), repair_extra=True, yes=True, recheck_delay=0)
    assert deleted.extra_deleted == 1
    assert _verify(pg_url, kv_url).clean
    assert _unverified(pg) == {("board:entry:entry_5", "")}  # gone from KV: nothing left to vouch for


def test_a_source_deleted_from_kv_no_longer_decides_its_row_and_repair_converges(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    kv.set("msg:m1", orjson.dumps({**MSG_1, "text": "hello (edited)"}))  # newer than its list copies
    _backfill(pg_url, kv_url)
    assert pg.execute("SELECT display_name FROM users WHERE handle = 'alice'").fetchone() == ("Alice",)
    assert pg.execute("SELECT content FROM messages WHERE id = 'm1'").fetchone() == ("hello (edited)",)
    # The app's weekly job deletes msg:m1 (its copies in messages:bob and vibe:messages remain),
    # and alice's agent record goes (her registry and legacy records remain).
    kv.delete("msg:m1")
    kv.hdel("vibe:agents", "alice")
    found = _verify(pg_url, kv_url)
    assert _summary(found) == {"messages": {"different": [("messages", "m1", "messages:bob")]},
                               "users": {"different": [("users", "alice", "vibe:handles")]}}
    assert _summary(_backfill_and_verify(pg_url, kv_url)) == _summary(found)  # backfill alone keeps them
    # alice's row would lose her display name and agent fields: refused unless allowed; m1 only changes
    partly = _verify(pg_url, kv_url, repair=True)
    assert _summary(partly) == {"users": {"different": [("users", "alice", "vibe:handles")]}}
    assert [(r.key, r.pk) for r in partly.refused] == [("vibe:handles", "alice")]
    assert any(p.startswith("display_name") for p in partly.refused[0].lost), partly.refused
    assert pg.execute("SELECT display_name FROM users WHERE handle = 'alice'").fetchone() == ("Alice",)
    repaired = run_verify(_config(pg_url, kv_url, allow_lossy_repair=True), recheck_delay=0, repair=True)
    assert repaired.clean and partly.sources_forgotten + repaired.sources_forgotten == 2
    assert {n: c.repaired for n, c in repaired.entities.items() if c.repaired} == {"users": 1}
    assert pg.execute("SELECT display_name, settings ? 'model' FROM users WHERE handle = 'alice'").fetchone() == (
        None, False)
    assert pg.execute("SELECT content FROM messages WHERE id = 'm1'").fetchone() == ("hello",)  # as KV reads now
    assert _verify(pg_url, kv_url).clean
    assert _summary(_backfill_and_verify(pg_url, kv_url)) == {}  # and a later backfill agrees


def _backfill_and_verify(pg_url: str, kv_url: str) -> VerifyResult:
    commands.backfill(_config(pg_url, kv_url))
    return _verify(pg_url, kv_url)


def test_repair_extra_keeps_a_row_still_referenced_and_reports_it(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("INSERT INTO users (handle) VALUES ('zed')")
    pg.execute("INSERT INTO board_posts (id, author, content) VALUES ('z1', 'zed', 'hi')")
    config = _config(pg_url, kv_url)
    first = commands.verify(config, repair_extra=True, yes=True, recheck_delay=0)
    assert first.extra_deleted == 1  # the post; its author was still referenced when tried
    assert _summary(first) == {"users": {"extra": [("users", "zed", "")]}}
    second = commands.verify(config, repair_extra=True, yes=True, recheck_delay=0)
    assert (second.extra_deleted, second.clean) == (1, True)
    assert pg.execute("SELECT count(*) FROM users WHERE handle = 'zed'").fetchone() == (0,)


def test_many_differences_are_rechecked_and_repaired_page_by_page(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    pg.execute("DELETE FROM board_posts")
    pg.execute("UPDATE streaks SET total_days = 99")
    config = _config(pg_url, kv_url, scan_count=10)  # 42 differences: 5 pages of re-reads
    result = run_verify(config, recheck_delay=0, repair=True)
    assert result.clean
    assert {n: c.repaired for n, c in result.entities.items() if c.repaired} == {"board": 40, "streaks": 2}
    assert run_verify(config, recheck_delay=0).clean


# --- ledger.verified_hash ----------------------------------------------------------------------

def test_differing_rows_clear_verified_hash_of_every_source(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    assert _verify(pg_url, kv_url).clean
    pg.execute("UPDATE users SET settings = settings || '{\"model\": \"x\"}' WHERE handle = 'alice'")
    pg.execute("UPDATE messages SET read = false WHERE id = 'm1'")
    kv.hset("streak:alice", "current", "9")
    assert not _verify(pg_url, kv_url).clean
    assert _unverified(pg) == {
        ("vibe:handles", "alice"), ("vibe:agents", "alice"), ("vibe:users", "alice"), ("user:alice", ""),
        ("msg:m1", ""), ("messages:bob", ""), ("vibe:messages", ""), ("streak:alice", "")}
    assert _ledger(pg)[("streak:alice", "")][2] is None


def test_key_first_seen_by_verify_enters_the_ledger_as_migrated(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    # the app dual-wrote a new streak to both stores
    kv.set("streak:carol", orjson.dumps({"current": 1, "longest": 1, "lastActive": "2025-06-03"}))
    pg.execute("INSERT INTO streaks VALUES ('carol', 1, 1, 0, '2025-06-03', '{}', '{}')")
    result = _verify(pg_url, kv_url, entities=["streaks"])
    assert result.clean
    assert result.entities["streaks"].checked == 3
    status, value, verified = _ledger(pg)[("streak:carol", "")]
    assert (status, verified) == ("migrated", value) and value


# --- the command line ----------------------------------------------------------------------------

def test_cli_exits_0_when_clean_1_on_differences_and_prints_the_json_contract(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    verify = ("--pg-url", pg_url, "--kv-url", kv_url, "verify", "--recheck-delay", "0")
    clean = cli_json(*verify, "--entity", "streaks", expect=0)["result"]
    assert clean["clean"] is True
    assert isinstance(clean["kv_requests"], int) and clean["kv_requests"] > 0
    assert clean["entities"] == {"streaks": {"checked": 2, "keys": 4, "clean": True, "missing": [], "extra": [],
                                             "different": [], "healed": 0, "repaired": 0, "superseded": 0,
                                             "verified_keys": 2, "repair_refused": []}}
    pg.execute("UPDATE messages SET content = 'edited' WHERE id = 'm1'")
    pg.execute("DELETE FROM streaks WHERE handle = 'alice'")
    dirty = cli_json(*verify, expect=1)["result"]
    assert dirty["clean"] is False
    assert dirty["entities"]["messages"]["different"] == [
        {"table": "messages", "pk": "m1", "key": "msg:m1", "fields": {"content": ["hello", "edited"]}}]
    assert dirty["entities"]["streaks"]["missing"] == [{"table": "streaks", "pk": "alice", "key": "streak:alice"}]
    human = cli(*verify)
    assert human.exit_code == 1
    assert "DIFFERENCES" in human.output and "KV 'hello' vs PG 'edited'" in human.output
    assert cli(*verify, "--repair-extra").exit_code == 2
    assert cli_json(*verify, "--repair", expect=0)["result"]["entities"]["messages"]["repaired"] == 1
    assert cli(*verify).exit_code == 0


# --- memories, sample, buckets ----------------------------------------------------------------

def test_memories_are_verified_against_their_files(pg_url: str, kv_url: str, kv: redis.Redis,
                                                   pg: psycopg.Connection, tmp_path: Path) -> None:
    app_keyspace(kv)
    lines = [{"id": "mem1", "timestamp": "2025-06-01T00:00:00Z", "observation": "likes chess", "from": "alice",
              "about": "bob", "tone": "warm"},
             {"id": "mem2", "observation": "ships daily", "from": "alice", "about": "carol"}]
    memory_file = tmp_path / "thread_bob.jsonl"
    memory_file.write_bytes(b"\n".join(orjson.dumps(m) for m in lines) + b"\n")
    _backfill(pg_url, kv_url, memories_dir=tmp_path)
    result = _verify(pg_url, kv_url, entities=["memories"], memories_dir=tmp_path)
    assert (result.clean, result.entities["memories"].checked) == (True, 2)
    assert _ledger(pg, "memories")[("file:thread_bob.jsonl", "L000001")][2] is not None
    pg.execute("UPDATE memories SET observation = 'likes go' WHERE id = 'mem1'")
    memory_file.write_bytes(memory_file.read_bytes().replace(b"ships daily", b"ships weekly"))
    result = _verify(pg_url, kv_url, entities=["memories"], memories_dir=tmp_path)
    assert _summary(result) == {"memories": {"different": [("memories", "mem1", "file:thread_bob.jsonl"),
                                                           ("memories", "mem2", "file:thread_bob.jsonl")]}}
    assert [d.fields for d in sorted(result.entities["memories"].different, key=lambda d: d.pk)] == [
        {"observation": ["likes chess", "likes go"]}, {"observation": ["ships weekly", "ships daily"]}]
    assert _verify(pg_url, kv_url, entities=["memories"], memories_dir=tmp_path, repair=True).clean
    assert _verify(pg_url, kv_url, entities=["memories"], memories_dir=tmp_path).clean
    assert pg.execute("SELECT observation FROM memories ORDER BY id").fetchall() == [
        ("likes chess",), ("ships weekly",)]


def test_sample_checks_some_keys_and_states_its_confidence(pg_url: str, kv_url: str, kv: redis.Redis,
                                                           pg: psycopg.Connection) -> None:
    app_keyspace(kv)
    _backfill(pg_url, kv_url)
    result = _verify(pg_url, kv_url, sample=5, seed=1)
    assert _summary(result) == {}
    assert result.entities["board"].checked == 5
    assert result.entities["users"].checked == 4  # merged rows need every source: read whole
    confidence = result.confidence()
    assert confidence is not None and "run a full verify before cutover" in confidence
    assert pg.execute("SELECT bool_and(sampled) FROM kvmigrate.verify_results WHERE run_id = %s",
                      (result.run_id,)).fetchone() == (True,)
    pg.execute("UPDATE board_posts SET content = 'edited'")
    sampled = _verify(pg_url, kv_url, sample=3, seed=2)
    assert [d.kind for d in sampled.entities["board"].different] == ["different"] * 3
    assert sampled.confidence() is None


def test_sampled_copy_is_not_compared_against_a_row_a_higher_source_owns(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    kv.hset("vibe:handles", mapping={h: orjson.dumps({"handle": h}) for h in ("alice", "bob", "carol")})
    kv.set("msg:m1", orjson.dumps(MSG_1))
    kv.set("vibe:messages", orjson.dumps([{**MSG_1, "read": False}, MSG_4, {**MSG_4, "id": "m6"}]))
    _backfill(pg_url, kv_url)
    checked = set()
    for seed in range(8):  # one key of two per run: both are drawn
        result = _verify(pg_url, kv_url, entities=["messages"], sample=1, seed=seed)
        assert result.clean, seed
        checked.add(result.entities["messages"].checked)
    assert checked == {1, 2}  # msg:m1 → m1; the archive → its two own rows, not its stale m1


def _many_streaks(r: redis.Redis, n: int) -> None:
    p = r.pipeline(transaction=False)
    for i in range(n):
        p.set(f"streak:u{i}", b'{"current": %d, "longest": 9, "lastActive": "2025-06-01", "badges": ["b"]}' % (i % 7))
        if i % 5000 == 4999:
            p.execute()
    p.execute()


def test_buckets_mode_finds_what_rows_mode_finds_among_50k_rows(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                 pg: psycopg.Connection) -> None:
    _many_streaks(kv, 50_000)
    _backfill(pg_url, kv_url, scan_count=5000, batch_size=5000)
    assert pg.execute("SELECT count(*) FROM streaks").fetchone() == (50_000,)
    pg.execute("UPDATE streaks SET longest_streak = 10 WHERE handle = 'u123'")
    # Autovacuum may lag behind (it did on a busy server): each verify must plan on fresh
    # figures. The first verify records 50k verified keys; planned on the figures from before,
    # the second one's ledger update was a 50k × 50k nested loop. A statement that slow fails here.
    for table in ("kvmigrate.ledger", "kvmigrate.row_origin", "streaks"):
        pg.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    timeout = urlencode({"options": "-c statement_timeout=30000"}, quote_via=quote)
    limited = f"{pg_url}{'&' if '?' in pg_url else '?'}{timeout}"
    for mode in ("rows", "buckets"):  # how fast each mode is belongs in bench/, not here
        result = _verify(limited, kv_url, mode=mode, entities=["streaks"])
        assert _summary(result) == {"streaks": {"different": [("streaks", "u123", "streak:u123")]}}
        assert result.entities["streaks"].different[0].fields == {"longest_streak": [9, 10]}
        assert result.entities["streaks"].checked == 50_000


def _stats(pg: psycopg.Connection, table: str) -> tuple[int, int]:
    """(manual ANALYZE count, rows changed since the last ANALYZE) as Postgres reports them now."""
    pg.execute("SELECT pg_stat_clear_snapshot()")
    row = pg.execute("SELECT analyze_count, n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = %s::regclass",
                     (table,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _until(check: Any, what: str) -> None:
    """Wait for Postgres's counters of changed rows, which a session hands over a moment later."""
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_verify_analyzes_only_the_tables_that_changed_since_their_last_analyze(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    # A backfill that writes rows ends with ANALYZE of what it wrote (its counts of changed rows
    # handed over first); a verify right after it must not sample those tables again (a second
    # or more at a million keys), but must when their rows changed since: its own first run
    # marks every ledger row verified.
    if pg.info.server_version < 150000:
        pytest.skip("a session hands its counts over on request from PostgreSQL 15")
    pg.autocommit = True
    seed_keyspace(kv, users=12, seed=4)
    _backfill(pg_url, kv_url)
    _until(lambda: _stats(pg, "kvmigrate.ledger")[0] >= 1 and _stats(pg, "messages")[0] >= 1,
           "the backfill's ANALYZE never showed in pg_stat_user_tables")
    ledger0, messages0 = _stats(pg, "kvmigrate.ledger")[0], _stats(pg, "messages")[0]
    assert _verify(pg_url, kv_url).clean
    assert (_stats(pg, "kvmigrate.ledger")[0], _stats(pg, "messages")[0]) == (ledger0, messages0)
    rows = pg.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone()
    assert rows is not None and rows[0] > 100
    _until(lambda: _stats(pg, "kvmigrate.ledger")[1] > 50 + rows[0] // 10,
           "the first verify's marks on the ledger never showed in pg_stat_user_tables")
    assert _verify(pg_url, kv_url).clean
    assert (_stats(pg, "kvmigrate.ledger")[0], _stats(pg, "messages")[0]) == (ledger0 + 1, messages0)
