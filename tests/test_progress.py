"""What a long run shows while it works: plain progress lines when stderr is no terminal (a CI
log), a countdown for settles, bars with rate and ETA on a terminal, where a stopped run got to
and what finishing would cost, and -v / -vv log lines. All on stderr; stdout keeps the data."""

from __future__ import annotations

import io
from pathlib import Path

import redis
from rich.console import Console

from kvmigrate import api as commands
from kvmigrate.cli.progress import Bars
from kvmigrate.engine import phases
from kvmigrate.model.config import build_config
from kvmigrate.model.progress import Tick
from kvmigrate.tryout.seed import seed_keyspace
from tests.fixtures.faults import Launcher
from tests.test_cleanup import move


def _seeded(pg_url: str, kv_url: str, kv: redis.Redis) -> int:
    seed_keyspace(kv, users=12, seed=6)
    commands.setup(build_config(pg_url=pg_url, kv_url=kv_url, env={}))
    return int(kv.dbsize())


def test_without_a_terminal_backfill_and_verify_print_plain_progress_lines_on_stderr(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher) -> None:
    keys = _seeded(pg_url, kv_url, kv)
    base = ("--pg-url", pg_url, "--kv-url", kv_url)
    backfill = runner.run(*base, "backfill")
    assert backfill.code == 0, backfill.output
    assert f"backfill: {keys:,} of {keys:,} keys (100%)" in backfill.stderr and "keys/s, ETA" in backfill.stderr
    assert "backfill:" not in backfill.stdout  # the report is on stdout, the talk on stderr
    verify = runner.run(*base, "verify", "--recheck-delay", "0")
    assert verify.code == 0, verify.output
    assert f"verify: {keys:,} of {keys:,} keys (100%)" in verify.stderr and "billed KV commands" in verify.stderr


def test_cleanup_counts_down_its_settle_and_shows_its_pass(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher, tmp_path: Path) -> None:
    _seeded(pg_url, kv_url, kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.backfill(config, entities=["streaks"])
    assert commands.verify(config, entities=["streaks"], recheck_delay=0).clean
    move(config, phases.DUAL, phases.CUTOVER)
    done = runner.run("--pg-url", pg_url, "--kv-url", kv_url, "cleanup", "--entity", "streaks", "--yes",
                      "--settle", "2", "--archive-dir", str(tmp_path / "a"))
    assert done.code == 0, done.output
    assert "settle: 0 of 2 s, 2 s left; until every app instance sees writes=postgres" in done.stderr
    assert "settle: 2 of 2 s, 0 s left" in done.stderr
    assert "cleanup: " in done.stderr and " deleted" in done.stderr


def test_a_budget_stop_says_how_far_it_got_and_what_finishing_costs(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher) -> None:
    keys = _seeded(pg_url, kv_url, kv)
    stopped = runner.run("--pg-url", pg_url, "--kv-url", kv_url, "backfill", "--batch-size", "100",
                         "--max-requests", "60")
    assert stopped.code == 4, stopped.output
    line = next(x for x in stopped.stderr.splitlines() if x.startswith("error:"))
    assert f" of {keys:,} keys (" in line and "more billed KV commands to finish" in line, line
    assert "stopped at: backfill: " in stopped.stderr  # the progress line stays on screen


def test_v_logs_each_page_and_vv_each_kv_round_trip(pg_url: str, kv_url: str, kv: redis.Redis,
                                                     runner: Launcher) -> None:
    _seeded(pg_url, kv_url, kv)
    base = ("--pg-url", pg_url, "--kv-url", kv_url)
    quiet = runner.run(*base, "verify", "--recheck-delay", "0")
    assert "verify: page of" not in quiet.stderr and "KV round trip" not in quiet.stderr
    v = runner.run("-v", *base, "verify", "--recheck-delay", "0")
    assert "verify: page of" in v.stderr and "KV round trip" not in v.stderr
    vv = runner.run("-vv", *base, "verify", "--recheck-delay", "0")
    assert "KV round trip: SCAN x1" in vv.stderr and "KV round trip: MGET" in vv.stderr


def test_on_a_terminal_the_bars_show_rate_eta_and_stay_on_screen_when_stopped() -> None:
    out = io.StringIO()
    bars = Bars(Console(file=out, force_terminal=True, width=120))
    with bars.bar:
        bars.tick(Tick("verify", 400, 1000, note="12 billed KV commands"))
    bars.stopped()
    text = out.getvalue()
    assert "400/1000" in text and "keys/s" in text and "ETA" in text and "12 billed KV commands" in text
    assert "stopped at: verify: 400 of 1,000 keys (40%)" in text
