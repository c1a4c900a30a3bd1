"""Count every KV command the server runs for kvmigrate, as the store bills it, and stop
cleanly before the user's cap."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvmigrate.model.errors import BudgetExhausted

#: Commands Upstash (and so Vercel KV) does not bill. Counted apart, never against the cap.
FREE_COMMANDS = frozenset("AUTH HELLO SELECT COMMAND CONFIG INFO PING RESET QUIT".split())


@dataclass
class RequestBudget:
    """Counts billed KV commands by name and phase; raises BudgetExhausted *before* a command
    would pass `cap`.

    Upstash bills every command the server runs: a pipeline of N commands costs N, MULTI/EXEC
    bills MULTI, EXEC and each queued command, and a Lua script bills every command it runs
    (kvmigrate sends none). The count here is what Redis and Valkey report in `INFO
    commandstats` for the same run, less the free commands (`free`).
    """

    cap: int | None = None
    phase: str = "other"
    by_command: Counter[str] = field(default_factory=Counter)
    by_phase: Counter[str] = field(default_factory=Counter)
    by_phase_command: Counter[tuple[str, str]] = field(default_factory=Counter)
    free: Counter[str] = field(default_factory=Counter)

    @property
    def spent(self) -> int:
        """Billed commands so far."""
        return sum(self.by_command.values())

    @property
    def remaining(self) -> int | None:
        return None if self.cap is None else max(self.cap - self.spent, 0)

    def check(self, n: int = 1) -> None:
        """Raise BudgetExhausted if `n` more billed commands would pass the cap. No side effect."""
        if self.cap is not None and self.spent + n > self.cap:
            raise BudgetExhausted(
                f"KV request budget reached: {self.spent} of {self.cap} billed commands spent, "
                f"the next step needs {n}",
                hint="the run stopped cleanly; run the same command again (with a new "
                "--max-requests) to resume from the last checkpoint",
            )

    def charge(self, command: str, n: int = 1) -> None:
        """Check the cap, then record `n` commands named `command` (free ones are only noted)."""
        if command.upper() not in FREE_COMMANDS:
            self.check(n)
        self.record(command, n)

    def record(self, command: str, n: int = 1) -> None:
        """Count commands without checking the cap (a connection's AUTH/SELECT, already sent)."""
        name = command.upper()
        if name in FREE_COMMANDS:
            self.free[name] += n
            return
        self.by_command[name] += n
        self.by_phase[self.phase] += n
        self.by_phase_command[(self.phase, name)] += n

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.spent,
            "cap": self.cap,
            "by_command": dict(sorted(self.by_command.items())),
            "by_phase": dict(sorted(self.by_phase.items())),
            "free": dict(sorted(self.free.items())),
        }
