"""Values reach Postgres as the app's client reads them, never silently changed: hash strings
that look numeric stay text unless they print back as the same safe integer, whole-number
columns parse only ASCII digits exactly, JSON numbers keep every digit, and JSON nested too deep
is `too_deep` whatever its depth. Transformers directly, then end to end on real servers."""

from __future__ import annotations

from decimal import Decimal

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.pg.loader import json_dumps
from kvmigrate.adapters.pg.sources import json_loads
from kvmigrate.entities import common as c
from kvmigrate.entities.board import BOARD
from kvmigrate.entities.messages import MESSAGES
from kvmigrate.entities.streaks import STREAKS
from kvmigrate.entities.users import USERS
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord
from tests.helpers import traced_peak

#: Number-looking text the app's client (@upstash/redis) hands back as text, so it stays text.
KEPT_AS_TEXT = ["123456789012345678901234", "37.77492950000000000001", "-0", "1.50", "1.5", "1e3", "007",
                "9007199254740992", " 3", "1_0", "٣"]
EXACT_JSON = (b'{"author": "alice", "content": "hi", "timestamp": 1748736000000, "lat": 37.77492950000000000001,'
              b' "big": 123456789012345678901234, "u64": 18446744073709551616, "price": 1.50, "small": -0.0}')


def _streak(value: dict[bytes, bytes] | bytes, handle: str = "bob") -> Outcome:
    redis_type = "string" if isinstance(value, bytes) else "hash"
    return STREAKS.transform(RawRecord(f"streak:{handle}", redis_type, value, "", "streak"))


@pytest.mark.parametrize("text", KEPT_AS_TEXT)
def test_hash_text_that_is_not_a_canonical_safe_integer_stays_text(text: str) -> None:
    assert c.unjson(text) == text
    outcome = _streak({b"current": b"1", b"note": text.encode()})
    assert outcome.reject is None and outcome.rows[0].values["details"] == {"note": text}
    legacy = USERS.transform(RawRecord("user:bob", "hash", {b"score": text.encode()}, "", "legacy"))
    assert legacy.rows[0].values["settings"] == {"score": text}


def test_hash_text_that_is_json_or_a_safe_integer_is_unstringified() -> None:
    assert [c.unjson(s) for s in ("3", "-12", "0", "9007199254740991", "null", "true", '"x"')] == [
        3, -12, 0, 9007199254740991, None, True, "x"]
    assert c.unjson('{"a": 1.50, "b": 123456789012345678901234}') == {"a": Decimal("1.50"),
                                                                      "b": 123456789012345678901234}


@pytest.mark.parametrize("text", ["1_0", "٣", "３", " 3", "3.0", "+3", "0x10", "1e1", "2.5"])
def test_a_streak_counter_that_is_not_plain_ascii_digits_is_rejected_naming_key_and_field(text: str) -> None:
    outcome = _streak({b"current": text.encode(), b"longest": b"4"})
    assert outcome.rows == () and outcome.reject is not None
    assert outcome.reject.code == "wrong_type"
    assert outcome.reject.message.startswith("streak:bob: current "), outcome.reject.message
    assert repr(text) in outcome.reject.message


def test_whole_number_columns_take_exact_numbers_only() -> None:
    assert [c.integer(v) for v in ("10", "-3", "007", 4, Decimal("5.0"), None, "")] == [10, -3, 7, 4, 5, 0, 0]
    with pytest.raises(c.Bad):
        c.integer(Decimal("5.5"))
    json_shape = _streak(b'{"current": 3.0, "longest": "12", "totalDays": 1E+1}')
    assert json_shape.reject is None
    values = json_shape.rows[0].values
    assert (values["current_streak"], values["longest_streak"], values["total_days"]) == (3, 12, 10)


def test_json_numbers_keep_every_digit_as_jsonb_would() -> None:
    outcome = BOARD.transform(RawRecord("board:entry:p1", "string", EXACT_JSON, "", "entry"))
    assert outcome.reject is None, outcome.reject
    details = outcome.rows[0].values["details"]
    assert details == {"lat": Decimal("37.77492950000000000001"), "big": 123456789012345678901234,
                       "u64": 18446744073709551616, "price": Decimal("1.50"), "small": Decimal("-0.0")}
    assert json_dumps(details) == (b'{"lat":37.77492950000000000001,"big":123456789012345678901234,'
                                   b'"u64":18446744073709551616,"price":1.50,"small":-0.0}')


def test_numeric_timestamps_need_ascii_digits_and_parse_exactly() -> None:
    assert c.timestamp("1748736000123").isoformat() == "2025-06-01T00:00:00.123000+00:00"
    assert c.timestamp(Decimal("1748736000.0000015")).isoformat() == "2025-06-01T00:00:00.000002+00:00"
    with pytest.raises(c.Bad):
        c.timestamp("١٧٤٨٧٣٦٠٠٠١٢٣")  # Arabic-Indic digits: float() would take them


@pytest.mark.parametrize("depth", [101, 1_100, 10_000])
def test_json_nested_deeper_than_the_limit_is_too_deep_at_any_depth(depth: int) -> None:
    deep = b'{"id": "m1", "from": "alice", "to": "bob", "text": "hi", "x": ' + b"[" * depth + b"]" * depth + b"}"
    outcome = MESSAGES.transform(RawRecord("msg:m1", "string", deep, "", "msg"))
    assert outcome.reject is not None and outcome.reject.code == "too_deep", outcome.reject


def test_invalid_json_that_is_not_deep_stays_invalid_json() -> None:
    outcome = MESSAGES.transform(RawRecord("msg:m1", "string", b'{"id": "m1", "x": [[[}', "", "msg"))
    assert outcome.reject is not None and outcome.reject.code == "invalid_json"


def test_a_truncated_megabyte_of_json_is_rejected_in_bounded_memory() -> None:
    """Telling invalid JSON from JSON too deep walks the text; an unterminated string of 1 MB
    once cost the regex engine about 130 MB (the peak RSS of a whole backfill)."""
    cut = b'{"id": "m1", "from": "alice", "to": "bob", "text": "hi", "payload": {"image": "' + b"A" * 1_000_000
    outcome, peak = traced_peak(lambda: MESSAGES.transform(RawRecord("msg:m1", "string", cut, "", "msg")))
    assert outcome.reject is not None and outcome.reject.code == "invalid_json", outcome.reject
    assert peak < 30_000_000, f"peak {peak / 1e6:.0f} MB"


def test_exact_values_land_in_postgres_and_verify_stays_clean(pg_url: str, kv_url: str, kv: redis.Redis,
                                                               pg: psycopg.Connection) -> None:
    kv.hset("streak:alice", mapping={"current": "3", "longest": "9", "big": "123456789012345678901234",
                                     "lat": "37.77492950000000000001", "zero": "-0", "price": "1.50"})
    kv.hset("streak:carl", mapping={"current": "1_0"})
    kv.hset("streak:dora", mapping={"current": "٣"})
    kv.set("board:entry:p1", EXACT_JSON)
    kv.hset("user:erin", mapping={"building": "x", "prefs": '{"ratio": 0.10, "n": 123456789012345678901234}'})
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    first = commands.backfill(config)
    assert (first.tallies["streaks"].migrated, first.tallies["streaks"].rejected) == (1, 2)
    details = pg.execute("SELECT details::text FROM streaks WHERE handle = 'alice'").fetchone()
    assert details is not None and orjson.loads(details[0]) == {
        "big": "123456789012345678901234", "lat": "37.77492950000000000001", "zero": "-0", "price": "1.50"}
    rejected = pg.execute("SELECT key, reason_code, message FROM kvmigrate.rejects WHERE key LIKE 'streak:%'"
                          " ORDER BY key").fetchall()
    assert [(k, r) for k, r, _ in rejected] == [("streak:carl", "wrong_type"), ("streak:dora", "wrong_type")]
    assert all(m.startswith(f"{k}: current ") for k, _, m in rejected)
    assert pg.execute("SELECT (details->'lat')::text, (details->'big')::text, (details->'u64')::text,"
                      " (details->'price')::text FROM board_posts WHERE id = 'p1'").fetchone() == (
        "37.77492950000000000001", "123456789012345678901234", "18446744073709551616", "1.50")
    assert pg.execute("SELECT (settings->'prefs')::text FROM users WHERE handle = 'erin'").fetchone() == (
        '{"n": 123456789012345678901234, "ratio": 0.10}',)
    again = commands.backfill(config)
    assert sum(t.rows_written for t in again.tallies.values()) == 0
    result = commands.verify(config, recheck_delay=0)
    assert result.clean, result


@pytest.mark.parametrize(("text", "value"), [
    (b'{"price": 1.50, "n": 2}', {"price": Decimal("1.50"), "n": 2}),
    (b'[18446744073709551615, 18446744073709551616, -9223372036854775809]',
     [18446744073709551615, 18446744073709551616, -9223372036854775809]),
    (b'{"lat": 37.77492950000000000001, "big": 1e400}', {"lat": Decimal("37.77492950000000000001"),
                                                         "big": Decimal("1E+400")}),
    (b'{"a": [{"b": "x", "c": null, "d": true, "e": -0}]}', {"a": [{"b": "x", "c": None, "d": True, "e": 0}]}),
])
def test_jsonb_read_back_from_postgres_keeps_every_number_exact(text: bytes, value: object) -> None:
    # the stored sources of merged rows come back through this: a float or a rounded integer
    # here would make a row recomputed from them differ from the one KV gave
    got = json_loads(text)
    assert got == value
    assert repr(got) == repr(value)  # the same types and digits: Decimal("1.50") is not Decimal("1.5")
