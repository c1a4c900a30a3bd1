"""Restore under faults, against real servers: a reply lost after its round trip ran (a TCP
proxy that forwards a restore's write and cuts the connection before the reply), and restores
killed with SIGKILL at seeded moments while big lists, hashes, sets and sorted sets are being
written, then run again. After every fault the keyspace must equal the one cleanup archived,
byte for byte and with its expiry times, with no temporary key left, and the KV commands the
budget counted must be the ones the server ran."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from kvmigrate.model.budget import FREE_COMMANDS
from kvmigrate.model.config import Config, build_config
from kvmigrate.phases.cleanup import run_cleanup
from kvmigrate.phases.restore import run_restore
from tests.fixtures.faults import (
    FaultyProxy,
    Launcher,
    kill_after,
    kill_when,
    note,
    seed_world,
    wait_backends_gone,
)
from tests.test_cleanup import keyspace, same_keyspace
from tests.test_crash import cut_over
from tests.test_restore import SYNTHETIC, mark_verified, prepared

SEED = int(os.environ.get("KVMIGRATE_CRASH_SEED", "20250601"))
CI_RESTORE_KILLS = 8
#: `make stress` sets KVMIGRATE_STRESS_KILLS (100): that many restore kills instead.
RESTORE_KILLS = int(os.environ.get("KVMIGRATE_STRESS_KILLS", CI_RESTORE_KILLS))
#: Big keys of every container type, each several round trips of 1 MB (and, for the old
#: 1,000-item chunks, dozens of commands), so a kill lands inside one.
BIG = {"streak:biglist": 40_000, "streak:bighash": 25_000, "streak:bigset": 25_000, "streak:bigzset": 20_000}
TEMP = "kvmigrate:restore:*"


def seed_big(kv: redis.Redis) -> None:
    pad = "x" * 48
    p = kv.pipeline(transaction=False)
    p.rpush("streak:biglist", *[f"{i:06d}{pad}" for i in range(BIG["streak:biglist"])])
    p.hset("streak:bighash", mapping={f"f{i:06d}": f"{i}{pad}" for i in range(BIG["streak:bighash"])})
    p.sadd("streak:bigset", *[f"m{i:06d}{pad}" for i in range(BIG["streak:bigset"])])
    p.zadd("streak:bigzset", {f"z{i:06d}{pad}": i / 7 for i in range(BIG["streak:bigzset"])})
    p.execute()


def big_world(pg_url: str, kv_url: str, kv: redis.Redis, *, small: int = 0) -> Config:
    seed_big(kv)
    for i in range(small):  # what a real store is mostly made of: small keys that migrate
        kv.set(f"streak:small{i:03d}", orjson.dumps({"current": i, "longest": i, "lastActive": "2025-06-03"}))
    config = prepared(pg_url, kv_url, kv)
    mark_verified(config, tuple(BIG))
    return config


def via_proxy(kv_url: str, proxy: FaultyProxy) -> str:
    return urlsplit(kv_url)._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


def server_calls(kv: redis.Redis) -> dict[str, int]:
    """The billed commands the server ran, by name (free ones, this call's INFO among them, left out)."""
    return {name.removeprefix("cmdstat_").upper(): int(s["calls"]) for name, s in kv.info("commandstats").items()
            if name.removeprefix("cmdstat_").split("|")[0].upper() not in FREE_COMMANDS}


def test_restore_after_a_lost_reply_never_doubles_a_list_and_counts_the_resend(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = prepared(pg_url, kv_url, kv)
    before = keyspace(kv)
    assert run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True).entities["streaks"].deleted == 8
    proxy = FaultyProxy(urlsplit(kv_url).port or 6379, cut_reply_to=b"RPUSH")
    kv.config_resetstat()
    try:
        result = run_restore(build_config(pg_url=pg_url, kv_url=via_proxy(kv_url, proxy), env={}), tmp_path, yes=True)
    finally:
        proxy.close()
    calls = server_calls(kv)
    assert proxy.cuts == 1
    assert kv.lrange("streak:listy", 0, -1) == [b"b", b"a", b"b", b"\xff\x00"]
    same_keyspace(before, keyspace(kv))
    assert result.clean and result.entities["streaks"].restored == 8, result.entities
    assert result.resends == 1
    # the write ran twice on the server, and the budget says so
    assert calls["RPUSH"] == result.budget.by_command["RPUSH"] == 2
    billed = {k: v for k, v in calls.items() if k not in ("CONFIG|RESETSTAT", "INFO")}
    assert billed == dict(result.budget.by_command), (billed, result.budget.by_command)


def test_restore_after_a_lost_reply_inside_a_big_key_rebuilds_it_whole(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    config = big_world(pg_url, kv_url, kv)
    before = keyspace(kv)
    run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    assert not kv.exists(*BIG)
    proxy = FaultyProxy(urlsplit(kv_url).port or 6379, cut_reply_to=b"000020")  # inside the big list's items
    kv.config_resetstat()
    try:
        result = run_restore(build_config(pg_url=pg_url, kv_url=via_proxy(kv_url, proxy), env={}), tmp_path, yes=True)
    finally:
        proxy.close()
    calls = server_calls(kv)
    assert proxy.cuts == 1
    assert kv.llen("streak:biglist") == BIG["streak:biglist"]
    same_keyspace(before, keyspace(kv))
    assert result.clean, (result.refused, result.failed)
    assert result.resends >= 1
    # the cut round trip reached the server only in part: the budget counts it whole, never less
    spent = result.budget.by_command
    assert all(n <= spent[k] for k, n in calls.items() if k not in ("CONFIG|RESETSTAT", "INFO")), (calls, spent)
    assert 0 <= sum(spent.values()) - sum(n for k, n in calls.items() if k not in ("CONFIG|RESETSTAT", "INFO")) <= 3


# --------------------------------------------------------------------------- SIGKILL


def partial(kv: redis.Redis) -> Callable[[], bool]:
    """True once the restore has written part of a big key: a temporary key exists, or a real
    big key exists short of its length."""
    lengths = {"streak:biglist": kv.llen, "streak:bighash": kv.hlen, "streak:bigset": kv.scard,
               "streak:bigzset": kv.zcard}

    def seen() -> bool:
        if kv.keys(TEMP):
            return True
        return any(0 < lengths[k](k) < n for k, n in BIG.items())

    return seen


def back_to(kv: redis.Redis, after_cleanup: set[bytes]) -> None:
    """Delete every key the restore wrote (and its temporary keys): the keyspace cleanup left."""
    extra = [k for k in kv.scan_iter(count=1000) if k not in after_cleanup]
    if extra:
        kv.delete(*extra)


def test_restore_killed_at_seeded_moments_reruns_to_the_archived_keyspace(
        pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path, runner: Launcher,
        request: pytest.FixtureRequest) -> None:
    config = big_world(pg_url, kv_url, kv)
    before = keyspace(kv)
    folder = tmp_path / "archive"
    run_cleanup(config, entities=["streaks"], archive_dir=folder, yes=True)
    after_cleanup = set(kv.scan_iter(count=1000))
    argv = ("--pg-url", pg_url, "--kv-url", kv_url, "restore", str(folder), "--yes")
    started = time.monotonic()
    whole = runner.run(*argv)
    assert whole.code == 0, whole.output
    seconds = whole.seconds
    same_keyspace(before, keyspace(kv))
    rng = random.Random(f"{SEED}:restore")
    kills = mid_key = 0
    for n in range(RESTORE_KILLS * 3):
        if kills >= RESTORE_KILLS:
            break
        back_to(kv, after_cleanup)
        child = runner.cli(*argv)
        if n % 2:
            killed = kill_after(child, rng.uniform(0.05, 0.95) * seconds)
        else:
            killed = kill_when(child, partial(kv), poll=0.0005)
        ended = child.finish()
        assert ended.killed or ended.code == 0, ended.output
        if not ended.killed:
            continue
        assert killed
        kills += 1
        mid_key += int(partial(kv)())
        wait_backends_gone(pg_url)
        rerun = run_restore(config, folder, yes=True)
        assert rerun.clean, (rerun.refused, rerun.failed)
        same_keyspace(before, keyspace(kv))  # byte for byte, expiry included; no temporary key left
    assert kills >= RESTORE_KILLS and mid_key >= 1
    note(request, f"restore: {kills} SIGKILLs ({mid_key} inside a big key's build), every rerun equal to the "
         f"archived keyspace, {time.monotonic() - started:.0f} s")


def test_restore_spends_exactly_its_forecast(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    config = big_world(pg_url, kv_url, kv, small=300)
    cleaned = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path, yes=True)
    deleted = cleaned.entities["streaks"].deleted
    assert deleted == len(SYNTHETIC) + len(BIG) + 3 + 300
    kv.config_resetstat()
    result = run_restore(config, tmp_path, yes=True)
    calls = server_calls(kv)
    assert result.forecast is not None and result.forecast.commands == result.kv_requests
    assert {k: v for k, v in calls.items() if k not in ("CONFIG|RESETSTAT", "INFO")} == dict(result.budget.by_command)
    again = run_restore(config, tmp_path, yes=True)
    assert again.entities["streaks"].equal == deleted and again.clean
    note(request, f"restore of {deleted} keys ({len(BIG)} of them 1.3-2.6 MB): {result.kv_requests} KV commands, "
         f"{result.kv_requests / deleted:.2f} per key, forecast {result.forecast.commands}; a rerun over them in "
         f"place: {again.kv_requests} ({again.kv_requests / deleted:.2f} per key)")


def test_restore_of_the_seeded_app_keyspace_spends_its_forecast(pg_url: str, kv_url: str, kv: redis.Redis,
                                                                tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed_world(kv)
    before = keyspace(kv)
    cut_over(pg_url, kv_url)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    deleted = run_cleanup(config, archive_dir=tmp_path, yes=True).deleted
    assert deleted > 300
    kv.config_resetstat()
    result = run_restore(config, tmp_path, yes=True)
    calls = server_calls(kv)
    assert result.clean and result.forecast is not None and result.forecast.commands == result.kv_requests
    assert {k: v for k, v in calls.items() if k not in ("CONFIG|RESETSTAT", "INFO")} == dict(result.budget.by_command)
    same_keyspace(before, keyspace(kv))
    by = dict(sorted(result.budget.by_command.items()))
    note(request, f"restore of the seeded app keyspace, {deleted} keys: {result.kv_requests} KV commands, "
         f"{result.kv_requests / deleted:.2f} per key ({by})")
