"""Prisma names for Postgres names: models in PascalCase singular (`board_posts` -> `BoardPost`),
fields in camelCase (`display_name` -> `displayName`), each mapped back with @@map / @map, and
relation fields named after the foreign key that carries them. Pure functions."""

from __future__ import annotations

import re

from kvmigrate.phases.prisma.catalog import Catalog, Constraint, Table

_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Names Prisma reserves for its own types; a model or enum may not take them.
RESERVED = frozenset({"String", "Boolean", "Int", "BigInt", "Float", "Decimal", "DateTime", "Json", "Bytes",
                      "Unsupported", "PrismaClient", "Prisma"})


def words(name: str) -> list[str]:
    return [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]


def pascal(name: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in words(name))


def camel(name: str) -> str:
    p = pascal(name)
    return p[:1].lower() + p[1:]


def singular(word: str) -> str:
    """`memories` -> `memory`, `users` -> `user`, `status` and `address` stay."""
    lower = word.lower()
    if lower.endswith("ies") and len(word) > 3:
        return word[:-3] + ("Y" if word[-3].isupper() else "y")
    if lower.endswith(("ss", "us", "is")) or not lower.endswith("s") or len(word) < 3:
        return word
    return word[:-1]


def _valid(name: str) -> bool:
    return bool(_IDENT.match(name)) and name not in RESERVED


def model_names(catalog: Catalog) -> dict[str, str]:
    """Table name -> model name, unique and valid; falls back to the table's own name."""
    taken: set[str] = set()
    out: dict[str, str] = {}
    for table in catalog.tables:
        parts = words(table.name)
        wish = pascal("_".join(parts[:-1] + [singular(parts[-1])])) if parts else ""
        for candidate in (wish, pascal(table.name), table.name, f"Table_{len(out)}"):
            if _valid(candidate) and candidate.lower() not in taken:
                break
        out[table.name] = candidate
        taken.add(candidate.lower())
    return out


def enum_names(catalog: Catalog, models: dict[str, str]) -> dict[str, str]:
    taken = {m.lower() for m in models.values()}
    out: dict[str, str] = {}
    for enum in catalog.enums:
        for candidate in (pascal(enum.name), enum.name, f"Enum_{len(out)}"):
            if _valid(candidate) and candidate.lower() not in taken:
                break
        out[enum.name] = candidate
        taken.add(candidate.lower())
    return out


def field_names(table: Table) -> dict[str, str]:
    """Column name -> field name, unique within the model."""
    taken: set[str] = set()
    out: dict[str, str] = {}
    for col in table.columns:
        for candidate in (camel(col.name), col.name, f"column{len(out)}"):
            if _IDENT.match(candidate) and candidate not in taken:
                break
        out[col.name] = candidate
        taken.add(candidate)
    return out


def unique_name(wish: str, taken: set[str]) -> str:
    name, n = wish, 2
    while name in taken:
        name, n = f"{wish}{n}", n + 1
    taken.add(name)
    return name


def forward_field(fk: Constraint, ref_model: str, ref_pk: tuple[str, ...]) -> str:
    """The relation field on the referencing model: `streaks.handle -> users.handle` is `user`,
    `messages.from_handle -> users` is `fromHandleUser`, a composite key `userByAB`."""
    lower = ref_model[:1].lower() + ref_model[1:]
    if fk.columns == ref_pk or len(fk.columns) > 1:
        return lower if fk.columns == ref_pk else lower + "By" + "".join(pascal(c) for c in fk.columns)
    return camel(fk.columns[0]) + ref_model


def back_field(table: Table, model: str, fk: Constraint, *, one_to_one: bool, ambiguous: bool) -> str:
    """The relation field on the referenced model: `messages` (a list), `streak` (one to one),
    `messagesByFromHandle` when the table references it more than once (or itself)."""
    base = (model[:1].lower() + model[1:]) if one_to_one else camel(table.name)
    return base + "By" + "".join(pascal(c) for c in fk.columns) if ambiguous else base
