"""A run that stops on an error ends `failed` in kvmigrate.runs with the error, and an archive
folder that cannot be written (disk full, read-only) is a clear error naming the path and what
to do (exit 2), never "unexpected OSError". The folders are small tmpfs mounts: these tests need
the right to mount (root), and skip without it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from kvmigrate.adapters.files.archive import latest_lines, read_manifest, verified_blobs
from kvmigrate.model.errors import StorageError
from kvmigrate.phases.cleanup import run_cleanup
from tests.helpers import cli
from tests.test_cleanup import prepare


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs at tmp_path/disk, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _seed(kv: redis.Redis, n: int, *, size: int = 200) -> None:
    with kv.pipeline(transaction=False) as p:
        for i in range(n):  # random text does not compress: the archive outgrows the disk
            p.hset(f"streak:u{i:04d}", mapping={"current": "1", "note": os.urandom(size).hex()})
        p.execute()


def _last_cleanup(pg: psycopg.Connection) -> tuple[str, str]:
    row = pg.execute("SELECT status, result->>'error' FROM kvmigrate.runs WHERE command = 'cleanup'"
                     " ORDER BY id DESC LIMIT 1").fetchone()
    assert row is not None
    return row[0], row[1] or ""


def test_cleanup_on_a_full_disk_fails_clearly_and_deletes_only_archived_keys(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, small_disk: Path) -> None:
    _seed(kv, 300)  # pages of 50 keys, ~20 kB of archive each: the third or so fills the disk
    config = prepare(pg_url, kv_url, scan_count=50)
    with pytest.raises(StorageError) as raised:
        run_cleanup(config, entities=["streaks"], archive_dir=small_disk / "a", yes=True)
    assert raised.value.exit_code == 2
    assert raised.value.message.startswith(f"cannot write the archive at {small_disk / 'a'}"), raised.value.message
    assert "No space left on device" in raised.value.message
    assert raised.value.hint is not None and "free space" in raised.value.hint and "--archive " not in raised.value.hint
    status, why = _last_cleanup(pg)
    assert status == "failed" and "No space left on device" in why
    left = {k.decode() for k in kv.scan_iter("streak:*", count=1000)}
    deleted = {f"streak:u{i:04d}" for i in range(300)} - left
    manifest = read_manifest(small_disk / "a")
    archived = {item.key for item in latest_lines(verified_blobs(small_disk / "a", manifest), ())}
    assert deleted and deleted <= archived, "a key was deleted without its archive line"
    assert left, "the disk filled up, yet every key was archived"


def test_cleanup_into_a_read_only_folder_names_the_path(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, small_disk: Path) -> None:
    _seed(kv, 5, size=10)
    prepare(pg_url, kv_url)
    (small_disk / "a").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    env = {"KVMIGRATE_PG_URL": pg_url, "KVMIGRATE_KV_URL": kv_url}
    out = cli("cleanup", "--entity", "streaks", "--archive-dir", str(small_disk / "a"), "--yes", "--settle", "0",
              env=env)
    assert out.exit_code == 2, out.output
    assert "cannot write the archive at " in out.stderr and "Read-only file system" in out.stderr, out.stderr
    assert "unexpected" not in out.stderr and "report it" not in out.stderr
    assert _last_cleanup(pg)[0] == "failed"
    assert len(list(kv.scan_iter("streak:*"))) == 5
