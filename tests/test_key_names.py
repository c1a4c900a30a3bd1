"""Key and field names Postgres cannot store (a NUL byte, bytes that are not UTF-8) are rejected
as `invalid_key` under an escaped name, and every later command accounts for them by that same
name: cleanup neither crashes on them nor deletes them, and every rendering (JSON and human)
shows them escaped instead of failing on the raw name."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import redis

from kvmigrate import api as commands
from kvmigrate.model.config import build_config
from kvmigrate.phases.cleanup import run_cleanup
from tests.helpers import cli
from tests.test_cleanup import prepare

NUL_KEY, NUL_NAME = b"streak:a\x00b", "streak:a\\x00b"
LATIN1_KEY, LATIN1_NAME = b"streak:caf\xe9", "streak:caf\\xe9"


def _seed(kv: redis.Redis, *, nul: bool = True) -> None:
    kv.hset("streak:alice", mapping={"current": "3", "longest": "9"})
    if nul:
        kv.set(NUL_KEY, b'{"current": 1}')
    kv.set(LATIN1_KEY, b'{"current": 2}')
    kv.hset("vibe:handles", mapping={"alice": b'{"handle": "alice"}', b"b\xffob": b'{"handle": "bob"}'})


def test_cleanup_keeps_a_key_with_a_nul_byte_and_deletes_the_verified_ones(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    _seed(kv)
    config = prepare(pg_url, kv_url)
    assert pg.execute("SELECT key, reason_code FROM kvmigrate.rejects WHERE entity = 'streaks' ORDER BY key"
                      ).fetchall() == [(NUL_NAME, "invalid_key"), (LATIN1_NAME, "invalid_key")]
    result = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "archive", yes=True)
    assert result.complete
    streaks = result.entities["streaks"]
    assert (streaks.candidates, streaks.deleted) == (3, 1)
    assert sorted(streaks.kept["rejected"].examples) == [NUL_NAME, LATIN1_NAME]
    assert kv.exists(NUL_KEY) and kv.exists(LATIN1_KEY) and not kv.exists("streak:alice")
    assert pg.execute("SELECT key FROM kvmigrate.ledger WHERE deleted_at IS NOT NULL").fetchall() == [
        ("streak:alice",)]
    assert pg.execute("SELECT status FROM kvmigrate.runs WHERE id = %s", (result.run_id,)).fetchone() == ("ok",)
    again = run_cleanup(config, entities=["streaks"], archive_dir=tmp_path / "archive", yes=True)
    assert again.complete and again.deleted == 0 and kv.exists(NUL_KEY)


def test_cleanup_json_names_kept_keys_that_are_not_utf8_escaped(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    _seed(kv, nul=False)  # the name that is not UTF-8 alone: cleanup's work done, then its report
    prepare(pg_url, kv_url)
    env = {"KVMIGRATE_PG_URL": pg_url, "KVMIGRATE_KV_URL": kv_url}
    out = cli("--json", "cleanup", "--entity", "streaks", "--archive-dir", str(tmp_path / "a"), "--yes",
              "--settle", "0", env=env)
    assert out.exit_code == 0, out.output
    body = orjson.loads(out.stdout)
    cleaned = body["result"]["cleanup"]
    assert body["ok"] and cleaned["deleted"] == 1
    assert cleaned["entities"]["streaks"]["kept"]["rejected"]["examples"] == [LATIN1_NAME]
    human = cli("cleanup", "--entity", "streaks", "--archive-dir", str(tmp_path / "b"), "--yes", "--settle", "0",
                env=env)
    assert human.exit_code == 0, human.output
    assert LATIN1_NAME in human.stdout


def test_every_json_report_names_undecodable_keys_escaped(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    _seed(kv)
    kv.set(b"waitlist:\xff\xfe", b"x")  # an unknown family: inventory shows it as an example
    kv.set(b"presence:z\x00", b"x")  # kept by policy
    env = {"KVMIGRATE_PG_URL": pg_url, "KVMIGRATE_KV_URL": kv_url}
    commands.setup(build_config(pg_url=pg_url, kv_url=kv_url, env={}))
    for args in (("inventory",), ("backfill",), ("verify", "--recheck-delay", "0"), ("rejects",), ("status",),
                 ("plan",)):
        out = cli("--json", *args, env=env)
        assert out.stdout, (args, out.output)
        body = orjson.loads(out.stdout)
        assert "error" not in body, (args, body.get("error"))
        assert "\\udc" not in out.stdout, (args, "a raw surrogate escape reached the JSON")
    rejects = orjson.loads(cli("--json", "rejects", env=env).stdout)["result"]
    assert {LATIN1_NAME, NUL_NAME} <= {r["key"] for r in rejects["rejects"]}
