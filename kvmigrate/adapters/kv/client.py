"""A thin KV client: every command is charged to a RequestBudget before it is sent; writes can
be forbidden. kvmigrate sends no Lua scripts: Upstash bills every command a script runs and a
script holds its global lock, so plain commands, pipelines and MULTI/EXEC do all the work."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import redis

from kvmigrate.model.budget import RequestBudget
from kvmigrate.model.errors import ConfigError

#: Commands that change the keyspace (tests watch the server's counts of these).
WRITE_COMMANDS = frozenset(
    """SET SETEX PSETEX SETNX MSET MSETNX GETSET GETDEL GETEX APPEND INCR INCRBY INCRBYFLOAT DECR
    DECRBY DEL UNLINK EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST RENAME RENAMENX RESTORE COPY MOVE
    HSET HSETNX HMSET HDEL HINCRBY HINCRBYFLOAT LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LREM
    LTRIM LINSERT LMOVE RPOPLPUSH SADD SREM SPOP SMOVE ZADD ZREM ZINCRBY ZPOPMIN ZPOPMAX
    ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX FLUSHDB FLUSHALL SWAPDB EVAL EVALSHA
    FUNCTION SCRIPT SETRANGE""".split()
)

#: The only commands a read-only client sends: reads, scans and server facts. Anything else is
#: refused before it is sent, so a write (SETRANGE, SORT … STORE, a module's write, a script)
#: cannot slip by.
READ_COMMANDS = frozenset(
    """GET MGET STRLEN GETRANGE EXISTS TYPE TTL PTTL DUMP SCAN HSCAN SSCAN ZSCAN HGET HMGET HGETALL
    HKEYS HVALS HLEN HEXISTS HSTRLEN LRANGE LLEN LINDEX SMEMBERS SCARD SISMEMBER SMISMEMBER ZRANGE
    ZRANGEBYSCORE ZREVRANGE ZCARD ZSCORE DBSIZE INFO PING ECHO TIME MEMORY""".split()
)


#: Writes that leave the same keyspace when run twice: resent after a lost reply.
IDEMPOTENT_WRITES = frozenset("SET HSET DEL UNLINK EXPIRE PEXPIRE PEXPIREAT PERSIST SADD SREM ZADD ZREM HDEL".split())

T = TypeVar("T")
log = logging.getLogger("kvmigrate.kv")


class ReadOnlyViolation(ConfigError):
    """A write command was attempted through a read-only KV client."""


class KvClient:
    """Wraps a redis-py client. Every command goes through `call`, `pipeline` or `session` and is
    charged, at one billed command each (the free ones noted apart, see RequestBudget).

    `read_only=True` refuses, before anything is sent, every command but the reads in
    READ_COMMANDS.
    """

    def __init__(self, client: redis.Redis, budget: RequestBudget, *, read_only: bool = False, retries: int = 0):
        self.redis = client
        self.budget = budget
        self.read_only = read_only
        self.retries = retries

    def _resending(self, commands: Sequence[Sequence[Any]], send: Callable[[], T]) -> T:
        """Send; after a dropped connection, send again (up to `retries` times, with backoff) only
        when every command is safe to run twice. Each resend is charged again: the server may
        have run the lost commands, and --max-requests bounds what the server counts."""
        safe = all(str(c[0]).upper() in READ_COMMANDS | IDEMPOTENT_WRITES for c in commands)
        attempts = self.retries + 1 if safe else 1
        for attempt in range(attempts):
            try:
                return send()
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == attempts - 1:
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0))
                self._charge_all(commands)
        raise AssertionError("unreachable")  # pragma: no cover

    def _guard(self, name: str) -> None:
        if self.read_only and name.upper() not in READ_COMMANDS:
            raise ReadOnlyViolation(
                f"refused to send {name.upper()}: this KV connection is read-only",
                hint="rehearse and dry runs never write to KV",
            )

    def call(self, *args: Any) -> Any:
        """Send one command. Costs 1 billed command (0 for a free one)."""
        name = str(args[0])
        self._guard(name)
        self.budget.charge(name)
        log.debug("KV round trip: %s x1", name.upper())
        return self._resending([args], lambda: self.redis.execute_command(*args))

    def _charge_all(self, commands: Sequence[Sequence[Any]]) -> None:
        for cmd in commands:
            self._guard(str(cmd[0]))
        if log.isEnabledFor(logging.DEBUG):  # -vv: every round trip, by command (never values)
            names: dict[str, int] = {}
            for cmd in commands:
                names[str(cmd[0]).upper()] = names.get(str(cmd[0]).upper(), 0) + 1
            log.debug("KV round trip: %s", ", ".join(f"{n} x{c}" for n, c in names.items()))
        self.budget.check(len(commands))
        for cmd in commands:
            self.budget.charge(str(cmd[0]))

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one round trip (not a transaction). Costs len(commands) billed
        commands. Per-command errors come back as exception objects in the result list."""
        if not commands:
            return []
        self._charge_all(commands)

        def send() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return list(pipe.execute(raise_on_error=False))

        return self._resending(commands, send)

    @contextlib.contextmanager
    def session(self) -> Iterator[KvSession]:
        """One connection of its own for WATCH … reads … MULTI/EXEC (the server ties a WATCH to
        its connection). Never retried on a lost reply: the caller re-reads instead."""
        pool = self.redis.connection_pool
        conn = pool.get_connection()
        ok = False
        try:
            yield KvSession(self, conn)
            ok = True
        finally:
            if not ok:
                conn.disconnect()  # a half-read reply or a pending WATCH must not reach the next user
            pool.release(conn)


class KvSession:
    """Commands on one connection, pipelined; see KvClient.session."""

    def __init__(self, client: KvClient, conn: Any) -> None:
        self.client = client
        self.conn = conn
        self.watching = False

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one round trip on this connection. Costs len(commands) billed
        commands; per-command errors come back as exception objects."""
        if not commands:
            return []
        self.client._charge_all(commands)
        self.conn.send_packed_command(self.conn.pack_commands([tuple(c) for c in commands]))
        out: list[Any] = []
        for cmd in commands:
            try:
                out.append(self.client.redis.parse_response(self.conn, str(cmd[0]).upper()))
            except redis.ResponseError as exc:
                out.append(exc)
        if any(str(c[0]).upper() == "WATCH" for c in commands):
            self.watching = True
        return out

    def unwatch(self) -> None:
        """Forget the WATCH (1 billed command), when nothing is left to write."""
        if self.watching:
            self.pipeline([("UNWATCH",)])
            self.watching = False

    def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any] | None:
        """MULTI, the commands, EXEC, in one round trip. Costs len(commands) + 2 billed commands.
        Returns the commands' replies, or None when a WATCHed key changed (nothing was run)."""
        self.client._charge_all([("MULTI",), *commands, ("EXEC",)])
        self.conn.send_packed_command(self.conn.pack_commands([("MULTI",), *[tuple(c) for c in commands], ("EXEC",)]))
        self.conn.read_response()  # OK
        for _ in commands:
            self.conn.read_response()  # QUEUED (an error here is raised: a command the server refused)
        self.watching = False
        reply = self.conn.read_response()
        return None if reply is None else list(reply)
