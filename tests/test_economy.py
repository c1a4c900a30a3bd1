"""KV request economy on real servers, counted as the store bills it: kvmigrate's tally of every
command equals the server's own INFO commandstats (which counts each command a pipeline,
MULTI/EXEC or script runs), free commands aside; `plan` predicts each phase within 5%; and
`--max-requests` bounds what the server counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.model.budget import FREE_COMMANDS, RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.tryout.seed import seed_keyspace
from tests.helpers import cli, cli_json


def _calls(observer: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in observer.info("commandstats").items()}


def _billed_by_server(observer: redis.Redis, work: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """Run `work`; the billed commands the server ran meanwhile, by name (free ones left out:
    the observer's own INFO is one of them)."""
    before = _calls(observer)
    out = work()
    after = _calls(observer)
    added = {name.split("|")[0]: after[name] - before.get(name, 0) for name in after}
    return out, {n: c for n, c in added.items() if c and n.upper() not in FREE_COMMANDS}


def _ours(budget: RequestBudget) -> dict[str, int]:
    return {name.lower(): n for name, n in budget.by_command.items()}


def test_every_command_we_count_is_one_the_server_ran_and_nothing_more(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    """The whole migration, phase by phase: our tally equals the server's, command by command,
    including each command inside a pipeline and MULTI/EXEC. No script is ever sent."""
    seed_keyspace(kv, users=12, seed=4)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=200, batch_size=200)
    commands.setup(config)
    observer = redis.Redis.from_url(kv_url)
    steps: list[tuple[str, Callable[[], Any], Callable[[Any], dict[str, int]]]] = [
        ("inventory", lambda: commands.inventory(config), lambda r: _ours(r.budget)),
        ("backfill", lambda: commands.backfill(config), lambda r: _ours(r.budget)),
        ("verify", lambda: commands.verify(config, recheck_delay=0), lambda r: _ours(r.budget)),
        ("dual-write", lambda: commands.dual_write(config, settle=0, recheck_delay=0),
         lambda r: _sum(r.backfill.budget, r.verify.budget) | {"hset": r.kv_requests - r.backfill.budget.spent
                                                                - r.verify.budget.spent}),
        ("cutover", lambda: commands.cutover(config), lambda r: {"hset": r.kv_requests}),
        ("cleanup", lambda: commands.cleanup(config, archive_dir=tmp_path / "a", yes=True, settle=0),
         lambda r: _ours(r.cleanup.budget)),
    ]
    for name, work, ours in steps:
        result, server = _billed_by_server(observer, work)
        assert server == {k: v for k, v in ours(result).items() if v}, name
        assert not {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall"} & set(server), name
    observer.close()


def _sum(*budgets: RequestBudget) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in budgets:
        for name, n in _ours(b).items():
            out[name] = out.get(name, 0) + n
    return out


def test_plan_predicts_every_phase_within_five_percent_and_stays_near_the_floor(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed_keyspace(kv)  # the /vibe-sized default store
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    plan = commands.plan(config)
    predicted = {p.phase: p.commands for p in plan.phases}
    dual = commands.dual_write(config, settle=0, recheck_delay=0)
    assert dual.backfill is not None and dual.verify is not None and dual.clean
    cut = commands.cutover(config)
    clean = commands.cleanup(config, archive_dir=tmp_path, yes=True, settle=0, recheck_delay=0)
    assert clean.cleanup.deleted > 0
    by_phase = clean.cleanup.budget.by_phase
    actual = {
        "flags": dual.kv_requests - dual.backfill.budget.spent - dual.verify.budget.spent + cut.kv_requests
        + by_phase["flags"],
        "backfill": dual.backfill.budget.spent,
        "verify": dual.verify.budget.spent,
        "archive": by_phase["archive"],
        "delete": by_phase["delete"],
    }
    for phase, n in actual.items():
        assert abs(n - predicted[phase]) <= max(1, round(0.05 * n)), (phase, n, predicted[phase])
    whole = sum(actual.values()) + predicted["inventory"]
    assert abs(whole - plan.total) <= 0.05 * whole
    assert plan.total <= 1.15 * plan.floor_total, (plan.total, plan.floor_total)
    backfill = next(p for p in plan.phases if p.phase == "backfill")
    assert backfill.floor is not None and actual["backfill"] <= 1.05 * backfill.floor + 1
    assert plan.total < plan.naive_total / 2
    restored = commands.restore(config, tmp_path, yes=True)  # the undo, predicted but not in the total
    assert restored.clean and abs(restored.kv_requests - predicted["restore"]) <= 0.05 * restored.kv_requests, (
        restored.kv_requests, predicted["restore"])


def test_inventory_predicts_a_backfill_within_five_percent(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    seed_keyspace(kv, users=20, seed=2)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=300, batch_size=300)
    commands.setup(config)
    predicted = commands.inventory(config).predicted_backfill
    spent = commands.backfill(config).budget.spent
    assert abs(spent - predicted) <= 0.05 * spent, (spent, predicted)


def test_derived_indexes_are_in_the_ledger_but_never_read_by_backfill_or_verify(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    import psycopg

    kv.rpush("inbox:alice", "msg_1", "msg_2")
    kv.rpush("board:entries", "entry_1")
    kv.sadd("vibe:invites:by:alice", "VIBE-AAAA-ALIC")
    kv.set("msg:msg_1", b'{"id":"msg_1","from":"bob","to":"alice","text":"hi","createdAt":"2025-01-02T03:04:05Z"}')
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    observer = redis.Redis.from_url(kv_url)
    for work in (lambda: commands.backfill(config), lambda: commands.verify(config, recheck_delay=0)):
        _, server = _billed_by_server(observer, work)
        assert "lrange" not in server and "smembers" not in server, server
    observer.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT key, status, rows FROM kvmigrate.ledger WHERE key <> 'msg:msg_1' ORDER BY key").fetchall()
    assert rows == [("board:entries", "migrated", 0), ("inbox:alice", "migrated", 0),
                    ("vibe:invites:by:alice", "migrated", 0)]


@pytest.mark.parametrize("cap", [3, 7, 12, 40])
def test_the_server_never_counts_more_than_max_requests(pg_url: str, kv_url: str, kv: redis.Redis,
                                                        cap: int) -> None:
    """A hard bound on what the server counts, run after run, until the backfill completes."""
    seed_keyspace(kv, users=12, seed=3)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=200, batch_size=200)
    commands.setup(config)
    observer = redis.Redis.from_url(kv_url)
    for _ in range(200):
        result, server = _billed_by_server(observer, lambda: cli("--pg-url", pg_url, "--kv-url", kv_url,
                                                                  "backfill", "--max-requests", str(cap)))
        assert sum(server.values()) <= cap, (server, result.output)
        assert result.exit_code in (0, 2, 4), result.output
        if result.exit_code in (0, 2):
            break
    observer.close()


def test_verify_stopped_by_the_budget_exits_4_records_no_verdict_and_reruns_whole(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    import psycopg

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


@pytest.mark.parametrize("sizes", [False, True], ids=["scan-only", "sizes"])
def test_inventory_counts_patterns_and_types_from_scans_alone(kv_url: str, kv: redis.Redis, sizes: bool) -> None:
    from tests.fixtures.data import mixed_keyspace

    mixed_keyspace(kv, board_posts=5)
    args = ("--kv-url", kv_url, "inventory") + (("--sizes",) if sizes else ())
    result = cli_json(*args)["result"]
    patterns = result["patterns"]
    assert result["total_keys"] == kv.dbsize() and result["sizes_measured"] is sizes
    assert result["by_status"] == {"entity": kv.dbsize() - 6, "kept": 4, "unknown": 2}
    assert patterns["streak:*"]["types"] == {"hash": 1, "string": 2, "list": 1}
    assert patterns["artifact:*"] == {**patterns["artifact:*"], "status": "unknown", "keys": 1, "example": "artifact:art_1"}
    assert patterns["vibe:handles"]["types"] == {"hash": 1} and patterns["vibe:handles"]["items"] == 2
    pages = result["scan_pages"]
    if sizes:
        assert patterns["board:entry:*"]["bytes"] > 7_000_000
        assert patterns["session:*"]["with_ttl"] == 1 and patterns["presence:*"]["with_ttl"] == 1
        assert result["kv_requests"] == 6 * pages + 2 * kv.dbsize()  # SCAN passes, a size and a PTTL per key
    else:  # SCAN and SCAN … TYPE per page, one HLEN per registry hash: no per-key command
        assert patterns["board:entry:*"]["bytes"] is None
        registries = sum(1 for p in ("vibe:handles", "vibe:agents", "vibe:users", "vibe:invites") if p in patterns)
        assert result["kv_requests"] == 6 * pages + registries


def test_a_page_of_small_strings_is_one_mget_as_the_server_counts(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    """`SCAN … COUNT 1000` returns whole hash buckets, often a few more than 1,000 keys, and a
    family's first page has no value sizes to go by: still, after the first page (one MGET of 100
    keys to learn the sizes, one for the rest), each page costs one SCAN and one MGET."""
    pipe = kv.pipeline(transaction=False)
    for i in range(6000):
        pipe.set(f"msg:m{i:05d}", b'{"id":"m%05d","from":"ann","to":"bob","text":"hi","createdAt":"2025-01-02T03:04:05Z"}'
                 % i)
    pipe.execute()
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    observer = redis.Redis.from_url(kv_url)
    result, server = _billed_by_server(observer, lambda: commands.backfill(config))
    assert result.tallies["messages"].rows_written == 6000
    assert server == {k: v for k, v in _ours(result.budget).items() if v}
    assert server["mget"] <= server["scan"] + 1, server
    plan = commands.inventory(config).predicted_backfill
    assert abs(plan - result.budget.spent) <= max(1, round(0.05 * result.budget.spent)), (plan, server)
