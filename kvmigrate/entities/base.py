"""The small protocol every entity implements; one module per entity, listed in the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from kvmigrate.records import Outcome, RawRecord


@dataclass(frozen=True)
class Family:
    """One shape of KV keys an entity reads.

    `pattern` is a Redis glob (`msg:*`) or an exact key (`vibe:messages`). `types` are the
    Redis types accepted (any other type is a reject). `rank` decides which source wins when two
    produce the same primary key (higher wins). `split_fields`: the key is one big hash whose
    fields are separate records, read with HSCAN. `index`: a derived index (no rows of its own).
    """

    name: str
    pattern: str
    types: frozenset[str]
    rank: int = 0
    split_fields: bool = False
    index: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A target table: its primary key, its columns in load order, which columns reference
    users(handle) (a missing user gets a placeholder row, see README), and how two sources
    for one primary key combine: `replace` (higher rank wins whole) or `fill` (higher rank wins
    field by field, lower ranks fill NULL columns, JSONB objects merge key by key)."""

    name: str
    pk: str
    columns: tuple[str, ...]
    user_refs: tuple[str, ...] = ()
    merge: Literal["replace", "fill"] = "replace"
    json_columns: tuple[str, ...] = ()


class Entity(Protocol):
    """An entity: key families in, rows of one or more tables out. `transform` is pure."""

    name: str
    load_order: int
    families: tuple[Family, ...]
    tables: tuple[TableSpec, ...]

    def transform(self, record: RawRecord) -> Outcome:
        """Turn one record into rows or a reject. Never raises; never does I/O."""
        ...
