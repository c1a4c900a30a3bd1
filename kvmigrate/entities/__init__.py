"""The entity registry: every entity kvmigrate migrates, in load order.

A new entity is one module implementing `kvmigrate.entities.base.Entity`, added to ENTITIES.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from kvmigrate.entities.base import Entity, EntityBase, Family, TableSpec
from kvmigrate.model.errors import ConfigError

_MODULES = (("users", "USERS"), ("messages", "MESSAGES"), ("board", "BOARD"), ("streaks", "STREAKS"),
            ("invites", "INVITES"), ("games", "GAMES"), ("memories", "MEMORIES"), ("consent", "CONSENT"),
            ("friends", "FRIENDS"), ("reports", "REPORTS"))


def _load() -> tuple[Entity, ...]:
    found: list[Entity] = []
    for module, attr in _MODULES:
        try:
            found.append(getattr(importlib.import_module(f"kvmigrate.entities.{module}"), attr))
        except ModuleNotFoundError as exc:  # TEMPORARY while the entity modules land
            if exc.name != f"kvmigrate.entities.{module}":
                raise
    return tuple(sorted(found, key=lambda e: e.load_order))


ENTITIES: tuple[Entity, ...] = _load()
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


__all__ = ["ENTITIES", "ENTITY_NAMES", "Entity", "EntityBase", "Family", "TableSpec", "select_entities"]
