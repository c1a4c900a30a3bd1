"""Keys a run has already handled, remembered in bounded memory: a Bloom filter (rbloom).

It answers "maybe" or "certainly not": a key it never saw is found with a 1% chance, a key it
saw always is. Callers use a "certainly not" to skip a lookup that could only find what this
run wrote, so a false "maybe" costs the lookup, never a result.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from rbloom import Bloom

#: Keys one filter is sized for (2.4 MB at 1% false positives); past that a new filter starts,
#: so a bigger store only looks up a little more, never wrongly less.
PER_FILTER = 2_000_000


class SeenKeys:
    """Hashable keys noted so far (within this process: Python's string hash is per process)."""

    def __init__(self) -> None:
        self._filters = [Bloom(PER_FILTER, 0.01)]
        self._count = 0

    def maybe(self, key: Hashable) -> bool:
        """Whether `key` may have been noted (False: it certainly was not)."""
        return any(key in f for f in self._filters)

    def note(self, keys: Sequence[Hashable] | Iterable[Hashable]) -> None:
        keys = list(keys)
        if self._count + len(keys) > PER_FILTER * len(self._filters):
            self._filters.append(Bloom(PER_FILTER, 0.01))
        self._filters[-1].update(keys)
        self._count += len(keys)
