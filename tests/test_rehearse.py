"""`kvmigrate rehearse` against real servers: the whole path into a scratch database, KV only
read (by the client's guard and by the server's own command statistics), reports that agree,
and the exit code of each failure condition."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.adapters.connections import connect_kv
from kvmigrate.adapters.kv.client import WRITE_COMMANDS, ReadOnlyViolation
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.config import build_config
from kvmigrate.model.rehearse_markdown import COST_ROWS, DATA_COLUMNS
from tests.fixtures.data import MIXED_REJECTS, mixed_keyspace
from tests.helpers import cli

WRITES_TO_WATCH = ("set", "hset", "del", "unlink", "expire", "rpush", "lpush", "sadd", "zadd", "hdel", "incr",
                   "flushdb", "flushall", "rename", "restore", "copy", "setex", "getdel", "script|load")


def _rehearse(pg_url: str, kv_url: str, *args: str, expect: int = 0, env: dict[str, str] | None = None) -> dict:
    result = cli("--json", "rehearse", "--pg-url", pg_url, "--kv-url", kv_url, *args, env=env)
    assert result.exit_code == expect, result.output
    return orjson.loads(result.stdout)


def _snapshot(kv: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key of the test's logical db: its serialised value and whether it has a TTL."""
    return {k: (kv.dump(k), kv.pttl(k) >= 0) for k in kv.scan_iter(count=1000)}


def _calls(kv: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in kv.info("commandstats").items()}


def _is_write(kv: redis.Redis, name: str) -> bool:
    """Whether the server itself classifies the command as a write."""
    info = kv.execute_command("COMMAND", "INFO", name)
    doc = info.get(name) if isinstance(info, dict) else None
    if not doc:
        return name.split("|")[0].upper() in WRITE_COMMANDS
    marks = {(m.decode() if isinstance(m, bytes) else str(m)).lstrip("@") for m in
             list(doc.get("flags", [])) + list(doc.get("acl_categories", []))}
    return "write" in marks


# --------------------------------------------------------------------------- end to end


def test_rehearse_runs_setup_backfill_and_verify_into_a_scratch_database(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection, tmp_path: Path) -> None:
    mixed_keyspace(kv)
    out = _rehearse(pg_url, kv_url, "--report", str(tmp_path / "r" / "report.json"),
                    "--markdown", str(tmp_path / "r" / "summary.md"))
    result = out["result"]
    assert (out["command"], out["ok"], out["exit_code"]) == ("rehearse", True, 0)
    assert [(c["name"], c["ok"]) for c in result["checks"]] == [("differences", True), ("shadow", True),
                                                                ("rejects", True), ("kv_cost", True)]
    assert result["shadow"]["views"] and all(v["matched"] == v["checked"] for v in result["shadow"]["views"].values())
    assert result["setup"]["applied"] == ["001_kvmigrate_state.sql", "002_app_tables.sql", "003_app_schema.sql",
                                         "004_shadow.sql", "005_connections.sql", "006_ledger_companion.sql",
                                         "007_cheaper_bookkeeping.sql", "008_ledger_without_entity_index.sql",
                                         "009_owners_in_the_ledger.sql"]
    assert pg.execute("SELECT handle, current_streak FROM streaks ORDER BY handle").fetchall() == [
        ("alice", 3), ("bob", 2)]
    assert pg.execute("SELECT count(*) FROM board_posts").fetchone() == (41,)  # 40 + the 1 MB post
    assert result["summary"]["rejects"] == len(MIXED_REJECTS)
    assert {(g["reason"], g["example_key"]) for g in result["rejects"]} <= {
        (reason, key) for key, reason in MIXED_REJECTS.items()}
    assert sum(g["count"] for g in result["rejects"]) == len(MIXED_REJECTS)
    assert result["verify"]["clean"] is True
    assert result["summary"]["unknown_keys"] == 2
    report = orjson.loads((tmp_path / "r" / "report.json").read_bytes())
    assert report["result"] == result
    assert (tmp_path / "r" / "summary.md").read_text().startswith("## kvmigrate rehearse: PASSED")
    for name in ("report.json", "summary.md"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o600  # the report holds the store's values


def test_report_alone_writes_its_markdown_summary_beside_it(pg_url: str, kv_url: str, kv: redis.Redis,
                                                             tmp_path: Path) -> None:
    mixed_keyspace(kv)
    (tmp_path / "report.json").write_text("old")
    (tmp_path / "report.json").chmod(0o644)
    _rehearse(pg_url, kv_url, "--report", str(tmp_path / "report.json"))
    assert (tmp_path / "report.md").read_text().startswith("## kvmigrate rehearse: PASSED")
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o600
    _rehearse(pg_url, kv_url, "--report", str(tmp_path / "out.md"))  # a JSON report named .md
    assert orjson.loads((tmp_path / "out.md").read_bytes())["command"] == "rehearse"
    assert (tmp_path / "out.md.md").read_text().startswith("## kvmigrate rehearse")


def test_rehearse_reports_measured_and_forecast_kv_cost(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv, board_posts=120)
    result = _rehearse(pg_url, kv_url, "--batch-size", "50")["result"]
    cost = result["kv_requests"]
    assert cost["backfill"] == result["backfill"]["kv_requests"]
    assert cost["verify"] == result["verify"]["kv_requests"]
    assert cost["rehearse"] == cost["backfill"] + cost["verify"] + result["inventory"]["kv_requests"]
    assert cost["backfill_predicted"] == result["inventory"]["predicted_backfill_requests"]
    pages = result["inventory"]["scan_pages"]
    assert pages > 1
    plan = {p.phase: p.commands for p in commands.plan(build_config(
        pg_url=pg_url, kv_url=kv_url, env={}, scan_count=50, batch_size=50, load_batch=50)).phases}
    assert (cost["archive"], cost["delete"]) == (plan["archive"], plan["delete"])  # cleanup's pass, as plan models it
    assert cost["real_run"] == cost["backfill"] + cost["verify"] + cost["archive"] + cost["delete"]
    assert cost["estimate"] is True
    # every migrated key verified; rejected, kept and unknown keys are not deletable
    assert 0 < result["summary"]["deletable_keys"] < int(kv.dbsize()) - len(MIXED_REJECTS)


def test_rehearse_rerun_on_the_same_database_is_a_full_run(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    first = _rehearse(pg_url, kv_url)["result"]
    second = _rehearse(pg_url, kv_url)["result"]
    assert second["setup"]["applied"] == []
    assert second["summary"]["records_scanned"] == first["summary"]["records_scanned"] > int(kv.dbsize())
    assert second["kv_requests"]["backfill"] == first["kv_requests"]["backfill"]


# --------------------------------------------------------------------------- KV stays untouched


def test_rehearse_sends_no_write_command_to_kv(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    keys_before = _snapshot(kv)
    before = _calls(kv)
    _rehearse(pg_url, kv_url, "--batch-size", "10")
    added = {name: n - before.get(name, 0) for name, n in _calls(kv).items() if n > before.get(name, 0)}
    assert added.get("scan") and added.get("mget"), added
    assert not {"eval", "eval_ro", "evalsha", "evalsha_ro"} & set(added), added  # no scripts at all
    writes = sorted(name for name in added if _is_write(kv, name))
    assert writes == [], f"write commands reached the server during rehearse: {writes}"
    assert not set(added) & set(WRITES_TO_WATCH)
    assert _snapshot(kv) == keys_before


def test_read_only_guard_refuses_every_form_of_write_before_sending_it(kv_url: str, kv: redis.Redis) -> None:
    kv.set("k", "original")
    budget = RequestBudget()
    client = connect_kv(kv_url, budget, retries=0, read_only=True)  # how every rehearse connection is opened
    before = _calls(kv)
    attempts: list[tuple[Any, ...]] = [
        ("SET", "k", "changed"), ("del", "k"), ("HSET", "h", "f", "v"), ("Expire", "k", 1), ("FLUSHDB",),
        ("EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "k"), ("EVALSHA", "0" * 40, 1, "k"),
        ("SCRIPT", "LOAD", "return 1"), ("FUNCTION", "FLUSH"), ("RENAME", "k", "k2"), ("RESTORE", "k2", 0, b""),
        # writes no list names: only known reads pass
        ("SETRANGE", "k", 0, "x"), ("SORT", "l", "STORE", "k"), ("PFADD", "hll", "a"), ("XADD", "s", "*", "f", "v"),
        ("BITOP", "AND", "k", "k"), ("CONFIG", "SET", "maxmemory", "1"), ("FCALL", "f", 0), ("MIGRATE",),
    ]
    for command in attempts:
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            client.call(*command)
    with pytest.raises(ReadOnlyViolation):  # a write hidden in a pipeline stops the whole pipeline
        client.pipeline([("GET", "k"), ("SET", "k", "changed"), ("GET", "k")])
    assert budget.spent == 0 and budget.free["PING"] == 1  # connecting is free (PING, SELECT); refusals cost nothing
    added = {name: n - before.get(name, 0) for name, n in _calls(kv).items() if n > before.get(name, 0)}
    assert set(added) <= {"info"}, added  # nothing reached the server (but this test's own INFO)
    assert kv.get("k") == b"original" and kv.dbsize() == 1
    assert client.call("GET", "k") == b"original"  # reads still work


def test_rehearse_refuses_to_take_the_database_from_the_environment(pg_url: str, kv_url: str,
                                                                    pg: psycopg.Connection) -> None:
    result = cli("--json", "--kv-url", kv_url, "rehearse", env={"DATABASE_URL": pg_url})
    assert result.exit_code == 2, result.output
    assert "--pg-url" in orjson.loads(result.stdout)["error"]["hint"]
    assert pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'kvmigrate'").fetchone() == (0,)


def test_rehearse_accepts_the_global_pg_url_option(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    result = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, "rehearse")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- the two reports agree


def _md_tables(text: str) -> dict[str, list[list[str]]]:
    """Each Markdown table under its heading (the first table has the heading ""), as rows of cells."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables.setdefault(heading, []).append(cells)
    return tables


def _unmd(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell.strip("`"))


def test_markdown_and_json_reports_agree(pg_url: str, kv_url: str, kv: redis.Redis, tmp_path: Path) -> None:
    mixed_keyspace(kv)
    report, md = tmp_path / "report.json", tmp_path / "summary.md"
    _rehearse(pg_url, kv_url, "--report", str(report), "--markdown", str(md), "--max-rejects", "0",
              "--max-requests", "5", expect=5)
    body = orjson.loads(report.read_bytes())
    result = body["result"]
    text = md.read_text()
    assert text.startswith(f"## kvmigrate rehearse: FAILED (exit {body['exit_code']})\n")
    tables = _md_tables(text)
    checks = tables[""][1:]
    assert [(_unmd(c[0]), c[1].startswith("✅")) for c in checks] == [(c["name"], c["ok"]) for c in result["checks"]]
    assert [_unmd(c[2]) for c in checks] == [c["detail"] for c in result["checks"]]
    data = {row[0]: row for row in tables["Data"][1:]}
    assert tables["Data"][0] == list(DATA_COLUMNS)
    assert list(data) == list(result["backfill"]["entities"])
    for name, t in result["backfill"]["entities"].items():
        assert [int(x) for x in data[name][1:6]] == [t["scanned"], t["migrated"], t["rejected"], t["item_rejects"],
                                                     t["rows_written"]], name
        v = result["verify"]["entities"].get(name)
        if v is not None:
            assert [int(x) for x in data[name][6:]] == [v["checked"], len(v["missing"]), len(v["extra"]),
                                                        len(v["different"]), v["repaired"]], name
    assert [(_unmd(r[0]), _unmd(r[1]), int(r[2]), _unmd(r[3])) for r in tables["Rejects"][1:]] == [
        (g["entity"], g["reason"], g["count"], g["example_key"]) for g in result["rejects"]]
    unknown = {_unmd(r[0]): (int(r[1]), _unmd(r[2])) for r in tables["Unknown key patterns (left in KV, not migrated)"][1:]}
    assert unknown == {p: (i["keys"], i["example"]) for p, i in result["backfill"]["unknown_patterns"].items()}
    costs = {r[0]: int(r[1]) for r in tables["KV requests"][1:]}
    assert costs == {label: result["kv_requests"][key] for key, label in COST_ROWS}
    assert body["started_at"] in text and body["version"] in text


def test_markdown_shows_counts_and_keys_never_values(pg_url: str, kv_url: str, kv: redis.Redis,
                                                    tmp_path: Path) -> None:
    mixed_keyspace(kv)
    kv.set("board:entry:secret", b'{"author": "alice", "content": "hunter2 \\u0000"}')
    _rehearse(pg_url, kv_url, "--markdown", str(tmp_path / "s.md"))
    text = (tmp_path / "s.md").read_text()
    assert "board:entry:" in text and "hunter2" not in text


# --------------------------------------------------------------------------- exit codes


def test_rejects_above_max_rejects_exit_5_and_at_the_limit_pass(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    over = _rehearse(pg_url, kv_url, "--max-rejects", str(len(MIXED_REJECTS) - 1), expect=5)
    assert [c["name"] for c in over["result"]["checks"] if not c["ok"]] == ["rejects"]
    assert over["ok"] is False
    _rehearse(pg_url, kv_url, "--max-rejects", str(len(MIXED_REJECTS)), expect=0)


def test_forecast_above_max_requests_exits_4(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    cost = _rehearse(pg_url, kv_url)["result"]["kv_requests"]["real_run"]
    over = _rehearse(pg_url, kv_url, "--max-requests", str(cost - 1), expect=4)
    assert [c["name"] for c in over["result"]["checks"] if not c["ok"]] == ["kv_cost"]
    _rehearse(pg_url, kv_url, "--max-requests", str(cost + 10), expect=0)


def _change_kv_after_backfill(kv: redis.Redis) -> Any:
    """A progress hook that acts like the live app: after the backfill's last page, change a key."""
    def on_page(done: int, total: int, tallies: Any) -> None:
        if done >= total:
            kv.hset("streak:alice", "current", "9")

    return on_page


def test_differences_exit_1_and_win_over_the_other_failures(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    result = commands.rehearse(config, repair=False, max_rejects=0, max_requests_real=1,
                               progress=_change_kv_after_backfill(kv))
    checks = {c.name: c.ok for c in result.checks}
    assert list(checks) == ["differences", "shadow", "rejects", "kv_cost"]
    assert (checks["differences"], checks["rejects"], checks["kv_cost"]) == (False, False, False)
    assert result.exit_code == 1
    assert [d.pk for d in result.verify.entities["streaks"].different] == ["alice"]


def test_a_key_the_live_app_changed_during_rehearse_is_repaired_not_failed(
        pg_url: str, kv_url: str, kv: redis.Redis, pg: psycopg.Connection) -> None:
    mixed_keyspace(kv)
    config = build_config(pg_url=pg_url, kv_url=kv_url, env={})
    result = commands.rehearse(config, progress=_change_kv_after_backfill(kv))
    assert result.exit_code == 0
    assert result.verify.entities["streaks"].repaired == 1
    assert pg.execute("SELECT current_streak FROM streaks WHERE handle = 'alice'").fetchone() == (9,)


def test_unreachable_kv_exits_3_and_still_writes_both_reports(pg_url: str, tmp_path: Path) -> None:
    report, md = tmp_path / "report.json", tmp_path / "summary.md"
    out = _rehearse(pg_url, "redis://:s3cret-token@127.0.0.1:1/0", "--report", str(report), "--markdown", str(md),
                    expect=3, env={"KVMIGRATE_CONNECT_RETRIES": "0"})
    written = orjson.loads(report.read_bytes())
    assert (written["exit_code"], written["result"]) == (3, None)
    assert written["error"]["message"] == out["error"]["message"]
    assert md.read_text().startswith("## kvmigrate rehearse: ERROR (exit 3)")
    assert "s3cret-token" not in report.read_text() + md.read_text()


# --------------------------------------------------------------------------- runbook and examples

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_WITH_VALUE = {"--pg-url", "--kv-url"}
GLOBAL_FLAGS = {"--json", "-v", "--verbose", "--traceback", "--version"}


def _invocations(text: str) -> list[list[str]]:
    """The words after each `kvmigrate` (or `$KVMIGRATE`) call, continuation lines joined."""
    text = text.replace("\\\n", " ")
    calls = []
    for m in re.finditer(r"(?:(?<![\w.$-])kvmigrate|\$KVMIGRATE)[ \t]+([^`|#;\n]*)", text):
        calls.append(m.group(1).split())
    return calls


def _code(path: Path) -> str:
    """Code blocks and code spans of a Markdown file; non-comment lines of a script."""
    text = path.read_text()
    if path.suffix == ".md":
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
        spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        return "\n".join(blocks + spans)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("path", ["docs/runbook.md", "examples/README.md", "examples/github-actions/rehearse.yml",
                                  "examples/shell/rehearse.sh", "examples/shell/Makefile"])
def test_runbook_and_examples_use_real_commands_and_options(path: str) -> None:
    import typer.main

    from kvmigrate.cli import app

    group = typer.main.get_command(app)
    commands_: dict[str, Any] = group.commands  # type: ignore[attr-defined]
    checked = 0
    for words in _invocations(_code(ROOT / path)):
        while words and words[0].startswith("-"):
            assert words[0] in GLOBAL_WITH_VALUE | GLOBAL_FLAGS, f"{path}: unknown global option {words[0]}"
            words = words[2:] if words[0] in GLOBAL_WITH_VALUE else words[1:]
        if not words or words[0] in GLOBAL_FLAGS:
            continue
        assert words[0] in commands_, f"{path}: no command `kvmigrate {words[0]}`"
        command = commands_[words[0]]
        declared = {opt for p in command.params for opt in getattr(p, "opts", ())} | {"--help"}
        for word in words[1:]:
            option = word.split("=", 1)[0]
            if option.startswith("-") and option != "-":
                assert option in declared, f"{path}: `kvmigrate {words[0]}` has no option {option}"
        checked += 1
    if path != "examples/shell/Makefile":
        assert checked, f"{path}: no kvmigrate command found"
