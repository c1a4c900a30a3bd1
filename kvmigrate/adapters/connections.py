"""Open connections to KV and Postgres, with bounded retries for cold starts and drops.

Serverless Postgres (Neon) and Upstash can take seconds to wake up: connecting retries with
exponential backoff, each retry reported through `on_retry`, and gives up with ConnectError.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from kvmigrate.adapters.failures import (
    KV_TLS_MISMATCH,
    Permanent,
    kv_permanent,
    kv_speaks_plain,
    pg_permanent,
)
from kvmigrate.adapters.kv.client import KvClient
from kvmigrate.adapters.pg.deadline import (
    IDLE_IN_TRANSACTION_TIMEOUT,
    STATEMENT_TIMEOUT,
    DeadlineConnection,
    grace,
    statement_timeout_of,
)
from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.errors import ConnectError
from kvmigrate.model.masking import mask_text, mask_url
from kvmigrate.model.urls import check_kv_url, check_pg_url, clean_pg_url

log = logging.getLogger("kvmigrate")
RetryHook = Callable[[str], None]

APPLICATION_NAME = "kvmigrate"


def is_pooled_url(url: str) -> bool:
    """True for PgBouncer transaction-mode endpoints (Neon `-pooler` hosts, `pgbouncer=true`)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return "-pooler" in (parts.hostname or "") or query.get("pgbouncer", "").lower() == "true"


_clean_pg_url = clean_pg_url


def _normalise_kv_url(url: str) -> str:
    for alias, real in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(alias):
            return real + url[len(alias) :]
    return url


def _report(hook: RetryHook | None, what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        msg = (
            f"{what}: attempt {state.attempt_number} failed "
            f"({mask_text(str(exc)).strip().splitlines()[0] if exc else 'error'}); retrying"
        )
        log.warning(msg)
        if hook:
            hook(msg)

    return before_sleep


def _retrying(attempts: int, what: str, hook: RetryHook | None,
              transient: Callable[[BaseException], bool]) -> Retrying:
    return Retrying(
        stop=stop_after_attempt(max(attempts, 0) + 1),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception(transient),
        before_sleep=_report(hook, what),
        reraise=True,
    )


def connect_kv(
    url: str,
    budget: RequestBudget,
    *,
    retries: int = 5,
    read_only: bool = False,
    on_retry: RetryHook | None = None,
    timeout: float = 10.0,
) -> KvClient:
    """Open a KV client and PING it (free, like the AUTH and SELECT a connection sends). TLS is
    used for `rediss://` URLs."""
    check_kv_url(url)  # ConfigError (exit 2) naming only the scheme when it does not parse
    real = _normalise_kv_url(url)
    client = redis.Redis.from_url(
        real, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        # RESP2, no CLIENT SETINFO, no health-check PINGs: a new connection sends only what it
        # must (AUTH, SELECT), which Upstash does not bill (noted apart in the budget)
        protocol=2, health_check_interval=0, redis_connect_func=_counting_connect(budget),
        **_NO_CLIENT_INFO,
    )
    for command in ("HGETALL", "SMEMBERS", "ZRANGE"):  # replies flat and in server order, as stored
        client.set_response_callback(command, lambda reply, **_: reply)
    kv = KvClient(client, budget, read_only=read_only)  # connecting: tenacity retries the PING below
    tls = real.lower().startswith("rediss://")

    def transient(exc: BaseException) -> bool:
        if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return False
        if tls and isinstance(exc, redis.TimeoutError) and _plain_server(client):
            raise _TlsMismatch() from exc  # a TLS handshake a plain server never answers
        return kv_permanent(exc, tls=tls) is None

    try:
        for attempt in _retrying(retries, f"KV {mask_url(url)}", on_retry, transient):
            with attempt:
                kv.call("PING")
    except _TlsMismatch:
        raise _permanent_error("KV", url, KV_TLS_MISMATCH) from None
    except (redis.RedisError, OSError) as exc:
        permanent = kv_permanent(exc, tls=tls)
        if permanent:
            raise _permanent_error("KV", url, permanent, exc) from None
        raise ConnectError(
            f"cannot connect to KV at {mask_url(url)}: {mask_text(str(exc))}",
            hint="check the URL and that the store is up (Vercel KV and Upstash need rediss://, with TLS)",
        ) from None
    # Connected. From now on KvClient resends a command lost with its connection only when it is
    # safe to run twice (reads, and writes that set a value), and charges each resend.
    kv.retries = retries
    return kv


class _TlsMismatch(Exception):
    """A rediss:// URL whose server answered a plain-text PING."""


def _plain_server(client: redis.Redis) -> bool:
    kwargs = client.connection_pool.connection_kwargs
    return kv_speaks_plain(str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))


def _permanent_error(what: str, url: str, permanent: Permanent, exc: BaseException | None = None) -> ConnectError:
    """The error for a failure no retry cures: said at once, with its own hint."""
    detail = f" ({mask_text(str(exc)).strip().splitlines()[-1].strip()})" if exc is not None and str(exc).strip() else ""
    return ConnectError(f"cannot connect to {what} at {mask_url(url)}: {permanent.reason}{detail}; not retried",
                        hint=permanent.hint)


#: redis-py ≥ 7 names this `driver_info`; older versions take lib_name/lib_version.
_NO_CLIENT_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.connection.AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def _counting_connect(budget: RequestBudget) -> Callable[[Any], None]:
    """redis-py's per-connection setup, with the commands it sends counted in the budget."""

    def on_connect(conn: Any) -> None:
        if getattr(conn, "password", None):
            budget.record("AUTH")
        if int(getattr(conn, "db", 0) or 0):
            budget.record("SELECT")
        conn.on_connect()

    return on_connect


#: TCP keepalives on both ends, so a connection that went half-open (a NAT or a server gone
#: without a word) fails in about a minute instead of hanging, and the server ends a dead
#: kvmigrate session (releasing its locks) as soon. The URL's own settings win.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3


def keepalives(url: str) -> dict[str, object]:
    """libpq keepalive settings for `url`, leaving out any the URL sets itself; the server's own
    (`options=-c tcp_keepalives_…`) unless the URL has `options` or is a pooled endpoint."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(_clean_pg_url(url))
    ours: dict[str, object] = {"keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE,
                               "keepalives_interval": KEEPALIVE_INTERVAL, "keepalives_count": KEEPALIVE_COUNT,
                               "tcp_user_timeout": (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT) * 1000}
    out = {k: v for k, v in ours.items() if k not in given}
    if "options" not in given and not is_pooled_url(url):
        out["options"] = (f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} -c tcp_keepalives_interval={KEEPALIVE_INTERVAL}"
                          f" -c tcp_keepalives_count={KEEPALIVE_COUNT}"
                          f" -c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
                          f" -c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION_TIMEOUT * 1000)}")
    return out


def connect_pg(
    url: str,
    *,
    retries: int = 5,
    autocommit: bool = False,
    on_retry: RetryHook | None = None,
    timeout: int = 10,
) -> psycopg.Connection:
    """Open a Postgres connection (application_name=kvmigrate), retrying cold starts.

    Pooled (PgBouncer transaction-mode) URLs get `prepare_threshold=None`; session features
    such as advisory locks need the unpooled URL.
    """
    check_pg_url(url)  # ConfigError (exit 2) naming only the scheme when it does not parse
    kwargs: dict[str, object] = {
        "application_name": APPLICATION_NAME,
        "connect_timeout": timeout,
        "autocommit": autocommit,
        **keepalives(url),
    }
    if is_pooled_url(url):
        kwargs["prepare_threshold"] = None
        log.warning("%s is a pooled (PgBouncer transaction-mode) endpoint: prepared statements are off, and the "
                    "locks that keep two runs apart need the unpooled URL (DATABASE_URL_UNPOOLED)", mask_url(url))
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and pg_permanent(exc) is None

    try:
        for attempt in _retrying(retries, f"Postgres {mask_url(url)}", on_retry, transient):
            with attempt:
                conn = DeadlineConnection.connect(_clean_pg_url(url), **kwargs)  # type: ignore[arg-type]
                limit = statement_timeout_of(conn.info.get_parameters().get("options"))
                conn.deadline, conn.url, conn.companions = limit + grace(limit), url, []
                return conn
    except psycopg.Error as exc:
        permanent = pg_permanent(exc)
        if permanent:
            raise _permanent_error("Postgres", url, permanent, exc) from None
        raise ConnectError(
            f"cannot connect to Postgres at {mask_url(url)}: {mask_text(str(exc)).strip()}",
            hint="check the URL and that the server is up; on Neon use the unpooled URL (DATABASE_URL_UNPOOLED)",
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def connection_errors() -> Iterator[None]:
    """Turn a connection lost mid-run (Postgres or KV) into ConnectError (exit 3).

    Nothing is half-applied: every batch commits in one transaction with its checkpoint, so the
    same command run again resumes where this one stopped.
    """
    hint = "the connection dropped mid-run; nothing was half-applied: run the same command again to resume"
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise ConnectError(f"lost the Postgres connection: {mask_text(str(exc)).strip().splitlines()[0]}",
                           hint=hint) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectError(f"lost the KV connection: {mask_text(str(exc)).strip()}", hint=hint) from None
