"""Keys a run has already handled, remembered in bounded memory: a Bloom filter (rbloom).

It answers "maybe" or "certainly not": a key it never saw is found with a 1% chance, a key it
saw always is. Callers use a "certainly not" to skip a lookup that could only find what this
run wrote, so a false "maybe" costs the lookup, never a result.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

from rbloom import Bloom

K = TypeVar("K", bound=Hashable)

#: Keys the first filter is sized for (77 KB at 1% false positives); each filter after it holds
#: twice the one before, so memory grows with the keys noted (about 1.2 MB per million), and a
#: bigger store never finds a key wrongly absent.
FIRST_FILTER = 64_000
FALSE_POSITIVES = 0.01


class SeenKeys:
    """Hashable keys noted so far (within this process: Python's string hash is per process)."""

    def __init__(self) -> None:
        self._filters = [Bloom(FIRST_FILTER, FALSE_POSITIVES)]
        self._room = FIRST_FILTER  # keys the newest filter can still take at its rate
        self._last = FIRST_FILTER

    def maybe(self, key: Hashable) -> bool:
        """Whether `key` may have been noted (False: it certainly was not)."""
        for f in self._filters:  # a loop, not any() of a generator: about a quarter of the time a probe
            if key in f:
                return True
        return False

    def note(self, keys: Sequence[Hashable] | Iterable[Hashable]) -> None:
        keys = list(keys)
        if len(keys) > self._room:
            self._last = max(2 * self._last, len(keys))
            self._filters.append(Bloom(self._last, FALSE_POSITIVES))
            self._room = self._last
        self._filters[-1].update(keys)
        self._room -= len(keys)

    def seen_before(self, keys: Sequence[K]) -> list[K]:
        """Of `keys`, those that may have been noted before this call; then notes them all."""
        if len(self._filters) == 1:  # no call per key (a page probes thousands)
            first = self._filters[0]
            before = [k for k in keys if k in first]
        else:
            before = [k for k in keys if self.maybe(k)]
        self.note(keys)
        return before
