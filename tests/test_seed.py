"""The seeded keyspace: deterministic, complete (every family in KV-LAYOUT.md), and its oracle
agrees with what is actually in the store."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from kvmigrate.model.errors import ConfigError
from kvmigrate.tryout.seed import SeedResult, seed_keyspace, write_memory_files
from tests.fixtures.servers import kv_url_for

#: Every family the layout document describes, as the seed labels them.
LAYOUT_FAMILIES = {
    # users
    "vibe:handles", "user:*", "vibe:agents", "vibe:users",
    # messages
    "messages:*", "thread:*", "msg:*", "inbox:*", "outbox:*", "vibe:messages", "unread:*",
    # board, streaks, invites, games
    "board:entry:*", "board:entries", "board:category:*", "board:user:*", "streak:*",
    "vibe:invites", "vibe:invites:by:*", "vibe:games",
    # consent, friends, moderation reports
    "consent:*", "consent:pending:*", "consent:accepted:*", "consent:blocked:*", "friends:*",
    "vibe:reports", "vibe:report_counts", "report:*", "reports:pending", "reports:count:*",
    # stays in KV
    "presence:data:*", "presence:index", "presence:*", "presence:active", "typing:*", "session:*",
    "session-key:*", "airc:nonce:*", "agent:rate:*", "agent:budget:*", "agent:greeted:*",
    "tip:ratelimit:*", "ratelimit:*", "observations:count:*", "observations:ratelimit:*", "invite:*",
    # unknown to kvmigrate
    "observation:*", "observations:list", "waitlist", "artifact:*", "tips:*", "webhook:*",
}
ENTITY_PATTERNS = (
    "vibe:handles", "vibe:agents", "vibe:users", "vibe:messages", "vibe:invites", "vibe:games",
    "board:entries", "vibe:invites:by:*", "user:*", "messages:*", "thread:*", "msg:*", "inbox:*",
    "outbox:*", "unread:*", "board:entry:*", "board:category:*", "board:user:*", "streak:*",
    "consent:*", "friends:*", "vibe:reports", "vibe:report_counts", "report:*", "reports:pending",
    "reports:count:*",
)
EXPIRING = ("presence:data:*", "typing:*", "session:*", "airc:nonce:*", "agent:rate:*",
            "agent:budget:*", "tip:ratelimit:*", "ratelimit:*", "observations:count:*",
            "observations:ratelimit:*", "invite:*")


def snapshot(client: redis.Redis) -> dict[bytes, tuple[str, Any, bool]]:
    """Every key: (TYPE, value, has a TTL), read without DUMP."""
    keys = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
        pipe.pttl(key)
    meta = pipe.execute()
    readers = {b"string": client.get, b"hash": client.hgetall,
               b"list": lambda k: client.lrange(k, 0, -1),
               b"set": lambda k: sorted(client.smembers(k)),
               b"zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
    return {key: (kind.decode(), readers[kind](key), ttl != -1)
            for key, kind, ttl in zip(keys, meta[::2], meta[1::2], strict=True)}


def keys_matching(client: redis.Redis, pattern: str) -> list[bytes]:
    return sorted(client.scan_iter(match=pattern, count=1000))


def loads(raw: bytes | None) -> Any:
    try:
        return orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None


@pytest.fixture
def other_kv(kv_url: str) -> Iterator[redis.Redis]:
    """A second flushed logical db, next to this test's."""
    db = int(urlsplit(kv_url).path.strip("/") or 0)
    client = redis.Redis.from_url(kv_url_for(kv_url, db % 15 + 1))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def seeded(kv: redis.Redis) -> SeedResult:
    return seed_keyspace(kv)


def test_same_seed_writes_identical_keyspaces_into_two_dbs(kv: redis.Redis, other_kv: redis.Redis) -> None:
    first = seed_keyspace(kv, users=30, seed=11)
    second = seed_keyspace(other_kv, users=30, seed=11)
    assert snapshot(kv) == snapshot(other_kv)
    assert first == second


def test_different_seed_writes_a_different_keyspace(kv: redis.Redis, other_kv: redis.Redis) -> None:
    seed_keyspace(kv, users=30, seed=11)
    seed_keyspace(other_kv, users=30, seed=12)
    assert snapshot(kv) != snapshot(other_kv)


def test_refuses_a_non_empty_db_without_force(kv: redis.Redis, kv_url: str) -> None:
    kv.set("app:key", "x")
    with pytest.raises(ConfigError) as caught:
        seed_keyspace(kv)
    db = urlsplit(kv_url).path.strip("/")
    assert f"KV db {db} is not empty (1 key)" in caught.value.message
    assert "redis://" not in caught.value.message
    assert "--force" in (caught.value.hint or "")
    assert kv.dbsize() == 1


def test_forced_reseed_replaces_keys_instead_of_appending(kv: redis.Redis, other_kv: redis.Redis) -> None:
    seed_keyspace(other_kv, users=20)
    kv.set("app:key", "x")
    seed_keyspace(kv, users=20, force=True)
    result = seed_keyspace(kv, users=20, force=True)
    after = snapshot(kv)
    assert after.pop(b"app:key") == ("string", b"x", False)
    assert after == snapshot(other_kv)
    assert result.keys_written == len(after) + 1


def test_refuses_fewer_users_than_the_minimum(kv: redis.Redis) -> None:
    with pytest.raises(ConfigError):
        seed_keyspace(kv, users=3)
    assert kv.dbsize() == 0


def test_every_layout_family_is_present_and_counted(kv: redis.Redis, seeded: SeedResult) -> None:
    assert set(seeded.by_family) == LAYOUT_FAMILIES
    assert all(n > 0 for n in seeded.by_family.values())
    assert sum(seeded.by_family.values()) == seeded.keys_written == kv.dbsize()
    assert 3000 <= seeded.keys_written <= 4000
    assert seeded.commands == seeded.keys_written + 2
    for family in ("msg:*", "board:entry:*", "streak:*", "thread:*", "consent:pending:*"):
        assert len(keys_matching(kv, family)) == seeded.by_family[family], family


def test_scale_multiplies_message_and_board_volume(kv: redis.Redis, other_kv: redis.Redis) -> None:
    one = seed_keyspace(kv, users=46, scale=1).by_family
    three = seed_keyspace(other_kv, users=46, scale=3).by_family
    assert three["msg:*"] > 2.5 * one["msg:*"]
    assert three["board:entry:*"] > 2.5 * one["board:entry:*"]
    assert three["streak:*"] == one["streak:*"]


def test_dangling_ids_are_listed_but_have_no_message(kv: redis.Redis, seeded: SeedResult) -> None:
    dangling = seeded.expected.dangling_ids
    assert len(dangling) > 20
    pipe = kv.pipeline(transaction=False)
    for mid in sorted(dangling):
        pipe.exists(f"msg:{mid}")
    assert not any(pipe.execute())
    listed: set[str] = set()
    for pattern in ("inbox:*", "outbox:*", "thread:*"):
        for key in keys_matching(kv, pattern):
            listed.update(i.decode() for i in kv.lrange(key, 0, -1) if not i.startswith(b"{"))
    assert dangling <= listed
    assert not dangling & seeded.expected.message_ids


def test_message_ids_are_every_good_message_wherever_it_is_stored(
        kv: redis.Redis, seeded: SeedResult) -> None:
    bad = {key for key, _ in seeded.expected.bad_keys}
    stored = {loads(kv.get(k))["id"] for k in keys_matching(kv, "msg:*") if k.decode() not in bad}
    oldest = {m["id"] for m in orjson.loads(kv.get("vibe:messages")) if isinstance(m, dict)}
    listed: Counter[str] = Counter()
    for pattern in ("messages:*", "thread:*"):
        for key in keys_matching(kv, pattern):
            listed.update(m["id"] for m in map(loads, kv.lrange(key, 0, -1)) if isinstance(m, dict))
    assert stored | oldest | set(listed) == seeded.expected.message_ids
    assert 1000 <= len(seeded.expected.message_ids) <= 1500
    assert oldest & stored and oldest - stored  # some copied to msg:*, some only in the array
    assert set(listed.values()) == {2}  # each in messages:{to} and again in thread:{a}:{b}
    assert all(re.fullmatch(r"\d{13}-[0-9a-z]{6}", i) for i in oldest)
    assert sum(bool(re.fullmatch(r"msg_[0-9a-z]+", i)) for i in stored) > 500


def test_board_list_is_trimmed_to_the_newest_100_of_more_entries(
        kv: redis.Redis, seeded: SeedResult) -> None:
    entries = keys_matching(kv, "board:entry:*")
    assert len(entries) == seeded.expected.board_entries >= 130
    ids = [i.decode() for i in kv.lrange("board:entries", 0, -1)]
    assert len(ids) == 100
    stamps = [loads(kv.get(f"board:entry:{i}"))["timestamp"] for i in ids]
    assert stamps == sorted(stamps, reverse=True)
    shapes = Counter("reactions" in (loads(kv.get(k)) or {}) for k in entries)
    assert shapes[True] > 20 and shapes[False] > 20  # B and A shapes


def test_streaks_invites_and_games_match_the_oracle(kv: redis.Redis, seeded: SeedResult) -> None:
    expected = seeded.expected
    bad_streaks = {k for k, _ in expected.bad_keys if k.startswith("streak:")}
    keys = {k.decode() for k in keys_matching(kv, "streak:*")}
    assert keys == {f"streak:{h}" for h in expected.streak_handles} | bad_streaks
    kinds = Counter(kv.type(f"streak:{h}") for h in expected.streak_handles)
    assert kinds[b"hash"] > 10 and kinds[b"string"] > 10
    assert {c.decode() for c in kv.hkeys("vibe:invites")} == expected.invite_codes
    indexed = set().union(*(kv.smembers(k) for k in keys_matching(kv, "vibe:invites:by:*")))
    assert {c.decode() for c in indexed} == expected.invite_codes
    games = orjson.loads(kv.get("vibe:games"))
    assert set(games) == expected.game_ids
    assert {g["type"] for g in games.values()} == {"tictactoe", "hangman", "wordassociation"}


def test_kept_and_unknown_counts_match_a_scan(kv: redis.Redis, seeded: SeedResult) -> None:
    kept: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for raw in kv.scan_iter(count=1000):
        key = raw.decode()
        if any(fnmatchcase(key, p) for p in ENTITY_PATTERNS):
            continue
        pattern = next((p for p in seeded.expected.kept if fnmatchcase(key, p)), None)
        if pattern:
            kept[pattern] += 1
        else:
            head, sep, _ = key.partition(":")
            unknown[f"{head}:*" if sep else key] += 1
    assert kept == seeded.expected.kept
    assert unknown == seeded.expected.unknown
    assert {"observation:*", "waitlist", "artifact:*"} <= set(unknown) and "invite:*" in kept
    assert not {"consent:*", "friends:*", "report:*", "reports:*"} & set(unknown)


def test_only_expiring_families_have_a_ttl(kv: redis.Redis, seeded: SeedResult) -> None:
    limits = {"presence:data:*": 300, "typing:*": 5, "session:*": 3600, "invite:*": 7 * 86400}
    for key, (_kind, _value, has_ttl) in snapshot(kv).items():
        name = key.decode()
        expiring = any(fnmatchcase(name, p) for p in EXPIRING)
        assert has_ttl == expiring, name
        limit = next((v for p, v in limits.items() if fnmatchcase(name, p)), None)
        if limit:
            assert 0 < kv.ttl(key) <= limit, name


def test_bad_records_carry_the_defects_the_oracle_names(kv: redis.Redis, seeded: SeedResult) -> None:
    expected = seeded.expected
    assert 10 <= len(expected.bad_keys) + len(expected.bad_items) <= 20
    why = {key: reason for key, reason in expected.bad_keys}
    for key, reason in why.items():
        kind, value = kv.type(key).decode(), kv.get(key) if kv.type(key) == b"string" else None
        if reason == "invalid_json":
            assert loads(value) is None, key
        elif reason == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                (value or b"").decode()
        elif reason == "nul_byte":
            assert b"\\u0000" in (value or b""), key
        elif reason == "wrong_redis_type":
            assert kind == "list", key
        elif reason == "wrong_json_type":
            assert not isinstance(loads(value), dict), key
        elif reason == "huge_value":
            assert len(value or b"") >= 1_000_000 and loads(value) is None, key
        elif reason == "bad_status":
            assert loads(value)["status"] not in ("pending", "accepted", "blocked"), key
        elif reason == "missing_field":
            assert key.startswith("report:") and not {"reported", "target"} & set(loads(value)), key
        elif reason == "invalid_handle":
            assert " " in key or b"john doe" in (value or b""), key
        else:
            assert reason in ("bad_timestamp", "wrong_type"), (key, reason)
    assert set(why.values()) >= {"invalid_json", "invalid_utf8", "nul_byte", "wrong_redis_type",
                                 "wrong_json_type", "huge_value", "invalid_handle", "bad_timestamp"}
    for key, index, reason in expected.bad_items:
        if key == "vibe:messages":
            assert orjson.loads(kv.get(key))[index] == "[object Object]"
        else:
            items = [loads(i) for i in kv.lrange(key, 0, -1)]
            assert items[index] is None and reason == "invalid_json"
            assert sum(isinstance(i, dict) for i in items) >= 3, key


def test_legacy_and_odd_shapes_are_all_there(kv: redis.Redis, seeded: SeedResult) -> None:
    registry = {k.decode(): orjson.loads(v) for k, v in kv.hgetall("vibe:handles").items()}
    legacy = {k.decode()[5:] for k in keys_matching(kv, "user:*")}
    agents = {k.decode(): orjson.loads(v) for k, v in kv.hgetall("vibe:agents").items()}
    assert "ops_agent" in registry and kv.exists("messages:ops-agent", "inbox:ops-agent") == 2
    assert "@Nova" in legacy and "nova" in registry and len(set(registry) & legacy) >= 3
    inviters = {r["invited_by"] for r in registry.values() if "invited_by" in r}
    assert inviters - set(registry) - legacy - set(agents)  # an inviter with no record
    assert all(len(a["api_key_hash"]) == 64 for a in agents.values()) and set(agents) - set(registry)
    legacy_values = [kv.hgetall(k) for k in keys_matching(kv, "user:*")]
    assert any(b"recoveryKey" in v for v in legacy_values)
    assert any(v.get(b"invitedBy") == b"null" for v in legacy_values)
    inbox = [loads(i) for k in keys_matching(kv, "messages:*") for i in kv.lrange(k, 0, -1)]
    assert any("text" in m for m in inbox if m) and any("body" in m for m in inbox if m)
    assert any(m["from"] == "@Nova" for m in inbox if m)
    assert {kv.type(k) for k in keys_matching(kv, "presence:*")} >= {b"hash", b"string", b"zset"}


def test_dm_games_end_with_a_winner_or_a_draw(kv: redis.Redis, seeded: SeedResult) -> None:
    bad = {key for key, _ in seeded.expected.bad_keys}
    msgs = [loads(kv.get(k)) for k in keys_matching(kv, "msg:*") if k.decode() not in bad]
    payloads = [m["payload"] for m in msgs if "payload" in m]
    finals = [p["state"] for p in payloads if p["type"] == "game" and p["state"].get("gameOver")]
    assert {p["game"] for p in payloads if p["type"] == "game"} == {"tictactoe", "chess"}
    assert any(f["winner"] for f in finals) and any(f["isDraw"] for f in finals)
    assert any(p["type"] == "handshake" for p in payloads)
    assert any(m.get("system") for m in msgs) and any("signature" in m for m in msgs)


def test_memory_files_are_deterministic_and_match_their_oracle(tmp_path: Path) -> None:
    first = write_memory_files(tmp_path / "a", seed=3)
    again = write_memory_files(tmp_path / "b", seed=3)
    other = write_memory_files(tmp_path / "c", seed=4)
    assert first == again and first.ids != other.ids
    ids: set[str] = set()
    bad: list[tuple[str, int]] = []
    for name in first.files:
        content = (tmp_path / "a" / name).read_bytes()
        assert content == (tmp_path / "b" / name).read_bytes()
        assert re.fullmatch(r"thread_[a-z0-9_]+\.jsonl", name)
        for number, line in enumerate(content.splitlines(), start=1):
            memory = loads(line)
            if memory is None:
                bad.append((name, number))
            else:
                assert set(memory) >= {"id", "timestamp", "observation", "from", "about"}
                ids.add(memory["id"])
    assert ids == first.ids and len(ids) >= 20
    assert tuple(bad) == first.bad_lines and len(bad) == 1


def test_now_only_changes_expiring_and_presence_keys(kv: redis.Redis, other_kv: redis.Redis) -> None:
    seed_keyspace(kv, users=20)
    seed_keyspace(other_kv, users=20, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    before, after = snapshot(kv), snapshot(other_kv)
    changed = {k.decode() for k in before.keys() ^ after.keys()}
    changed |= {k.decode() for k in before.keys() & after.keys() if before[k] != after[k]}
    assert changed
    assert all(any(fnmatchcase(k, p) for p in (*EXPIRING, "presence:*")) for k in changed), changed


def test_consent_friends_and_reports_match_the_oracle(kv: redis.Redis, seeded: SeedResult) -> None:
    expected = seeded.expected
    bad = {key for key, _ in expected.bad_keys}

    def canon(h: str) -> str:
        return h.lower().lstrip("@").replace("-", "_")

    pairs = {":".join(canon(h) for h in k.decode().split(":")[1:]) for k in keys_matching(kv, "consent:*")
             if kv.type(k) == b"string" and k.decode() not in bad}
    for state in ("pending", "accepted", "blocked"):
        for key in keys_matching(kv, f"consent:{state}:*"):
            pairs |= {f"{canon(m.decode())}:{canon(key.decode().split(':', 2)[2])}" for m in kv.smembers(key)}
    assert pairs == expected.connection_ids and len(pairs) > 40
    records = [loads(kv.get(k)) for k in keys_matching(kv, "consent:*") if kv.type(k) == b"string"]
    assert {r["status"] for r in records} == {"pending", "accepted", "blocked", "maybe"}
    assert any(r.get("grandfathered") for r in records) and any("message" in r for r in records)
    assert any(k.decode().split(":")[1][:1].isupper() for k in keys_matching(kv, "consent:*"))  # a colliding key
    sides = {(k.decode()[8:], m.decode()) for k in keys_matching(kv, "friends:*") for m in kv.smembers(k)}
    assert {":".join(sorted(p)) for p in sides} == expected.friendship_ids
    assert any((b, a) not in sides for a, b in sides) and sum((b, a) in sides for a, b in sides) > 20
    a_ids = {f.decode() for f in kv.hkeys("vibe:reports")}
    b_ids = {k.decode()[7:] for k in keys_matching(kv, "report:*") if k.decode() not in bad}
    assert a_ids | b_ids == expected.report_ids and a_ids and b_ids
    counts = {h.decode(): int(n) for h, n in kv.hgetall("vibe:report_counts").items()}
    reported = [orjson.loads(v)["reported"] for v in kv.hvals("vibe:reports")]
    assert counts == {h: reported.count(h) for h in reported}  # the counter is derived from the reports
    assert set(kv.lrange("reports:pending", 0, -1)) >= {f"report:{i}"[7:].encode() for i in b_ids
                                                        if loads(kv.get(f"report:{i}"))["status"] == "pending"}
