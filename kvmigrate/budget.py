"""Count every KV command kvmigrate sends, and stop cleanly at the user's cap."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kvmigrate.errors import BudgetExhausted


@dataclass
class RequestBudget:
    """Counts KV commands by name and phase; raises BudgetExhausted *before* exceeding `cap`.

    Upstash and Vercel KV bill per command: a pipeline of N commands costs N, one EVAL costs 1.
    """

    cap: int | None = None
    phase: str = "other"
    by_command: Counter[str] = field(default_factory=Counter)
    by_phase: Counter[str] = field(default_factory=Counter)
    by_phase_command: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def spent(self) -> int:
        return sum(self.by_command.values())

    @property
    def remaining(self) -> int | None:
        return None if self.cap is None else max(self.cap - self.spent, 0)

    def check(self, n: int = 1) -> None:
        """Raise BudgetExhausted if sending `n` more commands would pass the cap. No side effect."""
        if self.cap is not None and self.spent + n > self.cap:
            raise BudgetExhausted(
                f"KV request budget reached: {self.spent} of {self.cap} commands spent, "
                f"the next step needs {n}",
                hint="the run stopped cleanly; run the same command again (with a new "
                "--max-requests) to resume from the last checkpoint",
            )

    def charge(self, command: str, n: int = 1) -> None:
        """Record `n` commands named `command` (after check())."""
        self.check(n)
        self.record(command, n)

    def record(self, command: str, n: int = 1) -> None:
        """Count commands without checking the cap (a connection's AUTH/SELECT, already sent)."""
        name = command.upper()
        self.by_command[name] += n
        self.by_phase[self.phase] += n
        self.by_phase_command[(self.phase, name)] += n

    def to_dict(self) -> dict[str, object]:
        return {
            "total": self.spent,
            "cap": self.cap,
            "by_command": dict(sorted(self.by_command.items())),
            "by_phase": dict(sorted(self.by_phase.items())),
        }
