"""Pointed at another app's KV database, every step refuses: backfill, verify, the cutover gate
and cleanup's step check (exit 1, asking whether this is the right store and database); dry
runs say the same as a warning. Against real servers."""

from __future__ import annotations

import orjson
import psycopg
import redis

from kvmigrate import api as commands
from kvmigrate.engine import phases
from kvmigrate.model.config import build_config
from tests.fixtures.data import mixed_keyspace
from tests.helpers import cli, cli_json

QUESTION = "is this the right store and database?"


def _other_apps_store(kv: redis.Redis) -> None:
    """A shop's keys: none of them is a /vibe key."""
    p = kv.pipeline(transaction=False)
    for i in range(30):
        p.set(f"cart:{i}", orjson.dumps({"items": [i], "total": i * 3}))
        p.hset(f"order:{i}", mapping={"status": "paid", "cart": str(i)})
        p.set(f"product:{i}", orjson.dumps({"name": f"thing {i}", "price": 9.5}))
    p.execute()


def _setup(pg_url: str) -> None:
    result = cli("--pg-url", pg_url, "setup")
    assert result.exit_code == 0, result.output


def test_backfill_refuses_a_store_holding_only_another_apps_keys(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                 pg: psycopg.Connection) -> None:
    _other_apps_store(kv)
    _setup(pg_url)
    urls = ("--pg-url", pg_url, "--kv-url", kv_url)

    refused = cli(*urls, "backfill")
    assert refused.exit_code == 1, refused.output
    assert "backfill refused: no key of the KV store matches any entity (users: vibe:handles" in refused.stderr
    assert QUESTION in refused.stderr and "hint:" in refused.stderr
    named = cli_json(*urls, "backfill", "--entity", "streaks", expect=1)
    assert QUESTION in named["error"]["hint"] and "streak:*" in named["error"]["message"]
    assert pg.execute("SELECT count(*) FROM users").fetchone() == (0,)

    dry = cli(*urls, "--json", "backfill", "--dry-run")
    assert dry.exit_code == 0, dry.output
    warnings = orjson.loads(dry.stdout)["warnings"]
    assert any("backfill would be refused" in w and QUESTION in w for w in warnings), warnings


def test_no_gate_passes_on_another_apps_store(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path) -> None:
    _other_apps_store(kv)
    _setup(pg_url)
    urls = ("--pg-url", pg_url, "--kv-url", kv_url)

    dual = cli(*urls, "dual-write", "--entity", "users", "--settle", "0")
    assert dual.exit_code == 1, dual.output
    assert QUESTION in dual.stderr
    verify = cli(*urls, "verify", "--entity", "users")
    assert verify.exit_code == 1, verify.output
    assert "verify refused: no key of the KV store matches users" in verify.stderr

    cutover = cli_json(*urls, "cutover", "--entity", "users", expect=1)
    assert "checked 0 rows" in cutover["error"]["message"] and QUESTION in cutover["error"]["message"]
    assert "--force" in cutover["error"]["hint"]
    with psycopg.connect(pg_url) as conn:
        assert phases.current(conn, "users") == phases.DUAL  # reads stayed on KV

    forced = cli(*urls, "cutover", "--entity", "users", "--force")
    assert forced.exit_code == 0, forced.output
    archive = str(tmp_path / "archive")
    dry = cli(*urls, "cleanup", "--entity", "users", "--dry-run", "--archive-dir", archive)
    assert dry.exit_code == 0, dry.output
    dry_json = cli_json(*urls, "cleanup", "--entity", "users", "--dry-run", "--archive-dir", archive)
    assert any("cleanup would be refused" in w and QUESTION in w for w in dry_json["warnings"])
    cleanup = cli(*urls, "cleanup", "--entity", "users", "--yes", "--settle", "0", "--archive-dir", archive)
    assert cleanup.exit_code == 1, cleanup.output
    assert "cleanup refused: users: the latest verify" in cleanup.stderr and QUESTION in cleanup.stderr
    with psycopg.connect(pg_url) as conn:
        assert phases.current(conn, "users") == phases.CUTOVER  # writes stayed on KV


def test_cutover_gate_refuses_a_verify_of_0_rows_when_the_ledger_holds_the_entitys_keys(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.dual_write(config, entities=["streaks"], settle=0, recheck_delay=0)
    kv.flushdb()  # the same migration, now pointed at an empty database
    _other_apps_store(kv)

    verify = cli("--pg-url", pg_url, "--kv-url", kv_url, "verify", "--entity", "streaks")
    assert verify.exit_code == 1, verify.output
    cutover = cli("--pg-url", pg_url, "--kv-url", kv_url, "cutover", "--entity", "streaks")
    assert cutover.exit_code == 1, cutover.output
    assert "checked 0 rows, though the ledger holds" in cutover.stderr and QUESTION in cutover.stderr


def test_an_entity_without_keys_beside_others_that_match_is_a_warning(pg_url: str, kv_url: str,
                                                                      kv: redis.Redis) -> None:
    mixed_keyspace(kv)  # users, streaks, board, invites; no message or game
    _setup(pg_url)
    urls = ("--pg-url", pg_url, "--kv-url", kv_url)
    backfill = cli_json(*urls, "backfill")
    assert any("no key of the KV store matches messages" in w for w in backfill["warnings"]), backfill["warnings"]
    assert not any(QUESTION in w for w in backfill["warnings"])
    verify = cli_json(*urls, "verify")
    assert verify["result"]["entities"]["streaks"]["keys"] > 0
    assert any("matches messages" in w for w in verify["result"]["warnings"])
    # named on its own, the empty entity is refused
    named = cli_json(*urls, "verify", "--entity", "messages", expect=1)
    assert QUESTION in named["error"]["hint"]
