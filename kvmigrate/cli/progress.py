"""Progress on stderr for the commands' long work: rich bars on a terminal, plain lines in a log."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console

from kvmigrate.model.progress import Rate, Tick, clock


class Bars:
    """Progress on stderr. On a terminal: rich bars with rate and ETA, one for the whole task and
    one line per entity (backfill), left on screen when the run ends or stops. Elsewhere (a CI
    log): one plain line per task every `every` seconds, and the last one when it ends."""

    def __init__(self, console: Console, *, every: float = 10.0) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.tty = console.is_terminal
        self.every = every
        self.bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}"), console=console, transient=False,
                            disable=not self.tty)
        self.tasks: dict[str, Any] = {}
        self.rates: dict[str, Rate] = {}
        self.last: dict[str, Tick] = {}
        self.printed: dict[str, float] = {}

    def tick(self, t: Tick) -> None:
        """Show one progress report (see kvmigrate.progress)."""
        rate = self.rates.setdefault(t.task, Rate())
        self.last[t.task] = t
        per_s = f"{rate.per_second(t.done):,.0f} {t.unit}/s" if t.unit != "s" else ""
        if self.tty:
            if t.task not in self.tasks:
                self.tasks[t.task] = self.bar.add_task(t.task, total=t.total, rate="", note="")
            self.bar.update(self.tasks[t.task], completed=t.done, total=t.total, rate=per_s, note=t.note)
            return
        now = time.monotonic()
        finished = t.total is not None and t.done >= t.total
        if finished or now - self.printed.get(t.task, 0.0) >= self.every:
            self.printed[t.task] = now
            self.console.print(self.line(t), markup=False, highlight=False, soft_wrap=True)

    def line(self, t: Tick) -> str:
        rate = self.rates.get(t.task) or Rate()
        of = f" of {t.total:,}" if t.total is not None else ""
        if t.unit == "s":
            return f"{t.task}: {t.done}{of} s, {max((t.total or 0) - t.done, 0)} s left" + (f"; {t.note}" if t.note else "")
        share = f" ({t.done / t.total:.0%})" if t.total else ""
        finished = t.total is not None and t.done >= t.total
        speed = f", {rate.per_second(t.done):,.0f} {t.unit}/s" + ("" if finished else f", ETA {clock(rate.eta(t.done, t.total))}")
        return f"{t.task}: {t.done:,}{of} {t.unit}{share}{speed}" + (f"; {t.note}" if t.note else "")

    def page(self, done: int, total: int, tallies: Any) -> None:
        """Backfill's report: the scan, and one line per entity on a terminal."""
        rejected = sum(t.rejected + t.item_rejects for t in tallies.values())
        self.tick(Tick("backfill", done, max(total, done), note=f"rejects {rejected}"))
        if not self.tty:
            return
        for name, t in tallies.items():
            key = f"  {name}"
            if key not in self.tasks:
                self.tasks[key] = self.bar.add_task(key, total=None, rate="", note="")
            left = t.kept + t.unknown  # kept/unknown keys stay in KV, never read
            self.bar.update(self.tasks[key], completed=t.scanned, rate="",
                            note=(f"{left:,} left in KV" if left else f"{t.migrated:,} migrated")
                            + f", rejects {t.rejected + t.item_rejects}")

    def stopped(self) -> None:
        """When the run stopped early (budget, Ctrl-C, error): say how far each task got."""
        for t in self.last.values():
            if t.unit != "s" and not (t.total is not None and t.done >= t.total):
                self.console.print("stopped at: " + self.line(t), markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(ctx: typer.Context, label: str = "") -> Iterator[Bars]:
    """Progress on stderr for the command's long work (see Bars); `label` is kept for callers."""
    bars = Bars(Console(stderr=True))
    try:
        with bars.bar:
            yield bars
    except BaseException as exc:
        if not (isinstance(exc, typer.Exit) and exc.exit_code == 0):
            bars.stopped()
        raise
