"""A thin KV client: every command is counted by a RequestBudget; writes can be forbidden."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from kvmigrate.budget import RequestBudget
from kvmigrate.errors import ConfigError

#: Commands that change the keyspace. A read-only client refuses all of them.
WRITE_COMMANDS = frozenset(
    """SET SETEX PSETEX SETNX MSET MSETNX GETSET GETDEL GETEX APPEND INCR INCRBY INCRBYFLOAT DECR
    DECRBY DEL UNLINK EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST RENAME RENAMENX RESTORE COPY MOVE
    HSET HSETNX HMSET HDEL HINCRBY HINCRBYFLOAT LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LREM
    LTRIM LINSERT LMOVE RPOPLPUSH SADD SREM SPOP SMOVE ZADD ZREM ZINCRBY ZPOPMIN ZPOPMAX
    ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX FLUSHDB FLUSHALL SWAPDB EVAL EVALSHA
    FUNCTION SCRIPT""".split()
)


#: The only commands a read-only client sends: reads, scans, server facts, and scripts the
#: server itself runs read-only (EVAL_RO). Anything else is refused before it is sent, so a
#: command missing from WRITE_COMMANDS (SETRANGE, SORT … STORE, a module's write) cannot slip by.
READ_COMMANDS = frozenset(
    """GET MGET STRLEN GETRANGE EXISTS TYPE TTL PTTL DUMP SCAN HSCAN SSCAN ZSCAN HGET HMGET HGETALL
    HKEYS HVALS HLEN HEXISTS HSTRLEN LRANGE LLEN LINDEX SMEMBERS SCARD SISMEMBER SMISMEMBER ZRANGE ZRANGEBYSCORE
    ZREVRANGE ZCARD ZSCORE DBSIZE INFO PING ECHO TIME EVAL_RO EVALSHA_RO""".split()
)


class ReadOnlyViolation(ConfigError):
    """A write command was attempted through a read-only KV client."""


class KvClient:
    """Wraps a redis-py client. Every command goes through `call`/`pipeline` and is charged.

    `read_only=True` refuses, before anything is sent, every command but the reads in
    READ_COMMANDS (scripts only as EVAL_RO, which the server runs read-only).
    """

    def __init__(self, client: redis.Redis, budget: RequestBudget, *, read_only: bool = False):
        self.redis = client
        self.budget = budget
        self.read_only = read_only
        self.eval_ro_supported = True

    def _guard(self, name: str) -> None:
        if self.read_only and name.upper() not in READ_COMMANDS:
            raise ReadOnlyViolation(
                f"refused to send {name.upper()}: this KV connection is read-only",
                hint="rehearse and dry runs never write to KV",
            )

    def call(self, *args: Any) -> Any:
        """Send one command. Costs 1 request."""
        name = str(args[0])
        self._guard(name)
        self.budget.charge(name)
        return self.redis.execute_command(*args)

    def eval_ro(self, script: str, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run a script that only reads. Costs 1 request.

        Sent as EVAL_RO (Redis 7+, Valkey, Upstash), so the server itself refuses any write the
        script might attempt; a server that does not know EVAL_RO gets plain EVAL (once it said so,
        that costs one extra request per client).
        """
        if self.eval_ro_supported:
            self.budget.charge("EVAL_RO")
            try:
                return self.redis.execute_command("EVAL_RO", script, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.eval_ro_supported = False
        if self.read_only:  # a plain EVAL could write: the caller reads with pipelines instead
            raise redis.ResponseError("EVAL_RO is not supported, and a read-only connection sends no plain EVAL")
        self.budget.charge("EVAL")
        return self.redis.execute_command("EVAL", script, len(keys), *keys, *args)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands in one round trip (not a transaction). Costs len(commands) requests.

        Per-command errors come back as exception objects in the result list.
        """
        if not commands:
            return []
        for cmd in commands:
            self._guard(str(cmd[0]))
        self.budget.check(len(commands))
        for cmd in commands:
            self.budget.charge(str(cmd[0]))
        pipe = self.redis.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(pipe.execute(raise_on_error=False))
