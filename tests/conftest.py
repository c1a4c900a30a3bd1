"""Session servers and per-test isolation: each test gets its own Postgres database and its own
flushed KV logical database. See tests/fixtures/servers.py for where servers come from."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from kvmigrate import api as commands
from kvmigrate.model.config import build_config
from tests.fixtures.faults import Launcher, launcher
from tests.fixtures.servers import Servers, kv_url_for, pg_url_for, start_servers

_SERVERS = pytest.StashKey[Servers]()
_KV_DBS = itertools.cycle(range(1, 16))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        default="embedded",
        choices=("embedded", "containers"),
        help="where test servers come from when KVMIGRATE_TEST_*_URL are not set",
    )


def _servers(config: pytest.Config) -> Servers:
    if _SERVERS not in config.stash:
        config.stash[_SERVERS] = start_servers(config.getoption("--backend"))
    return config.stash[_SERVERS]


def pytest_report_header(config: pytest.Config) -> str:
    servers = _servers(config)
    return servers.skip_reason or servers.describe()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVERS in config.stash:
        config.stash[_SERVERS].close()


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Servers:
    s = _servers(request.config)
    if s.skip_reason:
        pytest.skip(s.skip_reason)
    return s


@pytest.fixture
def new_pg_url(servers: Servers) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty Postgres databases for this test (all dropped afterwards)."""
    made: list[str] = []

    def make() -> str:
        name = "kvm_" + uuid.uuid4().hex[:12]
        with psycopg.connect(servers.pg_admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return pg_url_for(servers.pg_admin_url, name)

    yield make
    with psycopg.connect(servers.pg_admin_url, autocommit=True) as admin:
        for name in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(new_pg_url: Callable[[], str]) -> str:
    """A fresh, empty Postgres database for this test (dropped afterwards)."""
    return new_pg_url()


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection]:
    """A connection (transactions the test's own) to this test's database, schema deployed."""
    commands.setup(build_config(pg_url=pg_url, env={}))
    with psycopg.connect(pg_url) as c:
        yield c


@pytest.fixture
def kv_url(servers: Servers) -> str:
    """A KV URL on a logical database that is flushed for this test."""
    url = kv_url_for(servers.kv_url, next(_KV_DBS))
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def kv(kv_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on this test's (flushed) logical database."""
    client = redis.Redis.from_url(kv_url)
    yield client
    client.close()


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Launcher]:
    """Runs `kvmigrate` as child processes (real exit codes, stderr not a terminal, SIGKILL-able),
    with a HOME of this test's own."""
    home = tmp_path / "home"
    home.mkdir()
    with launcher({"HOME": str(home)}) as run:
        yield run
