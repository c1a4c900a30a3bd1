"""The entity registry: every entity kvmigrate migrates, in load order.

A new entity is one module implementing `kvmigrate.entities.base.Entity`, added to ENTITIES.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmigrate.entities.base import Entity, Family, TableSpec
from kvmigrate.errors import ConfigError

# TEMPORARY while the entity modules land: import what exists. # TODO-LEAD: make strict
import importlib as _il

_found = []
for _mod, _obj in (("users", "USERS"), ("messages", "MESSAGES"), ("board", "BOARD"), ("streaks", "STREAKS"),
                   ("invites", "INVITES"), ("games", "GAMES"), ("memories", "MEMORIES")):
    try:
        _found.append(getattr(_il.import_module(f"kvmigrate.entities.{_mod}"), _obj))
    except (ImportError, AttributeError):
        pass

ENTITIES: tuple[Entity, ...] = tuple(sorted(_found, key=lambda e: e.load_order))
ENTITY_NAMES: tuple[str, ...] = tuple(e.name for e in ENTITIES)


def select_entities(names: Sequence[str]) -> tuple[Entity, ...]:
    """The named entities in load order (all when `names` is empty); unknown names are an error."""
    if not names:
        return ENTITIES
    unknown = sorted(set(names) - set(ENTITY_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown entity {', '.join(unknown)}",
            hint="entities are: " + ", ".join(ENTITY_NAMES),
        )
    return tuple(e for e in ENTITIES if e.name in names)


__all__ = ["ENTITIES", "ENTITY_NAMES", "Entity", "Family", "TableSpec", "select_entities"]
