"""Friends: `friends:{h}` sets to one `friendships` row per unordered pair, an asymmetric pair
kept as one-sided, item rejects, and the whole path on real servers (backfill, verify clean,
cleanup)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import redis

from kvmigrate import api as commands
from kvmigrate.entities.friends import FRIENDS, combine
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, SourcedRow
from tests.helpers import cleanup_entity


def _friends(handle: str, members: list[bytes]) -> Outcome:
    return FRIENDS.transform(RawRecord(f"friends:{handle}", "set", members, "", "friends"))


def test_each_member_is_one_pair_ordered_by_handle_and_listed_by_the_key() -> None:
    out = _friends("bob", [b"alice", b"@Carol", b"ops-agent"])
    assert [r.values for r in out.rows] == [
        {"id": "alice:bob", "handle_a": "alice", "handle_b": "bob", "mutual": False, "listed_by": ["bob"]},
        {"id": "bob:carol", "handle_a": "bob", "handle_b": "carol", "mutual": False, "listed_by": ["bob"]},
        {"id": "bob:ops_agent", "handle_a": "bob", "handle_b": "ops_agent", "mutual": False, "listed_by": ["bob"]}]
    assert out.stats == {"handle_normalised": 2}


def test_bad_members_are_item_rejects_and_the_others_migrate() -> None:
    out = _friends("bob", [b"alice", b"no way", b"Bob", b"\xff"])
    assert [r.values["id"] for r in out.rows] == ["alice:bob"]
    assert sorted((label, rej.code) for label, rej in out.item_rejects) == [
        ("[Bob]", "self_friend"), ("[no way]", "invalid_handle"), ("[\ufffd]", "invalid_utf8")]


def test_a_bad_key_or_type_rejects_the_record() -> None:
    assert _friends("no way", [b"alice"]).reject.code == "invalid_handle"  # type: ignore[union-attr]
    out = FRIENDS.transform(RawRecord("friends:bob", "string", b"alice", "", "friends"))
    assert out.reject is not None and out.reject.code == "wrong_redis_type"


def test_both_sides_make_one_mutual_row_and_one_side_alone_is_not_mutual() -> None:
    sides = [SourcedRow(r.values, r.rank, key, "") for key, out in (
        ("friends:alice", _friends("alice", [b"bob"])), ("friends:bob", _friends("bob", [b"alice"])))
        for r in out.rows]
    both = combine(sides)
    assert combine(list(reversed(sides))) == both and not both.merged_away
    assert (both.row.values["mutual"], both.row.values["listed_by"]) == (True, ["alice", "bob"])
    alone = combine(sides[:1])
    assert (alone.row.values["mutual"], alone.row.values["listed_by"]) == (False, ["alice"])


def test_friends_end_to_end_backfill_verify_clean_and_cleanup(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    kv.sadd("friends:alice", "bob", "carol")
    kv.sadd("friends:bob", "alice")
    kv.sadd("friends:Carol", "dan", "carol")  # carol's own handle: an item reject; carol → alice is one-sided
    kv.set("friends:eve", "bob")
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, load_batch=1)
    commands.setup(config)
    tally = commands.backfill(config, entities=["friends"]).tallies["friends"]
    assert (tally.scanned, tally.migrated, tally.rejected, tally.item_rejects) == (4, 3, 1, 1)
    assert pg.execute("SELECT id, mutual, listed_by FROM friendships ORDER BY id").fetchall() == [
        ("alice:bob", True, ["alice", "bob"]), ("alice:carol", False, ["alice"]), ("carol:dan", False, ["carol"])]
    assert pg.execute("SELECT key, field, reason_code FROM kvmigrate.rejects ORDER BY key").fetchall() == [
        ("friends:Carol", "#[carol]", "self_friend"), ("friends:eve", "", "wrong_redis_type")]
    assert commands.backfill(config, entities=["friends"]).tallies["friends"].rows_written == 0
    check = commands.verify(config, entities=["friends"], recheck_delay=0)
    assert check.clean, check
    pg.execute("DELETE FROM friendships WHERE id = 'carol:dan'")
    pg.commit()
    lost = commands.verify(config, entities=["friends"], recheck_delay=0).entities["friends"]
    assert [(d.table, d.pk, d.key) for d in lost.missing] == [("friendships", "carol:dan", "friends:Carol")]
    commands.verify(config, entities=["friends"], repair=True, recheck_delay=0)
    assert commands.verify(config, entities=["friends"], recheck_delay=0).clean
    done = cleanup_entity(config, "friends", tmp_path / "archive")
    assert (done.deletable, done.deleted) == (3, 3), done
    assert sorted(k.decode() for k in kv.keys("*")) == ["friends:eve", "kvmigrate:flags"]
