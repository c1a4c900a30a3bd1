"""Crash tests: `backfill` and `cleanup` killed with SIGKILL at seeded moments, then rerun.

Every kill is planned by a seeded RNG (`KVMIGRATE_CRASH_SEED`, the test and the plan's number),
so a failing plan is reproducible. A plan kills the running child process from outside in one
of three ways: after a delay drawn over the uninterrupted run's duration, once a drawn amount of
progress is visible in Postgres (ledger rows) or KV (keys deleted), or while the run is blocked
inside a page's transaction on a table the test locked. Some plans kill the rerun again before
the last rerun completes. After each plan the last rerun must end with tables, ledger, rejects
and keyspace identical to an uninterrupted run; after every cleanup kill, every deleted key must
have its archive line in a file the manifest covers. CI runs 20 kills; `make stress` runs
`KVMIGRATE_STRESS_KILLS` (100).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.files.archive import latest_lines, read_manifest, verified_blobs
from kvmigrate.adapters.kv.scanner import encode_key
from kvmigrate.engine import phases
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.phases.cleanup import run_cleanup
from tests.fixtures.data import dump_tables
from tests.fixtures.faults import (
    Databases,
    Launcher,
    kill_after,
    kill_inside_transaction,
    kill_when,
    kv_state,
    ledger_rows,
    note,
    seed_world,
    wait_backends_gone,
)
from tests.fixtures.servers import Servers

SEED = int(os.environ.get("KVMIGRATE_CRASH_SEED", "20250601"))
CI_BACKFILL_KILLS = 12
CI_CLEANUP_KILLS = 8
BATCH = 20
FLAGS = ("kvmigrate:flags",)
BACKFILL_TABLES = ("kvmigrate.checkpoints", "kvmigrate.ledger", "kvmigrate.rejects", "kvmigrate.row_origin",
                   "users", "messages", "board_posts", "memories")
CLEANUP_TABLES = ("kvmigrate.checkpoints", "kvmigrate.ledger", "kvmigrate.phases")

stress = pytest.mark.skipif("KVMIGRATE_STRESS_KILLS" not in os.environ,
                            reason="the long kill loops run with `make stress`")


def stress_kills() -> int:
    return int(os.environ.get("KVMIGRATE_STRESS_KILLS", "100"))


@dataclass(frozen=True)
class Kill:
    """One kill: `how` (time | progress | transaction), `at` (a fraction of the uninterrupted
    run's duration or progress), `table` (locked for a transaction kill)."""

    how: str
    at: float
    table: str = ""


def plan(rng: random.Random, tables: tuple[str, ...]) -> list[Kill]:
    """One to three kills in a row (the rerun of a killed run is killed again)."""
    count = rng.choices((1, 2, 3), weights=(4, 4, 2))[0]
    return [Kill(rng.choice(("time", "time", "progress", "transaction")), rng.uniform(0.0, 1.0),
                 rng.choice(tables)) for _ in range(count)]


@dataclass
class Tally:
    kills: int = 0
    plans: int = 0
    reruns: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    rows_lost: int = 0

    def killed(self, kill: Kill) -> None:
        self.kills += 1
        self.by_kind[kill.how] = self.by_kind.get(kill.how, 0) + 1

    def line(self, what: str) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        return (f"{what}: {self.kills} SIGKILLs survived ({kinds}) in {self.plans} plans, "
                f"{self.reruns} reruns, rows lost {self.rows_lost}")


def rows_lost(reference: dict[str, Any], state: dict[str, Any]) -> int:
    """Rows (of every table compared) the reference has and `state` lacks."""
    return sum(len({repr(r) for r in rows} - {repr(r) for r in state.get(t, ())}) for t, rows in reference.items())


@pytest.fixture
def databases(servers: Servers) -> Iterator[Databases]:
    dbs = Databases(servers.pg_admin_url)
    yield dbs
    dbs.close()


# --------------------------------------------------------------------------- backfill


@dataclass
class BackfillWorld:
    kv_url: str
    kv: redis.Redis
    memories: Path
    template: str
    reference: dict[str, Any]
    keyspace: dict[bytes, tuple[Any, ...]]
    ledger_total: int
    seconds: float

    def argv(self, url: str) -> list[str]:
        return ["--json", "--pg-url", url, "--kv-url", self.kv_url, "backfill", "--batch-size", str(BATCH),
                "--memories-dir", str(self.memories)]


def backfill_world(kv_url: str, kv: redis.Redis, dbs: Databases, run: Launcher, tmp_path: Path) -> BackfillWorld:
    memories = tmp_path / "memories"
    seed_world(kv, memories)
    template = dbs.template(lambda url: commands.setup(build_config(pg_url=url, env={})))
    url = dbs.clone(template)
    world = BackfillWorld(kv_url, kv, memories, template, {}, kv_state(kv), 0, 0.0)
    done = run.run(*world.argv(url))
    assert done.code == 0, done.output
    with psycopg.connect(url) as conn:
        world.reference = dump_tables(conn)
        world.ledger_total = ledger_rows(conn)
    world.seconds = done.seconds
    dbs.drop(url)
    return world


def reaches(measure: Callable[[], int], target: int) -> Callable[[], bool]:
    """A kill condition: `measure()` has reached `target`."""
    return lambda: measure() >= target


def crash_backfill(world: BackfillWorld, dbs: Databases, run: Launcher, rng: random.Random, tally: Tally) -> None:
    """One plan: kill backfill (and maybe its reruns), rerun to the end, compare."""
    url = dbs.clone(world.template)
    tally.plans += 1
    for kill in plan(rng, BACKFILL_TABLES):
        target = max(1, int(kill.at * world.ledger_total))
        child = run.cli(*world.argv(url))
        if kill.how == "transaction":
            killed = kill_inside_transaction(child, url, kill.table, after_ledger_rows=target)
        elif kill.how == "progress":
            with psycopg.connect(url, autocommit=True) as watch:
                killed = kill_when(child, reaches(lambda: ledger_rows(watch), target))
        else:
            killed = kill_after(child, kill.at * world.seconds)
        ended = child.finish()
        assert ended.killed or ended.code == 0, ended.output
        if ended.killed:
            tally.killed(kill)
        wait_backends_gone(url)
        assert killed or not ended.killed  # a signal can also reach a child that had just finished
    config = build_config(pg_url=url, kv_url=world.kv_url, env={}, batch_size=BATCH, scan_count=BATCH)
    assert commands.backfill(config, memories_dir=world.memories).complete  # the rerun
    tally.reruns += 1
    with psycopg.connect(url) as conn:
        state = dump_tables(conn)
    tally.rows_lost += rows_lost(world.reference, state)
    assert state == world.reference
    assert kv_state(world.kv) == world.keyspace  # backfill never writes KV
    dbs.drop(url)


def backfill_kills(world: BackfillWorld, dbs: Databases, run: Launcher, kills: int, name: str) -> Tally:
    tally = Tally()
    for n in range(kills * 3):
        if tally.kills >= kills:
            break
        crash_backfill(world, dbs, run, random.Random(f"{SEED}:{name}:{n}"), tally)
    assert tally.kills >= kills
    return tally


def test_backfill_killed_at_seeded_moments_reruns_to_the_uninterrupted_result(
        kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    world = backfill_world(kv_url, kv, databases, runner, tmp_path)
    started = time.monotonic()
    tally = backfill_kills(world, databases, runner, CI_BACKFILL_KILLS, "ci")
    note(request, tally.line(f"backfill ({len(world.keyspace)} keys, {world.ledger_total} ledger rows)")
         + f", {time.monotonic() - started:.0f} s")


def test_backfill_killed_between_parts_of_vibe_games_reruns_to_the_uninterrupted_result(
        kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher) -> None:
    # 60 games at --batch-size 10: six parts of rows, each committed on its own, vibe:games'
    # ledger row with the last. A statement trigger that sleeps makes each part slow enough to
    # kill the run once two parts are in and before the ledger row is: the rerun must end with
    # the tables, ledger and rejects of an uninterrupted run.
    kv.flushdb()
    games = {f"g{i:02d}": {"type": "tictactoe", "players": [f"p{i % 5}", "bob"], "state": {"winner": "bob"}}
             for i in range(60)}
    games["g07"] = {"type": "chess"}  # an item reject, in the first part
    kv.set("vibe:games", orjson.dumps(games))

    def prepare(url: str) -> None:
        commands.setup(build_config(pg_url=url, env={}))
        with psycopg.connect(url) as conn:
            conn.execute("CREATE FUNCTION slow_part() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$")
            conn.execute("CREATE TRIGGER slow_part AFTER INSERT ON game_results"
                         " FOR EACH STATEMENT EXECUTE FUNCTION slow_part()")

    template = databases.template(prepare)
    argv = ["--json", "--kv-url", kv_url, "backfill", "--batch-size", "10", "--entity", "games"]
    reference_url = databases.clone(template)
    done = runner.run("--pg-url", reference_url, *argv)
    assert done.code == 0, done.output
    url = databases.clone(template)
    child = runner.cli("--pg-url", url, *argv)
    with psycopg.connect(url, autocommit=True) as watch:
        def two_parts_in() -> bool:
            row = watch.execute("SELECT count(*) FROM game_results").fetchone()
            return bool(row and row[0] >= 19)

        assert kill_when(child, two_parts_in), child.finish().output
        assert child.finish().killed
        wait_backends_gone(url)
        assert watch.execute("SELECT count(*) FROM kvmigrate.ledger WHERE key = 'vibe:games'").fetchone() == (0,)
        assert 19 <= watch.execute("SELECT count(*) FROM game_results").fetchone()[0] < 59  # parts, not all
    rerun = runner.run("--pg-url", url, *argv)
    assert rerun.code == 0, rerun.output
    with psycopg.connect(url) as conn, psycopg.connect(reference_url) as reference:
        assert dump_tables(conn) == dump_tables(reference)
        assert conn.execute("SELECT count(*) FROM game_results").fetchone() == (59,)
        assert conn.execute("SELECT rows FROM kvmigrate.ledger WHERE key = 'vibe:games'").fetchone() == (59,)
    databases.drop(url)
    databases.drop(reference_url)


@pytest.mark.slow
@stress
def test_stress_backfill_kills(kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher,
                               tmp_path: Path, request: pytest.FixtureRequest) -> None:
    world = backfill_world(kv_url, kv, databases, runner, tmp_path)
    tally = backfill_kills(world, databases, runner, stress_kills() * 2 // 3, "stress")
    note(request, tally.line("backfill stress"))


# --------------------------------------------------------------------------- cleanup


@dataclass
class CleanupWorld:
    kv_url: str
    kv: redis.Redis
    template: str
    folder: Path
    keyspace: dict[bytes, tuple[Any, ...]] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    reference_kv: dict[bytes, tuple[Any, ...]] = field(default_factory=dict)
    deleted_total: int = 0
    seconds: float = 0.0
    n: int = 0

    def job(self, url: str, folder: Path, *, cli: bool = False) -> dict[str, Any]:
        """`kvmigrate cleanup` (one page of 1,000 keys), or the library's cleanup step with
        pages of BATCH keys (more pages: more moments to be killed between)."""
        if cli:
            return {"argv": ["--json", "--pg-url", url, "--kv-url", self.kv_url, "cleanup", "--archive-dir",
                             str(folder), "--yes", "--settle", "0"]}
        config = {"pg_url": url, "kv_url": self.kv_url, "batch_size": BATCH, "scan_count": BATCH}
        return {"call": "kvmigrate.phases.cleanup:run_cleanup",
                "kwargs": {"config": config, "archive_dir": str(folder), "yes": True}}

    def fresh(self, dbs: Databases) -> tuple[str, Path]:
        """A keyspace as seeded and a database cut over, verified, never cleaned up."""
        seed_world(self.kv)
        self.n += 1
        return dbs.clone(self.template), self.folder / f"archive{self.n}"


def archive_root(tmp_path: Path) -> Path:
    """Archives go to memory when the machine has a tmpfs: cleanup fsyncs every batch, and a
    killed process (unlike a power cut) loses nothing the kernel already has."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="kvmigrate-archives-", dir=shm))
    return tmp_path / "archives"


def cut_over(url: str, kv_url: str) -> None:
    config = build_config(pg_url=url, kv_url=kv_url, env={}, batch_size=BATCH, scan_count=BATCH)
    commands.setup(config)
    commands.backfill(config)
    assert commands.verify(config, recheck_delay=0).clean
    with psycopg.connect(url) as conn:
        flags = connect_kv(kv_url, RequestBudget())
        for entity in phases.kv_entities():
            phases.set_phase(conn, flags, entity.name, phases.DUAL, reason="test")
            phases.set_phase(conn, flags, entity.name, phases.CUTOVER, reason="test")
        flags.redis.close()


def cleanup_state(conn: psycopg.Connection) -> dict[str, Any]:
    state = dump_tables(conn)
    state["marks"] = conn.execute("SELECT key, field, archived_at IS NOT NULL, deleted_at IS NOT NULL"
                                  " FROM kvmigrate.ledger ORDER BY key, field").fetchall()
    state["phases"] = conn.execute("SELECT entity, writes, reads FROM kvmigrate.phases ORDER BY 1").fetchall()
    conn.commit()
    return state


def cleanup_world(kv_url: str, kv: redis.Redis, dbs: Databases, run: Launcher, tmp_path: Path) -> CleanupWorld:
    seed_world(kv)
    world = CleanupWorld(kv_url, kv, dbs.template(lambda url: cut_over(url, kv_url)), archive_root(tmp_path))
    url, folder = world.fresh(dbs)
    world.keyspace = kv_state(kv, skip=FLAGS)
    done = run.start(world.job(url, folder)).finish()
    assert done.code == 0, done.output
    world.seconds = done.seconds
    world.reference_kv = kv_state(kv, skip=FLAGS)
    world.deleted_total = len(world.keyspace) - len(world.reference_kv)
    assert world.deleted_total > 300
    assert set(archived(folder)) == set(world.keyspace) - set(world.reference_kv)
    with psycopg.connect(url) as conn:
        world.reference = cleanup_state(conn)
    dbs.drop(url)
    return world


def archived(folder: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every key the manifest-covered archive holds, as `kv_state` shows a key."""
    if not (folder / "manifest.json").exists():
        return {}
    out: dict[bytes, tuple[Any, ...]] = {}
    for item in latest_lines(verified_blobs(folder, read_manifest(folder)), ()):
        p = item.parts
        value: Any = (p[0] if item.rtype == "string" else sorted(zip(p[0::2], p[1::2], strict=True))
                      if item.rtype == "hash" else list(p) if item.rtype == "list" else sorted(p)
                      if item.rtype == "set" else [(m, float(s)) for m, s in zip(p[0::2], p[1::2], strict=True)])
        out[encode_key(item.key)] = (item.rtype, value, item.expires_at_ms is not None)
    return out


def assert_deleted_keys_are_archived(world: CleanupWorld, folder: Path) -> int:
    """Every key gone from KV has its line, with its value, in the manifest-covered archive;
    every key still in KV is unchanged. Returns the number of keys deleted so far."""
    now = kv_state(world.kv, skip=FLAGS)
    gone = set(world.keyspace) - set(now)
    assert all(now[k] == world.keyspace[k] for k in now), "cleanup changed a key it did not delete"
    lines = archived(folder)
    assert gone <= set(lines), f"deleted without an archive line: {sorted(gone - set(lines))[:5]}"
    assert all(lines[k] == world.keyspace[k] for k in gone)
    return len(gone)


def crash_cleanup(world: CleanupWorld, dbs: Databases, run: Launcher, rng: random.Random, tally: Tally) -> None:
    url, folder = world.fresh(dbs)
    tally.plans += 1
    cli = rng.random() < 0.5
    for kill in plan(rng, CLEANUP_TABLES):
        child = run.start(world.job(url, folder, cli=cli))
        target = len(world.keyspace) - max(1, int(kill.at * world.deleted_total))
        if kill.how == "transaction":
            killed = kill_inside_transaction(child, url, kill.table)
        elif kill.how == "progress":
            killed = kill_when(child, reaches(lambda: -int(world.kv.dbsize()), -target))
        else:
            killed = kill_after(child, kill.at * world.seconds)
        ended = child.finish()
        assert ended.killed or ended.code == 0, ended.output
        assert killed or not ended.killed  # a signal can also reach a child that had just finished
        if ended.killed:
            tally.killed(kill)
        wait_backends_gone(url)
        assert_deleted_keys_are_archived(world, folder)
    config = build_config(pg_url=url, kv_url=world.kv_url, env={}, batch_size=BATCH, scan_count=BATCH)
    assert run_cleanup(config, archive_dir=folder, yes=True).complete  # the rerun
    tally.reruns += 1
    assert assert_deleted_keys_are_archived(world, folder) == world.deleted_total
    assert kv_state(world.kv, skip=FLAGS) == world.reference_kv
    with psycopg.connect(url) as conn:
        state = cleanup_state(conn)
    tally.rows_lost += rows_lost(world.reference, state)
    marks = set(state["marks"]) ^ set(world.reference["marks"])
    assert not marks, (rng.getstate()[1][:2], sorted(marks)[:6])
    assert state == world.reference
    dbs.drop(url)


def cleanup_kills(world: CleanupWorld, dbs: Databases, run: Launcher, kills: int, name: str) -> Tally:
    tally = Tally()
    for n in range(kills * 3):
        if tally.kills >= kills:
            break
        crash_cleanup(world, dbs, run, random.Random(f"{SEED}:{name}:{n}"), tally)
    assert tally.kills >= kills
    return tally


def test_cleanup_killed_at_seeded_moments_never_deletes_an_unarchived_key(
        kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    started = time.monotonic()
    world = cleanup_world(kv_url, kv, databases, runner, tmp_path)
    try:
        tally = cleanup_kills(world, databases, runner, CI_CLEANUP_KILLS, "ci")
    finally:
        shutil.rmtree(world.folder, ignore_errors=True)
    note(request, tally.line(f"cleanup ({world.deleted_total} keys deleted per run)")
         + f", {time.monotonic() - started:.0f} s")


@pytest.mark.slow
@stress
def test_stress_cleanup_kills(kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher,
                              tmp_path: Path, request: pytest.FixtureRequest) -> None:
    world = cleanup_world(kv_url, kv, databases, runner, tmp_path)
    try:
        tally = cleanup_kills(world, databases, runner, stress_kills() - stress_kills() * 2 // 3, "stress")
    finally:
        shutil.rmtree(world.folder, ignore_errors=True)
    note(request, tally.line("cleanup stress"))
