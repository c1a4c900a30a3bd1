"""A deadline on every wait for Postgres, on the client's side.

TCP keepalives end a connection whose peer is gone, but not one whose peer still answers the
keepalives and never replies (a proxy or NAT half-open in userspace, a stalled load balancer):
the client would wait for ever. So every network wait of a kvmigrate connection (a statement, a
COPY block, a commit) is bounded by the server's `statement_timeout` plus a grace: a statement
that legitimately runs that long has been cancelled by the server by then and its error is on
the way. When the deadline passes, the connection is closed and the run stops with
OperationalError (exit 3 through `connection_errors`); every page commits whole, so the same
command resumes. Another thread (the writer lock's heartbeat) can also `stop` a connection:
its next wait fails with the reason.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from typing import Any, TypeVar

import psycopg

RV = TypeVar("RV")

#: the server's statement_timeout kvmigrate sets when the URL sets none (also the deadline's base)
STATEMENT_TIMEOUT = 900.0
#: ends a session left idle inside a transaction (its row locks with it) by a run that vanished
IDLE_IN_TRANSACTION_TIMEOUT = 600.0
_SETTING = re.compile(r"statement_timeout\s*=\s*'?(\d+)\s*(ms|s|min)?", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "min": 60.0}


class NoReply(Exception):
    """The deadline of a wait passed with no reply."""


def grace(timeout: float) -> float:
    """Seconds past the statement timeout before the client gives up: a tenth, 2 to 30 s."""
    return min(30.0, max(2.0, timeout / 10))


def statement_timeout_of(options: str | None) -> float:
    """The statement_timeout (seconds) a URL's `options` set, else kvmigrate's own (also when
    the URL disables it: the client still needs a bound)."""
    match = _SETTING.search(options or "")
    if match is None or int(match.group(1)) == 0:
        return STATEMENT_TIMEOUT
    return int(match.group(1)) * _UNIT[(match.group(2) or "ms").lower()]


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait ends by `deadline` seconds (None: unbounded)."""

    deadline: float | None = None
    stopped: str | None = None  # set from another thread: the next wait fails with this reason
    url: str | None = None  # where it connected (the writer lock opens its own session there)
    companions: list[Any]  # closed with this connection (the writer lock's session)

    def stop(self, reason: str) -> None:
        """Make the next wait of this connection fail with `reason` (thread-safe)."""
        self.stopped = reason

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if self.stopped is not None:
            raise psycopg.OperationalError(self.stopped)
        if self.deadline is None:
            return super().wait(gen, *args, **kwargs)
        try:
            return super().wait(_bounded(gen, self.deadline), *args, **kwargs)
        except NoReply:
            self.pgconn.finish()  # its state is unknown: nothing more is sent on it
            raise psycopg.OperationalError(
                f"no reply from Postgres within {self.deadline:.0f} s (the statement timeout and a grace): "
                "the connection is half-open or the server vanished") from None

    def close(self) -> None:
        for companion in getattr(self, "companions", ()):
            companion.close()
        super().close()


def _bounded(gen: Generator[Any, Any, RV], seconds: float) -> Generator[Any, Any, RV]:
    """`gen`, failing with NoReply once `seconds` have passed (psycopg resumes a generator at
    least every wait interval, 0.1 s, even when nothing is ready)."""
    end = time.monotonic() + seconds
    try:
        state = next(gen)
        while True:
            ready = yield state
            if time.monotonic() >= end:
                gen.close()
                raise NoReply
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value
