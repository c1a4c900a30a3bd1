"""Thread memories: JSONL files → records → exact rows; bad lines are rejects and the file goes
on; a backfill from a folder lands exact rows, keeps the raw bad line, and reruns write nothing."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg
import pytest

from kvmigrate import api as commands
from kvmigrate.adapters.files.memories import iter_memory_records
from kvmigrate.entities.memories import MEMORIES
from kvmigrate.model.config import build_config
from kvmigrate.model.records import Outcome, RawRecord, Row

T0 = datetime(2026, 1, 1, 8, 49, 48, 352000, tzinfo=timezone.utc)
GOOD = {"id": "mjv7f41s", "timestamp": "2026-01-01T08:49:48.352Z",
        "observation": "Prefers center opening in tic-tac-toe", "from": "seth", "about": "solienne"}


def _line(obj: object) -> bytes:
    return orjson.dumps(obj)


def _transform(value: bytes, field: str = "L1") -> Outcome:
    return MEMORIES.transform(RawRecord("file:thread_solienne.jsonl", "jsonl", value, field, "file"))


def test_memory_line_becomes_one_exact_row() -> None:
    assert _transform(_line(GOOD)) == Outcome(rows=(Row("memories", {
        "id": "mjv7f41s", "owner": "seth", "about": "solienne",
        "observation": "Prefers center opening in tic-tac-toe", "details": {}, "created_at": T0}, 10),))


def test_unmapped_fields_go_to_details_and_handles_are_normalised() -> None:
    line = {**GOOD, "from": "@Seth", "about": "Ops-Agent", "source": "dm", "tags": ["game"]}
    outcome = _transform(_line(line))
    assert outcome.rows[0].values == {
        "id": "mjv7f41s", "owner": "seth", "about": "ops_agent", "observation": GOOD["observation"],
        "details": {"source": "dm", "tags": ["game"]}, "created_at": T0}
    assert outcome.stats == {"handle_normalised": 2}


def test_memory_without_timestamp_has_no_created_at() -> None:
    line = {k: v for k, v in GOOD.items() if k != "timestamp"}
    assert _transform(_line(line)).rows[0].values["created_at"] is None


@pytest.mark.parametrize(("value", "code"), [
    (_line({k: v for k, v in GOOD.items() if k != "id"}), "missing_field"),
    (_line({**GOOD, "id": 7}), "wrong_type"),
    (_line({k: v for k, v in GOOD.items() if k != "from"}), "missing_field"),
    (_line({**GOOD, "from": None}), "missing_field"),
    (_line({k: v for k, v in GOOD.items() if k != "about"}), "missing_field"),
    (_line({**GOOD, "observation": ""}), "missing_field"),
    (_line({**GOOD, "observation": ["a"]}), "wrong_type"),
    (_line({**GOOD, "about": "not a handle!"}), "invalid_handle"),
    (_line({**GOOD, "timestamp": "soon"}), "bad_timestamp"),
    (_line({**GOOD, "timestamp": "1999-12-31T23:59:59Z"}), "bad_timestamp"),
    (b'{"id": "m1", "observation": "half a line', "invalid_json"),
    (b'"just text"', "wrong_json_type"),
    (_line(GOOD).replace(b"Prefers", b"Pre\x00fers"), "nul_byte"),
    (_line({**GOOD, "observation": "a\u0000b"}), "nul_byte"),
    (_line(GOOD).replace(b"Prefers", b"Pr\xe9fers"), "invalid_utf8"),
])
def test_bad_memory_line_is_rejected_with_a_stable_code(value: bytes, code: str) -> None:
    outcome = _transform(value, field="L7")
    assert outcome.rows == ()
    assert outcome.reject is not None
    assert outcome.reject.code == code, outcome.reject.message
    assert outcome.reject.message.startswith("file:thread_solienne.jsonl field 'L7'")


def test_record_of_an_unknown_kind_is_rejected_not_raised() -> None:
    outcome = MEMORIES.transform(RawRecord("memory:x", "string", b"{}", "", "memory"))
    assert outcome.reject is not None and outcome.reject.code == "unknown_family"


def test_records_are_every_non_blank_line_of_thread_files_by_name(tmp_path: Path) -> None:
    (tmp_path / "thread_bob.jsonl").write_bytes(b'{"a": 1}\n\n   \n{"a": 2}\r\n{"a": 3}')
    (tmp_path / "thread_alice.jsonl").write_bytes(b'{"a": 0}\n')
    (tmp_path / "notes.jsonl").write_bytes(b'{"a": 9}\n')
    (tmp_path / "thread_carol.json").write_bytes(b'{"a": 9}\n')
    records = list(iter_memory_records(tmp_path))
    assert records == [
        RawRecord("file:thread_alice.jsonl", "jsonl", b'{"a": 0}', "L000001", "file"),
        RawRecord("file:thread_bob.jsonl", "jsonl", b'{"a": 1}', "L000001", "file"),
        RawRecord("file:thread_bob.jsonl", "jsonl", b'{"a": 2}', "L000004", "file"),
        RawRecord("file:thread_bob.jsonl", "jsonl", b'{"a": 3}', "L000005", "file"),
    ]


def test_unreadable_file_is_one_reject_and_the_other_files_go_on(tmp_path: Path) -> None:
    (tmp_path / "thread_alice.jsonl").mkdir()  # opening it fails like an unreadable file
    (tmp_path / "thread_bob.jsonl").write_bytes(_line(GOOD) + b"\n")
    records = list(iter_memory_records(tmp_path))
    assert [(r.key, r.field, r.family) for r in records] == [
        ("file:thread_alice.jsonl", "", "unreadable"), ("file:thread_bob.jsonl", "L000001", "file")]
    outcome = MEMORIES.transform(records[0])
    assert outcome.reject is not None and outcome.reject.code == "unreadable_file"
    assert "IsADirectoryError" in outcome.reject.message
    assert MEMORIES.transform(records[1]).reject is None


# ---- end to end, on real servers ---------------------------------------------------------------


def test_backfill_from_a_memories_folder(pg_url: str, kv_url: str, tmp_path: Path) -> None:
    second = {"id": "mk01abcd", "timestamp": "2026-01-02T10:00:00Z", "observation": "Ships on Fridays",
              "from": "seth", "about": "Alice", "context": "standup"}
    bad = b'{"id": "mk02", "observation": "cut off'
    (tmp_path / "thread_solienne.jsonl").write_bytes(_line(GOOD) + b"\n")
    (tmp_path / "thread_alice.jsonl").write_bytes(_line(second) + b"\n" + bad + b"\n\xff\n")
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    commands.setup(config)

    result = commands.backfill(config, entities=["memories"], memories_dir=tmp_path)

    tally = result.tallies["memories"]
    assert (tally.scanned, tally.migrated, tally.rejected, tally.rows_written) == (4, 2, 2, 2)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT * FROM memories ORDER BY id").fetchall()
        rejects = conn.execute("SELECT key, field, entity, reason_code, raw_value, raw_encoding"
                               " FROM kvmigrate.rejects ORDER BY field").fetchall()
    assert rows == [
        ("mjv7f41s", "seth", "solienne", GOOD["observation"], {}, T0),
        ("mk01abcd", "seth", "alice", "Ships on Fridays", {"context": "standup"},
         datetime(2026, 1, 2, 10, tzinfo=timezone.utc)),
    ]
    assert rejects == [
        ("file:thread_alice.jsonl", "L000002", "memories", "invalid_json", bad.decode(), "utf8"),
        ("file:thread_alice.jsonl", "L000003", "memories", "invalid_utf8", "/w==", "base64"),
    ]
    rerun = commands.backfill(config, entities=["memories"], memories_dir=tmp_path)
    assert rerun.tallies["memories"].rows_written == 0
