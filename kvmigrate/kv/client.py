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


class ReadOnlyViolation(ConfigError):
    """A write command was attempted through a read-only KV client."""


class KvClient:
    """Wraps a redis-py client. Every command goes through `call`/`pipeline` and is charged.

    `read_only=True` refuses every write command (and EVAL unless the script is registered
    as read-only via `eval_ro`), before anything is sent.
    """

    def __init__(self, client: redis.Redis, budget: RequestBudget, *, read_only: bool = False):
        self.redis = client
        self.budget = budget
        self.read_only = read_only
        self.eval_ro_supported = True

    def _guard(self, name: str) -> None:
        if self.read_only and name.upper() in WRITE_COMMANDS:
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
