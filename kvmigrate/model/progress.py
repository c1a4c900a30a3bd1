"""Progress reports from long work, as plain values: the library says how far it got, the CLI
decides how to show it (a bar with rate and ETA on a terminal, a line every few seconds in a CI
log). Nothing here prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tick:
    """One report: `task` ("backfill", "verify", "cleanup", "restore", "settle"), how much is
    `done` of `total` (None while unknown) in `unit`, and a short `note` (rejects so far, …)."""

    task: str
    done: int
    total: int | None = None
    unit: str = "keys"
    note: str = ""


Reporter = Callable[[Tick], None]


def silent(_: Tick) -> None:
    """A reporter that shows nothing (the library's default)."""


@dataclass
class Rate:
    """Rate and ETA of one task, from its ticks."""

    started: float = field(default_factory=time.monotonic)

    def per_second(self, done: int) -> float:
        return done / max(time.monotonic() - self.started, 1e-6)

    def eta(self, done: int, total: int | None) -> float | None:
        """Seconds left at the rate so far, or None while it cannot be told."""
        if total is None or done <= 0 or done >= total:
            return None
        return (total - done) / self.per_second(done)


def countdown(seconds: float, report: Reporter, *, task: str = "settle", note: str = "") -> None:
    """Wait `seconds`, reporting each second waited (a settle that shows what it waits for)."""
    end = time.monotonic() + seconds
    whole = max(int(round(seconds)), 0)
    while True:
        left = end - time.monotonic()
        report(Tick(task, whole - max(int(round(left)), 0), whole, "s", note))
        if left <= 0:
            return
        time.sleep(min(1.0, left))


def clock(seconds: float | None) -> str:
    """`1m39s`, `12s`, or `?`."""
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def left_to_do(done: int, total: int | None, spent: int, unit: str = "keys") -> str:
    """What a stopped run leaves, and the billed commands it needs at this run's rate, for a
    budget stop's message: 'done 1,200 of 3,289 keys; about 35 more billed KV commands'."""
    if total is None or total <= 0:
        return f"done {done:,} {unit}"
    ahead = max(total - done, 0)
    need = "" if done <= 0 else f"; about {int(spent * ahead / done) + 1:,} more billed KV commands to finish"
    return f"done {min(done, total):,} of {total:,} {unit} ({min(done / total, 1):.0%}){need}"
