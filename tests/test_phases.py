"""The phase commands against real servers: order, the cutover gate, rollback, the flags hash,
status, and cleanup's verify once Postgres is the source of truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.engine import phases
from kvmigrate.model.config import Config, build_config
from kvmigrate.model.errors import ConfigError, GateRefused
from kvmigrate.phases.cutover import DualWriteResult
from tests.fixtures.data import mixed_keyspace
from tests.helpers import cli, cli_json


def _config(pg_url: str, kv_url: str) -> Config:
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    return config


def _flags(kv: redis.Redis) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in kv.hgetall(phases.FLAGS_KEY).items()}


def _dual(config: Config, *entities: str) -> DualWriteResult:
    return commands.dual_write(config, entities=entities, settle=0, recheck_delay=0)


def test_steps_out_of_order_are_refused_naming_the_command_to_run_first(pg_url: str, kv_url: str,
                                                                       kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    _config(pg_url, kv_url)
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "cutover", "--entity", "streaks")
    assert result.exit_code == 1, result.output
    assert "not allowed in phase kv" in result.output and "kvmigrate dual-write --entity streaks" in result.output
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "cleanup", "--entity", "streaks", "--yes", "--settle", "0")
    assert result.exit_code == 1, result.output
    assert "kvmigrate cutover --entity streaks" in result.output
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "cutover", "--rollback", "--entity", "streaks")
    assert result.exit_code == 1, result.output
    assert kv.exists(phases.FLAGS_KEY) == 0  # nothing was published by refused steps


def test_dual_write_publishes_the_flags_then_backfills_and_verifies(pg_url: str, kv_url: str,
                                                                   kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    result = _dual(config, "streaks", "board")
    assert result.clean and result.backfill is not None and result.verify is not None
    assert [c.after for c in result.changes] == ["dual-write", "dual-write"]
    flags = _flags(kv)
    assert (flags["streaks.writes"], flags["streaks.reads"], flags["board.writes"]) == ("dual", "kv", "dual")
    assert flags["users.writes"] == "kv"
    history = pg.execute("SELECT entity, from_writes, to_writes, reason, os_user IS NOT NULL, host IS NOT NULL"
                         " FROM kvmigrate.phase_history ORDER BY id").fetchall()
    assert history == [("board", "kv", "dual", "dual write", True, True),
                       ("streaks", "kv", "dual", "dual write", True, True)]


def test_cutover_gate_refuses_no_stale_dirty_or_sampled_verify_and_passes_a_clean_one(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks")
    pg.execute("UPDATE kvmigrate.verify_results SET verified_at = now() - interval '2 hours'")
    with pytest.raises(GateRefused, match="old"):
        commands.cutover(config, entities=["streaks"])
    commands.verify(config, entities=["streaks"], sample=1, recheck_delay=0)
    with pytest.raises(GateRefused, match="sample"):
        commands.cutover(config, entities=["streaks"])
    pg.execute("UPDATE streaks SET current_streak = 99 WHERE handle = 'alice'")
    commands.verify(config, entities=["streaks"], recheck_delay=0)
    with pytest.raises(GateRefused, match="1 differences"):
        commands.cutover(config, entities=["streaks"])
    assert commands.verify(config, entities=["streaks"], repair=True, recheck_delay=0).clean
    result = commands.cutover(config, entities=["streaks"])
    assert [(c.entity, c.after) for c in result.changes] == [("streaks", "cutover")]
    assert _flags(kv)["streaks.reads"] == "postgres"


def test_a_verify_from_before_dual_writes_does_not_open_the_gate(pg_url: str, kv_url: str,
                                                                kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    commands.backfill(config, entities=["streaks"])
    commands.verify(config, entities=["streaks"], recheck_delay=0)
    pg.execute("UPDATE kvmigrate.verify_results SET verified_at = now() - interval '1 minute'")
    commands.dual_write(config, entities=["streaks"], settle=0, recheck_delay=0)
    pg.execute("UPDATE kvmigrate.verify_results SET verified_at = now() - interval '1 minute'")
    with pytest.raises(GateRefused, match="before dual writes started"):
        commands.cutover(config, entities=["streaks"])
    forced = commands.cutover(config, entities=["streaks"], force=True)
    assert forced.forced and [g.ok for g in forced.gates] == [False]
    reason = pg.execute("SELECT reason FROM kvmigrate.phase_history ORDER BY id DESC LIMIT 1").fetchone()
    assert reason == ("cutover (forced past the gate)",)


def test_cutover_of_several_entities_is_all_or_nothing(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks", "board")
    commands.verify(config, entities=["board"], sample=2, recheck_delay=0)  # board's latest is a sample
    with pytest.raises(GateRefused, match="board"):
        commands.cutover(config, entities=["streaks", "board"])
    assert _flags(kv)["streaks.reads"] == "kv"


def test_rollbacks_return_reads_then_writes_to_kv(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks")
    commands.cutover(config, entities=["streaks"])
    with pytest.raises(GateRefused) as refused:
        commands.dual_write(config, entities=["streaks"], rollback=True, settle=0)
    assert refused.value.hint == "run `kvmigrate cutover --rollback --entity streaks` first"
    back = commands.cutover(config, entities=["streaks"], rollback=True)
    assert [(c.before, c.after) for c in back.changes] == [("cutover", "dual-write")]
    assert _flags(kv)["streaks.reads"] == "kv"
    commands.dual_write(config, entities=["streaks"], rollback=True, settle=0)
    assert _flags(kv)["streaks.writes"] == "kv"


def test_a_rerun_republishes_flags_a_failed_publish_left_stale(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks")
    kv.delete(phases.FLAGS_KEY)  # as if the HSET after the Postgres commit had failed
    commands.dual_write(config, entities=["streaks"], settle=0, recheck_delay=0)
    assert _flags(kv)["streaks.writes"] == "dual"


def test_status_shows_phase_buckets_last_runs_and_todays_kv_requests(pg_url: str, kv_url: str,
                                                                   kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks")
    env = cli_json("--pg-url", pg_url, "status")
    result = env["result"]
    streaks = result["entities"]["streaks"]
    assert (streaks["phase"], streaks["writes"], streaks["reads"]) == ("dual-write", "dual", "kv")
    assert streaks["buckets"] == {"migrated": 2, "rejected": 2} and streaks["rejects"] == 2
    assert streaks["last_verify"]["clean"] is True and streaks["last_backfill"]["status"] == "ok"
    assert (streaks["verified_keys"], streaks["deleted_keys"]) == (2, 0)  # the migrated keys, verified clean
    assert result["entities"]["users"]["last_backfill"] is None  # only streaks was backfilled
    assert result["kv_requests_today"] > 0 and result["daily_quota"] == 3000
    assert sum(result["kv_requests_today_by_phase"].values()) == result["kv_requests_today"]


def _to_cutover(config: Config) -> None:
    _dual(config, "streaks")
    commands.cutover(config, entities=["streaks"])


def test_cleanup_needs_yes_and_its_dry_run_changes_no_flag(pg_url: str, kv_url: str, kv: redis.Redis,
                                                          tmp_path: Path) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _to_cutover(config)
    with pytest.raises(ConfigError, match="deletes KV keys"):
        commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path, settle=0)
    dry = commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path, dry_run=True)
    assert dry.cleanup.dry_run and dry.cleanup.entities["streaks"].deletable == 2
    assert _flags(kv)["streaks.writes"] == "dual" and kv.exists("streak:alice")


def test_once_postgres_is_the_truth_a_row_the_app_changed_there_is_not_a_difference(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    """After cleanup moved writes to Postgres, the app updates a streak in Postgres only: KV is
    behind, not Postgres. Verify counts it as superseded, and the key, unchanged in KV since it
    verified, is still deleted by the next cleanup (its archive keeps the old value)."""
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _to_cutover(config)
    kv.set("streak:late", orjson.dumps({"current": 1}))  # the app wrote KV, its Postgres write failed
    first = commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path / "a", yes=True, settle=0,
                             recheck_delay=0, verify_first=True)
    assert first.verify is not None and [d.pk for d in first.verify.entities["streaks"].missing] == ["late"]
    assert first.cleanup.deleted == 2 and not kv.exists("streak:alice") and kv.exists("streak:late")
    # a write Postgres never got is still repaired from KV; then cleanup takes the key
    assert commands.verify(config, entities=["streaks"], recheck_delay=0, repair=True).clean
    late = commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path / "l", yes=True, settle=0,
                            recheck_delay=0)
    assert late.cleanup.deleted == 1 and not kv.exists("streak:late")
    # a streak dual-written in the settle window (verified as it stood), then updated by the
    # app in Postgres only
    kv.set("streak:window", orjson.dumps({"current": 1}))
    assert commands.verify(config, entities=["streaks"], recheck_delay=0, repair=True).clean
    pg.execute("UPDATE streaks SET current_streak = 2 WHERE handle = 'window'")
    pg.execute("INSERT INTO users (handle) VALUES ('newbie')")
    pg.execute("INSERT INTO streaks (handle, current_streak) VALUES ('newbie', 7)")  # app, Postgres only
    again = commands.verify(config, entities=["streaks"], recheck_delay=0)
    assert again.clean, again.entities
    check = again.entities["streaks"]
    assert check.superseded == 1 and not check.extra  # neither deleted sources nor app rows are extra
    repaired = commands.verify(config, entities=["streaks"], recheck_delay=0, repair=True)
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'window'").fetchone() == (2,)
    assert repaired.entities["streaks"].repaired == 0
    second = commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path / "b", yes=True, settle=0,
                              recheck_delay=0)
    assert second.cleanup.deleted == 1 and not kv.exists("streak:window")
    assert kv.exists("streak:bad") and kv.exists("presence:data:alice")  # rejected and kept stay


def test_gate_age_limit_is_an_option(pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _dual(config, "streaks")
    pg.execute("UPDATE kvmigrate.phase_history SET changed_at = now() - interval '40 minutes'")
    pg.execute("UPDATE kvmigrate.verify_results SET verified_at = now() - interval '30 minutes'")
    with pytest.raises(GateRefused, match="old"):
        commands.cutover(config, entities=["streaks"], max_verify_age=dt.timedelta(minutes=10))
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "cutover", "--entity", "streaks", "--max-verify-age", "45")
    assert result.exit_code == 0, result.output


def test_status_sums_every_kv_command_kvmigrate_sent_today(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    spent = commands.inventory(config).budget.spent + commands.plan(config).inventory.budget.spent
    spent += _dual(config, "streaks").kv_requests + commands.cutover(config, entities=["streaks"]).kv_requests
    status = commands.status(config)
    assert status.kv_requests_today == spent
    assert {"inventory", "flags", "backfill", "verify"} <= set(status.kv_requests_today_by_phase)


def test_after_cleanup_backfill_leaves_postgres_only_entities_alone(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    mixed_keyspace(kv)
    config = _config(pg_url, kv_url)
    _to_cutover(config)
    commands.cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True, settle=0, recheck_delay=0)
    kv.set("streak:alice", orjson.dumps({"current": 1}))  # a stale copy somebody restored in KV
    pg.execute("UPDATE streaks SET current_streak = 42 WHERE handle = 'alice'")  # the app, Postgres only
    with pytest.raises(GateRefused, match="write to Postgres only"):
        commands.backfill(config, entities=["streaks"])
    result = commands.backfill(config)
    assert result.skipped == ["streaks"] and "streaks" not in result.tallies
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (42,)
