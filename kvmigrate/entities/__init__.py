"""The entity registry: every entity kvmigrate migrates, in load order.

A new entity is one module implementing `kvmigrate.entities.base.Entity`, added to ENTITIES.
"""

from __future__ import annotations

from kvmigrate.entities.base import Entity, Family, TableSpec

ENTITIES: tuple[Entity, ...] = ()

__all__ = ["ENTITIES", "Entity", "Family", "TableSpec"]
