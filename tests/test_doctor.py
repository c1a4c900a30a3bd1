from __future__ import annotations

import socket

from tests.helpers import cli, cli_json


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_doctor_passes_on_good_urls_after_setup(pg_url: str, kv_url: str) -> None:
    cli_json("--pg-url", pg_url, "setup")
    env = cli_json("--pg-url", pg_url, "--kv-url", kv_url, "doctor")
    checks = {c["name"]: c for c in env["result"]["checks"]}
    assert set(checks) == {"kv reachable", "postgres reachable", "postgres version", "schema current", "privileges"}
    assert all(c["ok"] for c in checks.values()), checks
    assert env["result"]["kv_requests"] == 0  # SELECT, PING, PING, INFO: none of them billed


def test_doctor_fails_schema_check_before_setup(pg_url: str, kv_url: str) -> None:
    result = cli("--pg-url", pg_url, "--kv-url", kv_url, "doctor")
    assert result.exit_code == 1, result.output
    assert "run `kvmigrate setup`" in result.output


def test_doctor_exits_3_naming_the_masked_url_of_a_dead_server(pg_url: str) -> None:
    dead = f"redis://default:hunter2secret@127.0.0.1:{_dead_port()}/0"
    result = cli("--pg-url", pg_url, "--kv-url", dead, "doctor", env={"KVMIGRATE_CONNECT_RETRIES": "0"})
    assert result.exit_code == 3, result.output
    assert "hunter2secret" not in result.output
    assert "redis://default:***@127.0.0.1" in result.output


def test_doctor_exits_3_on_a_dead_postgres(kv_url: str) -> None:
    dead = f"postgresql://kvm:pgsecret99@127.0.0.1:{_dead_port()}/x"
    result = cli("--pg-url", dead, "--kv-url", kv_url, "doctor", env={"KVMIGRATE_CONNECT_RETRIES": "1"})
    assert result.exit_code == 3, result.output
    assert "pgsecret99" not in result.output
    assert "postgresql://kvm:***@127.0.0.1" in result.output


def test_doctor_fails_the_schema_check_when_an_applied_file_changed(pg_url: str, kv_url: str) -> None:
    import psycopg

    cli_json("--pg-url", pg_url, "setup")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE kvmigrate.schema_migrations SET checksum = 'tampered' WHERE version = 2")
    env = cli_json("--pg-url", pg_url, "--kv-url", kv_url, "doctor", expect=1)
    checks = {c["name"]: c for c in env["result"]["checks"]}
    assert not checks["schema current"]["ok"]
    assert "002_app_tables.sql was changed after it was applied" in checks["schema current"]["detail"]
