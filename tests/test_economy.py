"""KV request economy on real servers: kvmigrate's own count of every command it sends agrees
with the server's INFO commandstats, and `plan` predicts each phase within 10%."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from kvmigrate import commands
from kvmigrate.config import build_config
from kvmigrate.seed import seed_keyspace

#: Commands a server counts inside our scripts (EVAL_RO runs TYPE/GET/…): not sent by us.
SCRIPT_INNER = {"type", "get", "hgetall", "lrange", "smembers", "zrange", "strlen", "hlen", "llen", "scard",
                "zcard", "memory", "pttl", "del", "sha1hex"}


def _calls(observer: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in observer.info("commandstats").items()}


def test_our_count_of_every_command_matches_the_servers_own_statistics(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=12, seed=4)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    observer = redis.Redis.from_url(kv_url)
    observer.ping()
    before = _calls(observer)
    spent: dict[str, int] = {}
    for budget in (commands.inventory(config).budget, commands.backfill(config).budget,
                   commands.verify(config, recheck_delay=0).budget):
        for name, n in budget.by_command.items():
            spent[name.lower()] = spent.get(name.lower(), 0) + n
    after = _calls(observer)
    observer.close()
    added = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    added["info"] -= 1  # the observer's own second INFO
    if added["info"] == 0:
        del added["info"]
    sent = {name: n for name, n in added.items() if name.split("|")[0] not in SCRIPT_INNER}
    assert sent == spent, (sent, spent)


@pytest.mark.parametrize("use_eval", [True, False], ids=["scripted", "pipelined"])
def test_plan_predicts_every_phase_within_ten_percent(pg_url: str, kv_url: str, kv: redis.Redis,
                                                     tmp_path: Path, use_eval: bool) -> None:
    seed_keyspace(kv, users=20, seed=9)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=500, batch_size=500, use_eval=use_eval)
    commands.setup(config)
    plan = commands.plan(config)
    predicted = {p.phase: p.commands for p in plan.phases}
    dual = commands.dual_write(config, settle=0, recheck_delay=0)
    assert dual.backfill is not None and dual.verify is not None and dual.clean
    cut = commands.cutover(config)
    clean = commands.cleanup(config, archive_dir=tmp_path, yes=True, settle=0, recheck_delay=0)
    assert clean.verify is not None and clean.cleanup.deleted > 0
    by = clean.cleanup.budget.by_command
    actual = {
        "flags": dual.kv_requests - dual.backfill.budget.spent - dual.verify.budget.spent + cut.kv_requests
        + clean.kv_requests - clean.verify.budget.spent - clean.cleanup.kv_requests,
        "backfill": dual.backfill.budget.spent,
        "verify": dual.verify.budget.spent + clean.verify.budget.spent,
        "archive": clean.cleanup.budget.by_phase["archive"],
        "delete": clean.cleanup.budget.by_phase["delete"],
    }
    assert actual["delete"] == (by["EVAL"] if use_eval else by["WATCH"] + by["MULTI"] + by["DEL"] + by["EXEC"]
                                + by.get("UNWATCH", 0) + clean.cleanup.budget.by_phase_command[("delete", "TYPE")]
                                + clean.cleanup.budget.by_phase_command[("delete", "PTTL")]
                                + sum(n for (ph, cmd), n in clean.cleanup.budget.by_phase_command.items()
                                      if ph == "delete" and cmd in ("GET", "HGETALL", "LRANGE", "SMEMBERS", "ZRANGE")))
    for phase, n in actual.items():
        assert abs(n - predicted[phase]) <= max(1, round(0.1 * n)), (phase, n, predicted[phase])
    whole = sum(actual.values()) + predicted["inventory"]
    assert abs(whole - plan.total) <= 0.1 * whole
    if use_eval:  # without scripting cleanup pays about 3 commands a key to archive and 3 to delete
        assert plan.total < plan.naive_total / 5


@pytest.mark.parametrize("use_eval", [True, False], ids=["scripted", "pipelined"])
def test_inventory_predicts_a_backfill_within_ten_percent(pg_url: str, kv_url: str, kv: redis.Redis,
                                                          use_eval: bool) -> None:
    seed_keyspace(kv, users=20, seed=2)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=300, batch_size=300, use_eval=use_eval)
    commands.setup(config)
    predicted = commands.inventory(config).predicted_backfill
    spent = commands.backfill(config).budget.spent
    assert abs(spent - predicted) <= 0.1 * spent, (spent, predicted)


def test_verify_stopped_by_the_budget_exits_4_records_no_verdict_and_reruns_whole(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    import psycopg

    from tests.helpers import cli

    seed_keyspace(kv, users=12, seed=4)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=100, batch_size=100)
    commands.setup(config)
    commands.backfill(config)
    stopped = cli("--pg-url", pg_url, "--kv-url", kv_url, "verify", "--max-requests", "5", "--recheck-delay", "0")
    assert stopped.exit_code == 4, stopped.output
    assert "run the same command again" in stopped.output
    with psycopg.connect(pg_url) as conn:
        runs = conn.execute("SELECT status FROM kvmigrate.runs WHERE command = 'verify'").fetchall()
        verdicts = conn.execute("SELECT count(*) FROM kvmigrate.verify_results").fetchone()
    assert runs == [("stopped",)] and verdicts == (0,)
    assert commands.verify(config, recheck_delay=0).clean


@pytest.mark.parametrize("use_eval", [True, False], ids=["scripted", "pipelined"])
def test_inventory_counts_patterns_types_sizes_ttls_and_unknown_examples(
        kv_url: str, kv: redis.Redis, use_eval: bool) -> None:
    from tests.fixtures.data import mixed_keyspace
    from tests.helpers import cli_json

    mixed_keyspace(kv, board_posts=5)
    args = ("--kv-url", kv_url, "inventory") + (() if use_eval else ("--no-eval",))
    result = cli_json(*args)["result"]
    patterns = result["patterns"]
    assert result["total_keys"] == kv.dbsize() and result["scripting"] is use_eval
    assert result["by_status"] == {"entity": kv.dbsize() - 6, "kept": 4, "unknown": 2}
    assert patterns["streak:*"]["types"] == {"hash": 1, "string": 2, "list": 1}
    assert patterns["friends:*"] == {**patterns["friends:*"], "status": "unknown", "keys": 1, "example": "friends:alice"}
    assert patterns["vibe:handles"]["types"] == {"hash": 1}
    if use_eval:
        assert patterns["vibe:handles"]["items"] == 2 and patterns["board:entry:*"]["bytes"] > 7_000_000
        assert patterns["session:*"]["with_ttl"] == 1 and patterns["presence:*"]["with_ttl"] == 1
        assert result["kv_requests"] == 1 + 1 + 1 + 1  # SELECT, PING, one SCAN page, one census script
    else:  # one TYPE per key, an HLEN per registry hash: no sizes, no TTLs
        assert patterns["vibe:handles"]["items"] is None and patterns["board:entry:*"]["bytes"] is None
        assert result["kv_requests"] == 1 + 1 + 1 + kv.dbsize() + 2
