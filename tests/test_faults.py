"""Connection faults: Postgres backends terminated mid-batch, KV clients killed, each server
stopped and restarted mid-run, servers that come up (or answer) only after a few seconds, and
a KV reply lost after the command ran.

The policy under test (README, "Exit codes"): connecting retries with backoff
(`KVMIGRATE_CONNECT_RETRIES`, default 5: about 6 s); once connected, KV commands are retried
with backoff (each is safe to send twice); a Postgres connection lost mid-batch is not retried:
the batch rolls back and the run exits 3 saying to run the same command again, which resumes.
Every run must end — now or after that rerun — with exactly the rows of a run without faults.
The restart tests use servers of their own (`PrivatePostgres`, `PrivateValkey`), never the
session's shared servers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.engine import phases
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.phases.cleanup import run_cleanup
from tests.fixtures.data import dump_tables
from tests.fixtures.faults import (
    Child,
    Databases,
    FaultyProxy,
    Launcher,
    PrivatePostgres,
    PrivateValkey,
    free_port,
    kill_kv_clients,
    ledger_rows,
    note,
    seed_world,
    strike_inside_transaction,
    terminate_backends,
    wait_backends_gone,
)
from tests.fixtures.servers import Servers, kv_url_for

SEED = 20250601
BATCH = 20
HINT = "run the same command again"


@dataclass
class World:
    """A seeded keyspace, a template database with the schema, and the rows a backfill
    without faults leaves (`reference`)."""

    dbs: Databases
    kv_url: str
    memories: Path
    template: str
    reference: dict[str, Any]

    def argv(self, url: str, kv_url: str | None = None) -> list[str]:
        return ["--json", "--pg-url", url, "--kv-url", kv_url or self.kv_url, "backfill", "--batch-size",
                str(BATCH), "--memories-dir", str(self.memories)]

    def state(self, url: str) -> dict[str, Any]:
        with psycopg.connect(url) as conn:
            return dump_tables(conn)


def make_world(dbs: Databases, kv_url: str, tmp_path: Path) -> World:
    memories = tmp_path / "memories"
    client = redis.Redis.from_url(kv_url)
    seed_world(client, memories)
    client.close()
    template = dbs.template(lambda url: commands.setup(build_config(pg_url=url, env={})))
    url = dbs.clone(template)
    config = build_config(pg_url=url, kv_url=kv_url, env={}, batch_size=BATCH, scan_count=BATCH)
    commands.backfill(config, memories_dir=memories)
    world = World(dbs, kv_url, memories, template, {})
    world.reference = world.state(url)
    dbs.drop(url)
    return world


@pytest.fixture(scope="module")
def world(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One seeded keyspace and template for this module's tests on the shared servers."""
    from tests.conftest import _KV_DBS  # the logical KV dbs tests may flush

    dbs = Databases(servers.pg_admin_url)
    yield make_world(dbs, kv_url_for(servers.kv_url, next(_KV_DBS)), tmp_path_factory.mktemp("world"))
    dbs.close()


def wait_for_ledger(url: str, child: Child, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as watch:
        while child.running() and ledger_rows(watch) < rows:
            time.sleep(0.003)
    assert child.running(), "the run ended before the fault"


def assert_same(state: dict[str, Any], reference: dict[str, Any]) -> None:
    """Two runs' tables, ledger and rejects are identical (a short diff when not)."""
    for table, rows in reference.items():
        got, want = {repr(r) for r in state[table]}, {repr(r) for r in rows}
        assert got == want, f"{table}: missing {sorted(want - got)[:3]}, unexpected {sorted(got - want)[:3]}"
    assert state == reference


def assert_exit_3_with_resume_hint(ended: Any, what: str) -> None:
    assert ended.code == 3, ended.output
    envelope = ended.json()
    assert envelope["exit_code"] == 3 and what in envelope["error"]["message"], envelope
    assert HINT in envelope["error"]["hint"]


# --------------------------------------------------------------------------- shared servers


def test_postgres_backend_terminated_mid_batch_exits_3_and_the_rerun_matches_a_clean_run(
        world: World, runner: Launcher, request: pytest.FixtureRequest) -> None:
    rng = random.Random(f"{SEED}:terminate")
    tables = ("kvmigrate.ledger", "messages")
    for table in tables:
        url = world.dbs.clone(world.template)
        child = runner.cli(*world.argv(url))
        at = rng.randrange(50, 600)
        assert strike_inside_transaction(child, url, table, lambda u=url: terminate_backends(u),
                                         after_ledger_rows=at)
        assert_exit_3_with_resume_hint(child.finish(), "lost the Postgres connection")
        with psycopg.connect(url) as conn:
            assert ledger_rows(conn) < len(world.reference["ledger"])  # the page rolled back
            status, error = conn.execute("SELECT status, result->>'error' FROM kvmigrate.runs"
                                         " WHERE command = 'backfill' ORDER BY id DESC LIMIT 1").fetchone() or (None, None)
            assert status == "failed" and "terminating connection" in (error or ""), (status, error)
        rerun = runner.run(*world.argv(url))
        assert rerun.code == 0, rerun.output
        assert rerun.json()["result"]["resumed_from_cursor"], "the rerun started over instead of resuming"
        assert world.state(url) == world.reference
        world.dbs.drop(url)
    note(request, f"{len(tables)} backends terminated mid-transaction: exit 3, rerun resumed, rows lost 0")


def test_kv_connections_killed_all_through_a_run_are_retried_and_the_run_completes(
        world: World, runner: Launcher, kv: redis.Redis, request: pytest.FixtureRequest) -> None:
    db = int(urlsplit(world.kv_url).path.strip("/") or 0)
    url = world.dbs.clone(world.template)
    child = runner.cli(*world.argv(url))
    kills = 0
    while child.running():
        kills += kill_kv_clients(kv, db)
        time.sleep(0.05)
    ended = child.finish()
    assert ended.code == 0, ended.output
    assert kills >= 5
    assert world.state(url) == world.reference
    note(request, f"{kills} CLIENT KILLs during one backfill: retried, exit 0, rows lost 0")


def test_kv_reply_lost_after_the_delete_ran_is_still_counted_as_deleted(
        servers: Servers, pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    seed_world(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config, entities=["streaks"])
    assert commands.verify(config, entities=["streaks"], recheck_delay=0).clean
    with psycopg.connect(pg_url) as conn:
        flags = connect_kv(kv_url, RequestBudget())
        phases.set_phase(conn, flags, "streaks", phases.DUAL, reason="test")
        phases.set_phase(conn, flags, "streaks", phases.CUTOVER, reason="test")
        flags.redis.close()
        verified = {k for (k,) in conn.execute(
            "SELECT key FROM kvmigrate.ledger WHERE entity = 'streaks' AND verified_hash IS NOT NULL")}
    upstream = urlsplit(kv_url)
    proxy = FaultyProxy(upstream.port or 6379, cut_reply_to=b"EXEC\r\n")
    try:
        via_proxy = upstream._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        result = run_cleanup(build_config(pg_url=pg_url, kv_url=via_proxy, env={}), entities=["streaks"],
                             archive_dir=tmp_path / "archive", yes=True)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    streaks = result.entities["streaks"]
    assert not {k.decode() for k in kv.keys("streak:*")} & verified
    assert "changed_during_cleanup" not in streaks.kept, streaks.kept
    assert streaks.deleted == len(verified)
    with psycopg.connect(pg_url) as conn:
        marked = {k for (k,) in conn.execute("SELECT key FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL")}
    assert marked == verified


# --------------------------------------------------------------------------- private servers


@dataclass
class Private:
    """Servers of this module alone and a world on them. SCAN order is fixed per server start
    (Valkey picks a new hash seed each time), so the reference is recomputed after a restart."""

    pg: PrivatePostgres
    kv: PrivateValkey
    world: World
    reference_of_start: int = 1

    def reference(self) -> dict[str, Any]:
        if self.reference_of_start != self.kv.starts:
            url = self.world.dbs.clone(self.world.template)
            config = build_config(pg_url=url, kv_url=self.world.kv_url, env={}, batch_size=BATCH, scan_count=BATCH)
            commands.backfill(config, memories_dir=self.world.memories)
            self.world.reference = self.world.state(url)
            self.world.dbs.drop(url)
            self.reference_of_start = self.kv.starts
        return self.world.reference


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    """A Postgres and a Valkey of this module alone, which its tests stop and start."""
    root = tmp_path_factory.mktemp("private")
    pg, kv = PrivatePostgres(), PrivateValkey(root / "kv")
    try:
        pg.start()
        kv.start()
        dbs = Databases(pg.admin_url)
        yield Private(pg, kv, make_world(dbs, kv.url(0), root))
        dbs.close()
    finally:
        kv.close()
        pg.close()


@pytest.fixture
def servers_up(private: Private) -> Iterator[Private]:
    """Both private servers running before and after the test."""
    for server in (private.pg, private.kv):
        if server.proc is None:
            server.start()
    yield private
    for server in (private.pg, private.kv):
        if server.proc is None:
            server.start()


@pytest.mark.parametrize("mode", ["fast", "crash"])
def test_postgres_restarted_mid_backfill_exits_3_and_the_rerun_resumes(
        servers_up: Private, runner: Launcher, mode: str, request: pytest.FixtureRequest) -> None:
    w = servers_up.world
    url = w.dbs.clone(w.template)
    child = runner.cli(*w.argv(url))
    wait_for_ledger(url, child, len(w.reference["ledger"]) // 3)
    servers_up.pg.stop(mode=mode)
    time.sleep(0.5)
    servers_up.pg.start()
    assert_exit_3_with_resume_hint(child.finish(), "lost the Postgres connection")
    rerun = runner.run(*w.argv(url))
    assert rerun.code == 0, rerun.output
    assert_same(w.state(url), servers_up.reference())
    w.dbs.drop(url)
    note(request, f"Postgres stopped ({mode}) and restarted mid-run: exit 3, rerun resumed, rows lost 0")


def test_servers_that_come_up_only_after_a_few_seconds_are_retried(
        servers_up: Private, runner: Launcher, request: pytest.FixtureRequest) -> None:
    w = servers_up.world
    url = w.dbs.clone(w.template)
    pg_port, kv_port = free_port(), free_port()  # nothing listens there yet: connections are refused
    late_pg = url.replace(f":{servers_up.pg.port}/", f":{pg_port}/")
    child = runner.cli(*w.argv(late_pg, f"redis://127.0.0.1:{kv_port}/0"))
    time.sleep(1.0)
    pg_proxy = FaultyProxy(servers_up.pg.port, port=pg_port)
    time.sleep(1.0)
    kv_proxy = FaultyProxy(servers_up.kv.port, port=kv_port)
    try:
        ended = child.finish()
    finally:
        pg_proxy.close()
        kv_proxy.close()
    assert ended.code == 0, ended.output
    assert "Postgres" in ended.stderr and "KV" in ended.stderr and "retrying" in ended.stderr
    assert_same(w.state(url), servers_up.reference())
    w.dbs.drop(url)
    retries = ended.stderr.count("retrying")
    note(request, f"both servers refusing connections at start, up after 1 s and 2 s: {retries} retries, "
         "exit 0, rows lost 0")


def test_servers_that_answer_only_after_a_few_seconds_are_waited_for(
        servers_up: Private, runner: Launcher) -> None:
    w = servers_up.world
    url = w.dbs.clone(w.template)
    pg_proxy = FaultyProxy(servers_up.pg.port, stall=0.7)
    kv_proxy = FaultyProxy(servers_up.kv.port, stall=0.7)
    try:
        slow_pg = url.replace(f":{servers_up.pg.port}/", f":{pg_proxy.port}/")
        ended = runner.run(*w.argv(slow_pg, f"redis://127.0.0.1:{kv_proxy.port}/0"))
    finally:
        pg_proxy.close()
        kv_proxy.close()
    assert ended.code == 0, ended.output
    assert ended.seconds >= 1.4
    assert_same(w.state(url), servers_up.reference())
    w.dbs.drop(url)


def test_kv_restarted_mid_backfill_the_run_still_copies_every_key(servers_up: Private, runner: Launcher) -> None:
    w = servers_up.world
    url = w.dbs.clone(w.template)
    child = runner.cli(*w.argv(url))
    wait_for_ledger(url, child, len(w.reference["ledger"]) // 3)
    servers_up.kv.stop()
    time.sleep(0.3)
    servers_up.kv.start()
    ended = child.finish()
    assert ended.code in (0, 3), ended.output
    if ended.code == 3:
        assert HINT in ended.output
        ended = runner.run(*w.argv(url))
        assert ended.code == 0, ended.output
    assert_all_keys_in_ledger(w, url)


def test_kv_restarted_between_a_killed_run_and_its_rerun_the_rerun_copies_every_key(
        servers_up: Private, runner: Launcher) -> None:
    w = servers_up.world
    url = w.dbs.clone(w.template)
    child = runner.cli(*w.argv(url))
    wait_for_ledger(url, child, len(w.reference["ledger"]) // 3)
    assert child.kill()
    child.finish()
    wait_backends_gone(url)
    servers_up.kv.stop()
    servers_up.kv.start()
    rerun = runner.run(*w.argv(url))
    assert rerun.code == 0, rerun.output
    assert rerun.json()["result"]["resumed_from_cursor"] is None  # the old cursor means nothing now
    assert_all_keys_in_ledger(w, url)


def assert_all_keys_in_ledger(w: World, url: str) -> None:
    """Every key of the keyspace has its ledger row (whatever the order keys were read in)."""
    with psycopg.connect(url) as conn:
        got = {k for (k,) in conn.execute("SELECT DISTINCT key FROM kvmigrate.ledger")}
    want = {row[0] for row in w.reference["ledger"]}
    assert not want - got, f"{len(want - got)} keys never read, e.g. {sorted(want - got)[:3]}"
    w.dbs.drop(url)


