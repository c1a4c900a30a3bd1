"""`kvmigrate shadow`: the app's read views from KV and from Postgres, on real servers. After a
clean backfill every view matches; each purpose-built divergence is found field by field; the
billed tally equals the server's INFO commandstats and never passes --max-requests."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.model.config import Config, build_config
from kvmigrate.model.errors import BudgetExhausted, GateRefused
from kvmigrate.phases.shadow import ShadowResult
from kvmigrate.phases.shadow_views import VIEWS
from kvmigrate.tryout.seed import seed_keyspace
from tests.helpers import cli, cli_json
from tests.test_economy import _billed_by_server, _ours

T0 = "2025-06-01T12:00:00.000Z"


def _backfilled(pg_url: str, kv_url: str, **extra: Any) -> Config:
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, **extra)
    commands.setup(config)
    commands.backfill(config)
    return config


def _users(kv: redis.Redis, *handles: str) -> None:
    for h in handles:
        kv.hset("vibe:handles", h, json.dumps({"handle": h, "registeredAt": T0, "one_liner": f"{h} here"}))


def _diffs(result: ShadowResult, view: str) -> dict[str, tuple[Any, Any]]:
    return {d.path: (d.kv, d.pg) for c in result.views[view].first for d in c.differences}


def test_shadow_matches_every_view_after_a_clean_backfill_of_the_seeded_store(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=20, seed=7)
    config = _backfilled(pg_url, kv_url)
    result = commands.shadow(config, users=20)
    bad = {n: [(c.subject, c.differences) for c in s.first] for n, s in result.views.items() if s.first}
    assert result.clean, bad
    assert set(result.views) == set(VIEWS)
    assert all(s.checked > 0 for s in result.views.values()), {n: s.checked for n, s in result.views.items()}


def test_shadow_finds_a_read_flag_set_in_one_copy_only(pg_url: str, kv_url: str, kv: redis.Redis,
                                                       pg: psycopg.Connection) -> None:
    _users(kv, "ann", "bob")
    kv.set("msg:m1", json.dumps({"id": "m1", "from": "ann", "to": "bob", "text": "hi", "createdAt": T0,
                                 "read": False}))
    kv.rpush("inbox:bob", "m1")
    kv.set("vibe:messages", json.dumps([{"id": "m1", "from": "ann", "to": "bob", "text": "hi",
                                         "timestamp": 1748779200000, "read": True}]))
    config = _backfilled(pg_url, kv_url)
    assert commands.shadow(config, handles=["bob"], views=["inbox"]).clean  # read in any copy: read
    pg.execute("UPDATE messages SET read = false WHERE id = 'm1'")  # the msg:* copy alone
    pg.commit()
    result = commands.shadow(config, handles=["bob"], views=["inbox", "unread"])
    assert _diffs(result, "inbox")["items[0].read"] == (True, False)
    assert _diffs(result, "inbox")["unread"] == (0, 1)
    assert _diffs(result, "unread")["items[0].unread"] == (0, 1)


def test_shadow_finds_unread_counters_out_of_step_with_the_messages(pg_url: str, kv_url: str,
                                                                    kv: redis.Redis) -> None:
    _users(kv, "ann", "bob")
    for k in range(3):
        kv.lpush("messages:bob", json.dumps({"id": f"old-{k}", "from": "ann", "to": "bob", "body": f"m{k}",
                                             "timestamp": 1748779200000 + k * 1000, "read_at": None}))
    kv.hset("unread:bob", "ann", "2")
    config = _backfilled(pg_url, kv_url)
    clean = commands.shadow(config, handles=["bob"], views=["inbox", "unread"])
    assert clean.clean, [c.differences for s in clean.views.values() for c in s.first]
    kv.hincrby("unread:bob", "ann", 1)  # the app counted one more unread after the backfill
    result = commands.shadow(config, handles=["bob"], views=["inbox", "unread"])
    assert not result.clean
    assert _diffs(result, "unread")["items[0].unread"] == (3, 2)
    assert _diffs(result, "inbox")["unread"] == (3, 2)


def test_shadow_shows_a_case_colliding_key_pair_combined_and_finds_a_silent_merge(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    _users(kv, "fred")
    kv.hset("streak:Fred", mapping={"current": "5", "longest": "9", "totalDays": "20", "lastActive": "2025-06-02"})
    kv.set("streak:fred", json.dumps({"current": 2, "longest": 4, "lastActive": "2025-05-01",
                                      "activeDays": ["2025-05-01"], "badges": ["first"]}))
    config = _backfilled(pg_url, kv_url)
    clean = commands.shadow(config, handles=["fred"], views=["leaderboard"])
    assert clean.clean and clean.merged_keys == {"fred": ["streak:Fred", "streak:fred"]}
    pg.execute("UPDATE streaks SET current_streak = 2, longest_streak = 4 WHERE handle = 'fred'")  # last key wins
    pg.commit()
    result = commands.shadow(config, handles=["fred"], views=["leaderboard"])
    assert _diffs(result, "leaderboard")["items[0].current"] == (5, 2)


def _games(kv: redis.Redis) -> None:
    _users(kv, "ann", "bob")
    kv.set("vibe:games", json.dumps({
        "won": {"id": "won", "type": "tictactoe", "players": ["ann", "bob"], "status": "finished",
                "state": {"board": ["X", "O", "X", "X", "O", "", "", "O", ""], "players": {"X": "ann", "O": "bob"},
                          "winner": "O"}, "created_at": T0},
        "draw": {"id": "draw", "type": "tictactoe", "players": ["ann", "bob"], "status": "finished",
                 "state": {"board": ["X", "O", "X", "X", "O", "O", "O", "X", "X"],
                           "players": {"X": "ann", "O": "bob"}}, "created_at": "2025-06-01T11:00:00Z"}}))


def test_shadow_finds_a_game_won_by_o_recorded_as_the_symbol(pg_url: str, kv_url: str, kv: redis.Redis,
                                                             pg: psycopg.Connection) -> None:
    _games(kv)
    config = _backfilled(pg_url, kv_url)
    clean = commands.shadow(config, handles=["ann"], views=["games"])
    assert clean.clean, [c.differences for c in clean.views["games"].first]
    pg.execute("UPDATE game_results SET winner = 'O' WHERE id = 'won'")
    pg.commit()
    assert _diffs(commands.shadow(config, handles=["ann"], views=["games"]), "games")["items[0].winner"] == ("bob", "O")


def test_shadow_finds_a_draw_with_no_row(pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    _games(kv)
    config = _backfilled(pg_url, kv_url)
    assert commands.shadow(config, handles=["bob"], views=["games"]).clean
    pg.execute("DELETE FROM game_results WHERE id = 'draw'")
    pg.commit()
    diffs = _diffs(commands.shadow(config, handles=["bob"], views=["games"]), "games")
    assert diffs["items[1]"][0]["id"] == "draw" and diffs["items[1]"][0]["winner"] is None
    assert diffs["items[1]"][1] is None


def test_shadow_finds_a_profile_updated_after_the_registry_claim(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                 pg: psycopg.Connection) -> None:
    kv.hset("vibe:handles", "nia", json.dumps({"handle": "nia", "one_liner": "claim-time", "registeredAt": T0}))
    kv.hset("user:nia", mapping={"username": "nia", "building": "edited later", "updatedAt": "2025-07-01T00:00:00Z"})
    config = _backfilled(pg_url, kv_url)
    clean = commands.shadow(config, handles=["nia"], views=["profile"])
    assert clean.clean, [c.differences for c in clean.views["profile"].first]
    pg.execute("UPDATE users SET one_liner = 'claim-time' WHERE handle = 'nia'")  # the registry's copy
    pg.commit()
    diffs = _diffs(commands.shadow(config, handles=["nia"], views=["profile"]), "profile")
    assert diffs["items[0].one_liner"] == ("edited later", "claim-time")


def test_shadow_billed_tally_equals_the_servers_and_never_passes_max_requests(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=12, seed=4)
    config = _backfilled(pg_url, kv_url)
    observer = redis.Redis.from_url(kv_url)
    seen: list[tuple[int, int]] = []
    result, server = _billed_by_server(observer, lambda: commands.shadow(
        config, users=12, on_forecast=lambda exact, most: seen.append((exact, most))))
    assert result.clean
    assert server == _ours(result.budget)
    assert not set(server) - {"scan", "hlen", "mget", "hgetall", "lrange", "smembers", "hscan", "type"}
    assert seen and seen[0][0] <= result.kv_requests <= seen[0][1] == result.forecast
    cap = result.kv_requests - 3
    capped = build_config(pg_url=pg_url, kv_url=kv_url, env={}, max_requests=cap)
    _, spent = _billed_by_server(observer, lambda: pytest.raises(BudgetExhausted, commands.shadow, capped, users=12))
    assert 0 < sum(spent.values()) <= cap


def test_shadow_reads_each_key_at_most_once_per_run(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    """Every key a shadow run reads, as the server saw the commands (MONITOR), is read once."""
    seed_keyspace(kv, users=12, seed=4)
    config = _backfilled(pg_url, kv_url)
    seen: list[str] = []
    done = threading.Event()
    observer = redis.Redis.from_url(kv_url)

    def watch() -> None:
        with observer.monitor() as m:
            ready.set()
            for event in m.listen():
                seen.append(event["command"])
                if "shadow-done" in event["command"]:
                    return

    ready = threading.Event()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    result = commands.shadow(config, users=12)
    redis.Redis.from_url(kv_url).echo("shadow-done")
    thread.join(10)
    done.set()
    mget: list[str] = []
    typed: list[str] = []
    types: list[str] = []
    for line in seen:
        name, *args = line.replace('"', "").split(" ")
        if name == "MGET":
            mget += args
        elif name in ("HGETALL", "LRANGE", "SMEMBERS", "HSCAN"):
            typed.append(args[0])
        elif name == "TYPE":
            types.append(args[0])
    assert mget and typed
    wrong = {k for k in typed if typed.count(k) > 1}  # HGETALL said WRONGTYPE: TYPE, then the right read
    assert wrong <= set(types)
    assert len(mget) == len(set(mget)) and len(typed) == len(set(typed)) + len(wrong)
    # a key of a family holding strings or hashes (streak:*) that MGET answered nil for is then
    # read once by HGETALL; no other key is read by both
    assert {k.split(":")[0] for k in set(mget) & set(typed)} == {"streak"}
    assert len(set(mget) | set(typed)) >= result.keys_read


def test_shadow_cli_exits_1_and_shows_differences_field_by_field(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                 pg: psycopg.Connection) -> None:
    _games(kv)
    _backfilled(pg_url, kv_url)
    pg.execute("UPDATE game_results SET winner = 'O' WHERE id = 'won'")
    pg.commit()
    env = {"KVMIGRATE_KV_URL": kv_url, "KVMIGRATE_PG_URL": pg_url}
    human = cli("shadow", "--handle", "ann", "--views", "games,profile", env=env)
    assert human.exit_code == 1, human.output
    assert "items[0].winner: KV bob | Postgres O" in human.stdout and "forecast at most" in human.stderr
    body = cli_json("shadow", "--handle", "ann", "--views", "games", env=env, expect=1)
    games = body["result"]["views"]["games"]
    assert games["share"] == 0 and games["first_differences"][0]["differences"][0] == {
        "field": "items[0].winner", "kv": "bob", "postgres": "O"}


def test_cutover_require_shadow_refuses_without_a_clean_shadow_run(pg_url: str, kv_url: str,
                                                                    kv: redis.Redis) -> None:
    seed_keyspace(kv, users=8, seed=3)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.dual_write(config, settle=0, recheck_delay=0)
    with pytest.raises(GateRefused, match="shadow: no shadow run recorded"):
        commands.cutover(config, require_shadow=True)
    assert commands.shadow(config, users=8, views=["inbox"]).clean
    with pytest.raises(GateRefused, match="did not compare every view"):
        commands.cutover(config, require_shadow=True)
    assert commands.shadow(config, users=8).clean
    result = commands.cutover(config, require_shadow=True)
    assert any(g.entity == "shadow" and g.ok for g in result.gates)


def test_a_difference_whose_postgres_write_lands_during_the_wait_heals_on_the_second_look(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app writes KV first, then Postgres: a shadow run reading in between sees a difference
    that is gone a moment later. It is looked at again and counted as healed, not reported."""
    import kvmigrate.phases.shadow as shadow_module

    _users(kv, "fred")
    kv.hset("streak:fred", mapping={"current": "5", "longest": "9", "totalDays": "20", "lastActive": "2025-06-02"})
    config = _backfilled(pg_url, kv_url)
    kv.hset("streak:fred", "current", "6")  # the app's KV write; its Postgres write is in flight
    waits: list[float] = []

    def the_postgres_write_lands(seconds: float) -> None:
        waits.append(seconds)
        pg.execute("UPDATE streaks SET current_streak = 6 WHERE handle = 'fred'")
        pg.commit()

    monkeypatch.setattr(shadow_module.time, "sleep", the_postgres_write_lands)
    result = commands.shadow(config, handles=["fred"], views=["leaderboard"], recheck_delay=2.0)
    assert waits == [2.0] and result.clean and result.healed == 1
    stale = commands.shadow(config, handles=["fred"], views=["leaderboard"], recheck_delay=0)
    assert stale.clean and stale.healed == 0  # nothing to look at again
