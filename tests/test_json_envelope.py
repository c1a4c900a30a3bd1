"""Every command's `--json` output is one envelope that validates against docs/report.schema.json,
whether the command succeeds, fails cleanly, or is not built yet."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import redis
import typer.main

from kvmigrate import api as commands
from kvmigrate.cli import app
from kvmigrate.model.config import build_config
from tests.fixtures.data import mixed_keyspace
from tests.helpers import cli

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "report.schema.json").read_text())
COMMANDS: dict[str, Any] = typer.main.get_command(app).commands  # type: ignore[attr-defined]

#: Options that make each command finish quickly against a scratch database (only the options a
#: command declares are passed).
OPTIONS: dict[str, list[tuple[str, ...]]] = {
    "setup": [],
    "verify": [("--recheck-delay", "0")],
    "dual-write": [("--settle", "0"), ("--recheck-delay", "0")],
    "cleanup": [("--dry-run",)],
    "rehearse": [("--report", "{tmp}/report.json")],
    "demo": [("--users", "8")],
}


#: Commands that cannot succeed here, and why: cutover and cleanup --dry-run before any dual
#: write (gate refused), verify before any backfill (rows missing), restore of a folder with no
#: manifest (1), shadow before any backfill (views differ, 1); seed and demo into a KV db that is
#: not empty (2).
EXPECTED_EXIT = {"cutover": 1, "cleanup": 1, "verify": 1, "restore": 1, "shadow": 1, "seed": 2, "demo": 2}


def validate(body: dict[str, Any]) -> None:
    """Validate one envelope against the schema, and the timestamps as real ISO 8601 instants."""
    validator = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    started, finished = (dt.datetime.fromisoformat(body[k]) for k in ("started_at", "finished_at"))
    assert started.tzinfo is not None and started <= finished


def _args(name: str, tmp: Path) -> list[str]:
    command = COMMANDS[name]
    declared = {opt for p in command.params for opt in getattr(p, "opts", ())}
    args = [part.format(tmp=tmp) for option in OPTIONS.get(name, []) if option[0] in declared for part in option]
    for param in command.params:
        if param.param_type_name == "argument" and param.required:
            args.append(str(tmp / f"no-such-{param.name}"))  # e.g. restore ARCHIVE_DIR: fails cleanly
    return args


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_prints_one_valid_envelope(name: str, pg_url: str, kv_url: str, kv: redis.Redis,
                                                 tmp_path: Path) -> None:
    mixed_keyspace(kv)
    if name != "setup":
        commands.setup(build_config(pg_url=pg_url, env={}))
    run = cli("--json", "--pg-url", pg_url, "--kv-url", kv_url, name, *_args(name, tmp_path))
    assert run.stdout.strip(), f"{name} printed nothing on stdout: {run.output}"
    body = orjson.loads(run.stdout)
    validate(body)
    assert (body["command"], body["exit_code"]) == (name, run.exit_code), run.output
    assert run.exit_code == EXPECTED_EXIT.get(name, 0), run.output


def test_every_exit_code_has_a_valid_envelope(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    mixed_keyspace(kv)
    base = ("--json", "--pg-url", pg_url, "--kv-url", kv_url)
    runs = {
        2: cli("--json", "status"),  # no Postgres URL
        3: cli("--json", "--kv-url", "redis://127.0.0.1:1/0", "inventory", env={"KVMIGRATE_CONNECT_RETRIES": "0"}),
        0: cli(*base, "setup"),
        4: cli(*base, "backfill", "--batch-size", "10", "--max-requests", "8"),  # a page or two, not all
        5: cli(*base, "backfill", "--strict"),
    }
    kv.hset("streak:alice", "current", "99")
    runs[1] = cli(*base, "verify", "--recheck-delay", "0")
    for code, run in runs.items():
        assert run.exit_code == code, run.output
        body = orjson.loads(run.stdout)
        validate(body)
        assert body["ok"] is (code == 0)
        assert ("error" in body) is (code in (2, 3, 4, 5)), body
    assert runs[1].exit_code == 1 and orjson.loads(runs[1].stdout)["result"]["clean"] is False


def test_global_options_may_follow_the_command(pg_url: str, kv_url: str, kv: redis.Redis) -> None:
    commands.setup(build_config(pg_url=pg_url, env={}))
    for args in (("status", "--json", "--pg-url", pg_url), ("status", f"--pg-url={pg_url}", "--json", "-v"),
                 ("--pg-url", pg_url, "status", "--json")):
        run = cli(*args)
        assert run.exit_code == 0, (args, run.output)
        assert orjson.loads(run.stdout)["command"] == "status"
    missing = cli("status", "--pg-url")  # no value: the parser says so, not "missing command"
    assert missing.exit_code == 2 and "--pg-url" in missing.output and "requires an argument" in missing.output
    inventory = cli("inventory", "--kv-url", kv_url, "--json")
    assert inventory.exit_code == 0, inventory.output
    validate(orjson.loads(inventory.stdout))


def test_schema_rejects_envelopes_that_break_the_contract() -> None:
    good = {"command": "status", "version": "0.1.0", "started_at": "2025-06-01T00:00:00+00:00",
            "finished_at": "2025-06-01T00:00:01+00:00", "ok": True, "exit_code": 0, "result": {}, "warnings": []}
    validate(good)
    broken = [
        {**good, "ok": True, "exit_code": 1},
        {**good, "ok": False, "exit_code": 0},
        {**good, "ok": False, "exit_code": 2, "result": {}, "error": {"message": "x", "hint": None}},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "warnings"},
        {**good, "error": {"message": "x"}, "ok": False, "exit_code": 2, "result": None},
    ]
    for body in broken:
        with pytest.raises(AssertionError):
            validate(body)
