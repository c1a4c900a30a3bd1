"""Concurrency: two backfills at once, and backfills while the app dual-writes the same keys.

* A second `backfill` against a database where one is running exits 1 at once with "another
  backfill is running" and a hint; it writes nothing (not even a run row), and the first one
  finishes as if alone.
* While the simulated app (kvmigrate.app_sim, which obeys the README's "For the app" contract:
  KV first, then Postgres) keeps writing messages, board posts and streak updates — the same
  keys backfill is copying — repeated backfills lose no update and duplicate no row: every app
  write is in Postgres exactly once with the value written last, and verify finds KV and
  Postgres equal.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.engine import phases
from kvmigrate.entities.common import Bad, handle
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.tryout.app_sim import SimApp, check_writes
from tests.fixtures.data import dump_tables
from tests.fixtures.faults import (
    Finished,
    Launcher,
    note,
    seed_world,
    strike_inside_transaction,
)

BATCH = "20"


def argv(pg_url: str, kv_url: str) -> list[str]:
    return ["--json", "--pg-url", pg_url, "--kv-url", kv_url, "backfill", "--batch-size", BATCH]


def test_a_second_backfill_while_one_runs_is_refused_with_a_clear_message(
        pg_url: str, kv_url: str, kv: redis.Redis, new_pg_url: Any, runner: Launcher,
        request: pytest.FixtureRequest) -> None:
    seed_world(kv)
    commands.setup(build_config(pg_url=pg_url, env={}))
    first = runner.cli(*argv(pg_url, kv_url))
    second: list[Finished] = []
    # hold the first run inside a page's transaction while the second one starts
    assert strike_inside_transaction(first, pg_url, "kvmigrate.ledger",
                                     lambda: second.append(runner.run(*argv(pg_url, kv_url))),
                                     after_ledger_rows=100)
    [refused] = second
    assert refused.code == 1, refused.output
    envelope = refused.json()
    assert envelope["error"]["message"].startswith("another backfill is running against this database (backend pid ")
    assert "kvmigrate status" in envelope["error"]["hint"]
    done = first.finish()
    assert done.code == 0, done.output
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), min(status) FROM kvmigrate.runs").fetchone() == (1, "ok")
        together = dump_tables(conn)
    alone = new_pg_url()
    commands.setup(build_config(pg_url=alone, env={}))
    commands.backfill(build_config(pg_url=alone, kv_url=kv_url, env={}, batch_size=20, scan_count=20))
    with psycopg.connect(alone) as conn:
        assert together == dump_tables(conn)
    note(request, "second backfill during a run: exit 1 'another backfill is running', nothing written")


def app_handles(client: redis.Redis) -> list[str]:
    out = []
    for raw in client.hkeys("vibe:handles"):
        text = raw.decode()
        try:
            if handle(text) == text:
                out.append(text)
        except Bad:
            continue
    return sorted(out)


def test_backfills_while_the_app_dual_writes_then_a_repairing_verify_lose_no_update_and_duplicate_no_row(
        pg_url: str, kv_url: str, kv: redis.Redis, runner: Launcher, request: pytest.FixtureRequest) -> None:
    seed_world(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    with psycopg.connect(pg_url) as conn:
        flags = connect_kv(kv_url, RequestBudget())
        for entity in phases.kv_entities():
            phases.set_phase(conn, flags, entity.name, phases.DUAL, reason="test")
        flags.redis.close()
    app = SimApp(kv_url, pg_url, app_handles(kv), seed=11, flag_ttl=0.1, interval=0.002).start()
    runs: list[Finished] = []
    try:
        time.sleep(0.3)
        for _ in range(2):
            runs.append(runner.run(*argv(pg_url, kv_url)))
    finally:
        app.stop()
    assert [r.code for r in runs] == [0, 0], [r.output for r in runs]
    assert not app.errors, app.errors[:3]
    during = sum(1 for w in app.writes if w.phase.startswith("dual"))
    assert during > 50
    # Backfill reads each page once (no second, billed read under dual writes): a copy it read
    # just before the app's write may land after it. Verify re-checks what differs and, as
    # dual-write runs it, repairs from KV, which the app writes first.
    repaired = commands.verify(config, recheck_delay=0.5, repair=True)
    with psycopg.connect(pg_url) as conn:
        check = check_writes(conn, app.writes)
    assert check.ok, (check.missing[:5], check.wrong[:5])
    verified = commands.verify(config, recheck_delay=0.5)
    problems = {n: (e.missing[:3], e.extra[:3], e.different[:3]) for n, e in verified.entities.items() if not e.clean}
    assert verified.clean, problems
    stale = sum(e.repaired for e in repaired.entities.values())
    note(request, f"{len(app.writes)} app writes ({during} dual) during 2 backfills, {stale} stale rows repaired "
         f"by verify: lost updates 0, duplicate rows 0, verify clean")
