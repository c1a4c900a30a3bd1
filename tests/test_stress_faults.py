"""Stress loops (`make stress`): a lost reply on every write path, and a store wiped in each phase.

* Lost replies: every command that writes is run through a TCP proxy in front of KV or Postgres
  that forwards the n-th chunk holding a write (n drawn from how many a clean run sends) and
  cuts the connection before its reply: restore's writes (temporary key, RENAME), cleanup's
  MULTI/DEL/EXEC and the flags it publishes, cutover's flags, and on Postgres every commit,
  insert, update and COPY of backfill, `verify --repair`, cutover and cleanup (its ledger; restore
  writes nothing to Postgres).
  The run goes on (a resend that is safe) or stops (exit 3); the same command is run again until
  it succeeds, and the end state must equal a clean run's: 0 keys lost, 0 doubled.
* A store wiped (FLUSHDB) at a random moment of backfill, verify, repair, cutover, cleanup and
  restore: the run ends with exit 0, 1 or 3 and a one-line error (never a traceback); the
  `verify --repair` run after it (the runbook's next step) takes nothing from Postgres either: no
  Postgres row loses anything it held (kvmigrate.engine.loss); every key cleanup recorded as
  deleted is in the archive with its value, and restore puts it back byte for byte.

`KVMIGRATE_STRESS_FAULTS` (else `KVMIGRATE_STRESS_KILLS`, which `make stress` sets to 100)
iterations of each loop; both are `slow` and run only when one of the two is set (the normal
suite has a quick representative of each path: tests/test_faults.py, test_restore_faults.py,
test_guards.py, test_lossy_repair.py). Iterations are planned by a seeded RNG (`KVMIGRATE_CRASH_SEED`).
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
import redis

from kvmigrate.adapters.connections import connect_kv
from kvmigrate.engine import phases
from kvmigrate.engine.loss import row_losses
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.phases.cleanup import run_cleanup
from tests.fixtures.data import APP_TABLES, dump_tables
from tests.fixtures.faults import (
    Databases,
    FaultyProxy,
    Launcher,
    kv_state,
    note,
    seed_world,
    wait_backends_gone,
)
from tests.fixtures.servers import Servers
from tests.test_crash import FLAGS, archive_root, archived, cleanup_state, cut_over

SEED = int(os.environ.get("KVMIGRATE_CRASH_SEED", "20250601"))
ITERATIONS = int(os.environ.get("KVMIGRATE_STRESS_FAULTS") or os.environ.get("KVMIGRATE_STRESS_KILLS") or 12)
stress = pytest.mark.skipif(not {"KVMIGRATE_STRESS_FAULTS", "KVMIGRATE_STRESS_KILLS"} & set(os.environ),
                            reason="the long fault loops run with `make stress`")
BATCH = "20"
KV_WRITES = (b"SET", b"DEL", b"EXEC", b"MULTI", b"RENAME", b"RPUSH", b"HSET", b"SADD", b"ZADD", b"PEXPIRE",
             b"EXPIRE", b"UNLINK")
PG_WRITES = (b"COMMIT", b"INSERT", b"UPDATE", b"DELETE", b"COPY")
TEMP = b"kvmigrate:restore:"

#: the write paths: (phase, side); each phase's command and state below
PATHS = tuple(p for p in (("backfill", "pg"), ("repair", "pg"), ("cutover", "kv"), ("cutover", "pg"), ("cleanup", "kv"),
         ("cleanup", "pg"), ("restore", "kv"))
              if os.environ.get("KVMIGRATE_STRESS_PATH", "/".join(p)) == "/".join(p))
WIPED_PHASES = ("backfill", "verify", "repair", "cutover", "cleanup", "restore")


@pytest.fixture
def databases(servers: Servers) -> Iterator[Databases]:
    dbs = Databases(servers.pg_admin_url)
    yield dbs
    dbs.close()


def pg_proxy(pg_url: str, **kw: Any) -> tuple[FaultyProxy, str]:
    parts = urlsplit(pg_url)
    host = dict(parse_qsl(parts.query)).get("host", "")
    if host.startswith("/"):
        proxy = FaultyProxy(0, upstream_unix=sorted(glob.glob(f"{host}/.s.PGSQL.*[0-9]"))[0], **kw)
    else:
        proxy = FaultyProxy(parts.port or 5432, **kw)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return proxy, f"postgresql://{user}127.0.0.1:{proxy.port}{parts.path}"


def kv_proxy(kv_url: str, **kw: Any) -> tuple[FaultyProxy, str]:
    parts = urlsplit(kv_url)
    proxy = FaultyProxy(parts.port or 6379, **kw)
    return proxy, parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


@dataclass
class World:
    """Templates of each phase's starting point, and the keyspace the seed writes."""

    kv_url: str
    kv: redis.Redis
    dbs: Databases
    folder: Path
    templates: dict[str, str] = field(default_factory=dict)
    keyspace: dict[bytes, tuple[Any, ...]] = field(default_factory=dict)
    n: int = 0

    def fresh(self, phase: str) -> tuple[str, Path]:
        """A database at the start of `phase`, KV as seeded (for restore: cleaned up), a folder."""
        seed_world(self.kv)
        self.n += 1
        folder = self.folder / f"a{self.n}"
        url = self.dbs.clone(self.templates[start_of(phase)])
        if phase == "restore":
            config = build_config(pg_url=url, kv_url=self.kv_url, env={})
            assert run_cleanup(config, archive_dir=folder, yes=True).complete
        return url, folder

    def argv(self, phase: str, pg: str, kv: str, folder: Path) -> list[str]:
        base = ["--json", "--pg-url", pg, "--kv-url", kv]
        return base + {
            "backfill": ["backfill", "--batch-size", BATCH],
            "verify": ["verify", "--recheck-delay", "0"],
            "repair": ["verify", "--repair", "--recheck-delay", "0"],
            "cutover": ["cutover"],
            "cleanup": ["cleanup", "--archive-dir", str(folder), "--yes", "--settle", "0"],
            "restore": ["restore", str(folder), "--yes"],
        }[phase]

    def state(self, phase: str, url: str) -> dict[str, Any]:
        """What two runs of `phase` must agree on (Postgres and KV)."""
        with psycopg.connect(url) as conn:
            out: dict[str, Any] = cleanup_state(conn) if phase in ("cleanup", "cutover") else dump_tables(conn)
        out["kv"] = kv_state(self.kv, skip=FLAGS)
        flags = self.kv.hgetall("kvmigrate:flags")
        out["flags"] = sorted((k, v) for k, v in flags.items() if k != b"updated_at") if phase == "cutover" else None
        return out


def start_of(phase: str) -> str:
    return {"backfill": "setup", "verify": "verified", "repair": "tampered", "cutover": "dual",
            "cleanup": "cut", "restore": "cut"}[phase]


def make_world(kv_url: str, kv: redis.Redis, dbs: Databases, tmp_path: Path) -> World:
    from kvmigrate import api as commands

    seed_world(kv)
    world = World(kv_url, kv, dbs, archive_root(tmp_path))
    world.keyspace = kv_state(kv, skip=FLAGS)

    def setup(url: str) -> None:
        commands.setup(build_config(pg_url=url, env={}))

    def verified(url: str) -> None:
        config = build_config(pg_url=url, kv_url=kv_url, env={})
        commands.setup(config)
        commands.backfill(config)
        assert commands.verify(config, recheck_delay=0).clean

    def tampered(url: str) -> None:
        verified(url)
        with psycopg.connect(url) as conn:  # rows the repair puts back: missing and different
            conn.execute("DELETE FROM board_posts WHERE id IN (SELECT id FROM board_posts ORDER BY id LIMIT 15)")
            conn.execute("UPDATE messages SET content = 'edited' WHERE id IN (SELECT id FROM messages ORDER BY id"
                         " LIMIT 25)")
            conn.execute("UPDATE streaks SET current_streak = current_streak + 5")

    def dual(url: str) -> None:
        verified(url)
        with psycopg.connect(url) as conn:
            client = connect_kv(kv_url, RequestBudget())
            for entity in phases.kv_entities():
                phases.set_phase(conn, client, entity.name, phases.DUAL, reason="test")
            client.redis.close()
        assert commands.verify(build_config(pg_url=url, kv_url=kv_url, env={}), recheck_delay=0).clean

    for name, prepare in (("setup", setup), ("verified", verified), ("tampered", tampered), ("dual", dual),
                          ("cut", lambda url: cut_over(url, kv_url))):
        world.templates[name] = dbs.template(prepare)
    return world


def run_until_ok(run: Launcher, argv: list[str], tries: int = 4) -> int:
    """Run `argv` until it exits 0; returns how many runs it took."""
    for n in range(1, tries + 1):
        done = run.run(*argv)
        if done.code == 0:
            return n
        assert done.code == 3, done.output  # only a lost connection may stop a rerun
    raise AssertionError(f"{argv[5]} did not succeed in {tries} runs")


# --------------------------------------------------------------------------- lost replies


@dataclass
class Lost:
    rounds: int = 0
    stopped: int = 0  # runs that stopped with exit 3 (then rerun)
    resent: int = 0  # runs that went on through the cut (a safe resend)
    by_path: dict[str, int] = field(default_factory=dict)
    keys_lost: int = 0
    keys_doubled: int = 0

    def line(self) -> str:
        paths = ", ".join(f"{k} {n}" for k, n in sorted(self.by_path.items()))
        return (f"lost replies: {self.rounds} ({paths}); {self.stopped} runs stopped (exit 3) and were rerun, "
                f"{self.resent} went on; keys lost {self.keys_lost}, doubled {self.keys_doubled}")


def lost_and_doubled(reference: dict[bytes, tuple[Any, ...]], now: dict[bytes, tuple[Any, ...]]) -> tuple[int, int]:
    """Keys the reference has that `now` lacks or holds differently; keys whose list grew."""
    lost = sum(1 for k, v in reference.items() if now.get(k) != v)
    doubled = sum(1 for k, v in reference.items() if k in now and v[0] == "list" and len(now[k][1]) > len(v[1]))
    return lost, doubled


def lost_reply_round(world: World, run: Launcher, references: dict[str, dict[str, Any]],
                     counts: dict[tuple[str, str], int], path: tuple[str, str], rng: random.Random, tally: Lost) -> None:
    phase, side = path
    url, folder = world.fresh(phase)
    writes = KV_WRITES if side == "kv" else PG_WRITES
    proxy, proxied = (kv_proxy(world.kv_url, writes=writes) if side == "kv" else pg_proxy(url, writes=writes))
    try:
        if path not in counts:  # a clean run through the proxy: how many writes it sends
            done = run.run(*world.argv(phase, proxied if side == "pg" else url,
                                       proxied if side == "kv" else world.kv_url, folder))
            assert done.code == 0, done.output
            counts[path] = proxy.seen
            references[phase] = world.state(phase, url)
            assert proxy.seen > 0, path
            world.dbs.drop(url)
            shutil.rmtree(folder, ignore_errors=True)
            url, folder = world.fresh(phase)
            proxy.seen = 0
        proxy.cut_at = rng.randint(1, counts[path])
        done = run.run(*world.argv(phase, proxied if side == "pg" else url,
                                   proxied if side == "kv" else world.kv_url, folder))
        assert done.code in (0, 3), done.output
        assert "Traceback" not in done.output and "error: unexpected" not in done.output, done.output
    finally:
        proxy.close()
    wait_backends_gone(url)
    tally.rounds += 1
    tally.by_path[f"{phase}/{side}"] = tally.by_path.get(f"{phase}/{side}", 0) + 1
    if done.code == 3:
        tally.stopped += 1
        run_until_ok(run, world.argv(phase, url, world.kv_url, folder))
    else:
        tally.resent += 1
    state = world.state(phase, url)
    reference = references[phase]
    lost, doubled = lost_and_doubled(reference["kv"], state["kv"])
    tally.keys_lost += lost + len(set(state["kv"]) - set(reference["kv"]))
    tally.keys_doubled += doubled
    assert not any(k.startswith(TEMP) for k in state["kv"])
    if phase == "cleanup":  # every key gone is in the manifest-covered archive, with its value
        lines = archived(folder)
        assert all(lines.get(k) == world.keyspace[k] for k in set(world.keyspace) - set(state["kv"]))
    assert state == reference, (path, proxy.cut_at, {k: _delta(reference[k], state.get(k)) for k in reference
                                                     if state.get(k) != reference[k]})
    world.dbs.drop(url)
    shutil.rmtree(folder, ignore_errors=True)


def _delta(want: Any, got: Any) -> Any:
    if isinstance(want, list) and isinstance(got, list):
        return {"missing": [x for x in want if x not in got][:5], "unexpected": [x for x in got if x not in want][:5]}
    return (want, got)


@pytest.mark.slow
@stress
def test_stress_a_lost_reply_on_every_write_path_reruns_to_a_clean_runs_state(
        kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    world = make_world(kv_url, kv, databases, tmp_path)
    references: dict[str, dict[str, Any]] = {}
    counts: dict[tuple[str, str], int] = {}
    tally = Lost()
    started = time.monotonic()
    try:
        for n in range(ITERATIONS):
            path = PATHS[n % len(PATHS)]
            lost_reply_round(world, runner, references, counts, path, random.Random(f"{SEED}:lost:{n}"), tally)
    finally:
        shutil.rmtree(world.folder, ignore_errors=True)
    note(request, tally.line() + f", {time.monotonic() - started:.0f} s")
    assert (tally.keys_lost, tally.keys_doubled) == (0, 0)


# --------------------------------------------------------------------------- wiped store


@dataclass
class Wiped:
    rounds: int = 0
    by_phase: dict[str, dict[int, int]] = field(default_factory=dict)  # phase → exit code → runs
    rows_lost: int = 0
    repairs_refused: int = 0  # the `verify --repair` after the wipe refused the shrunk store
    deleted: int = 0
    restored: int = 0
    unrestorable: int = 0

    def line(self) -> str:
        ends = "; ".join(f"{p}: " + ", ".join(f"exit {c} ×{n}" for c, n in sorted(codes.items()))
                         for p, codes in sorted(self.by_phase.items()))
        return (f"store wiped: {self.rounds} ({ends}); the repair after it refused {self.repairs_refused}; "
                f"Postgres rows that lost something {self.rows_lost}; "
                f"keys deleted by cleanup {self.deleted}, restored {self.restored}, not restorable {self.unrestorable}")


def app_rows(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every app row as JSON, by (table, row's first column)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with psycopg.connect(url) as conn:
        for table in APP_TABLES:
            for pk, row in conn.execute(f"SELECT (to_jsonb(t) -> (SELECT attname FROM pg_attribute"  # noqa: S608
                                        f" WHERE attrelid = '{table}'::regclass AND attnum = 1))::text,"
                                        f" to_jsonb(t) FROM {table} t").fetchall():
                out[(table, pk)] = row
    return out


def wipe_during(child: Any, kv: redis.Redis, seconds: float) -> bool:
    """FLUSHDB `seconds` after the child started (or once it ended, if sooner). True when the
    child was still running."""
    while child.running() and child.elapsed() < seconds:
        time.sleep(0.003)
    running = child.running()
    kv.flushdb()
    return running


def wiped_round(world: World, run: Launcher, durations: dict[str, float], phase: str, rng: random.Random,
                tally: Wiped) -> None:
    url, folder = world.fresh(phase)
    if phase not in durations:  # a clean run: how long the phase takes
        done = run.run(*world.argv(phase, url, world.kv_url, folder))
        assert done.code == 0, done.output
        durations[phase] = done.seconds
        world.dbs.drop(url)
        shutil.rmtree(folder, ignore_errors=True)
        url, folder = world.fresh(phase)
    before = app_rows(url)
    child = run.cli(*world.argv(phase, url, world.kv_url, folder))
    mid_run = wipe_during(child, world.kv, rng.uniform(0.0, durations[phase]))
    done = child.finish()
    wait_backends_gone(url)
    assert done.code in (0, 1, 3), done.output
    assert "Traceback" not in done.output and "error: unexpected" not in done.output, done.output
    tally.rounds += 1
    codes = tally.by_phase.setdefault(phase + (" mid-run" if mid_run else " just after"), {})
    codes[done.code] = codes.get(done.code, 0) + 1
    # the runbook's next step on a store that lost its keys must not take anything from Postgres
    follow = run.run(*world.argv("repair", url, world.kv_url, folder))
    assert follow.code in (0, 1), follow.output
    tally.repairs_refused += "KV holds" in follow.output
    after = app_rows(url)
    lost = [(k, row_losses(v, after.get(k) or {})) for k, v in before.items() if row_losses(v, after.get(k) or {})]
    tally.rows_lost += len(lost)
    assert not lost, lost[:3]
    restorable(world, run, url, folder, tally)
    world.dbs.drop(url)
    shutil.rmtree(folder, ignore_errors=True)


def restorable(world: World, run: Launcher, url: str, folder: Path, tally: Wiped) -> None:
    """Every key the ledger records as deleted is in the archive with its seeded value, and a
    restore into the wiped store puts each back as it was."""
    with psycopg.connect(url) as conn:
        deleted = {k.encode("utf-8", "surrogateescape") for (k,) in conn.execute(
            "SELECT DISTINCT key FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL").fetchall()}
    if not deleted:
        return
    tally.deleted += len(deleted)
    lines = archived(folder)
    missing = [k for k in deleted if lines.get(k) != world.keyspace.get(k)]
    tally.unrestorable += len(missing)
    assert not missing, missing[:5]
    done = run.run("--json", "--pg-url", url, "--kv-url", world.kv_url, "restore", str(folder), "--yes", "--force")
    assert done.code == 0, done.output
    now = kv_state(world.kv, skip=FLAGS)
    back = [k for k in deleted if now.get(k) == world.keyspace[k]]
    tally.restored += len(back)
    assert len(back) == len(deleted), sorted(deleted - set(back))[:5]


@pytest.mark.slow
@stress
def test_stress_a_store_wiped_in_each_phase_loses_nothing_and_every_deleted_key_is_restorable(
        kv_url: str, kv: redis.Redis, databases: Databases, runner: Launcher, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    world = make_world(kv_url, kv, databases, tmp_path)
    durations: dict[str, float] = {}
    tally = Wiped()
    started = time.monotonic()
    try:
        for n in range(ITERATIONS):
            phase = WIPED_PHASES[n % len(WIPED_PHASES)]
            wiped_round(world, runner, durations, phase, random.Random(f"{SEED}:wiped:{n}"), tally)
    finally:
        shutil.rmtree(world.folder, ignore_errors=True)
    note(request, tally.line() + f", {time.monotonic() - started:.0f} s")
    assert (tally.rows_lost, tally.unrestorable) == (0, 0)

