"""Decide, from its name alone, what each KV key is: an entity's record, kept in KV by policy,
or unknown. Kept and unknown keys are never read, so classifying them costs no request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import translate

from kvmigrate.entities.base import Entity, Family

#: Keys that stay in KV by policy: presence, sessions/tokens, rate limits, friend invites
#: (`invite:{code}`, EX 7 days: ephemeral), kvmigrate's own.
KEPT_PATTERNS: tuple[str, ...] = (
    "presence:*",
    "typing:*",
    "session:*",
    "session-key:*",
    "airc:nonce:*",
    "agent:rate:*",
    "agent:budget:*",
    "agent:greeted:*",
    "tip:ratelimit:*",
    "ratelimit:*",
    "observations:count:*",
    "observations:ratelimit:*",
    "invite:*",
    "kvmigrate:*",
)

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Classification:
    """`status` is "entity", "kept" or "unknown"; `pattern` is the family/kept/unknown pattern."""

    status: str
    pattern: str
    entity: Entity | None = None
    family: Family | None = None


def _literal_prefix(pattern: str) -> int:
    m = _GLOB_CHARS.search(pattern)
    return len(pattern) if m is None else m.start()


def unknown_pattern(key: str) -> str:
    """A readable pattern for an unknown key: its first segment plus `:*` (`waitlist:*`)."""
    head, sep, _ = key.partition(":")
    return f"{head}:*" if sep else key


class Classifier:
    """Matches keys against every entity family (exact keys first, then the longest literal
    prefix), then the kept patterns; anything else is unknown."""

    def __init__(self, entities: Sequence[Entity], kept: Sequence[str] = KEPT_PATTERNS) -> None:
        self._exact: dict[str, tuple[Entity, Family]] = {}
        globs: list[tuple[Entity, Family]] = []
        for entity in entities:
            for family in entity.families:
                if _GLOB_CHARS.search(family.pattern):
                    globs.append((entity, family))
                else:
                    self._exact[family.pattern] = (entity, family)
        self._globs = sorted(globs, key=lambda ef: -_literal_prefix(ef[1].pattern))
        self._kept = tuple(kept)
        # Every glob in one regex, in the order they are tried: the first alternative that
        # matches the whole key wins, as the loop over fnmatchcase did (one match per key).
        self._outcomes = [Classification("entity", f.pattern, e, f) for e, f in self._globs]
        self._outcomes += [Classification("kept", p) for p in self._kept]
        # (group names of our own: fnmatch.translate names its groups g0, g1… on Python 3.10)
        self._match = re.compile("|".join(
            f"(?P<kvm_{i}>{translate(o.pattern)})" for i, o in enumerate(self._outcomes))).match

    def classify(self, key: str) -> Classification:
        hit = self._exact.get(key)
        if hit:
            return Classification("entity", hit[1].pattern, hit[0], hit[1])
        m = self._match(key)
        if m is not None and m.lastgroup is not None:
            return self._outcomes[int(m.lastgroup.removeprefix("kvm_"))]
        return Classification("unknown", unknown_pattern(key))
