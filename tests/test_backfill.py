"""Backfill against real servers: accounting, idempotence, budget stop + resume, dry run,
policy keys never touched, bad values rejected with their reason."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.pg import state
from kvmigrate.engine.batch import Batch
from kvmigrate.engine.writer import BatchWriter
from kvmigrate.entities import ENTITIES
from kvmigrate.model.config import build_config
from kvmigrate.model.errors import BudgetTooSmall
from kvmigrate.model.records import RawRecord
from tests.fixtures.data import (
    MIXED_KEPT,
    MIXED_REJECTS,
    MIXED_UNKNOWN,
    dump_tables,
    mixed_keyspace,
)
from tests.helpers import cli, cli_json


def _setup(pg_url: str) -> None:
    commands.setup(build_config(pg_url=pg_url, env={}))


def _backfill_json(pg_url: str, kv_url: str, *args: str, expect: int = 0) -> dict:
    return cli_json("--pg-url", pg_url, "--kv-url", kv_url, "backfill", *args, expect=expect)


def test_every_key_ends_in_exactly_one_bucket(pg_url: str, kv_url: str, kv: redis.Redis,
                                              pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    result = _backfill_json(pg_url, kv_url)["result"]
    for name, t in result["entities"].items():
        assert t["scanned"] == t["migrated"] + t["rejected"] + t["kept"] + t["unknown"], name
    statuses = dict(pg.execute("SELECT key, min(status) FROM kvmigrate.ledger GROUP BY key").fetchall())
    assert set(statuses) == {k.decode() for k in kv.keys("*")}
    assert {k: statuses[k] for k in MIXED_REJECTS} == dict.fromkeys(MIXED_REJECTS, "rejected")
    assert {statuses[k] for k in MIXED_KEPT} == {"kept"}
    assert {statuses[k] for k in MIXED_UNKNOWN} == {"unknown"}
    scanned = sum(t["scanned"] for t in result["entities"].values())
    assert scanned == pg.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone()[0]
    assert result["unknown_patterns"]["artifact:*"] == {"keys": 1, "example": "artifact:art_1"}


def test_rerun_over_unchanged_data_writes_zero_rows(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    first = _backfill_json(pg_url, kv_url)["result"]
    assert sum(t["rows_written"] for t in first["entities"].values()) > 40
    second = _backfill_json(pg_url, kv_url)["result"]
    assert {n: t["rows_written"] for n, t in second["entities"].items()} == dict.fromkeys(second["entities"], 0)


def test_changed_kv_value_is_copied_on_the_next_run(pg_url: str, kv_url: str, kv: redis.Redis,
                                                    pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)
    kv.hset("streak:alice", "current", "9")
    result = _backfill_json(pg_url, kv_url)["result"]
    assert result["entities"]["streaks"]["rows_written"] == 1
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (9,)


def test_max_requests_stops_with_exit_4_and_resume_matches_an_uninterrupted_run(
        pg_url: str, kv_url: str, kv: redis.Redis, new_pg_url: Callable[[], str]) -> None:
    mixed_keyspace(kv, board_posts=120)
    _setup(pg_url)
    stops = 0
    while True:
        # 8 covers the costliest page: connecting (PING, SELECT), INFO, DBSIZE, then SCAN, one
        # EVAL and an HSCAN for each of the two registry hashes, when SCAN returns both together.
        run = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "backfill", "--batch-size", "10",
                  "--max-requests", "8")
        if run.exit_code == 0:
            break
        assert run.exit_code == 4, run.output
        assert "run the same command again" in run.output
        stops += 1
        assert stops < 100
    assert stops >= 3
    print("STOPS", stops)
    with psycopg.connect(pg_url) as conn:
        resumed = dump_tables(conn)
    other = new_pg_url()  # the same keyspace, migrated in one go into a second database
    _setup(other)
    _backfill_json(other, kv_url, "--batch-size", "10")
    with psycopg.connect(other) as conn:
        straight = dump_tables(conn)
    assert resumed == straight


def test_a_cap_too_small_for_one_page_exits_2_instead_of_stopping_at_the_same_place_forever(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    for _ in range(2):  # the same answer every time: nothing was committed to resume from
        error = _backfill_json(pg_url, kv_url, "--max-requests", "5", expect=2)["error"]
        assert error["message"].startswith("--max-requests 5 is too small to make progress: this run committed no page")
        assert error["hint"].startswith("raise --max-requests")
    assert pg.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone() == (0,)
    assert pg.execute("SELECT status FROM kvmigrate.runs").fetchall() == [("stopped",), ("stopped",)]
    assert cli("--pg-url", pg_url, "--kv-url", kv_url, "backfill", "--max-requests", "50").exit_code == 0


def test_dry_run_reads_everything_and_writes_nothing(pg_url: str, kv_url: str, kv: redis.Redis,
                                                     pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    before = dump_tables(pg)
    runs = pg.execute("SELECT count(*) FROM kvmigrate.runs").fetchone()
    result = _backfill_json(pg_url, kv_url, "--dry-run")["result"]
    assert result["dry_run"] is True
    assert result["entities"]["streaks"]["rejected"] == 2
    assert result["entities"]["board"]["migrated"] == 41 + 1  # 40 posts + big + the list
    assert dump_tables(pg) == before
    assert pg.execute("SELECT count(*) FROM kvmigrate.runs").fetchone() == runs


def test_policy_keys_are_never_read_nor_written(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    ttl_before = {k: kv.pttl(k) for k in MIXED_KEPT}
    time.sleep(2.1)  # OBJECT IDLETIME has 1 s resolution; any read resets it
    _backfill_json(pg_url, kv_url)
    for key in (*MIXED_KEPT, *MIXED_UNKNOWN):
        assert kv.object("idletime", key) >= 2, f"{key} was read"
    for key, ttl in ttl_before.items():
        assert ttl == -1 or 0 < kv.pttl(key) <= ttl, key


def test_bad_values_are_rejected_with_their_reason_and_original_value(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)
    rejects = {k: (code, msg, raw, enc) for k, code, msg, raw, enc in pg.execute(
        "SELECT key, reason_code, message, raw_value, raw_encoding FROM kvmigrate.rejects")}
    assert {k: v[0] for k, v in rejects.items()} == MIXED_REJECTS
    for key, (_, message, _, _) in rejects.items():
        assert message.startswith(key), message
    assert rejects["board:entry:latin1"][2:] == ("eyJhdXRob3IiOiAiYWxpY2UiLCAiY29udGVudCI6ICJjYWbpIn0=", "base64")
    assert rejects["board:entry:broken"][2:] == ('{"author": "alice", "content": ', "utf8")
    assert rejects["streak:listy"][2:] == ('["3"]', "json")  # a list, as lossless JSON
    # a 1 MB value is well within the documented 5 MB limit: it migrates
    assert pg.execute("SELECT length(content) FROM board_posts WHERE id = 'big'").fetchone() == (1_000_000,)
    listing = cli_json("--pg-url", pg_url, "rejects", "--entity", "streaks")["result"]
    assert listing["by_reason"] == {"wrong_type": 1, "wrong_redis_type": 1}


def test_a_reject_goes_once_its_value_is_fixed_and_stays_while_it_is_not(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    # key names that need quoting in a Postgres array literal: the prune sends them as one
    fixed, broken = 'board:entry:q"uo\\te,{x}', 'board:entry:still "bad"'
    kv.set(fixed, b'{"author": "alice", "content": ')
    kv.set(broken, b'{"author": "bob", "content": ')
    kv.set("board:entry:ok", b'{"author": "alice", "content": "hi", "timestamp": 1750000000000}')
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)

    def rejects() -> list[str]:
        return [k for (k,) in pg.execute("SELECT key FROM kvmigrate.rejects ORDER BY key")]

    assert rejects() == sorted([fixed, broken])
    kv.set(fixed, b'{"author": "alice", "content": "fixed", "timestamp": 1750000000000}')
    _backfill_json(pg_url, kv_url)
    assert rejects() == [broken]
    assert pg.execute("SELECT content FROM board_posts WHERE id = %s", ('q"uo\\te,{x}',)).fetchone() == ("fixed",)


def test_strict_exits_5_when_records_were_rejected(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "backfill", "--strict")
    assert result.exit_code == 5, result.output
    assert "kvmigrate rejects" in result.output


def test_backfill_sends_no_script_and_reads_strings_with_mget(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    by_command = _backfill_json(pg_url, kv_url)["result"]["kv_requests_by_command"]
    assert not {"EVAL", "EVAL_RO", "EVALSHA", "EVALSHA_RO"} & set(by_command)
    assert by_command["MGET"] >= 1 and "GET" not in by_command

def test_backfill_before_setup_says_to_run_setup(pg_url: str, kv_url: str) -> None:
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "backfill")
    assert result.exit_code == 2, result.output
    assert "kvmigrate setup" in result.output


def test_a_registry_key_of_another_type_is_rejected_by_name_and_the_run_completes(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    kv.delete("vibe:invites", "vibe:agents")
    kv.set("vibe:invites", '{"VIBE-AAAA-ALIC": {"code": "VIBE-AAAA-ALIC"}}')
    kv.rpush("vibe:agents", "ops_agent")
    _setup(pg_url)
    result = _backfill_json(pg_url, kv_url)["result"]
    assert result["entities"]["invites"]["rejected"] >= 1
    rejects = dict(pg.execute("SELECT key, reason_code FROM kvmigrate.rejects"
                              " WHERE key IN ('vibe:invites', 'vibe:agents')").fetchall())
    assert rejects == {"vibe:invites": "wrong_redis_type", "vibe:agents": "wrong_redis_type"}
    original = pg.execute("SELECT raw_value FROM kvmigrate.rejects WHERE key = 'vibe:invites'").fetchone()
    assert original is not None and "VIBE-AAAA-ALIC" in str(original[0])


def test_a_rejected_container_keeps_its_exact_bytes_as_json(pg_url: str, kv_url: str, kv: redis.Redis,
                                                             pg: psycopg.Connection) -> None:
    import base64

    import orjson

    kv.rpush("streak:listy", b"\xff", b"\\xff", "plain")
    kv.hset("streak:hashy", mapping={b"\xfe": b"a\x00b", "current": "x"})  # rejected: not a number
    kv.zadd("streak:zsetty", {b"\xc3": 1.5})
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)
    stored = {k: (orjson.loads(v), enc) for k, v, enc in pg.execute(
        "SELECT key, raw_value, raw_encoding FROM kvmigrate.rejects").fetchall()}
    b64 = lambda raw: {"base64": base64.b64encode(raw).decode()}  # noqa: E731
    hash_pairs, encoding = stored.pop("streak:hashy")
    assert encoding == "json" and sorted(hash_pairs, key=str) == sorted(
        [[b64(b"\xfe"), b64(b"a\x00b")], ["current", "x"]], key=str)
    assert stored == {
        "streak:listy": ([b64(b"\xff"), "\\xff", "plain"], "json"),  # the byte and its escape stay apart
        "streak:zsetty": ([[b64(b"\xc3"), 1.5]], "json"),
    }


def test_restart_reapplies_every_record_where_a_rerun_skips_unchanged_ones(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)
    pg.execute("UPDATE streaks SET current_streak = 77 WHERE handle = 'alice'")  # Postgres drifted
    rerun = _backfill_json(pg_url, kv_url)["result"]
    assert rerun["entities"]["streaks"]["rows_written"] == 0  # KV unchanged: not staged again
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (77,)
    restarted = _backfill_json(pg_url, kv_url, "--restart")["result"]
    assert restarted["resumed_from_cursor"] is None and restarted["entities"]["streaks"]["rows_written"] == 1
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (3,)
    assert sum(t["rows_written"] for t in restarted["entities"].values()) == 1


def test_a_rerun_counts_unchanged_records_from_the_ledger_and_transforms_only_what_changed(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    msg = {"id": "m1", "from": "alice", "to": "bob", "text": "hi", "timestamp": 1748736000000}
    kv.rpush("messages:bob", orjson.dumps(msg), b"{not json")  # migrated, with an item reject
    kv.set("msg:m1", orjson.dumps(msg))
    kv.rpush("thread:alice:bob", b"m1", b"m_gone")  # names records: read and transformed every time
    _setup(pg_url)
    first = _backfill_json(pg_url, kv_url, expect=0)["result"]
    before = dump_tables(pg)
    second = _backfill_json(pg_url, kv_url)["result"]
    counts = ("scanned", "migrated", "rejected", "kept", "unknown", "item_rejects")
    for name, tally in first["entities"].items():
        assert {c: second["entities"][name][c] for c in counts} == {c: tally[c] for c in counts}, name
    assert second["entities"]["messages"]["item_rejects"] == 1 and second["dangling_refs"] == 1
    # every migrated record read is counted from its ledger row, but the thread; the rejected
    # ones are transformed again (and derived indexes are never read)
    assert second["entities"]["messages"]["stats"]["unchanged"] == 2
    streaks, board = second["entities"]["streaks"], second["entities"]["board"]
    assert streaks["stats"]["unchanged"] == streaks["migrated"] == 2 and streaks["rejected"] == 2
    assert board["stats"]["unchanged"] == board["migrated"] - board["stats"]["index_not_read"] > 40
    assert dump_tables(pg) == before
    said = cli("--pg-url", pg_url, "--kv-url", kv_url, "backfill")  # and says so
    assert said.exit_code == 0 and f"unchanged: {sum(t['stats'].get('unchanged', 0) for t in second['entities'].values())} records" in said.stdout
    kv.hset("streak:alice", "current", "9")  # changed: transformed and written again
    third = _backfill_json(pg_url, kv_url)["result"]
    assert third["entities"]["streaks"]["stats"]["unchanged"] == 1 and third["entities"]["streaks"]["rows_written"] == 1
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (9,)
    _backfill_json(pg_url, kv_url, "--strict", expect=5)  # the rejects counted from the ledger still count


def test_a_rerun_after_a_column_became_required_rejects_the_records_that_leave_it_empty(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    _setup(pg_url)
    _backfill_json(pg_url, kv_url)
    with pg.transaction():  # the values unchanged in KV, the rule in Postgres new
        pg.execute("UPDATE users SET one_liner = '' WHERE one_liner IS NULL")
        pg.execute("ALTER TABLE users ALTER COLUMN one_liner SET NOT NULL")
    rerun = _backfill_json(pg_url, kv_url)["result"]
    assert "unchanged" not in rerun["entities"]["users"]["stats"]
    status = pg.execute("SELECT status, reason FROM kvmigrate.ledger WHERE key = 'vibe:handles' AND field = 'bob'")
    assert status.fetchone() == ("rejected", "missing_field")
    # the ledger rows that stayed the same now say these rules wrote them: the next run skips them
    again = _backfill_json(pg_url, kv_url)["result"]
    assert again["entities"]["users"]["stats"]["unchanged"] == again["entities"]["users"]["migrated"] > 0
    assert again["entities"]["streaks"]["stats"]["unchanged"] == again["entities"]["streaks"]["migrated"] == 2


def test_pages_grouped_into_one_transaction_are_committed_when_the_budget_stops_the_run(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    from kvmigrate.model.errors import BudgetExhausted

    mixed_keyspace(kv, board_posts=120)
    _setup(pg_url)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10, max_requests=20)
    assert config.load_batch > kv.dbsize()  # every page would go in one transaction
    try:
        commands.backfill(config)
    except BudgetExhausted:
        pass
    else:
        raise AssertionError("the budget did not stop the run")
    committed = pg.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone()[0]
    (result,) = pg.execute("SELECT result FROM kvmigrate.runs WHERE command = 'backfill'").fetchone()
    scanned = sum(t["scanned"] for t in result["entities"].values())
    # every record of the pages read whole before the stop, and more than one page of 10 keys
    # (how many pages 20 commands read depends on the SCAN order: 3 to 8 here)
    assert committed == scanned > 10
    assert pg.execute("SELECT count(*) FROM kvmigrate.checkpoints").fetchone() == (1,)


def test_a_first_load_upserts_a_key_that_got_a_ledger_row_elsewhere_meanwhile(
        pg_url: str, pg: psycopg.Connection) -> None:
    # A writer that starts on an empty ledger copies new keys straight into it; a key that a
    # verify vouched for meanwhile makes that COPY fail, and the page is written again by upsert.
    commands.setup(build_config(pg_url=pg_url, env={}))
    messages = next(e for e in ENTITIES if e.name == "messages")
    with psycopg.connect(pg_url) as conn:
        run_id = state.start_run(conn, "backfill", dry_run=False, options={})
        writer = BatchWriter(conn, run_id)
        assert writer.ledger_keys is not None  # the ledger was empty: the direct path is on
        pg.execute("INSERT INTO kvmigrate.ledger (key, entity, family, redis_type, value_hash, status, rows)"
                   " VALUES ('msg:m1', 'messages', 'msg', 'string', 'elsewhere', 'migrated', 1)")
        batch = Batch()
        for mid in ("m1", "m2"):
            value = orjson.dumps({"id": mid, "from": "sam", "to": "hal", "text": mid,
                                  "createdAt": "2025-06-01T12:00:00Z"})
            record = RawRecord(f"msg:{mid}", "string", value, family="msg")
            batch.add_outcome(messages, record, messages.transform(record), writer.required())
        writer.write(batch)
        assert writer.ledger_keys is None  # it fell back to the upsert, for good
    assert pg.execute("SELECT key, status, run_id, value_hash <> 'elsewhere' FROM kvmigrate.ledger ORDER BY key"
                      ).fetchall() == [("msg:m1", "migrated", run_id, True), ("msg:m2", "migrated", run_id, True)]
    assert pg.execute("SELECT id FROM messages ORDER BY id").fetchall() == [("m1",), ("m2",)]


def test_batches_written_inside_one_open_transaction_do_not_see_each_others_stages(
        pg_url: str, pg: psycopg.Connection) -> None:
    # A page written in a transaction of its own starts with empty stages (they empty at every
    # commit), so it skips emptying them. Verify's repair writes several batches inside one open
    # transaction (each a savepoint): there the first batch's staged rejects, ledger rows and
    # rows must not leak into the second, which fixes the key the first rejected.
    commands.setup(build_config(pg_url=pg_url, env={}))
    messages = next(e for e in ENTITIES if e.name == "messages")

    def batch_of(writer: BatchWriter, value: bytes) -> Batch:
        batch, record = Batch(), RawRecord("msg:m1", "string", value, family="msg")
        batch.add_outcome(messages, record, messages.transform(record), writer.required())
        return batch

    fixed = orjson.dumps({"id": "m1", "from": "sam", "to": "hal", "text": "hi", "createdAt": "2025-06-01T12:00:00Z"})
    with psycopg.connect(pg_url) as conn:
        run_id = state.start_run(conn, "verify", dry_run=False, options={})
        writer = BatchWriter(conn, run_id)
        conn.execute("SELECT 1")  # a transaction is open: each write below is a savepoint in it
        writer.write(batch_of(writer, b"{not json"))
        writer.write(batch_of(writer, fixed))
        conn.commit()
    assert pg.execute("SELECT key, field FROM kvmigrate.rejects").fetchall() == []
    assert pg.execute("SELECT key, status, reason FROM kvmigrate.ledger").fetchall() == [("msg:m1", "migrated", None)]
    assert pg.execute("SELECT id, content FROM messages").fetchall() == [("m1", "hi")]


def test_backfill_and_verify_collect_garbage_less_often_and_give_the_callers_thresholds_back(
        pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    """A page makes tens of thousands of short-lived containers: at Python's default thresholds
    the cyclic collector took 13% of a backfill's wall time. A library must not leave the
    caller's process changed: the thresholds are restored when the run ends."""
    mixed_keyspace(kv)
    _setup(pg_url)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    before = gc.get_threshold()
    gc.set_threshold(1000, 11, 12)
    try:
        during: list[tuple[int, ...]] = []
        commands.backfill(config, progress=lambda *_: during.append(gc.get_threshold()))
        assert during and set(during) == {(50_000, 20, 12)}  # raised where lower, never lowered
        assert gc.get_threshold() == (1000, 11, 12)
        during.clear()
        commands.verify(config, report=lambda _: during.append(gc.get_threshold()))
        assert during and set(during) == {(50_000, 20, 12)}
        assert gc.get_threshold() == (1000, 11, 12)
    finally:
        gc.set_threshold(*before)


def test_a_registry_hash_bigger_than_a_page_is_loaded_in_parts(
        new_pg_url: Callable[[], str], kv_url: str, kv: redis.Redis, monkeypatch) -> None:
    # vibe:handles holds a field per user, so it grows with the store: read whole into one
    # page, it was loaded (and its users' recorded sources read back) in one transaction.
    # It now comes in parts of scan_count records, each loaded on its own, and the result is
    # the one a run with one page for everything makes.
    for i in range(45):
        kv.hset("vibe:handles", f"u{i}", orjson.dumps({"handle": f"u{i}", "registeredAtTs": 1717236000000 + i}))
    for i in range(0, 45, 4):  # a second source of some users, merged in from fill_sources
        kv.hset(f"user:u{i}", mapping={"displayName": f"User {i}", "updatedAt": "2025-01-01T00:00:00Z"})
    kv.hset("vibe:handles", "@U3", orjson.dumps({"handle": "U3", "registeredAtTs": 1717236000000}))
    loaded: list[tuple[int, bool]] = []
    write = BatchWriter.write

    def counting(self: BatchWriter, batch: Batch, **kw: object) -> object:
        loaded.append((sum(1 for k, _ in batch.records if k == "vibe:handles"), kw.get("checkpoint") is not None))
        return write(self, batch, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchWriter, "write", counting)
    paged, whole = new_pg_url(), new_pg_url()
    for url, count in ((paged, 10), (whole, 1000)):
        _setup(url)
        loaded.clear()
        commands.backfill(build_config(pg_url=url, kv_url=kv_url, env={}, scan_count=count))
        if count == 10:
            assert max(n for n, _ in loaded) == 10 and sum(n for n, _ in loaded) == 46
            assert (10, False) in loaded  # a part with no whole page: the checkpoint stays
    with psycopg.connect(paged) as a, psycopg.connect(whole) as b:
        assert dump_tables(a) == dump_tables(b)  # rows, ledger (the merged @U3 too) and rejects
        assert a.execute("SELECT count(*) FROM kvmigrate.ledger WHERE key = 'vibe:handles'").fetchone() == (46,)
    rerun = commands.backfill(build_config(pg_url=paged, kv_url=kv_url, env={}, scan_count=10))
    assert sum(t.rows_written for t in rerun.tallies.values()) == 0


def test_vibe_games_bigger_than_a_page_is_loaded_in_parts_and_resumes_after_a_failed_part(
        new_pg_url: Callable[[], str], kv_url: str, kv: redis.Redis, monkeypatch) -> None:
    # vibe:games is one string whose games grow with the store (10 MB of rows at a million
    # keys): its rows now come in parts of scan_count, loaded before the part that carries its
    # ledger row and item rejects. The result is the one a run that loads it whole makes, and a
    # run that fails between two parts ends, when run again, with that result too.
    games = {f"g{i}": {"type": "tictactoe", "players": [f"u{i % 7}", "bob"], "state": {"winner": "bob"}}
             for i in range(45)}
    games["g3"] = {"type": "chess"}  # no players: an item reject, in the first part
    kv.set("vibe:games", orjson.dumps(games))
    for i in range(30):
        kv.set(f"msg:m{i}", orjson.dumps({"id": f"m{i}", "from": "bob", "to": f"u{i % 7}", "text": "hi",
                                          "timestamp": 1717236000000 + i}))
    loads: list[tuple[int, bool]] = []  # (game rows, whether vibe:games' ledger row came with them)
    write = BatchWriter.write

    def watched(self: BatchWriter, batch: Batch, **kw: object) -> object:
        game_rows = len(batch.rows.get("game_results", ()))
        if game_rows:
            loads.append((game_rows, any(e.key == "vibe:games" for e in batch.ledger)))
            if failing and len(loads) == 3:
                raise RuntimeError("the connection dropped")
        return write(self, batch, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchWriter, "write", watched)
    paged, whole = new_pg_url(), new_pg_url()
    failing = False
    for url, count in ((whole, 1000), (paged, 10)):
        _setup(url)
        loads.clear()
        commands.backfill(build_config(pg_url=url, kv_url=kv_url, env={}, scan_count=count))
        assert loads == ([(44, True)] if count == 1000 else [(9, False)] + [(10, False)] * 3 + [(5, True)])
    with psycopg.connect(paged) as a, psycopg.connect(whole) as b:
        assert dump_tables(a) == dump_tables(b)  # rows, ledger (44 rows for vibe:games) and rejects
        assert a.execute("SELECT rows, status FROM kvmigrate.ledger WHERE key = 'vibe:games'").fetchone() == (
            44, "migrated")
        assert a.execute("SELECT field FROM kvmigrate.rejects WHERE key = 'vibe:games'").fetchall() == [("#g3",)]
    rerun = commands.backfill(build_config(pg_url=paged, kv_url=kv_url, env={}, scan_count=10))
    assert sum(t.rows_written for t in rerun.tallies.values()) == 0
    failed = new_pg_url()
    _setup(failed)
    failing = True
    loads.clear()
    with pytest.raises(RuntimeError, match="connection dropped"):
        commands.backfill(build_config(pg_url=failed, kv_url=kv_url, env={}, scan_count=10))
    with psycopg.connect(failed) as conn:
        assert conn.execute("SELECT count(*) FROM game_results").fetchone() == (19,)  # two parts in
        assert conn.execute("SELECT count(*) FROM kvmigrate.ledger WHERE key = 'vibe:games'").fetchone() == (0,)
    failing = False
    commands.backfill(build_config(pg_url=failed, kv_url=kv_url, env={}, scan_count=10))
    with psycopg.connect(failed) as a, psycopg.connect(whole) as b:
        assert dump_tables(a) == dump_tables(b)


def test_a_cap_that_lets_a_run_load_only_parts_of_a_registry_hash_exits_2(
        new_pg_url: Callable[[], str], kv_url: str, kv: redis.Redis) -> None:
    # Parts of a page move no checkpoint: a run that committed only parts would, under the same
    # cap, stop at the same place again. It says the cap is too small, and loses nothing. (600
    # fields: a hash of up to 512 is encoded so that HSCAN returns it whole, whatever its COUNT.)
    for i in range(600):
        kv.hset("vibe:handles", f"u{i}", orjson.dumps({"handle": f"u{i}", "registeredAtTs": 1717236000000 + i}))
    pg_url = new_pg_url()
    _setup(pg_url)
    committed = []
    for _ in range(2):
        config = build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10, max_requests=8)
        with pytest.raises(BudgetTooSmall, match="too small to make progress"):
            commands.backfill(config)
        with psycopg.connect(pg_url) as conn:
            committed.append(conn.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone())
    assert committed[0] == committed[1] and committed[0] != (0,)  # parts loaded, again the same ones
    result = commands.backfill(build_config(pg_url=pg_url, kv_url=kv_url, env={}, scan_count=10))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (600,)
        assert conn.execute("SELECT count(*) FROM kvmigrate.ledger").fetchone() == (600,)
    assert result.rejected == 0
