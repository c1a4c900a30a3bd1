"""`verify --repair` never replaces a row with less than it holds without `--allow-lossy-repair`.

The F4 scenario without a wipe: after the backfill, the app (or a second codebase) rewrites a
streak key smaller, so the Postgres row holds achievements and active days KV no longer has. A
repair refuses that row (named with its key, table and what would go), counts it in the JSON,
exits 1 and leaves the row as it was; a counter that only goes down is an ordinary repair.
"""

from __future__ import annotations

import orjson
import psycopg
import redis

from kvmigrate import api as commands
from kvmigrate.engine.loss import row_losses
from kvmigrate.model.config import build_config
from tests.helpers import cli, cli_json

RICH = {"current": 7, "longest": 9, "lastActive": "2025-06-07", "badges": ["early_bird", "night_owl", "streak_7"],
        "activeDays": [f"2025-06-0{d}" for d in range(1, 8)]}
SHRUNK = {"current": 1, "longest": 9, "lastActive": "2025-06-08", "badges": ["early_bird"],
          "activeDays": ["2025-06-08"]}


def _streak(pg: psycopg.Connection, handle: str) -> tuple[object, ...] | None:
    return pg.execute("SELECT current_streak, longest_streak, total_days, achievements, details FROM streaks"
                      " WHERE handle = %s", (handle,)).fetchone()


def test_repair_refuses_a_row_its_key_now_gives_less_and_replaces_it_only_when_allowed(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    kv.set("streak:bob", orjson.dumps(RICH))
    kv.hset("streak:carol", mapping={"current": "12", "longest": "12", "totalDays": "40", "lastActive": "2025-06-07"})
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)
    commands.backfill(config)
    kv.set("streak:bob", orjson.dumps(SHRUNK))  # rewritten smaller after the backfill
    kv.hset("streak:carol", "current", "0")  # a streak reset: a counter going down is no loss
    before = _streak(pg, "bob")
    base = ("--pg-url", pg_url, "--kv-url", kv_url)

    refused = cli_json(*base, "verify", "--repair", "--recheck-delay", "0", expect=1)
    streaks = refused["result"]["entities"]["streaks"]
    assert refused["result"]["repair_refused"] == 1 and streaks["repaired"] == 1
    [row] = streaks["repair_refused"]
    assert (row["key"], row["table"], row["pk"]) == ("streak:bob", "streaks", "bob")
    assert any(p.startswith("achievements (2 of its 3 items") for p in row["lost"]), row
    assert any(p.startswith("details.activeDays (7 of its 7 items") for p in row["lost"]), row
    assert [d["pk"] for d in streaks["different"]] == ["bob"]
    assert _streak(pg, "bob") == before  # unchanged
    assert _streak(pg, "carol")[0] == 0  # type: ignore[index]

    human = cli(*base, "verify", "--repair", "--recheck-delay", "0")
    assert human.exit_code == 1, human.output
    assert "streak:bob: repair refused: it would replace streaks row 'bob' with less than it holds" in human.output
    assert "--allow-lossy-repair" in human.output

    allowed = cli_json(*base, "verify", "--repair", "--allow-lossy-repair", "--recheck-delay", "0")
    assert allowed["result"]["repair_refused"] == 0 and allowed["result"]["clean"]
    assert _streak(pg, "bob")[:4] == (1, 9, 1, ["early_bird"])  # type: ignore[index]


def test_what_counts_as_loss_values_emptied_members_or_keys_gone_not_counters_going_down() -> None:
    old = {"current_streak": 7, "name": "Bob", "achievements": ["a", "b"], "details": {"activeDays": [1, 2], "x": 1}}
    assert row_losses(old, {**old, "current_streak": 0, "name": "Robert", "achievements": ["b", "a", "c"]}) == []
    assert row_losses(old, {**old, "name": None}) == ['name ("Bob" would become null)']
    assert row_losses(old, {**old, "name": ""}) == ['name ("Bob" would become "")']
    assert row_losses(old, {**old, "achievements": ["b"]}) == ['achievements (1 of its 2 items: "a")']
    assert row_losses(old, {**old, "details": {"activeDays": [2]}}) == [
        'details (keys "x")', "details.activeDays (1 of its 2 items: 1)"]
    assert row_losses({"settings": {}}, {"settings": None}) == []  # nothing held, nothing lost
