"""What a verify finds: a row missing, extra or different (with the fields that differ), and the
per-entity counts of a check. Plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Difference:
    kind: str  # missing | extra | different
    table: str
    pk: str
    key: str
    source_field: str = ""
    fields: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RefusedRepair:
    """A row `verify --repair` left as it was: its KV sources now give a row that holds less
    (`lost`: what would go, one phrase per column or field; see kvmigrate.engine.loss)."""

    table: str
    pk: str
    key: str
    lost: tuple[str, ...]

    @property
    def message(self) -> str:
        return (f"{self.key or 'no KV key'}: repair refused: it would replace {self.table} row {self.pk!r} with "
                f"less than it holds: {'; '.join(self.lost)}")


@dataclass
class EntityCheck:
    checked: int = 0
    keys: int = 0  # KV keys (or registry fields) of the entity the verify's scan matched
    missing: list[Difference] = field(default_factory=list)
    extra: list[Difference] = field(default_factory=list)
    different: list[Difference] = field(default_factory=list)
    healed: int = 0
    repaired: int = 0
    superseded: int = 0
    verified_keys: int = 0
    #: rows a repair refused to replace with less (they stay reported as different)
    refused: list[RefusedRepair] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)
