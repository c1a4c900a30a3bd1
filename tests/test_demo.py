"""The demo end to end at a small size, on the session's servers: all four phases with the
simulated app writing throughout, and the final check that holds only if every write landed."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import redis

from kvmigrate.model.config import build_config
from tests.helpers import cli_json


def test_demo_runs_the_four_phases_and_every_app_write_is_in_postgres_once(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    # one run through the CLI's JSON form covers the library's result and its envelope
    env = cli_json("--pg-url", pg_url, "--kv-url", kv_url, "demo", "--users", "8", "--seed", "5")
    result = env["result"]
    assert result["files"] and (Path(result["files"]) / "archive" / "manifest.json").exists()
    shutil.rmtree(result["files"])
    assert env["ok"] is True and result["ok"] is True, (result["app"], result["app_errors"])
    app = result["app"]
    assert app["ok"] is True and app["rows_checked"] > 20
    assert app["missing"] == [] and app["wrong"] == [] and app["duplicated"] == []
    assert [s["name"] for s in result["steps"]] == [
        "seed", "setup", "inventory", "dual-write: backfill + verify", "backfill memories (files)",
        "verify --repair", "shadow: the app's read views, KV vs Postgres", "cutover", "cleanup: archive + delete"]
    assert sum(s["kv_requests"] for s in result["steps"]) == result["kv_requests"]
    assert result["hobby_daily_quota"] == 3000
    # shadow ran before cutover and compared every view (shown; the app writing meanwhile may
    # make a view differ for a moment, so the demo does not gate on it)
    shadow = result["shadow"]
    assert shadow is not None and all(v["checked"] > 0 for v in shadow["views"].values())
    # the app wrote in every phase, KV-only first and Postgres-only last
    assert {"kv/kv", "dual/kv", "postgres/postgres"} <= set(result["app_writes_by_phase"])
    assert result["cleanup_deleted"] > 100
    # the migration's passes (shadow is an extra check) cost less than a naive per-key backfill and
    # verify; set keys (consent, friends) cost one SMEMBERS per pass, so at this tiny size they are
    # not below one naive pass
    assert result["kv_requests"] - shadow["kv_requests"] < 2 * result["naive_backfill_requests"]
    with psycopg.connect(pg_url) as conn:
        phases = conn.execute("SELECT DISTINCT writes, reads FROM kvmigrate.phases").fetchall()
    assert phases == [("postgres", "postgres")]
    assert result["kv_left"].get("kept", 0) > 0  # presence, sessions and rate limits stay
    assert kv.exists("kvmigrate:flags")


def test_the_final_check_fails_on_a_lost_stale_or_duplicated_write(pg_url: str, pg: psycopg.Connection) -> None:
    from kvmigrate import api as commands
    from kvmigrate.tryout.app_sim import AppWrite, check_writes

    commands.setup(build_config(pg_url=pg_url, env={}))
    pg.execute("INSERT INTO users (handle) VALUES ('ann'), ('bo')")
    pg.execute("INSERT INTO board_posts (id, author, content) VALUES ('p1', 'ann', 'v1')")
    row = {"id": "p1", "author": "ann", "content": "v2"}
    writes = [AppWrite("board", "board_posts", "p1", True, True, {**row, "content": "v1"}, "dual/kv"),
              AppWrite("board", "board_posts", "p1", True, True, row, "dual/kv"),
              AppWrite("board", "board_posts", "p2", True, False, {**row, "id": "p2"}, "dual/kv")]
    check = check_writes(pg, writes)
    assert (check.ok, check.missing, check.wrong) == (False, ["board_posts.p2"], ["board_posts.p1"])
    pg.execute("UPDATE board_posts SET content = 'v2'")
    pg.execute("INSERT INTO board_posts (id, author, content) VALUES ('p2', 'ann', 'v2')")
    assert check_writes(pg, writes).ok
    pg.execute("INSERT INTO board_posts (id, author, content) VALUES ('kvm_copy', 'ann', 'v2')")  # landed twice
    check = check_writes(pg, writes)
    assert (check.ok, check.missing, check.wrong, check.duplicated) == (False, [], [], ["board_posts.kvm_copy"])


def test_the_demo_never_takes_its_servers_from_the_environment(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    from tests.helpers import cli

    kv.set("production:key", "keep me")
    env = {"DATABASE_URL": pg_url, "KV_URL": kv_url, "KVMIGRATE_KV_URL": kv_url}
    run = cli("--pg-url", pg_url, "demo", "--users", "8", env=env)  # KV only from the environment: ignored
    assert run.exit_code == 2, run.output
    assert "hint: give both URLs" in run.output
    assert kv.dbsize() == 1 and kv.get("production:key") == b"keep me"
