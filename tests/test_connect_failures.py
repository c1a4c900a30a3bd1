"""Permanent connection failures are reported at once, each with its own hint; only what a
wait can cure (refused, timed out) is retried.

A wrong password (on a Postgres role and a Valkey `requirepass` of this module's own servers), a
host that does not resolve, a database that does not exist, a TLS mismatch either way: one
attempt, no "retrying" line, exit 3, a hint naming the fix. The checks count attempts and read
messages; they never time anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.faults import Launcher, PrivatePostgres, PrivateValkey, free_port, launcher

PASSWORD = "Cf-8812-right"


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("connect")
    pg, kv = PrivatePostgres(), PrivateValkey(root / "kv", password=PASSWORD)
    try:
        pg.start()
        kv.start()
        yield pg.add_user("kvm_conn", PASSWORD, "vibe"), kv.url(0)
    finally:
        kv.close()
        pg.close()


@pytest.fixture(scope="module")
def runner() -> Iterator[Launcher]:
    with launcher() as run:  # a child process each, so the retry lines reach its stderr
        yield run


def _once(runner: Launcher, *args: str) -> str:
    result = runner.run(*args, env={"KVMIGRATE_CONNECT_RETRIES": "5"})
    assert result.code == 3, result.output
    assert "retrying" not in result.output, result.output  # one attempt, not six
    assert "not retried" in result.output and "Traceback" not in result.output, result.output
    return result.output


def test_a_wrong_postgres_password_is_not_retried_and_says_so(private: tuple[str, str], runner: Launcher) -> None:
    out = _once(runner, "--pg-url", private[0].replace(PASSWORD, "Cf-8812-wrong"), "status")
    assert "authentication failed" in out and "hint: check the user name and password" in out
    assert "Cf-8812" not in out


def test_a_wrong_kv_password_is_not_retried_and_says_so(private: tuple[str, str], runner: Launcher) -> None:
    out = _once(runner, "--kv-url", private[1].replace(PASSWORD, "Cf-8812-wrong"), "inventory")
    assert "authentication failed" in out and "hint: check the password (the token)" in out
    assert "Cf-8812" not in out


def test_a_missing_database_is_not_retried_and_says_so(private: tuple[str, str], runner: Launcher) -> None:
    out = _once(runner, "--pg-url", private[0].rsplit("/", 1)[0] + "/no_such_db", "status")
    assert "the database does not exist" in out and "CREATE DATABASE" in out


def test_a_host_that_does_not_resolve_is_not_retried(private: tuple[str, str], runner: Launcher) -> None:
    pg = private[0].replace("127.0.0.1", "no-such-host.invalid")
    assert "the host name does not resolve" in _once(runner, "--pg-url", pg, "status")
    assert "the host name does not resolve" in _once(runner, "--kv-url", "redis://no-such-host.invalid:6379/0", "inventory")


def test_postgres_tls_required_by_the_url_but_not_offered_is_not_retried(private: tuple[str, str], runner: Launcher) -> None:
    out = _once(runner, "--pg-url", private[0] + "?sslmode=require", "status")
    assert "TLS mismatch" in out and "sslmode=require" in out


def test_rediss_to_a_plain_server_fails_at_once_with_a_tls_hint(private: tuple[str, str], runner: Launcher) -> None:
    out = _once(runner, "--kv-url", private[1].replace("redis://", "rediss://"), "inventory")
    assert "TLS mismatch" in out and "use redis:// for this server" in out


def test_a_refused_connection_is_still_retried(runner: Launcher) -> None:
    url = f"postgresql://u@127.0.0.1:{free_port()}/x"  # nothing listens: a server still starting
    result = runner.run("--pg-url", url, "status", env={"KVMIGRATE_CONNECT_RETRIES": "2"})
    assert result.code == 3, result.output
    assert result.stderr.count("retrying") == 2 and "not retried" not in result.output, result.output
