"""Board posts: both entry shapes to exact rows, every reject, and entries beyond the trimmed
`board:entries` list landing in Postgres."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.entities.board import BOARD
from kvmigrate.entities.common import MAX_VALUE_BYTES
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, Row

T0_MS = 1750000000000
T0 = datetime(2025, 6, 15, 15, 6, 40, tzinfo=timezone.utc)


def _entry(key_id: str, value: bytes | dict[bytes, bytes]) -> Outcome:
    redis_type = "string" if isinstance(value, bytes) else "hash"
    return BOARD.transform(RawRecord(f"board:entry:{key_id}", redis_type, value, "", "entry"))


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_codebase_a_entry_becomes_one_exact_row() -> None:
    value = {"id": "entry_1750000000000_9f3a", "author": "alice", "content": "shipped the inbox",
             "category": "shipped", "tags": ["mcp", "inbox"], "timestamp": T0_MS}
    outcome = _entry("entry_1750000000000_9f3a", _json(value))
    assert outcome == Outcome(rows=(Row("board_posts", {
        "id": "entry_1750000000000_9f3a", "author": "alice", "content": "shipped the inbox",
        "category": "shipped", "tags": ["mcp", "inbox"], "details": {}, "created_at": T0}, 10),))


def test_codebase_b_entry_keeps_reactions_and_comments_in_details() -> None:
    comments = [{"handle": "bob", "text": "nice", "timestamp": T0_MS + 1}]
    value = {"id": "idea_1750000000000_x7k2", "author": "@Bob", "category": "idea", "content": "a game night",
             "tags": [], "timestamp": T0_MS, "reactions": {"fire": ["carol"]}, "comments": comments}
    outcome = _entry("idea_1750000000000_x7k2", _json(value))
    assert outcome == Outcome(rows=(Row("board_posts", {
        "id": "idea_1750000000000_x7k2", "author": "bob", "content": "a game night", "category": "idea",
        "tags": [], "details": {"reactions": {"fire": ["carol"]}, "comments": comments},
        "created_at": T0}, 10),), stats={"handle_normalised": 1})


def test_missing_category_tags_and_time_take_their_defaults() -> None:
    outcome = _entry("entry_1", _json({"author": "alice", "content": "hi", "category": None}))
    assert outcome.rows[0].values == {"id": "entry_1", "author": "alice", "content": "hi",
                                      "category": "general", "tags": [], "details": {}, "created_at": None}


def test_the_key_is_the_id_and_a_different_value_id_is_kept_in_details() -> None:
    value = {"id": "entry_old", "author": "alice", "content": "hi", "timestamp": T0_MS}
    outcome = _entry("entry_2", _json(value))
    assert outcome.rows[0].values["id"] == "entry_2"
    assert outcome.rows[0].values["details"] == {"id": "entry_old"}


def test_created_at_falls_back_to_created_at_field() -> None:
    value = {"author": "alice", "content": "hi", "createdAt": "2025-06-15T15:06:40Z"}
    outcome = _entry("entry_3", _json(value))
    assert outcome.rows[0].values["created_at"] == T0
    assert outcome.rows[0].values["details"] == {}


def test_timestamp_wins_over_created_at_which_is_kept() -> None:
    outcome = _entry("entry_4", _json({"author": "alice", "content": "hi", "timestamp": T0_MS,
                                       "createdAt": "2020-01-01T00:00:00Z"}))
    assert outcome.rows[0].values["created_at"] == T0
    assert outcome.rows[0].values["details"] == {"createdAt": "2020-01-01T00:00:00Z"}


def test_comma_separated_tags_string_is_split_and_counted() -> None:
    outcome = _entry("entry_5", _json({"author": "alice", "content": "hi", "tags": " rust, mcp ,,cli "}))
    assert outcome.rows[0].values["tags"] == ["rust", "mcp", "cli"]
    assert outcome.stats == {"tags_split": 1}


@pytest.mark.parametrize("family", ["entries", "category", "by_user"])
def test_id_lists_are_indexes_that_migrate_with_zero_rows(family: str) -> None:
    key = {"entries": "board:entries", "category": "board:category:idea",
           "by_user": "board:user:alice"}[family]
    outcome = BOARD.transform(RawRecord(key, "list", [b"entry_1", b"entry_2"], "", family))
    assert outcome == Outcome()


GOOD = {"author": "alice", "content": "hi"}


@pytest.mark.parametrize(("key_id", "value", "code"), [
    ("e", b"\xff\xfe", "invalid_utf8"),
    ("e", b'{"author": "alice", "content": "a\x00b"}', "nul_byte"),
    ("e", _json({**GOOD, "content": "a\u0000b"}), "nul_byte"),
    ("e", b"x" * (MAX_VALUE_BYTES + 1), "too_large"),
    ("e", b"{not json", "invalid_json"),
    ("e", b'["a list"]', "wrong_json_type"),
    ("e", _json({**GOOD, "author": "no spaces allowed"}), "invalid_handle"),
    ("e", _json({**GOOD, "author": 42}), "invalid_handle"),
    ("e", _json({**GOOD, "timestamp": "yesterday"}), "bad_timestamp"),
    ("e", _json({**GOOD, "timestamp": 1}), "bad_timestamp"),
    ("e", _json({**GOOD, "tags": [1, 2]}), "wrong_type"),
    ("e", _json({**GOOD, "tags": {"a": 1}}), "wrong_type"),
    ("e", _json({**GOOD, "content": 42}), "wrong_type"),
    ("e", _json({**GOOD, "category": ["idea"]}), "wrong_type"),
    ("e", _json({"content": "hi"}), "missing_field"),
    ("e", _json({"author": "alice", "content": ""}), "missing_field"),
    ("", _json(GOOD), "missing_field"),
])
def test_bad_entry_is_rejected_with_a_stable_code_and_its_key(key_id: str, value: bytes, code: str) -> None:
    outcome = _entry(key_id, value)
    assert outcome.rows == ()
    assert outcome.reject is not None
    assert outcome.reject.code == code, outcome.reject.message
    assert outcome.reject.message.startswith(f"board:entry:{key_id}")


def test_entry_of_another_redis_type_is_rejected() -> None:
    outcome = _entry("e", {b"author": b"alice", b"content": b"hi"})
    assert outcome.reject is not None and outcome.reject.code == "wrong_redis_type"


# ---- end to end, on real servers ---------------------------------------------------------------


def _seed_board(kv: redis.Redis, count: int) -> list[str]:
    """Write `count` entries the way the app does: newest first in a list trimmed to 100."""
    ids = []
    for i in range(count):
        entry_id = f"entry_{T0_MS + i}_{i:04x}"
        ids.append(entry_id)
        kv.set(f"board:entry:{entry_id}", _json({
            "id": entry_id, "author": f"user{i % 3}", "content": f"post {i}", "category": "general",
            "tags": [f"t{i}"], "timestamp": T0_MS + i}))
        kv.lpush("board:entries", entry_id)
        kv.lpush(f"board:user:user{i % 3}", entry_id)
    kv.ltrim("board:entries", 0, 99)
    return ids


def test_entries_beyond_the_trimmed_list_all_land(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    ids = _seed_board(kv, 150)
    assert kv.llen("board:entries") == 100
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    result = commands.backfill(config, entities=["board"])
    tally = result.tallies["board"]
    assert (tally.scanned, tally.migrated, tally.rejected, tally.rows_written) == (154, 154, 0, 150)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id FROM board_posts ORDER BY created_at").fetchall()
        assert [r[0] for r in rows] == ids
        oldest = conn.execute("SELECT * FROM board_posts WHERE id = %s", (ids[0],)).fetchone()
        users = conn.execute("SELECT handle FROM users ORDER BY handle").fetchall()
    assert oldest == (ids[0], "user0", "post 0", "general", ["t0"], {}, T0)
    assert users == [("user0",), ("user1",), ("user2",)]
    assert commands.backfill(config, entities=["board"]).tallies["board"].rows_written == 0
